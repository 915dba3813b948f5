// One worker over several GPUs: a pod with worker.gpusPerWorker > 1 sees that many devices, and each of them runs
// its share of the worker's experts (expert parallelism inside the pod). The devices' backends are ordinary
// single-device backends (CudaBackend with its device index); this composite only decides where an expert lives and
// splits a run by device.
//
// - Placement: prepare() puts a new expert on the device holding the fewest live experts (discard() gives them back),
//   so the devices hold the host tier's experts in equal shares and each device's slot cache needs 1/N of them. A
//   device whose prepare failed is passed over for a while.
// - run(): the batch's slices go to their experts' devices; each device gets its rows as a contiguous matrix, all
//   devices run at once, and their rows are copied back into place. Each row is computed by exactly one device, as a
//   single device would compute it.
// - Deduplicated batches (tokenRows, the router's distinct tokens): each device gets all the distinct tokens and
//   its rows' indices into them, and gathers its rows itself; with sumByToken each sums its own rows per token (in
//   row order, zero for a token it has no row of) and the host adds the devices' sums in device order. So a token's sum is rounded to fp32 once per device more than on one GPU:
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

/** How long a device whose prepare failed is left out of placement before it is tried again. */
const FAILED_DEVICE_RETRY_MS = 30_000;

/** An expert prepared on one of the devices. */
class OnDevice implements PreparedExpert {
  /** Whether the backend's live count of its device has let it go already (discard, or collected). */
  readonly counted = { done: false };
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
    if (s.count === 0) continue; // no rows: it would pin (and upload) its expert for nothing
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

/**
 * A device's share cut into parts of at most `slots` distinct experts each, run one after another: its GPU cache
 * refuses a run that needs more experts than it has slots. Placement keeps the shares equal, but not exactly: the
 * host tier loads an expert before it evicts another, so a device can hold more than its part of the capacity.
 */
export function chunkBySlots(share: DeviceShare, slots: number | undefined): DeviceShare[] {
  return chunkShare(share, { slots });
}

/**
 * A share cut into parts of at most `slots` distinct experts and at most `rows` rows each (either undefined: no
 * bound), in slice order; a slice with more rows than a part has room for is cut, its rows going to consecutive
 * parts. The CUDA backend's runs: its slots, and the rows its run buffers fit in (run-rows.ts).
 */
export function chunkShare(share: DeviceShare, limits: { slots?: number; rows?: number }): DeviceShare[] {
  const slots = limits.slots !== undefined && limits.slots >= 1 ? limits.slots : Number.POSITIVE_INFINITY;
  const maxRows = limits.rows !== undefined && limits.rows >= 1 ? limits.rows : Number.POSITIVE_INFINITY;
  // no slots known yet (nothing prepared on the device), or room for all
  if (share.rows <= maxRows && new Set(share.slices.map((s) => s.expert)).size <= slots) return [share];
  const out: DeviceShare[] = [];
  let cur: DeviceShare = { slices: [], from: [], rows: 0 };
  let experts = new Set<PreparedExpert>();
  share.slices.forEach((s, i) => {
    const from = share.from[i];
    let done = 0;
    // a slice of no rows still takes its place (and its expert), as it came
    do {
      if (cur.rows === maxRows || (!experts.has(s.expert) && experts.size === slots)) {
        out.push(cur);
        cur = { slices: [], from: [], rows: 0 };
        experts = new Set();
      }
      const take = Math.min(s.count - done, maxRows - cur.rows);
      experts.add(s.expert);
      cur.slices.push({ expert: s.expert, offset: cur.rows, count: take });
      cur.from.push({ offset: from.offset + done, count: take });
      cur.rows += take;
      done += take;
    } while (done < s.count);
  });
  out.push(cur);
  return out;
}

export class MultiDeviceBackend implements ExpertBackend {
  readonly name: ExpertBackend["name"];
  readonly kind: ExpertBackend["kind"];
  /** Deduplicated batches go to the devices as they came, split (see the header), where the devices take them. */
  readonly takesTokenRows: boolean;
  readonly runsInFlight: number | undefined;
  readonly mergesBatches: boolean | undefined;
  get deviceCount(): number {
    return this.devices.length;
  }
  /**
   * Live experts per device: where the next one goes. Counted down on discard, or when the prepared expert is
   * collected: the host tier drops some it loaded without keeping them (a warm-up finding no room), and those are
   * never discarded.
   */
  private readonly live: number[];
  /** Devices whose last prepare failed, and when: left out of placement for a while (prepare). */
  private readonly failed = new Map<number, number>();
  private readonly gone = new FinalizationRegistry<{ device: number; counted: { done: boolean } }>((h) =>
    this.release(h.device, h.counted),
  );

  constructor(readonly devices: readonly ExpertBackend[]) {
    if (devices.length < 2) throw new Error(`multi-device backend: needs 2 or more devices, got ${devices.length}`);
    this.name = devices[0].name;
    this.kind = devices[0].kind;
    this.runsInFlight = devices[0].runsInFlight;
    this.takesTokenRows = devices.every((d) => d.takesTokenRows === true);
    this.mergesBatches = devices[0].mergesBatches;
    this.live = devices.map(() => 0);
  }

