import { DType, valuesToBytes } from "@switchyard/protocol";
import { describe, expect, it } from "vitest";
import { randomExpert, rng, uniform } from "../testing.js";
import { gatherRows, sumRowsByToken } from "../token-rows.js";
import {
  type CudaBackend,
  cudaDevices,
  loadCudaAddon,
  mergeBatches,
  probeCudaBackend,
  runsInFlight,
  slotCount,
} from "./cuda.js";
import { cudaParity } from "./cuda-parity.js";
import { MultiDeviceBackend } from "./multi-device.js";
import { ReferenceBackend } from "./reference.js";
import { MAX_ADDON_ROWS, runDeviceBytes } from "./run-rows.js";

describe("slotCount", () => {
  it("takes SWITCHYARD_GPU_CACHE_SLOTS, then SWITCHYARD_CACHE_CAPACITY, capped at 1024", () => {
    expect(slotCount({ SWITCHYARD_GPU_CACHE_SLOTS: "8", SWITCHYARD_CACHE_CAPACITY: "3" }, 1e12, 1e6)).toBe(8);
    expect(slotCount({ SWITCHYARD_CACHE_CAPACITY: "3" }, 1e12, 1e6)).toBe(3);
    expect(slotCount({ SWITCHYARD_CACHE_CAPACITY: "5000" }, 1e12, 1e6)).toBe(1024);
  });
  it("the worker's --cache-capacity comes after the GPU override and before the env capacity", () => {
    expect(slotCount({ SWITCHYARD_CACHE_CAPACITY: "3" }, 1e12, 1e6, 6)).toBe(6);
    expect(slotCount({ SWITCHYARD_GPU_CACHE_SLOTS: "8" }, 1e12, 1e6, 6)).toBe(8);
    expect(slotCount({}, 100e9, 352e6, 12)).toBe(12);
    expect(slotCount({}, 1e12, 1e6, 5000)).toBe(1024);
  });
  it("otherwise fits 80% of device memory", () => {
    expect(slotCount({}, 100e9, 352e6)).toBe(227);
    expect(slotCount({}, 1e6, 1e9)).toBe(1);
  });
  it("and what is free less 20% of it, where another process or worker has part of the GPU", () => {
    expect(slotCount({}, 100e9, 352e6, undefined, 100e9)).toBe(227); // all free: 80% as before
    expect(slotCount({}, 100e9, 352e6, undefined, 60e9)).toBe(113); // (60 - 20) GB
    expect(slotCount({}, 100e9, 352e6, undefined, 10e9)).toBe(1); // nothing to spare: one slot, refused loudly if not
    expect(slotCount({}, 100e9, 352e6, 12, 10e9)).toBe(12); // a size asked for is taken as asked
  });
  it("names the variable on bad input", () => {
    expect(() => slotCount({ SWITCHYARD_CACHE_CAPACITY: "x" }, 1e9, 1e6)).toThrow(/SWITCHYARD_CACHE_CAPACITY/);
  });
});

describe("runsInFlight", () => {
  it("defaults to 2, takes SWITCHYARD_CUDA_RUNS_IN_FLIGHT in [1, 3], and names the variable on bad input", () => {
    expect(runsInFlight({})).toBe(2);
    expect(runsInFlight({ SWITCHYARD_CUDA_RUNS_IN_FLIGHT: "1" })).toBe(1);
    expect(runsInFlight({ SWITCHYARD_CUDA_RUNS_IN_FLIGHT: "3" })).toBe(3);
    for (const bad of ["0", "4", "1.5", "two"])
      expect(() => runsInFlight({ SWITCHYARD_CUDA_RUNS_IN_FLIGHT: bad })).toThrow(/SWITCHYARD_CUDA_RUNS_IN_FLIGHT/);
  });
});

describe("mergeBatches", () => {
  it("is on by default, takes on or off, and names the variable otherwise", () => {
    expect(mergeBatches({})).toBe(true);
    expect(mergeBatches({ SWITCHYARD_CUDA_MERGE_BATCHES: "on" })).toBe(true);
    expect(mergeBatches({ SWITCHYARD_CUDA_MERGE_BATCHES: "off" })).toBe(false);
    expect(() => mergeBatches({ SWITCHYARD_CUDA_MERGE_BATCHES: "0" })).toThrow(/SWITCHYARD_CUDA_MERGE_BATCHES/);
  });
});

