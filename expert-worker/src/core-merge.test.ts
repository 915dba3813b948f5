// Queued batches of a layer merged into one backend run (backends with mergesBatches, the CUDA one): every batch
// gets the bytes it gets when it runs alone, in each kind of batch (plain rows with and without row weights,
// deduplicated rows, deduplicated rows summed per token), and batches of other layers or kinds never share a run.
// The backend here is the TypeScript reference behind a device-like front: it takes token rows and sums itself, as
// the CUDA backend does on its GPU.

import {
  bytesToFloat32,
  DType,
  dtypeSize,
  type ExpertBatch,
  type ExpertResult,
  encodeTensor,
} from "@switchyard/protocol";
import { describe, expect, it } from "vitest";
import { probeCudaBackend } from "./backend/cuda.js";
import { ReferenceBackend } from "./backend/reference.js";
import type { ExpertBackend, RunRequest } from "./backend/types.js";
import { ResidencyCache } from "./cache.js";
import { type ExpertSource, WorkerCore } from "./core.js";
import { WorkerMetrics } from "./metrics.js";
import { WorkQueue } from "./queue.js";
import { randomExpert, rng, uniform } from "./testing.js";
import { gatherRows, sumRowsByToken } from "./token-rows.js";

const D = 16;
const F = 24;
const E = 4;

/** The reference behind a device-like front; hold() keeps every run waiting until open() (batches queue meanwhile). */
class DeviceLike implements ExpertBackend {
  readonly name = "cuda" as const;
  readonly kind = "cuda" as const;
  readonly takesTokenRows = true;
  readonly runsInFlight = 1;
  readonly ref = new ReferenceBackend();
  /** Rows of each run, in order. */
  readonly runs: number[] = [];
  private gate: Promise<void> = Promise.resolve();
  private openGate: () => void = () => {};
  constructor(
    readonly mergesBatches: boolean,
    /** Device expert slots, as the CUDA backend reports them (undefined: no device tier). */
    readonly slots?: number,
  ) {}
  deviceCacheStats = () =>
    this.slots === undefined
      ? undefined
      : { hits: 0, misses: 0, evictions: 0, transferBytes: 0, resident: 0, capacity: this.slots };
  describe = () => "device-like reference";
  prepare = (w: Parameters<ExpertBackend["prepare"]>[0]) => this.ref.prepare(w);
  hold(): void {
    this.gate = new Promise((r) => {
      this.openGate = r;
    });
  }
  open(): void {
    this.openGate();
  }
  async run(req: RunRequest): Promise<Uint8Array> {
    this.runs.push(req.rows);
    await this.gate;
    const rowBytes = req.cols * dtypeSize(req.dtype);
    const tokens = req.tokenRows ? gatherRows(req.tokens, req.tokenRows, rowBytes) : req.tokens;
    const rows = await this.ref.run({
      ...req,
      tokens,
      tokenRows: undefined,
      sumByToken: undefined,
      rowWeights: req.sumByToken ? undefined : req.rowWeights,
    });
    if (!req.sumByToken) return rows;
    const sums = sumRowsByToken(
      rows,
      req.dtype,
      req.tokenRows!,
      req.tokens.byteLength / rowBytes,
      req.cols,
      req.rowWeights,
    );
    return new Uint8Array(sums.buffer, sums.byteOffset, sums.byteLength);
  }
}

function coreOver(
  backend: ExpertBackend,
  d = D,
  f = F,
  weights: "float32" | "bfloat16" = "float32",
  maxRows?: number,
  /** Experts whose checkpoint read fails (a damaged checkpoint). */
  unreadable: readonly number[] = [],
) {
  const source: ExpertSource = {
    layers: 2,
    experts: E,
    hiddenSize: d,
    intermediateSize: f,
    isMoeLayer: () => true,
    // the same weights for a (layer, expert) in every core of the test
    readExpert: async (layer, expert) => {
      if (unreadable.includes(expert)) throw new Error(`layer ${layer} expert ${expert}: checkpoint read failed`);
      return randomExpert(d, f, weights, rng(100 + 10 * layer + expert));
    },
  };
  const metrics = new WorkerMetrics({ pool: "p", worker: "w" });
  const cache = new ResidencyCache({
    capacity: 2 * E,
    load: async (id) => ({
      prepared: await backend.prepare(await source.readExpert(id.layer, id.expert)),
      sourceBytes: 1,
    }),
  });
  const core = new WorkerCore({
    pool: "p",
    workerId: "w",
    source,
    backend,
    cache,
    queue: new WorkQueue(16, 1),
    metrics,
    maxRows,
  });
  return { core, metrics };
}

