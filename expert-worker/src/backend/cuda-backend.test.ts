// CudaBackend's host-side logic with a fake addon (no GPU): slot assignment per slice, rows outside slices,
// GPU-cache bookkeeping across batches, shape checks, release of pins when a run fails.
import { DType } from "@switchyard/protocol";
import { describe, expect, it } from "vitest";
import { randomExpert, rng } from "../testing.js";
import { type CudaAddon, CudaBackend, type CudaProbeInfo } from "./cuda.js";

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