/** Relative L2 error of bf16 output `y` against the reference's `yr`. */
function relErrBf16(y: Uint8Array, yr: Uint8Array): number {
  const a16 = new Uint16Array(y.buffer, y.byteOffset, y.byteLength / 2);
  const b16 = new Uint16Array(yr.buffer, yr.byteOffset, yr.byteLength / 2);
  const f32 = (h: number) => new Float32Array(new Uint32Array([h << 16]).buffer)[0] as number;
  let num = 0;
  let den = 0;
  for (let i = 0; i < b16.length; i++) {
    const p = f32(a16[i] as number);
    const q = f32(b16[i] as number);
    num += (p - q) ** 2;
    den += q * q;
  }
  return Math.sqrt(num / den);
}

// GPU tests: need the built switchyard_cuda.node and an sm_90 GPU. On CPU-only machines (CI) they skip and say why.
const addon = loadCudaAddon();
const probe = "unavailable" in addon ? addon.unavailable : addon.probe();
const why = typeof probe === "string" ? probe : probe.ok ? "" : (probe.error ?? "no usable CUDA device");
if (why) console.log(`[cuda backend] GPU tests skipped: ${why}`);
// The tests below but the multi-device one take one device's backend, whatever the machine has.
process.env.SWITCHYARD_CUDA_DEVICES = "1";
const devices = typeof probe === "string" || !probe.ok ? 0 : (probe.devices ?? 1);
const whyMulti = why || (devices < 2 ? `${devices} visible device(s), the multi-device test needs 2` : "");
if (!why && whyMulti) console.log(`[cuda backend] multi-device GPU test skipped: ${whyMulti}`);

describe("cudaDevices", () => {
  it("is every visible device, or SWITCHYARD_CUDA_DEVICES of them, naming the variable on bad input", () => {
    expect(cudaDevices({}, 4)).toBe(4);
    expect(cudaDevices({}, 0)).toBe(1);
    expect(cudaDevices({ SWITCHYARD_CUDA_DEVICES: "1" }, 4)).toBe(1);
    for (const bad of ["0", "5", "1.5", "all"])
      expect(() => cudaDevices({ SWITCHYARD_CUDA_DEVICES: bad }, 4)).toThrow(/SWITCHYARD_CUDA_DEVICES/);
  });
});

