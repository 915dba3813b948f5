// CudaBackend's host-side logic with a fake addon (no GPU): slot assignment per slice, rows outside slices,
// GPU-cache bookkeeping across batches, shape checks, release of pins when a run fails.
import { DType } from "@switchyard/protocol";
import { describe, expect, it } from "vitest";
import { randomExpert, rng, uniform } from "../testing.js";
import { sumRowsByToken } from "../token-rows.js";
import { type CudaAddon, CudaBackend, type CudaProbeInfo } from "./cuda.js";
import { MAX_ADDON_ROWS, runRowLimit } from "./run-rows.js";

const INFO: CudaProbeInfo = { ok: true, name: "fake", sms: 1, totalMem: 1e9, cc: "9.0" };

/** An addon rejection as the real addon makes one: an Error with the failure's code. */
const coded = (message: string, code: string) => Object.assign(new Error(message), { code });

function fakeAddon(opts: { failRun?: boolean | Error; failUpload?: Error; deviceMs?: number } = {}) {
  const calls = { uploads: [] as number[], runs: [] as Int32Array[], contexts: [] as object[], sums: [] as boolean[] };
  const addon: CudaAddon = {
    probe: () => INFO,
    createContext: (o) => {
      calls.contexts.push(o);
      return { ctx: true };
    },
    upload: async (_ctx, slot) => {
      calls.uploads.push(slot);
      if (opts.failUpload) throw opts.failUpload;
      return 1000;
    },
    run: async (_ctx, o) => {
      calls.runs.push(o.rowSlots.slice());
      calls.sums.push(o.sumByToken === true);
      if (opts.failRun instanceof Error) throw opts.failRun;
      if (opts.failRun) throw new Error("kernel failed");
      // output row r = slot + 1 in every column (fp32), so the test can read the mapping back
      const out = new Float32Array(o.rows * o.cols);
      for (let r = 0; r < o.rows; r++) out.fill((o.rowSlots[r] as number) + 1, r * o.cols, (r + 1) * o.cols);
      const bytes = new Uint8Array(out.buffer);
      // as the addon attaches its event timing: a non-enumerable own property of the result
      if (opts.deviceMs !== undefined) Object.defineProperty(bytes, "deviceMs", { value: opts.deviceMs });
      return bytes;
    },
    stats: () => ({ runs: 0, uploads: 0, uploadBytes: 0, deviceBytes: 0, slots: 0 }),
  };
  return { addon, calls };
}