  /** Hears the first fatal error of any device: one broken GPU fails every batch with a row on it. */
  onFatal(listener: (why: string) => void): void {
    let heard = false;
    for (const d of this.devices)
      d.onFatal?.((why) => {
        if (heard) return;
        heard = true;
        listener(why);
      });
  }

  describe(): string {
    return `${this.devices.length} devices, experts split among them: ${this.devices.map((d, i) => `[${i}] ${d.describe()}`).join("; ")}`;
  }

  async prepare(weights: ExpertWeights): Promise<PreparedExpert> {
    // The device with the fewest live experts, among those whose prepare has not failed in the last
    // FAILED_DEVICE_RETRY_MS: one that cannot take an expert (its GPU cache's context did not fit) would otherwise
    // stay the emptiest and be chosen every time. It is tried again after that while, or at once if every device has
    // failed (a transient shortage of memory ends; a broken context does not, and its runs say so).
    const now = performance.now();
    const usable = this.devices
      .map((_, i) => i)
      .filter((i) => (this.failed.get(i) ?? Number.NEGATIVE_INFINITY) + FAILED_DEVICE_RETRY_MS <= now);
    const pool = usable.length > 0 ? usable : this.devices.map((_, i) => i);
    let device = pool[0] as number;
    for (const i of pool) if (this.live[i] < this.live[device]) device = i;
    this.live[device]++;
    let inner: PreparedExpert;
    try {
      inner = await this.devices[device].prepare(weights);
    } catch (e) {
      this.live[device]--;
      this.failed.set(device, performance.now());
      throw e;
    }
    this.failed.delete(device);
    const e = new OnDevice(device, inner);
    this.gone.register(e, { device, counted: e.counted }, e);
    return e;
  }

  private release(device: number, counted: { done: boolean }): void {
    if (counted.done) return;
    counted.done = true;
    this.live[device] = Math.max(0, this.live[device] - 1);
  }

  async run(req: RunRequest): Promise<Uint8Array> {
    const { signal } = req;
    if (signal?.aborted) throw abortError(signal);
    if ((req.tokenRows !== undefined || req.sumByToken) && !this.takesTokenRows)
      throw new Error("multi-device backend: its devices take no deduplicated batches (the worker expands them)");
    if (req.sumByToken && req.tokenRows === undefined) throw new Error("sumByToken: needs tokenRows");
    const by = splitByDevice(req.slices);
    const shares = [...by].map(([device, g]) => ({
      device,
      parts: chunkBySlots(g, this.devices[device].deviceCacheStats?.()?.capacity),
    }));
    if (shares.length === 1 && shares[0].parts.length === 1) {
      // every slice with rows on one device, within its slots: the request as it came, with that device's experts
      const device = shares[0].device;
      const mine = req.slices.filter((s) => s.count > 0);
      return this.devices[device].run({
        ...req,
        slices: mine.map((s) => ({ ...s, expert: (s.expert as OnDevice).inner })),
      });
    }
    return runShares(req, shares, (device, sub) => this.devices[device].run(sub));
  }

  prefetch(experts: readonly PreparedExpert[], o?: { evict?: boolean }): Promise<unknown[]> {
    const by = this.byDevice(experts);
    return Promise.all([...by].map(([d, es]) => this.devices[d].prefetch?.(es, o))).then((r) =>
      r.flatMap((x) => x ?? []),
    );
  }

  discard(experts: readonly PreparedExpert[]): void {
    for (const e of experts) {
      if (!(e instanceof OnDevice)) continue;
      this.release(e.device, e.counted);
      this.gone.unregister(e);
    }
    for (const [d, es] of this.byDevice(experts)) this.devices[d].discard?.(es);
  }

  /** The pool's capacity is the worker's: each device holds its share (the placement keeps the shares equal). */
  setDeviceCacheCapacity(experts: number): void {
    if (!Number.isInteger(experts) || experts < 1)
      throw new Error(`cache capacity: expected an integer >= 1, got ${experts}`);
    const each = Math.ceil(experts / this.devices.length);
    for (const d of this.devices) d.setDeviceCacheCapacity?.(each);
  }

  setMaxRunRows(rows: number): void {
    for (const d of this.devices) d.setMaxRunRows?.(rows);
  }

  /**
   * The least of the devices' limits (those known): the rows a run is sure to take on any device without parts. Each
   * device applies its own to its share of a run.
   */
  maxRunRows(): number | undefined {
    const all = this.devices.map((d) => d.maxRunRows?.()).filter((n): n is number => n !== undefined);
    return all.length > 0 ? Math.min(...all) : undefined;
  }

