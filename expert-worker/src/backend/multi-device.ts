// One worker over several GPUs: a pod with worker.gpusPerWorker > 1 sees that many devices, and each of them runs
// its share of the worker's experts (expert parallelism inside the pod). The devices' backends are ordinary
// single-device backends (CudaBackend with its device index); this composite only decides where an expert lives and
// splits a run by device.
//
// - Placement: prepare() puts a new expert on the device holding the fewest live experts (discard() gives them back),
//   so the devices hold the host tier's experts in equal shares and each device's slot cache needs 1/N of them.
// - run(): the batch's slices go to their experts' devices; each device gets its rows as a contiguous matrix, all
//   devices run at once, and their rows are copied back into place. Each row is computed by exactly one device, as a
//   single device would compute it.
// - Deduplicated batches (tokenRows, the router's distinct tokens): each device gets the distinct tokens its rows
//   use and gathers them itself; with sumByToken each sums its own rows per token (in row order) and the host adds
//   the devices' sums in device order. So a token's sum is rounded to fp32 once per device more than on one GPU:
//   answers differ from one GPU's by fp32 rounding, not more. Expanding the rows on the host instead (the first
//   version) took DeepSeek-V3's worker batches from 1.44 to 2.94 ms (bench/results/h200-moe.md).
// - The device tier's stats are the devices' summed; cache events come from all of them.

import { DType, dtypeSize } from "@switchyard/protocol";
import { abortError } from "../queue.js";
import { addRowsByToken } from "../token-rows.js";
import type {
  DeviceCacheSink,
  DeviceCacheStats,
  ExpertBackend,
  ExpertWeights,
  PreparedExpert,
  PreparedSlice,
  RunRequest,
} from "./types.js";

/** An expert prepared on one of the devices. */
class OnDevice implements PreparedExpert {
  constructor(
    readonly device: number,
    readonly inner: PreparedExpert,
  ) {}
  get hiddenSize(): number {
    return this.inner.hiddenSize;
  }
  get intermediateSize(): number {
    return this.inner.intermediateSize;
  }
  get bytes(): number {
    return this.inner.bytes;
  }
}

/** A device's part of a run: its slices (offsets in its own rows), where those rows are in the run's, how many. */
export interface DeviceShare {
  slices: PreparedSlice[];
  from: { offset: number; count: number }[];
  rows: number;
}

/** A run's slices by device: for each device used, its slices and where its rows go in the request's matrix. */
export function splitByDevice(slices: readonly PreparedSlice[]): Map<number, DeviceShare> {
  const by = new Map<number, DeviceShare>();
  for (const s of slices) {
    if (!(s.expert instanceof OnDevice)) throw new Error("slice expert was not prepared by this multi-device backend");
    let g = by.get(s.expert.device);
    if (!g) {
      g = { slices: [], from: [], rows: 0 };
      by.set(s.expert.device, g);
    }
    g.slices.push({ expert: s.expert.inner, offset: g.rows, count: s.count });
    g.from.push({ offset: s.offset, count: s.count });
    g.rows += s.count;
  }
  return by;
}

export class MultiDeviceBackend implements ExpertBackend {
  readonly name: ExpertBackend["name"];
  readonly kind: ExpertBackend["kind"];
  /** Deduplicated batches go to the devices as they came, split (see the header), where the devices take them. */
  readonly takesTokenRows: boolean;
  readonly runsInFlight: number | undefined;
  readonly mergesBatches: boolean | undefined;
  /** Live experts per device (prepared and not yet discarded): where the next one goes. */
  private readonly live: number[];

  constructor(readonly devices: readonly ExpertBackend[]) {
    if (devices.length < 2) throw new Error(`multi-device backend: needs 2 or more devices, got ${devices.length}`);
    this.name = devices[0].name;
    this.kind = devices[0].kind;
    this.runsInFlight = devices[0].runsInFlight;
    this.takesTokenRows = devices.every((d) => d.takesTokenRows === true);
    this.mergesBatches = devices[0].mergesBatches;
    this.live = devices.map(() => 0);
  }

  describe(): string {
    return `${this.devices.length} devices, experts split among them: ${this.devices.map((d, i) => `[${i}] ${d.describe()}`).join("; ")}`;
  }

  async prepare(weights: ExpertWeights): Promise<PreparedExpert> {
    let device = 0;
    for (let i = 1; i < this.live.length; i++) if (this.live[i] < this.live[device]) device = i;
    this.live[device]++;
    try {
      return new OnDevice(device, await this.devices[device].prepare(weights));
    } catch (e) {
      this.live[device]--;
      throw e;
    }
  }