describe("CudaBackend (fake addon)", () => {
  const next = rng(7);
  const d = 16;
  const f = 24;

  it("maps slices to device slots, leaves other rows at -1, and counts cache traffic", async () => {
    const { addon, calls } = fakeAddon();
    const events: string[] = [];
    const b = new CudaBackend(addon, INFO, { SWITCHYARD_GPU_CACHE_SLOTS: "2" }, (k) => events.push(k));
    const [e0, e1, e2] = await Promise.all([0, 1, 2].map(() => b.prepare(randomExpert(d, f, "bfloat16", next))));
    expect(calls.contexts).toEqual([{ d, f, slots: 2, device: 0, runsInFlight: 2 }]);
    const tokens = new Uint8Array(6 * d * 4);
    const out = new Float32Array(
      (
        await b.run({
          dtype: DType.FLOAT32,
          tokens,
          rows: 6,
          cols: d,
          slices: [
            { expert: e0 as never, offset: 0, count: 2 },
            { expert: e1 as never, offset: 3, count: 2 },
          ],
        })
      ).buffer,
    );
    const rowSlots = calls.runs[0] as Int32Array;
    expect([...rowSlots.slice(0, 2)]).toEqual([rowSlots[0], rowSlots[0]]);
    expect(rowSlots[2]).toBe(-1);
    expect(rowSlots[5]).toBe(-1);
    expect(rowSlots[3]).not.toBe(rowSlots[0]);
    expect(out[2 * d]).toBe(0); // slot -1 -> the fake writes 0 for rows outside every slice
    // a third expert evicts the least recently used one (e0)
    await b.run({
      dtype: DType.FLOAT32,
      tokens,
      rows: 6,
      cols: d,
      slices: [{ expert: e2 as never, offset: 0, count: 6 }],
    });
    expect(b.cacheStats()).toMatchObject({ misses: 3, evictions: 1, transferBytes: 3000, resident: 2, capacity: 2 });
    expect(events.filter((e) => e === "miss")).toHaveLength(3);
    expect(calls.uploads).toHaveLength(3);
  });

  it("rejects experts of another shape and wrong token widths, naming the numbers", async () => {
    const { addon } = fakeAddon();
    const b = new CudaBackend(addon, INFO, { SWITCHYARD_GPU_CACHE_SLOTS: "2" });
    const e = await b.prepare(randomExpert(d, f, "bfloat16", next));
    await expect(b.prepare(randomExpert(8, f, "bfloat16", next))).rejects.toThrow(/d=8 f=24 differs/);
    await expect(
      b.run({
        dtype: DType.FLOAT32,
        tokens: new Uint8Array(32),
        rows: 1,
        cols: 8,
        slices: [{ expert: e, offset: 0, count: 1 }],
      }),
    ).rejects.toThrow(/cols: expected 16, got 8/);
  });

  it("releases its pins when the kernel fails, so the slots can be reused", async () => {
    const { addon } = fakeAddon({ failRun: true });
    const b = new CudaBackend(addon, INFO, { SWITCHYARD_GPU_CACHE_SLOTS: "1" });
    const [e0, e1] = await Promise.all([0, 1].map(() => b.prepare(randomExpert(d, f, "bfloat16", next))));
    const req = (e: typeof e0) => ({
      dtype: DType.FLOAT32,
      tokens: new Uint8Array(d * 4),
      rows: 1,
      cols: d,
      slices: [{ expert: e, offset: 0, count: 1 }],
    });
    await expect(b.run(req(e0))).rejects.toThrow(/kernel failed/);
    // e0's pin is gone: e1 can take the only slot
    await expect(b.run(req(e1))).rejects.toThrow(/kernel failed/);
    expect(b.cacheStats()).toMatchObject({ evictions: 1 });
  });

  it("takes the worker's cache capacity as its slot count and reports events to every sink", async () => {
    const { addon, calls } = fakeAddon();
    const b = new CudaBackend(addon, INFO, { SWITCHYARD_CACHE_CAPACITY: "7" });
    b.setDeviceCacheCapacity(3);
    const seen: string[] = [];
    const off = b.addDeviceCacheSink((k, bytes) => seen.push(bytes ? `${k}:${bytes}` : k));
    const e = await b.prepare(randomExpert(d, f, "bfloat16", next));
    expect(calls.contexts).toEqual([{ d, f, slots: 3, device: 0, runsInFlight: 2 }]);
    expect(b.deviceCacheStats()).toMatchObject({ capacity: 3, resident: 0 });
    expect(() => b.setDeviceCacheCapacity(4)).toThrow(/already allocated/);
    const run = () =>
      b.run({
        dtype: DType.FLOAT32,
        tokens: new Uint8Array(d * 4),
        rows: 1,
        cols: d,
        slices: [{ expert: e, offset: 0, count: 1 }],
      });
    await run();
    await run();
    expect(seen).toEqual(["miss", "transfer:1000", "hit"]);
    off();
    await run();
    expect(seen).toHaveLength(3);
    expect(() => b.setDeviceCacheCapacity(0)).toThrow(/integer >= 1/);
  });

  it("prefetch uploads ahead, so the batch that needs the expert is a hit", async () => {
    const { addon, calls } = fakeAddon();
    const b = new CudaBackend(addon, INFO, { SWITCHYARD_GPU_CACHE_SLOTS: "2" });
    const e = await b.prepare(randomExpert(d, f, "bfloat16", next));
    await b.prefetch([e]);
    expect(calls.uploads).toHaveLength(1);
    await b.run({
      dtype: DType.FLOAT32,
      tokens: new Uint8Array(d * 4),
      rows: 1,
      cols: d,
      slices: [{ expert: e, offset: 0, count: 1 }],
    });
    expect(b.deviceCacheStats()).toMatchObject({ hits: 1, misses: 0 });
    expect(calls.uploads).toHaveLength(1);
  });

  it("hands the addon's device time of a run to onDeviceTime, and nothing when the addon gives none", async () => {
    for (const deviceMs of [0.75, undefined]) {
      const b = new CudaBackend(fakeAddon({ deviceMs }).addon, INFO, { SWITCHYARD_GPU_CACHE_SLOTS: "1" });
      const e = await b.prepare(randomExpert(d, f, "bfloat16", next));
      const seen: number[] = [];
      const out = await b.run({
        dtype: DType.FLOAT32,
        tokens: new Uint8Array(d * 4),
        rows: 1,
        cols: d,
        slices: [{ expert: e, offset: 0, count: 1 }],
        onDeviceTime: (ms) => seen.push(ms),
      });
      expect(seen).toEqual(deviceMs === undefined ? [] : [deviceMs]);
      expect(Object.keys(out)).toHaveLength(d * 4); // the bytes only: deviceMs stays out of enumeration
    }
  });

  it("refuses run() before prepare()", async () => {
    const b = new CudaBackend(fakeAddon().addon, INFO, {});
    await expect(
      b.run({ dtype: DType.FLOAT32, tokens: new Uint8Array(0), rows: 0, cols: d, slices: [] }),
    ).rejects.toThrow(/before any prepare/);
  });

  const oneRow = (e: unknown) => ({
    dtype: DType.FLOAT32,
    tokens: new Uint8Array(d * 4),
    rows: 1,
    cols: d,
    slices: [{ expert: e as never, offset: 0, count: 1 }],
  });

  it("a run out of device memory is RESOURCE_EXHAUSTED naming the device (the router tries another replica)", async () => {
    const { addon } = fakeAddon({ failRun: coded("cudaMalloc(&p, bytes): out of memory", "CUDA_OOM") });
    const b = new CudaBackend(addon, INFO, { SWITCHYARD_GPU_CACHE_SLOTS: "2" });
    const fatal: string[] = [];
    b.onFatal((why) => fatal.push(why));
    const e = await b.prepare(randomExpert(d, f, "bfloat16", next));
    const err = await b.run(oneRow(e)).catch((x) => x);
    expect(err.code).toBe("RESOURCE_EXHAUSTED");
    expect(err.message).toBe("GPU run on CUDA device 0: cudaMalloc(&p, bytes): out of memory");
    expect(fatal).toEqual([]);
    expect(b.broken).toBeNull();
  });

  it("a fatal CUDA error is UNAVAILABLE, heard once by onFatal, and later runs are refused without the addon", async () => {
    const { addon, calls } = fakeAddon({
      failRun: coded("cudaEventSynchronize(io.done): an illegal memory access was encountered", "CUDA_FATAL"),
    });
    const b = new CudaBackend(addon, INFO, { SWITCHYARD_GPU_CACHE_SLOTS: "2" });
    const fatal: string[] = [];
    b.onFatal((why) => fatal.push(why));
    const e = await b.prepare(randomExpert(d, f, "bfloat16", next));
    const first = await b.run(oneRow(e)).catch((x) => x);
    expect(first.code).toBe("UNAVAILABLE");
    expect(first.message).toMatch(/^GPU run on CUDA device 0: .*illegal memory access/);
    const second = await b.run(oneRow(e)).catch((x) => x);
    expect(second.code).toBe("UNAVAILABLE");
    expect(calls.runs).toHaveLength(1); // refused before the addon
    expect(fatal).toEqual([first.message]);
  });

  it("a fatal error in an upload breaks the device too", async () => {
    const { addon } = fakeAddon({
      failUpload: coded("slot 0: upload copy: unspecified launch failure", "CUDA_FATAL"),
    });
    const b = new CudaBackend(addon, INFO, { SWITCHYARD_GPU_CACHE_SLOTS: "2" });
    const fatal: string[] = [];
    b.onFatal((why) => fatal.push(why));
    const e = await b.prepare(randomExpert(d, f, "bfloat16", next));
    const err = await b.run(oneRow(e)).catch((x) => x);
    expect(err.code).toBe("UNAVAILABLE");
    expect(err.message).toMatch(/^GPU upload on CUDA device 0: slot 0/);
    expect(fatal).toHaveLength(1);
  });

  it("an error without a code stays as it came (INTERNAL)", async () => {
    const { addon } = fakeAddon({ failRun: true });
    const b = new CudaBackend(addon, INFO, { SWITCHYARD_GPU_CACHE_SLOTS: "2" });
    const e = await b.prepare(randomExpert(d, f, "bfloat16", next));
    const err = await b.run(oneRow(e)).catch((x) => x);
    expect(err.message).toBe("kernel failed");
    expect(err.code).toBeUndefined();
  });

  it("a bad SWITCHYARD_GPU_CACHE_POLICY is refused before the context takes the GPU's memory, every time", async () => {
    const { addon, calls } = fakeAddon();
    const b = new CudaBackend(addon, INFO, { SWITCHYARD_GPU_CACHE_SLOTS: "2", SWITCHYARD_GPU_CACHE_POLICY: "fifo" });
    for (let i = 0; i < 2; i++)
      await expect(b.prepare(randomExpert(d, f, "bfloat16", next))).rejects.toThrow(/unknown cache policy "fifo"/);
    expect(calls.contexts).toEqual([]);
  });

  it("a batch needing more experts than the GPU has slots runs in parts, each row from its own expert", async () => {
    const { addon, calls } = fakeAddon();
    const b = new CudaBackend(addon, INFO, { SWITCHYARD_GPU_CACHE_SLOTS: "2" });
    const es = await Promise.all([0, 1, 2].map(() => b.prepare(randomExpert(d, f, "bfloat16", next))));
    const tokens = new Uint8Array(5 * d * 4);
    const out = new Float32Array(
      (
        await b.run({
          dtype: DType.FLOAT32,
          tokens,
          rows: 5,
          cols: d,
          slices: [
            { expert: es[0] as never, offset: 0, count: 2 },
            { expert: es[1] as never, offset: 2, count: 1 },
            { expert: es[2] as never, offset: 4, count: 1 },
          ],
        })
      ).buffer,
    );
    expect(calls.runs).toHaveLength(2); // experts 0 and 1, then 2
    expect(calls.runs.map((r) => r.length)).toEqual([3, 1]);
    // rows 0-1 from expert 0's slot, row 2 from expert 1's, row 3 in no slice (zero), row 4 from expert 2's
    const slotOf = (row: number) => (out[row * d] as number) - 1; // the fake answers slot + 1 in every column
    expect(slotOf(1)).toBe(slotOf(0));
    expect(slotOf(2)).not.toBe(slotOf(0));
    expect(out[3 * d]).toBe(0);
    expect(calls.runs[1]?.[0]).toBe(slotOf(4));
  });

  it("a GPU cache that does not fit names its slots, size and device, and what to change", async () => {
    const { addon } = fakeAddon();
    addon.createContext = () => {
      throw new Error("createContext: cudaMalloc(&c->w13, bytes): out of memory");
    };
    const b = new CudaBackend(addon, INFO, { SWITCHYARD_GPU_CACHE_SLOTS: "3" });
    await expect(b.prepare(randomExpert(d, f, "bfloat16", next))).rejects.toThrow(
      /^GPU expert cache of 3 slots \(0\.0 GiB\) on CUDA device 0: createContext: .*out of memory; give the pool fewer resident experts \(cache\.residentExperts/,
    );
  });

  it("a summed batch run in parts is summed once on the host, in row order with its weights: one run's answer", async () => {
    const { addon, calls } = fakeAddon();
    const b = new CudaBackend(addon, INFO, { SWITCHYARD_GPU_CACHE_SLOTS: "2" });
    const es = await Promise.all([0, 1, 2].map(() => b.prepare(randomExpert(d, f, "bfloat16", next))));
    // 2 distinct tokens, 4 rows: token 0 -> experts 0, 2; token 1 -> experts 1, 2
    const tokenRows = Uint32Array.from([0, 1, 0, 1]);
    const w = Float32Array.from([0.3, 0.7, 0.6, 0.2]);
    const got = new Float32Array(
      (
        await b.run({
          dtype: DType.FLOAT32,
          tokens: new Uint8Array(2 * d * 4),
          rows: 4,
          cols: d,
          tokenRows,
          sumByToken: true,
          rowWeights: w,
          slices: [
            { expert: es[0] as never, offset: 0, count: 1 },
            { expert: es[1] as never, offset: 1, count: 1 },
            { expert: es[2] as never, offset: 2, count: 2 },
          ],
        })
      ).buffer,
    );
    expect(calls.sums).toEqual([false, false]); // the parts answer rows; the sum is the host's
    // the fake answers slot + 1 in every column; the slots each row ran with, in row order
    const slotOfRow = [calls.runs[0]?.[0], calls.runs[0]?.[1], calls.runs[1]?.[0], calls.runs[1]?.[1]] as number[];
    const sum = (rows: number[]) =>
      rows.reduce((acc, r) => Math.fround(acc + Math.fround((w[r] as number) * ((slotOfRow[r] as number) + 1))), 0);
    expect(got).toHaveLength(2 * d);
    expect(got[0]).toBe(sum([0, 2]));
    expect(got[d]).toBe(sum([1, 3]));
  });
});

/**
 * A fake addon that computes: fp32 tokens only, row r = (its token) x (its slot's expert's scale), weighted unless
 * summed, summed per token as the device does (sumRowsByToken, the device sum's arithmetic). A row's answer depends
 * on its token and expert alone, as each row of the real kernel does, so a run in parts must answer one run's bytes.
 */
function computingAddon(o: { free?: number } = {}) {
  const scale: number[] = [];
  const calls = {
    order: [] as string[],
    runs: [] as { rows: number; distinct: number; tokenRows: boolean; sum: boolean }[],
  };
  const addon: CudaAddon = {
    probe: () => INFO,
    createContext: () => {
      calls.order.push("createContext");
      return { ctx: true };
    },
    upload: async (_ctx, slot, gate) => {
      scale[slot] = 1 + (gate.data[0] as number) / 256; // the expert's own number, whatever slot it lands in
      return 1000;
    },
    run: async (_ctx, r) => {
      const x = new Float32Array(r.tokens.slice().buffer);
      const distinct = x.length / r.cols;
      calls.runs.push({ rows: r.rows, distinct, tokenRows: r.tokenRows !== undefined, sum: r.sumByToken === true });
      const out = new Float32Array(r.rows * r.cols);
      for (let i = 0; i < r.rows; i++) {
        const slot = r.rowSlots[i] as number;
        if (slot < 0) continue;
        const t = r.tokenRows ? (r.tokenRows[i] as number) : i;
        const w = r.rowWeights && !r.sumByToken ? (r.rowWeights[i] as number) : 1;
        for (let c = 0; c < r.cols; c++)
          out[i * r.cols + c] = Math.fround(Math.fround((x[t * r.cols + c] as number) * (scale[slot] as number)) * w);
      }
      const rows = new Uint8Array(out.buffer);
      if (!r.sumByToken) return rows;
      const sums = sumRowsByToken(rows, DType.FLOAT32, r.tokenRows as Uint32Array, distinct, r.cols, r.rowWeights);
      return new Uint8Array(sums.buffer);
    },
    stats: () => ({ runs: 0, uploads: 0, uploadBytes: 0, deviceBytes: 0, slots: 0 }),
  };
  if (o.free !== undefined)
    addon.memInfo = () => {
      calls.order.push("memInfo");
      return { free: o.free as number, total: 2 * (o.free as number) };
    };
  return { addon, calls };
}

describe("CudaBackend: rows per run (fake addon)", () => {
  const d = 16;
  const f = 24;
  const GIB = 2 ** 30;
  const expertBytes = 3 * d * f * 2;

  it("sizes its row limit from what the device has free once the slots are taken, and logs how", async () => {
    const { addon, calls } = computingAddon({ free: 3 * GIB });
    const b = new CudaBackend(addon, INFO, { SWITCHYARD_GPU_CACHE_SLOTS: "4" });
    const lines: string[] = [];
    b.setLog((l) => lines.push(l));
    expect(b.maxRunRows()).toBeUndefined(); // no context yet
    await b.prepare(randomExpert(d, f, "bfloat16", rng(1)));
    expect(calls.order).toEqual(["createContext", "memInfo"]);
    const want = runRowLimit({ d, f, slots: 4, runsInFlight: 2, freeBytes: 3 * GIB });
    expect(b.maxRunRows()).toBe(want.rows);
    expect(want.rows).toBeLessThan(MAX_ADDON_ROWS);
    expect(lines).toEqual([
      expect.stringMatching(
        new RegExp(
          `^GPU runs on CUDA device 0: at most ${want.rows} rows each \\(3\\.0 GiB free after the expert slots, .* at ${want.bytesPerRow} bytes per row`,
        ),
      ),
    ]);
    expect(b.describe()).toMatch(new RegExp(`4 slots, at most ${want.rows} rows per run`));
  });

  it("from an addon without memInfo: device 0's free memory at the probe less the slots, else only the addon's bound", async () => {
    const probed = new CudaBackend(
      computingAddon().addon,
      { ...INFO, freeMem: 5 * GIB },
      { SWITCHYARD_GPU_CACHE_SLOTS: "4" },
    );
    await probed.prepare(randomExpert(d, f, "bfloat16", rng(1)));
    expect(probed.maxRunRows()).toBe(
      runRowLimit({ d, f, slots: 4, runsInFlight: 2, freeBytes: 5 * GIB - 4 * expertBytes }).rows,
    );
    const lines: string[] = [];
    const blind = new CudaBackend(computingAddon().addon, INFO, { SWITCHYARD_GPU_CACHE_SLOTS: "4" });
    blind.setLog((l) => lines.push(l));
    await blind.prepare(randomExpert(d, f, "bfloat16", rng(1)));
    expect(blind.maxRunRows()).toBe(MAX_ADDON_ROWS);
    expect(lines[0]).toMatch(/free device memory unknown/);
  });

  it("is never above the worker's --max-rows, given before or after the context; SWITCHYARD_GPU_MAX_ROWS overrides", async () => {
    const before = new CudaBackend(computingAddon({ free: 3 * GIB }).addon, INFO, { SWITCHYARD_GPU_CACHE_SLOTS: "4" });
    before.setMaxRunRows(100);
    await before.prepare(randomExpert(d, f, "bfloat16", rng(1)));
    expect(before.maxRunRows()).toBe(100);
    const after = new CudaBackend(computingAddon({ free: 3 * GIB }).addon, INFO, {
      SWITCHYARD_GPU_CACHE_SLOTS: "4",
      SWITCHYARD_GPU_MAX_ROWS: "500",
    });
    await after.prepare(randomExpert(d, f, "bfloat16", rng(1)));
    expect(after.maxRunRows()).toBe(500); // in place of free memory's (far more at this size)
    after.setMaxRunRows(200);
    expect(after.maxRunRows()).toBe(200);
    after.setMaxRunRows(1000);
    expect(after.maxRunRows()).toBe(500);
    expect(() => after.setMaxRunRows(0)).toThrow(/integer >= 1/);
    expect(() => new CudaBackend(computingAddon().addon, INFO, { SWITCHYARD_GPU_MAX_ROWS: "many" })).toThrow(
      /^SWITCHYARD_GPU_MAX_ROWS: expected an integer >= 1, got "many"/,
    );
  });

  it("runs a batch with more rows than the limit in parts of at most that many, answering one run's bytes", async () => {
    const next = rng(99);
    const weights = [0, 1, 2].map(() => randomExpert(d, f, "bfloat16", next));
    const whole = computingAddon();
    const parts = computingAddon();
    const one = new CudaBackend(whole.addon, INFO, { SWITCHYARD_GPU_CACHE_SLOTS: "3" });
    const cut = new CudaBackend(parts.addon, INFO, { SWITCHYARD_GPU_CACHE_SLOTS: "3", SWITCHYARD_GPU_MAX_ROWS: "4" });
    const e1 = await Promise.all(weights.map((w) => one.prepare(w)));
    const e2 = await Promise.all(weights.map((w) => cut.prepare(w)));
    // 13 rows: expert 0 rows 0-4, row 5 in no slice, expert 1 rows 6-7, expert 2 rows 8-12
    const slices = (es: unknown[]) => [
      { expert: es[0] as never, offset: 0, count: 5 },
      { expert: es[1] as never, offset: 6, count: 2 },
      { expert: es[2] as never, offset: 8, count: 5 },
    ];
    const rows = 13;
    const rowWeights = uniform(rows, 1, next);
    const fp32 = (a: Float32Array) => new Uint8Array(a.buffer);
    const plain = fp32(uniform(rows * d, 2, next));
    const u = 4; // distinct tokens, each in several rows: as many as a run holds
    const tokenRows = Uint32Array.from({ length: rows }, (_, r) => (r * 3) % u);
    const distinct = fp32(uniform(u * d, 2, next));
    const many = 6; // more distinct tokens than a run holds (token 5 in no row)
    const manyRows = Uint32Array.from({ length: rows }, (_, r) => r % 5);
    const base = { dtype: DType.FLOAT32, rows, cols: d };
    const cases = {
      plain: { tokens: plain },
      weighted: { tokens: plain, rowWeights },
      deduplicated: { tokens: distinct, tokenRows, rowWeights },
      summed: { tokens: distinct, tokenRows, rowWeights, sumByToken: true },
      "summed, more tokens than a run holds": {
        tokens: fp32(uniform(many * d, 2, next)),
        tokenRows: manyRows,
        rowWeights,
        sumByToken: true,
      },
    };
    for (const [name, c] of Object.entries(cases)) {
      whole.calls.runs.length = 0;
      parts.calls.runs.length = 0;
      const want = await one.run({ ...base, ...c, slices: slices(e1) });
      const got = await cut.run({ ...base, ...c, slices: slices(e2) });
      expect(Buffer.from(got).equals(Buffer.from(want)), name).toBe(true);
      expect(whole.calls.runs, name).toHaveLength(1);
      // the 12 rows in slices, 4 at a time; row 5 goes nowhere
      expect(
        parts.calls.runs.map((r) => r.rows),
        name,
      ).toEqual([4, 4, 4]);
      // the parts answer rows (the host sums them once); more distinct tokens than fit go up as rows
      expect(
        parts.calls.runs.every((r) => !r.sum),
        name,
      ).toBe(true);
      const expanded = name === "summed, more tokens than a run holds";
      expect(
        parts.calls.runs.map((r) => r.tokenRows),
        name,
      ).toEqual(Array(3).fill("tokenRows" in c && !expanded));
      for (const r of parts.calls.runs) expect(r.distinct, name).toBeLessThanOrEqual(4);
    }
    // the row in no slice stays zero
    const split = new Float32Array((await cut.run({ ...base, tokens: plain, slices: slices(e2) })).buffer);
    expect(split.subarray(5 * d, 6 * d).every((v) => v === 0)).toBe(true);
    expect(split.subarray(4 * d, 5 * d).some((v) => v !== 0)).toBe(true);
  });

  it("runs a batch within the limit as it came, in one run", async () => {
    const { addon, calls } = computingAddon();
    const b = new CudaBackend(addon, INFO, { SWITCHYARD_GPU_CACHE_SLOTS: "2", SWITCHYARD_GPU_MAX_ROWS: "4" });
    const e = await b.prepare(randomExpert(d, f, "bfloat16", rng(3)));
    await b.run({
      dtype: DType.FLOAT32,
      tokens: new Uint8Array(4 * d * 4),
      rows: 4,
      cols: d,
      slices: [{ expert: e, offset: 1, count: 2 }],
    });
    expect(calls.runs).toEqual([{ rows: 4, distinct: 4, tokenRows: false, sum: false }]);
  });
});