/** A batch of `rows` rows over the experts in turn; deduplicated over `distinct` tokens when given. */
function batch(
  id: number,
  o: { layer?: number; rows: number; dtype?: DType; weights?: boolean; distinct?: number; combine?: boolean },
  d = D,
): ExpertBatch {
  const next = rng(id);
  const dtype = o.dtype ?? DType.BFLOAT16;
  const n = o.distinct ?? o.rows;
  const per = Math.ceil(o.rows / E);
  const slices = [];
  for (let e = 0, off = 0; off < o.rows; e++, off += per)
    slices.push({ expert: e, offset: off, count: Math.min(per, o.rows - off) });
  return {
    pool: "p",
    layer: o.layer ?? 0,
    tokens: encodeTensor(uniform(n * d, 1, next), [n, d], dtype),
    slices,
    rowWeights: o.weights ? encodeTensor(uniform(o.rows, 1, next), [o.rows], DType.FLOAT32) : undefined,
    batchId: BigInt(id),
    timeoutMs: 0,
    tokenRows: o.distinct ? Array.from({ length: o.rows }, (_, r) => (r * 7 + id) % n) : [],
    combine: o.combine ?? false,
    cancel: [],
  };
}

const BATCHES = [
  batch(1, { rows: 9, weights: true }),
  batch(2, { rows: 5 }),
  batch(3, { rows: 7, weights: true, layer: 1 }),
  batch(4, { rows: 6, weights: true }),
  batch(5, { rows: 10, distinct: 4, weights: true, combine: true }),
  batch(6, { rows: 8, distinct: 3, combine: true }),
  batch(7, { rows: 6, distinct: 5, weights: true }),
  batch(8, { rows: 4, distinct: 2 }),
  batch(9, { rows: 3, dtype: DType.FLOAT32 }),
  batch(10, { rows: 12, distinct: 6, weights: true, combine: true }),
];

const answer = (r: ExpertResult) => ({
  shape: r.output?.shape,
  dtype: r.output?.dtype,
  data: [...(r.output?.data ?? [])],
});