  setLog(log: (line: string) => void): void {
    for (const d of this.devices) d.setLog?.(log);
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

/**
 * Runs a request as parts, each a DeviceShare of its rows on one device: the devices at once, each device's parts
 * one after another (runOn runs one part on one device), and puts the answers back together: each part's rows into
 * their places in the request's [rows, cols], or with sumByToken the parts' per-token sums added in (device, part)
 * order. The multi-device backend's run, and a single device's batch that needs more experts than its slots.
 */
export async function runShares(
  req: RunRequest,
  shares: readonly { device: number; parts: readonly DeviceShare[] }[],
  runOn: (device: number, sub: RunRequest) => Promise<Uint8Array>,
): Promise<Uint8Array> {
  const { signal } = req;
  const rowBytes = req.cols * dtypeSize(req.dtype);
  // answers: FLOAT32 [distinct, cols] sums, or [rows, cols] in dtype (rows in no slice stay zero, as the contract says)
  const out = req.sumByToken ? undefined : new Uint8Array(req.rows * rowBytes);
  const results: { device: number; part: number; got: Uint8Array }[] = [];
  let deviceMs = 0;
  // The devices at once, each device's parts one after another. allSettled: a device that fails does not leave
  // another's run behind, still running after the batch has been answered (its queue slot would be free again).
  const settled = await Promise.allSettled(
    shares.map(async ({ device, parts }) => {
      let ms = 0;
      for (const [part, g] of parts.entries()) {
        const got = await runOn(device, {
          ...subRequest(req, g, rowBytes),
          ...(signal ? { signal } : {}),
          onDeviceTime: (t) => {
            ms += t;
          },
        });
        results.push({ device, part, got });
        if (out) {
          let r = 0;
          for (const f of g.from) {
            out.set(got.subarray(r * rowBytes, (r + f.count) * rowBytes), f.offset * rowBytes);
            r += f.count;
          }
        }
      }
      deviceMs = Math.max(deviceMs, ms); // the devices run side by side: the run's device time is the longest
    }),
  );
  const failed = settled.find((x): x is PromiseRejectedResult => x.status === "rejected");
  if (failed) throw failed.reason;
  if (deviceMs > 0) req.onDeviceTime?.(deviceMs);
  if (out) return out;
  // Each part's sums cover every distinct token (zero where it has no row): added into the first in (device, part)
  // order, natively where the addon is built (a pass in JavaScript over DeepSeek-V3's rows cost the worker's event
  // loop more than the second GPU saved).
  const distinct = req.tokens.byteLength / rowBytes;
  results.sort((a, b) => a.device - b.device || a.part - b.part);
  const [first, ...rest] = results;
  if (!first) return new Uint8Array(distinct * req.cols * 4);
  const acc =
    first.got.byteOffset % 4 === 0
      ? new Float32Array(first.got.buffer, first.got.byteOffset, first.got.byteLength / 4)
      : new Float32Array(first.got.slice().buffer);
  if (acc.length !== distinct * req.cols)
    throw new Error(`multi-device: device ${first.device} answered ${acc.length} sums, want ${distinct * req.cols}`);
  const each = rest.length > 0 ? Uint32Array.from({ length: distinct }, (_, i) => i) : undefined;
  for (const p of rest) {
    if (p.got.byteLength !== acc.byteLength)
      throw new Error(`multi-device: device ${p.device} answered ${p.got.byteLength / 4} sums, want ${acc.length}`);
    addRowsByToken(acc, p.got, DType.FLOAT32, each!, req.cols);
  }
  return new Uint8Array(acc.buffer, acc.byteOffset, acc.byteLength);
}

/**
 * The request a device runs for its share `g` of `req`: its rows (or, for a deduplicated batch, all the distinct
 * tokens and its rows' indices into them), its row weights.
 */
function subRequest(req: RunRequest, g: DeviceShare, rowBytes: number): RunRequest {
  const weights = req.rowWeights ? new Float32Array(g.rows) : undefined;
  let r = 0;
  for (const f of g.from) {
    weights?.set(req.rowWeights!.subarray(f.offset, f.offset + f.count), r);
    r += f.count;
  }
  const base = {
    dtype: req.dtype,
    rows: g.rows,
    cols: req.cols,
    slices: g.slices,
    ...(weights ? { rowWeights: weights } : {}),
  };
  const tokenRows = req.tokenRows;
  if (!tokenRows) {
    const tokens = new Uint8Array(g.rows * rowBytes);
    r = 0;
    for (const f of g.from) {
      tokens.set(req.tokens.subarray(f.offset * rowBytes, (f.offset + f.count) * rowBytes), r * rowBytes);
      r += f.count;
    }
    return { ...base, tokens };
  }
  // Every device gets all the distinct tokens as they came (a few hundred KB at DeepSeek-V3) and its rows' indices
  // into them: gathering each device's own tokens on the host cost the worker's event loop more than the copies up
  // save (bench/results/h200-moe.md, session of 2026-11-30 18:27 UTC), and the sums come back over the same distinct
  // tokens, zero where a device has no row, so they add as they are.
  const rowsHere = new Uint32Array(g.rows);
  r = 0;
  for (const f of g.from) {
    rowsHere.set(tokenRows.subarray(f.offset, f.offset + f.count), r);
    r += f.count;
  }
  return { ...base, tokens: req.tokens, tokenRows: rowsHere, ...(req.sumByToken ? { sumByToken: true } : {}) };
}