  async run(req: RunRequest): Promise<Uint8Array> {
    const { signal } = req;
    if (signal?.aborted) throw abortError(signal);
    if ((req.tokenRows !== undefined || req.sumByToken) && !this.takesTokenRows)
      throw new Error("multi-device backend: its devices take no deduplicated batches (the worker expands them)");
    const by = splitByDevice(req.slices);
    if (by.size === 1) {
      // every slice on one device: its request as it came, with that device's experts
      const [[device, g]] = [...by];
      return this.devices[device].run({
        ...req,
        slices: req.slices.map((s, i) => ({ ...s, expert: g.slices[i].expert })),
      });
    }
    const rowBytes = req.cols * dtypeSize(req.dtype);
    const tokenRows = req.tokenRows;
    const distinct = tokenRows ? req.tokens.byteLength / rowBytes : req.rows;
    // answers: FLOAT32 [distinct, cols] sums, or [rows, cols] in dtype (rows in no slice stay zero, as the contract says)
    const sums = req.sumByToken ? new Float32Array(distinct * req.cols) : undefined;
    const out = sums ? undefined : new Uint8Array(req.rows * rowBytes);
    const parts: { device: number; got: Uint8Array; tokens: Uint32Array }[] = [];
    let deviceMs = 0;
    await Promise.all(
      [...by].map(async ([device, g]) => {
        const rows = g.rows;
        const weights = req.rowWeights ? new Float32Array(rows) : undefined;
        let tokens: Uint8Array;
        let local: { tokenRows: Uint32Array; distinct: Uint32Array } | undefined;
        if (tokenRows) {
          // the distinct tokens this device's rows use, in order of first use, and its rows' indices into them
          const index = new Int32Array(distinct).fill(-1);
          const used: number[] = [];
          const rowsHere = new Uint32Array(rows);
          let r = 0;
          for (const f of g.from) {
            for (let i = f.offset; i < f.offset + f.count; i++, r++) {
              const u = tokenRows[i];
              if (index[u] < 0) {
                index[u] = used.length;
                used.push(u);
              }
              rowsHere[r] = index[u];
            }
          }
          tokens = new Uint8Array(used.length * rowBytes);
          for (let j = 0; j < used.length; j++)
            tokens.set(req.tokens.subarray(used[j] * rowBytes, (used[j] + 1) * rowBytes), j * rowBytes);
          local = { tokenRows: rowsHere, distinct: Uint32Array.from(used) };
        } else {
          tokens = new Uint8Array(rows * rowBytes);
          let r = 0;
          for (const f of g.from) {
            tokens.set(req.tokens.subarray(f.offset * rowBytes, (f.offset + f.count) * rowBytes), r * rowBytes);
            r += f.count;
          }
        }
        let r = 0;
        for (const f of g.from) {
          weights?.set(req.rowWeights!.subarray(f.offset, f.offset + f.count), r);
          r += f.count;
        }
        const got = await this.devices[device].run({
          dtype: req.dtype,
          tokens,
          rows,
          cols: req.cols,
          slices: g.slices,
          ...(weights ? { rowWeights: weights } : {}),
          ...(local ? { tokenRows: local.tokenRows } : {}),
          ...(req.sumByToken ? { sumByToken: true } : {}),
          ...(signal ? { signal } : {}),
          // the devices run side by side: the run's device time is the longest of theirs
          onDeviceTime: (ms) => {
            deviceMs = Math.max(deviceMs, ms);
          },
        });
        if (sums && local) {
          parts.push({ device, got, tokens: local.distinct }); // added below in device order
          return;
        }
        r = 0;
        for (const f of g.from) {
          out!.set(got.subarray(r * rowBytes, (r + f.count) * rowBytes), f.offset * rowBytes);
          r += f.count;
        }
      }),
    );
    if (deviceMs > 0) req.onDeviceTime?.(deviceMs);
    if (!sums) return out!;
    // each device's sums [its tokens, cols] added into their tokens' rows, natively where the addon is built: a
    // pass in JavaScript over DeepSeek-V3's rows cost the worker's event loop more than the second GPU saved
    parts.sort((a, b) => a.device - b.device);
    for (const p of parts) addRowsByToken(sums, p.got, DType.FLOAT32, p.tokens, req.cols);
    return new Uint8Array(sums.buffer);
  }

  prefetch(experts: readonly PreparedExpert[], o?: { evict?: boolean }): Promise<void> {
    const by = this.byDevice(experts);
    return Promise.all([...by].map(([d, es]) => this.devices[d].prefetch?.(es, o))).then(() => undefined);
  }

  discard(experts: readonly PreparedExpert[]): void {
    for (const [d, es] of this.byDevice(experts)) {
      this.live[d] = Math.max(0, this.live[d] - es.length);
      this.devices[d].discard?.(es);
    }
  }

  /** The pool's capacity is the worker's: each device holds its share (the placement keeps the shares equal). */
  setDeviceCacheCapacity(experts: number): void {
    if (!Number.isInteger(experts) || experts < 1)
      throw new Error(`cache capacity: expected an integer >= 1, got ${experts}`);
    const each = Math.ceil(experts / this.devices.length);
    for (const d of this.devices) d.setDeviceCacheCapacity?.(each);
  }

  addDeviceCacheSink(sink: DeviceCacheSink): () => void {
    const offs = this.devices.map((d) => d.addDeviceCacheSink?.(sink));
    return () => {
      for (const off of offs) off?.();
    };
  }

  deviceCacheStats(): DeviceCacheStats | undefined {
    const all = this.devices.map((d) => d.deviceCacheStats?.()).filter((s): s is DeviceCacheStats => s !== undefined);
    if (all.length === 0) return undefined;
    const sum = (k: keyof DeviceCacheStats) => all.reduce((a, s) => a + s[k], 0);
    return {
      hits: sum("hits"),
      misses: sum("misses"),
      evictions: sum("evictions"),
      transferBytes: sum("transferBytes"),
      resident: sum("resident"),
      capacity: sum("capacity"),
    };
  }

  async close(): Promise<void> {
    await Promise.all(this.devices.map((d) => d.close?.()));
  }

  private byDevice(experts: readonly PreparedExpert[]): Map<number, PreparedExpert[]> {
    const by = new Map<number, PreparedExpert[]>();
    for (const e of experts) {
      if (!(e instanceof OnDevice)) continue;
      let l = by.get(e.device);
      if (!l) {
        l = [];
        by.set(e.device, l);
      }
      l.push(e.inner);
    }
    return by;
  }
}