describe("cuda backend", () => {
  it("probe reports unavailability with a reason instead of throwing", async () => {
    const b = await probeCudaBackend();
    if (why) expect(b).toEqual({ unavailable: expect.stringMatching(/\S/) });
    else expect("name" in b && b.name).toBe("cuda");
  });

  it.skipIf(!!why)(`matches the TypeScript reference on the GPU${why ? ` (skipped: ${why})` : ""}`, async () => {
    process.env.SWITCHYARD_GPU_CACHE_SLOTS = "5"; // fewer slots than the 8 experts: evictions and re-uploads
    const b = await probeCudaBackend();
    if ("unavailable" in b) throw new Error(b.unavailable);
    const r = await cudaParity(b);
    console.log(JSON.stringify(r));
    expect(r.ok).toBe(true);
  });

  it.skipIf(!!why)(
    `the worker's cache capacity sizes the GPU slots; prefetch uploads ahead, the run then hits${why ? ` (skipped: ${why})` : ""}`,
    async () => {
      delete process.env.SWITCHYARD_GPU_CACHE_SLOTS; // the explicit override would win over the capacity
      const b = (await probeCudaBackend()) as CudaBackend;
      b.setDeviceCacheCapacity(3);
      const events: string[] = [];
      b.addDeviceCacheSink((k) => events.push(k));
      const next = rng(Date.now() >>> 0);
      const d = 128;
      const f = 96;
      const weights = [0, 1, 2, 3].map(() => randomExpert(d, f, "bfloat16", next));
      const [e0, e1] = await Promise.all(weights.map((w) => b.prepare(w)));
      expect(b.deviceCacheStats()?.capacity).toBe(3);
      await b.prefetch([e0, e1] as never[]);
      expect(b.deviceCacheStats()).toMatchObject({ resident: 2, transferBytes: 2 * 3 * d * f * 2, misses: 0 });
      const rows = 10;
      const tokens = new Uint8Array(valuesToBytes(uniform(rows * d, 1, next), DType.BFLOAT16));
      const y = await b.run({
        dtype: DType.BFLOAT16,
        tokens,
        rows,
        cols: d,
        slices: [
          { expert: e0 as never, offset: 0, count: 4 },
          { expert: e1 as never, offset: 4, count: 6 },
        ],
      });
      expect(b.deviceCacheStats()).toMatchObject({ hits: 2, misses: 0 });
      expect(events.filter((k) => k === "transfer")).toHaveLength(2);
      const ref = new ReferenceBackend();
      const [r0, r1] = await Promise.all(weights.slice(0, 2).map((w) => ref.prepare(w)));
      const yr = await ref.run({
        dtype: DType.BFLOAT16,
        tokens,
        rows,
        cols: d,
        slices: [
          { expert: r0 as never, offset: 0, count: 4 },
          { expert: r1 as never, offset: 4, count: 6 },
        ],
      });
      expect(relErrBf16(y, yr)).toBeLessThan(1e-2);
    },
  );

  it.skipIf(!!why)(
    `a slot the host tier let go (discard) takes another expert, which then computes its own answers${why ? ` (skipped: ${why})` : ""}`,
    async () => {
      delete process.env.SWITCHYARD_GPU_CACHE_SLOTS;
      const b = (await probeCudaBackend()) as CudaBackend;
      b.setDeviceCacheCapacity(2);
      const next = rng(Date.now() >>> 0);
      const d = 128;
      const f = 96;
      const weights = [0, 1, 2].map(() => randomExpert(d, f, "bfloat16", next));
      const [e0, e1, e2] = await Promise.all(weights.map((w) => b.prepare(w)));
      const ref = new ReferenceBackend();
      const [r0, r1, r2] = await Promise.all(weights.map((w) => ref.prepare(w)));
      const rows = 12;
      const tokens = new Uint8Array(valuesToBytes(uniform(rows * d, 1, next), DType.BFLOAT16));
      // experts[i] on the GPU against refs[i] on the host, 6 rows each: the relative error
      const run = async (experts: unknown[], refs: unknown[]) => {
        const req = { dtype: DType.BFLOAT16, tokens, rows, cols: d };
        const slices = (xs: unknown[]) => xs.map((x, i) => ({ expert: x as never, offset: i * 6, count: 6 }));
        return relErrBf16(
          await b.run({ ...req, slices: slices(experts) }),
          await ref.run({ ...req, slices: slices(refs) }),
        );
      };
      expect(await run([e0, e1], [r0, r1])).toBeLessThan(1e-2);
      b.discard([e0]);
      expect(b.deviceCacheStats()).toMatchObject({ resident: 1, evictions: 1 });
      await b.prefetch([e2], { evict: false }); // only a free slot: e0's
      expect(b.deviceCacheStats()).toMatchObject({ resident: 2, evictions: 1 });
      expect(await run([e2, e1], [r2, r1])).toBeLessThan(1e-2);
      // e0 again (a batch that still held it): uploaded again, over e1's slot (e2 is pinned by this run), and let go
      // when the run releases it: the host tier has discarded it, so it must not hold a slot (5a72feb)
      expect(await run([e2, e0], [r2, r0])).toBeLessThan(1e-2);
      expect(b.deviceCacheStats()).toMatchObject({ resident: 1, evictions: 3 });
    },
  );
  it.skipIf(!!why)(
    `a deduplicated batch on the device: the same rows and, summed, the host's sums bit for bit${why ? ` (skipped: ${why})` : ""}`,
    async () => {
      delete process.env.SWITCHYARD_GPU_CACHE_SLOTS;
      const b = (await probeCudaBackend()) as CudaBackend;
      const next = rng(Date.now() >>> 0);
      const d = 128;
      const f = 96;
      const [e0, e1, e2] = await Promise.all([0, 1, 2].map(() => b.prepare(randomExpert(d, f, "bfloat16", next))));
      // 5 distinct tokens (token 4 is in no row), 11 rows; row 7 is in no slice (a zero row, which adds nothing)
      const tokenRows = new Uint32Array([0, 1, 2, 3, 0, 2, 3, 1, 0, 1, 3]);
      const rows = tokenRows.length;
      const u = 5;
      const slices = [
        { expert: e0 as never, offset: 0, count: 4 },
        { expert: e1 as never, offset: 4, count: 3 },
        { expert: e2 as never, offset: 8, count: 3 },
      ];
      const weights = uniform(rows, 1, next);
      for (const dtype of [DType.BFLOAT16, DType.FLOAT16, DType.FLOAT32]) {
        const tokens = new Uint8Array(valuesToBytes(uniform(u * d, 2, next), dtype));
        const expanded = gatherRows(tokens, tokenRows, tokens.byteLength / u);
        const base = { dtype, rows, cols: d, slices };
        const host = await b.run({ ...base, tokens: expanded, rowWeights: weights });
        const dev = await b.run({ ...base, tokens, tokenRows, rowWeights: weights });
        expect(Buffer.from(dev).equals(Buffer.from(host))).toBe(true);
        const unscaled = await b.run({ ...base, tokens: expanded });
        const want = sumRowsByToken(unscaled, dtype, tokenRows, u, d, weights);
        const got = await b.run({ ...base, tokens, tokenRows, rowWeights: weights, sumByToken: true });
        expect(got.byteLength).toBe(u * d * 4);
        const g = new Float32Array(got.buffer, got.byteOffset, u * d);
        expect(g.subarray(4 * d).every((v) => v === 0)).toBe(true); // the token in no row
        expect(g.some((v) => v !== 0)).toBe(true);
        expect(Buffer.from(got).equals(Buffer.from(want.buffer, want.byteOffset, want.byteLength))).toBe(true);
      }
    },
  );

  it.skipIf(!!why)(
    `runs in flight: batches handed over all at once give the bytes they give one at a time${why ? ` (skipped: ${why})` : ""}`,
    async () => {
      delete process.env.SWITCHYARD_GPU_CACHE_SLOTS;
      const b = (await probeCudaBackend()) as CudaBackend;
      expect(b.runsInFlight).toBe(2);
      const next = rng(Date.now() >>> 0);
      const d = 128;
      const f = 96;
      const experts = await Promise.all([0, 1, 2, 3].map(() => b.prepare(randomExpert(d, f, "bfloat16", next))));
      // 12 batches of 1 to 300 rows over the 4 experts, every other one deduplicated and summed on the device: more
      // than the addon's two sets of run buffers, so runs also wait for a set
      const batches = Array.from({ length: 12 }, (_, i) => {
        const rows = [1, 7, 64, 300, 129, 33][i % 6] as number;
        const cut = Math.floor(rows / 2);
        const slices = [
          { expert: experts[i % 4] as never, offset: 0, count: cut },
          { expert: experts[(i + 1) % 4] as never, offset: cut, count: rows - cut },
        ];
        const u = Math.max(1, Math.floor(rows / 3));
        const dedup = i % 2 === 1;
        const tokenRows = dedup ? Uint32Array.from({ length: rows }, (_, r) => (r * 7) % u) : undefined;
        const tokens = new Uint8Array(valuesToBytes(uniform((dedup ? u : rows) * d, 2, next), DType.BFLOAT16));
        return {
          dtype: DType.BFLOAT16,
          rows,
          cols: d,
          slices,
          tokens,
          tokenRows,
          rowWeights: uniform(rows, 1, next),
          sumByToken: dedup,
        };
      });
      const oneAtATime: Uint8Array[] = [];
      for (const req of batches) oneAtATime.push(await b.run(req));
      const together = await Promise.all(batches.map((req) => b.run(req)));
      for (let i = 0; i < batches.length; i++)
        expect(
          Buffer.from(together[i] as Uint8Array).equals(Buffer.from(oneAtATime[i] as Uint8Array)),
          `batch ${i}`,
        ).toBe(true);
    },
  );

  it.skipIf(!!why)(
    `device time: each run reports the GPU's milliseconds, > 0 and at most its wall time, two runs in flight${why ? ` (skipped: ${why})` : ""}`,
    async () => {
      delete process.env.SWITCHYARD_GPU_CACHE_SLOTS;
      const b = (await probeCudaBackend()) as CudaBackend;
      expect(b.runsInFlight).toBe(2);
      const next = rng(Date.now() >>> 0);
      const d = 1024;
      const f = 768;
      const experts = await Promise.all([0, 1, 2, 3].map(() => b.prepare(randomExpert(d, f, "bfloat16", next))));
      await b.prefetch(experts); // on the device before the runs: they time copies and kernels, not uploads
      const rows = 512;
      const request = (i: number) => ({
        dtype: DType.BFLOAT16,
        rows,
        cols: d,
        slices: [
          { expert: experts[i % 4] as never, offset: 0, count: rows / 2 },
          { expert: experts[(i + 1) % 4] as never, offset: rows / 2, count: rows / 2 },
        ],
        tokens: new Uint8Array(valuesToBytes(uniform(rows * d, 2, next), DType.BFLOAT16)),
        rowWeights: uniform(rows, 1, next),
      });
      // the wall clock around run() alone (the tokens are made before it starts)
      const timed = async (req: ReturnType<typeof request>) => {
        const seen: number[] = [];
        const t0 = performance.now();
        await b.run({ ...req, onDeviceTime: (ms) => seen.push(ms) });
        return { wallMs: performance.now() - t0, seen };
      };
      // first use of the kernels and of both sets of run buffers (their first allocation falls inside the timing)
      await Promise.all([timed(request(0)), timed(request(1))]);
      // pairs handed over together: the second of each is queued on the compute stream behind the first
      for (let k = 0; k < 4; k++) {
        const reqs = [request(2 * k), request(2 * k + 1)] as const;
        const t0 = performance.now();
        const pair = await Promise.all([timed(reqs[0]), timed(reqs[1])]);
        const pairWallMs = performance.now() - t0;
        console.log(
          `[cuda device time] pair ${k}: ${pair.map((r) => `device ${r.seen[0]?.toFixed(3)} ms / wall ${r.wallMs.toFixed(3)} ms`).join(", ")}; pair wall ${pairWallMs.toFixed(3)} ms`,
        );
        for (const r of pair) {
          expect(r.seen).toHaveLength(1);
          expect(r.seen[0]).toBeGreaterThan(0);
          expect(r.seen[0]).toBeLessThanOrEqual(r.wallMs);
        }
        // one stream runs them one after the other: neither counts the other's time, so together they fit in the
        // pair's wall time (a start event recorded before the other run's work would count it twice)
        expect((pair[0]?.seen[0] as number) + (pair[1]?.seen[0] as number)).toBeLessThanOrEqual(pairWallMs);
      }
    },
  );

  it.skipIf(!!why)(
    `a batch over the row limit (SWITCHYARD_GPU_MAX_ROWS) runs in parts and answers one run's bytes${why ? ` (skipped: ${why})` : ""}`,
    async () => {
      delete process.env.SWITCHYARD_GPU_CACHE_SLOTS;
      const whole = (await probeCudaBackend()) as CudaBackend;
      process.env.SWITCHYARD_GPU_MAX_ROWS = "37";
      let cut: CudaBackend;
      try {
        cut = (await probeCudaBackend()) as CudaBackend;
      } finally {
        delete process.env.SWITCHYARD_GPU_MAX_ROWS;
      }
      const next = rng(Date.now() >>> 0);
      // f < 4096: sy_moe never splits GEMM2's K here, which it decides from a run's rows (see the README), so each
      // row's bits are the same in a part as in the whole run
      const d = 256;
      const f = 384;
      const weights = [0, 1, 2, 3].map(() => randomExpert(d, f, "bfloat16", next));
      const e1 = await Promise.all(weights.map((w) => whole.prepare(w)));
      const e2 = await Promise.all(weights.map((w) => cut.prepare(w)));
      expect(cut.maxRunRows()).toBe(37);
      const rows = 300;
      const counts = [90, 1, 150, 50]; // 291 rows in slices, 9 in none
      const slices = (es: unknown[]) => {
        let at = 0;
        return counts.map((count, i) => {
          const s = { expert: es[i] as never, offset: at, count };
          at += count + (i === 1 ? 9 : 0);
          return s;
        });
      };
      const rowWeights = uniform(rows, 1, next);
      const u = 30;
      const tokenRows = Uint32Array.from({ length: rows }, (_, r) => (r * 7) % u);
      const many = 64; // more distinct tokens than a run holds: gathered on the host
      const manyRows = Uint32Array.from({ length: rows }, (_, r) => (r * 11) % many);
      for (const dtype of [DType.BFLOAT16, DType.FLOAT16, DType.FLOAT32]) {
        const plain = new Uint8Array(valuesToBytes(uniform(rows * d, 2, next), dtype));
        const distinct = new Uint8Array(valuesToBytes(uniform(u * d, 2, next), dtype));
        const wide = new Uint8Array(valuesToBytes(uniform(many * d, 2, next), dtype));
        const cases = {
          weighted: { tokens: plain, rowWeights },
          deduplicated: { tokens: distinct, tokenRows, rowWeights },
          summed: { tokens: distinct, tokenRows, rowWeights, sumByToken: true },
          "summed, 64 tokens": { tokens: wide, tokenRows: manyRows, rowWeights, sumByToken: true },
        };
        for (const [name, c] of Object.entries(cases)) {
          const base = { dtype, rows, cols: d, ...c };
          const want = await whole.run({ ...base, slices: slices(e1) });
          const got = await cut.run({ ...base, slices: slices(e2) });
          expect(Buffer.from(got).equals(Buffer.from(want)), `${name}, dtype ${dtype}`).toBe(true);
        }
      }
    },
  );

  it.skipIf(!!why)(
    `the row limit comes from the free memory the device reports, and a run's buffers take what it assumed per row${why ? ` (skipped: ${why})` : ""}`,
    async () => {
      delete process.env.SWITCHYARD_GPU_CACHE_SLOTS;
      process.env.SWITCHYARD_CUDA_RUNS_IN_FLIGHT = "1"; // one set of run buffers: the one the runs below grow
      let b: CudaBackend;
      try {
        b = (await probeCudaBackend()) as CudaBackend;
      } finally {
        delete process.env.SWITCHYARD_CUDA_RUNS_IN_FLIGHT;
      }
      const lines: string[] = [];
      b.setLog((l) => lines.push(l));
      b.setDeviceCacheCapacity(4);
      const next = rng(Date.now() >>> 0);
      const d = 1024;
      const f = 768;
      const experts = await Promise.all([0, 1].map(() => b.prepare(randomExpert(d, f, "bfloat16", next))));
      console.log(`[cuda row limit] ${lines.join(" | ")}`);
      expect(lines[0]).toMatch(
        /^GPU runs on CUDA device 0: at most \d+ rows each \([\d.]+ GiB free after the expert slots/,
      );
      const limit = b.maxRunRows() as number;
      expect(limit).toBeGreaterThan(100_000); // GiBs free at d = 1024: far more rows than any batch here
      expect(limit).toBeLessThanOrEqual(MAX_ADDON_ROWS);
      const addon = loadCudaAddon() as Exclude<ReturnType<typeof loadCudaAddon>, { unavailable: string }>;
      const ctx = (b as unknown as { ctx: object }).ctx;
      const mem = (addon.memInfo as NonNullable<typeof addon.memInfo>)(ctx);
      expect(mem.free).toBeLessThan(mem.total);
      // deduplicated and summed on the device, a token per row: every buffer at its largest (runDeviceBytes)
      const run = (rows: number) => {
        const tokens = new Uint8Array(valuesToBytes(uniform(rows * d, 1, next), DType.BFLOAT16));
        return b.run({
          dtype: DType.BFLOAT16,
          tokens,
          rows,
          cols: d,
          tokenRows: Uint32Array.from({ length: rows }, (_, r) => r),
          sumByToken: true,
          slices: [
            { expert: experts[0] as never, offset: 0, count: rows >> 1 },
            { expert: experts[1] as never, offset: rows >> 1, count: rows - (rows >> 1) },
          ],
        });
      };
      // What the run's buffers hold afterwards, as the addon sized them (not cudaMemGetInfo: other test files' GPU
      // processes allocate and free beside this one), against the bound: at most it, and less only by the cudaMalloc
      // rounding (10 MiB) and the alignment slack the bound adds for safety (as run-rows.test.ts checks on the CPU)
      const { perRow, fixed } = runDeviceBytes(d, f, 4);
      for (const rows of [2, 16_384, 100_000]) {
        await run(rows);
        const held = addon.stats(ctx).runBufferBytes as number;
        const bound = fixed + rows * perRow;
        console.log(`[cuda row limit] ${rows} rows: run buffers ${held} bytes; bound ${bound}`);
        expect(held).toBeLessThanOrEqual(bound);
        expect(held).toBeGreaterThanOrEqual(bound - 10 * 2 ** 20 - (15 * 256 + 32 + 16 * Math.max(0, 4 - rows)));
      }
    },
  );

  it.skipIf(!!whyMulti)(
    `a worker's experts split over two GPUs answer as the reference${whyMulti ? ` (skipped: ${whyMulti})` : ""}`,
    async () => {
      process.env.SWITCHYARD_CUDA_DEVICES = "2";
      delete process.env.SWITCHYARD_GPU_CACHE_SLOTS;
      try {
        const b = await probeCudaBackend();
        expect(b).toBeInstanceOf(MultiDeviceBackend);
        const m = b as MultiDeviceBackend;
        m.setDeviceCacheCapacity(6);
        const next = rng(Date.now() >>> 0);
        const d = 256;
        const f = 128;
        const weights = [0, 1, 2, 3, 4, 5].map(() => randomExpert(d, f, "bfloat16", next));
        const ps = await Promise.all(weights.map((w) => m.prepare(w)));
        const ref = new ReferenceBackend();
        const rs = await Promise.all(weights.map((w) => ref.prepare(w)));
        const counts = [5, 1, 17, 0, 9, 3];
        const rows = counts.reduce((a, c) => a + c, 0);
        const tokens = new Uint8Array(valuesToBytes(uniform(rows * d, 1, next), DType.BFLOAT16));
        const rowWeights = uniform(rows, 1, next);
        const slices = (es: unknown[]) => {
          let at = 0;
          return [4, 0, 2, 5, 1, 3].map((e, i) => {
            const s = { expert: es[e] as never, offset: at, count: counts[i] };
            at += counts[i];
            return s;
          });
        };
        const base = { dtype: DType.BFLOAT16, tokens, rows, cols: d, rowWeights };
        let deviceMs = 0;
        const y = await m.run({ ...base, slices: slices(ps), onDeviceTime: (ms) => (deviceMs = ms) });
        const yr = await ref.run({ ...base, slices: slices(rs) });
        expect(relErrBf16(y, yr)).toBeLessThan(1e-2);
        expect(deviceMs).toBeGreaterThan(0);
        // a deduplicated batch (the router's distinct tokens): each GPU gathers its tokens and sums its rows
        const distinct = 7;
        const tokenRows = Uint32Array.from({ length: rows }, (_, i) => (i * 5) % distinct);
        const uniq = new Uint8Array(valuesToBytes(uniform(distinct * d, 1, next), DType.BFLOAT16));
        const dedup = { dtype: DType.BFLOAT16, tokens: uniq, rows, cols: d, rowWeights, tokenRows, sumByToken: true };
        const ys = await m.run({ ...dedup, slices: slices(ps) });
        const rowsRef = await ref.run({
          dtype: DType.BFLOAT16,
          tokens: gatherRows(uniq, tokenRows, d * 2),
          rows,
          cols: d,
          slices: slices(rs),
        });
        const want = sumRowsByToken(rowsRef, DType.BFLOAT16, tokenRows, distinct, d, rowWeights);
        const got = new Float32Array(ys.buffer, ys.byteOffset, ys.byteLength / 4);
        let num = 0;
        let den = 0;
        for (let i = 0; i < want.length; i++) {
          num += (got[i] - want[i]) ** 2;
          den += want[i] ** 2;
        }
        expect(Math.sqrt(num / den)).toBeLessThan(1e-2);
        // both devices ran, each with its half of the experts in its slots; expert 5 (device 1, placed in turn) had
        // no rows in either run, so it was never uploaded (an empty slice pins nothing)
        const per = m.devices.map((x) => x.deviceCacheStats?.());
        expect(per.map((s) => s?.capacity)).toEqual([3, 3]);
        expect(per.map((s) => s?.resident)).toEqual([3, 2]);
        expect(m.deviceCacheStats()).toMatchObject({ capacity: 6, resident: 5 });
        expect(m.describe()).toMatch(/2 devices.*device 0.*device 1/);
      } finally {
        process.env.SWITCHYARD_CUDA_DEVICES = "1";
      }
    },
  );
});