describe("WorkerCore: queued batches of a layer share a backend run", () => {
  it("answers each batch as it runs alone, in one run per layer and kind", async () => {
    const alone = new DeviceLike(false);
    const { core: plain } = coreOver(alone);
    const want = [];
    for (const b of BATCHES) want.push(answer(await plain.runBatch(b)));
    expect(alone.runs.length).toBe(BATCHES.length);

    const merging = new DeviceLike(true);
    const { core, metrics } = coreOver(merging);
    merging.hold();
    // the first batch takes the only run slot; the rest queue behind it
    const results = BATCHES.map((b) => core.runBatch(b));
    await new Promise((r) => setTimeout(r, 10));
    merging.open();
    const got = (await Promise.all(results)).map(answer);
    for (let i = 0; i < BATCHES.length; i++) expect(got[i], `batch ${i + 1}`).toEqual(want[i]);
    // batch 1 alone; then layer 0's plain bf16 rows (2, 4), layer 1 (3), the summed ones (5, 6, 10), the
    // deduplicated ones (7, 8) and the fp32 one (9): six runs where there were ten
    expect(merging.runs).toEqual([9, 5 + 6, 7, 10 + 8 + 12, 6 + 4, 3]);
    expect(await metrics.registry.getSingleMetricAsString("switchyard_worker_merged_batches_total")).toMatch(
      /merged_batches_total\{pool="p",worker="w"\} 7$/m,
    );
  });

  it("reports the rows it holds, waiting or running (the router's load signal), and none once answered", async () => {
    const merging = new DeviceLike(true);
    const { core, metrics } = coreOver(merging);
    const rows = async () =>
      Number(
        /queued_rows\{pool="p",worker="w"\} (\d+)$/m.exec(
          await metrics.registry.getSingleMetricAsString("switchyard_worker_queued_rows"),
        )?.[1],
      );
    merging.hold();
    const results = BATCHES.slice(0, 3).map((b) => core.runBatch(b));
    await new Promise((r) => setTimeout(r, 10));
    expect(await rows()).toBe(9 + 5 + 7);
    merging.open();
    await Promise.all(results);
    expect(await rows()).toBe(0);
  });

  it("never merges past the worker's row limit (--max-rows)", async () => {
    for (const [limit, runs] of [
      [11, [9, 5 + 6]],
      [10, [9, 5, 6]],
    ] as const) {
      const merging = new DeviceLike(true);
      const { core } = coreOver(merging, D, F, "float32", limit);
      merging.hold();
      const done = [9, 5, 6].map((rows, i) => core.runBatch(batch(30 + i, { rows })));
      await new Promise((r) => setTimeout(r, 10));
      merging.open();
      await Promise.all(done);
      expect(merging.runs).toEqual(runs);
    }
  });

  it("never merges past the rows the backend runs at once (the CUDA backend's maxRunRows)", async () => {
    const merging = new DeviceLike(true);
    const limited = Object.assign(merging, { maxRunRows: () => 11 });
    const { core } = coreOver(limited);
    merging.hold();
    const done = [9, 5, 6, 4].map((rows, i) => core.runBatch(batch(40 + i, { rows })));
    await new Promise((r) => setTimeout(r, 10));
    merging.open();
    await Promise.all(done);
    // as with --max-rows 11: no run that the backend would cut into parts again
    expect(merging.runs).toEqual([9, 5 + 6, 4]);
  });

  it("runs no more batches together than the device's expert slots hold at once", async () => {
    // batches over all 4 experts of layer 0 or over experts 0-1 only: a run holds them together while the slots
    // hold the union of their experts
    const few = (id: number, rows: number, experts: number) => {
      const b = batch(id, { rows });
      b.slices = b.slices.filter((s) => s.expert < experts);
      return b;
    };
    for (const [slots, runs] of [
      [undefined, [4, 2 + 3 + 4]],
      [4, [4, 2 + 3 + 4]],
      [3, [4, 2 + 3, 4]],
    ] as const) {
      const merging = new DeviceLike(true, slots);
      const { core } = coreOver(merging);
      merging.hold();
      const list = [few(40, 4, 4), few(41, 2, 2), few(42, 3, 2), few(43, 4, 4)];
      const done = list.map((b) => core.runBatch(b));
      await new Promise((r) => setTimeout(r, 10));
      merging.open();
      const got = (await Promise.all(done)).map(answer);
      expect(merging.runs, `slots ${slots}`).toEqual(runs);
      const alone = new DeviceLike(false);
      const { core: plain } = coreOver(alone);
      for (let i = 0; i < list.length; i++) expect(got[i]).toEqual(answer(await plain.runBatch(list[i])));
    }
  });

  it("fails only the batches that need an expert that cannot be loaded, not those merged with them", async () => {
    const merging = new DeviceLike(true);
    const { core } = coreOver(merging, D, F, "float32", undefined, [3]);
    const over = (id: number, experts: number[]) => {
      const b = batch(id, { rows: 4 });
      b.slices = experts.map((expert, i) => ({ expert, offset: i, count: 1 }));
      return b;
    };
    merging.hold();
    const first = core.runBatch(over(50, [0]));
    const broken = core.runBatch(over(51, [0, 3]));
    const fine = core.runBatch(over(52, [1, 2]));
    await new Promise((r) => setTimeout(r, 10));
    merging.open();
    await first;
    await expect(broken).rejects.toThrow("expert 3: checkpoint read failed");
    const alone = new DeviceLike(false);
    expect(answer(await fine)).toEqual(answer(await coreOver(alone).core.runBatch(over(52, [1, 2]))));
  });

  it("fails only a batch that needs more experts than the device's slots, not those merged with it", async () => {
    // every GPU slot pinned at once still cannot hold batch 61's four experts: it fails alone (the CUDA backend
    // refuses it), and so must not take batch 62 down with it
    class Slotted extends DeviceLike {
      override async run(req: RunRequest): Promise<Uint8Array> {
        const n = new Set(req.slices.map((s) => s.expert)).size;
        if (n > 2) throw new Error(`GPU expert cache: a batch needs ${n} experts but the cache has 2 slots`);
        return super.run(req);
      }
    }
    const merging = new Slotted(true, 2);
    const { core } = coreOver(merging);
    merging.hold();
    const first = core.runBatch(batch(60, { rows: 2 }));
    const big = core.runBatch(batch(61, { rows: 4 }));
    const small = core.runBatch(batch(62, { rows: 2 }));
    await new Promise((r) => setTimeout(r, 10));
    merging.open();
    await first;
    await expect(big).rejects.toThrow("needs 4 experts");
    const alone = new DeviceLike(false);
    expect(answer(await small)).toEqual(answer(await coreOver(alone).core.runBatch(batch(62, { rows: 2 }))));
  });

  it("answers a merged batch whose caller gave up at once, and the others as they run alone", async () => {
    const merging = new DeviceLike(true);
    const { core } = coreOver(merging);
    merging.hold();
    const first = core.runBatch(batch(1, { rows: 2 }));
    const ac = new AbortController();
    const gone = core.runBatch(batch(2, { rows: 3 }), ac.signal);
    const kept = core.runBatch(batch(3, { rows: 4 }));
    await new Promise((r) => setTimeout(r, 10));
    merging.open();
    await first;
    // batches 2 and 3 run as one; 2's caller leaves while it runs
    merging.hold();
    await new Promise((r) => setTimeout(r, 10));
    expect(merging.runs).toEqual([2, 7]);
    ac.abort();
    await expect(gone).rejects.toMatchObject({ code: "CANCELLED" });
    merging.open();
    const alone = new DeviceLike(false);
    const want = answer(await coreOver(alone).core.runBatch(batch(3, { rows: 4 })));
    expect(answer(await kept)).toEqual(want);
  });
});

// The same on the GPU: the CUDA backend as the worker runs it (two runs in flight, merging on), every batch of the
// list at once so that those behind the first two merge, against each batch run alone on the same worker. The
// kernels may tile a merged run differently, so this compares within bf16 rounding, not bit for bit.
const cuda = await probeCudaBackend();
const noGpu = "unavailable" in cuda ? cuda.unavailable : "";
if (noGpu) console.log(`[core-merge] GPU test skipped: ${noGpu}`);

describe.skipIf(!!noGpu)(`merged runs on the CUDA backend${noGpu ? ` (skipped: ${noGpu})` : ""}`, () => {
  it("answers each merged batch as it answers it alone, within bf16 rounding", async () => {
    const backend = cuda as ExpertBackend;
    expect(backend.mergesBatches).toBe(true);
    const d = 128;
    const { core, metrics } = coreOver(backend, d, 96, "bfloat16");
    const list = [
      batch(11, { rows: 40, weights: true }, d),
      batch(12, { rows: 33 }, d),
      batch(13, { rows: 50, weights: true }, d),
      batch(14, { rows: 64, distinct: 20, weights: true, combine: true }, d),
      batch(15, { rows: 45, distinct: 17, combine: true }, d),
      batch(16, { rows: 30, distinct: 11, weights: true }, d),
      batch(17, { rows: 27, weights: true }, d),
      batch(18, { rows: 70, distinct: 25, weights: true, combine: true }, d),
      batch(19, { rows: 21, distinct: 9 }, d),
      batch(20, { rows: 36, weights: true }, d),
    ];
    const alone: ExpertResult[] = [];
    for (const b of list) alone.push(await core.runBatch(b));
    const merged = await Promise.all(list.map((b) => core.runBatch(b)));
    const count = await metrics.registry.getSingleMetricAsString("switchyard_worker_merged_batches_total");
    const n = Number(/merged_batches_total\{[^}]*\} (\d+)/.exec(count)?.[1]);
    console.log(`[core-merge] GPU: ${n} of ${list.length} batches shared a run`);
    expect(n).toBeGreaterThan(0);
    list.forEach((_, i) => {
      const a = alone[i].output!;
      const m = merged[i].output!;
      expect(m.shape).toEqual(a.shape);
      expect(m.dtype).toBe(a.dtype);
      const x = bytesToFloat32(a.data, a.dtype, true);
      const y = bytesToFloat32(m.data, m.dtype, true);
      let num = 0;
      let den = 0;
      for (let j = 0; j < x.length; j++) {
        num += (x[j] - y[j]) ** 2;
        den += x[j] ** 2;
      }
      expect(den).toBeGreaterThan(0);
      expect(Math.sqrt(num / den), `batch ${i}`).toBeLessThan(1e-2);
    });
    await backend.close?.();
  });
});
