// The multi-device composite over CPU "devices" (the TypeScript reference backend): its placement and its split of a
// run are device-agnostic, so the same answers as one device prove the split; cuda.test.ts runs it on real GPUs.

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateCheckpoint, openCheckpoint } from "@switchyard/moe";
import { DType, f32ToBf16 } from "@switchyard/protocol";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { gatherRows, sumRowsByToken } from "../token-rows.js";
import { chunkShare, type DeviceShare, MultiDeviceBackend } from "./multi-device.js";
import { ReferenceBackend } from "./reference.js";
import type {
  DeviceCacheSink,
  DeviceCacheStats,
  ExpertBackend,
  ExpertWeights,
  PreparedExpert,
  RunRequest,
} from "./types.js";

const d = 32;
const f = 16;
const E = 6;

/** A reference backend that records what reaches it, with a fake device tier. */
class Device extends ReferenceBackend implements ExpertBackend {
  readonly runs: RunRequest[] = [];
  readonly prefetched: PreparedExpert[] = [];
  readonly discarded: PreparedExpert[] = [];
  capacity: number | undefined;
  readonly sinks = new Set<DeviceCacheSink>();
  constructor(readonly ms: number) {
    super();
  }
  /** Takes deduplicated batches as the CUDA backend does: gathers the rows, sums them per token (token-rows.ts). */
  readonly takesTokenRows = true;
  fail: Error | undefined;
  failPrepare: Error | undefined;
  finished = 0;
  override async prepare(w: ExpertWeights): Promise<PreparedExpert> {
    if (this.failPrepare) throw this.failPrepare;
    return super.prepare(w);
  }
  override async run(req: RunRequest): Promise<Uint8Array> {
    this.runs.push(req);
    // as GpuSlotCache.acquire: a run needing more experts than the slots is refused
    const experts = new Set(req.slices.map((s) => s.expert)).size;
    if (this.capacity !== undefined && experts > this.capacity)
      throw new Error(`a batch needs ${experts} experts but the cache has ${this.capacity} slots`);
    if (this.fail) throw this.fail;
    await new Promise((r) => setTimeout(r, 5));
    const rowBytes = req.cols * (req.dtype === DType.FLOAT32 ? 4 : 2);
    const distinct = req.tokens.byteLength / rowBytes;
    const tokens = req.tokenRows ? gatherRows(req.tokens, req.tokenRows, rowBytes) : req.tokens;
    const { rowWeights, ...rest } = req;
    const rows = await super.run({ ...rest, tokens, ...(req.sumByToken || !rowWeights ? {} : { rowWeights }) });
    req.onDeviceTime?.(this.ms);
    this.finished++;
    if (!req.sumByToken) return rows;
    const sums = sumRowsByToken(rows, req.dtype, req.tokenRows!, distinct, req.cols, rowWeights);
    return new Uint8Array(sums.buffer);
  }
  async prefetch(es: readonly PreparedExpert[]): Promise<unknown[]> {
    this.prefetched.push(...es);
    return [];
  }
  discard(es: readonly PreparedExpert[]): void {
    this.discarded.push(...es);
  }
  setDeviceCacheCapacity(n: number): void {
    this.capacity = n;
  }
  addDeviceCacheSink(s: DeviceCacheSink): () => void {
    this.sinks.add(s);
    return () => this.sinks.delete(s);
  }
  deviceCacheStats(): DeviceCacheStats {
    return { hits: 1, misses: 2, evictions: 3, transferBytes: 4, resident: 5, capacity: this.capacity ?? 0 };
  }
}

describe("MultiDeviceBackend", () => {
  let dir: string;
  const weights: ExpertWeights[] = [];
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "sy-multi-"));
    await generateCheckpoint({
      family: "mixtral",
      dir,
      seed: 3,
      layers: 1,
      hiddenSize: d,
      intermediateSize: f,
      experts: E,
    });
    const ckpt = await openCheckpoint(dir);
    for (let e = 0; e < E; e++) weights.push(await ckpt.readExpert(0, e));
    await ckpt.close();
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it("places experts in equal shares, gives the places back on discard, and splits the cache capacity", async () => {
    const devs = [new Device(1), new Device(2), new Device(3)];
    const m = new MultiDeviceBackend(devs);
    m.setDeviceCacheCapacity(7);
    expect(devs.map((x) => x.capacity)).toEqual([3, 3, 3]);
    const ps = [];
    for (const w of weights) ps.push(await m.prepare(w));
    // two each; then discarding two of device 0's sends the next two there
    m.discard([ps[0], ps[3]]);
    expect(devs[0].discarded).toHaveLength(2);
    const again = [await m.prepare(weights[0]), await m.prepare(weights[3])];
    await m.prefetch(again);
    expect(devs[0].prefetched).toHaveLength(2);
    expect(devs[1].prefetched).toHaveLength(0);
    const stats = m.deviceCacheStats();
    expect(stats).toEqual({ hits: 3, misses: 6, evictions: 9, transferBytes: 12, resident: 15, capacity: 9 });
    const seen: string[] = [];
    const off = m.addDeviceCacheSink((k) => seen.push(k));
    for (const x of devs) for (const s of x.sinks) s("hit");
    expect(seen).toEqual(["hit", "hit", "hit"]);
    off();
    expect(devs.every((x) => x.sinks.size === 0)).toBe(true);
    expect(() => new MultiDeviceBackend([devs[0]])).toThrow(/2 or more devices/);
  });

  it("a device whose prepare fails is left out of placement while another can take experts", async () => {
    const devs = [new Device(1), new Device(1)];
    const m = new MultiDeviceBackend(devs);
    devs[0].failPrepare = new Error("GPU expert cache of 9 slots on CUDA device 0: out of memory");
    await expect(m.prepare(weights[0])).rejects.toThrow(/device 0: out of memory/);
    // device 0 holds the fewest experts, but failed: the next experts go to device 1
    const ps = [await m.prepare(weights[1]), await m.prepare(weights[2])];
    expect(ps.map((p) => (p as unknown as { device: number }).device)).toEqual([1, 1]);
    devs[1].failPrepare = new Error("device 1 broken too");
    // every device failed: all are tried again; device 0 works now
    devs[0].failPrepare = undefined;
    await expect(m.prepare(weights[3])).rejects.toThrow(/device 1 broken/);
    const back = await m.prepare(weights[4]);
    expect((back as unknown as { device: number }).device).toBe(0);
  });

  it("answers a run spread over the devices as one device does, rows in place, the device time the longest", async () => {
    const one = new ReferenceBackend();
    const devs = [new Device(1.5), new Device(4)];
    const m = new MultiDeviceBackend(devs);
    const single = [];
    const multi = [];
    for (const w of weights) {
      single.push(await one.prepare(w));
      multi.push(await m.prepare(w));
    }
    // slices of experts 5, 0, 3, 2 (devices 1, 0, 1, 0), with a gap of rows in no slice, and row weights
    const order = [5, 0, 3, 2];
    const counts = [3, 1, 4, 2];
    const rows = 12;
    const tokens = f32ToBf16(Float32Array.from({ length: rows * d }, (_, i) => Math.sin(i * 0.3)));
    const rowWeights = Float32Array.from({ length: rows }, (_, i) => 0.5 + i / 10);
    let at = 0;
    const slices = (ps: PreparedExpert[]) =>
      order.map((e, i) => {
        const s = { expert: ps[e], offset: at, count: counts[i] };
        at += counts[i] + (i === 1 ? 2 : 0); // rows 4, 5 are in no slice
        return s;
      });
    const base = { dtype: DType.BFLOAT16, tokens: new Uint8Array(tokens.buffer), rows, cols: d, rowWeights };
    at = 0;
    const want = await one.run({ ...base, slices: slices(single) });
    at = 0;
    const times: number[] = [];
    const got = await m.run({ ...base, slices: slices(multi), onDeviceTime: (ms) => times.push(ms) });
    expect(Array.from(got)).toEqual(Array.from(want));
    expect(times).toEqual([4]);
    expect(devs[0].runs[0].rows).toBe(3); // experts 0 and 2: 1 + 2 rows
    expect(devs[1].runs[0].rows).toBe(7);
    // all on one device: its request as it came
    const oneDev = await m.run({ ...base, slices: [{ expert: multi[0], offset: 2, count: 3 }] });
    const oneWant = await one.run({ ...base, slices: [{ expert: single[0], offset: 2, count: 3 }] });
    expect(Array.from(oneDev)).toEqual(Array.from(oneWant));
    expect(devs[0].runs[1].rows).toBe(rows);
  });

  it("splits a deduplicated batch: each device gathers its rows and sums them, the host adds the sums", async () => {
    const one = new Device(1);
    const m = new MultiDeviceBackend([new Device(1), new Device(2)]);
    expect(m.takesTokenRows).toBe(true);
    const single = [];
    const multi = [];
    for (const w of weights) {
      single.push(await one.prepare(w));
      multi.push(await m.prepare(w));
    }
    // 5 distinct tokens; 9 rows over experts 1 (device 1), 4 and 0 (device 0); tokens 0, 2 and 4 on both devices
    const distinct = 5;
    const tokenRows = Uint32Array.from([0, 2, 4, 2, 3, 1, 2, 0, 4]);
    const slicesOf = (ps: PreparedExpert[]) => [
      { expert: ps[1], offset: 0, count: 3 },
      { expert: ps[4], offset: 3, count: 4 },
      { expert: ps[0], offset: 7, count: 2 },
    ];
    const tokens = new Uint8Array(f32ToBf16(Float32Array.from({ length: distinct * d }, (_, i) => Math.cos(i))).buffer);
    const rowWeights = Float32Array.from({ length: 9 }, (_, i) => 0.25 + i / 9);
    const base = { dtype: DType.BFLOAT16, tokens, rows: 9, cols: d, rowWeights, tokenRows };
    const want = new Float32Array((await one.run({ ...base, slices: slicesOf(single), sumByToken: true })).buffer);
    const got = await m.run({ ...base, slices: slicesOf(multi), sumByToken: true });
    const g = new Float32Array(got.buffer, got.byteOffset, got.byteLength / 4);
    expect(g.length).toBe(distinct * d);
    let worst = 0;
    for (let i = 0; i < g.length; i++)
      worst = Math.max(worst, Math.abs(g[i] - want[i]) / Math.max(Math.abs(want[i]), 1e-3));
    expect(worst).toBeLessThan(1e-5); // the same sums, rounded once per device more
    // device 1 got all 5 distinct tokens as they came, and its rows' indices into them: 0, 2, 4 (gathering its own
    // tokens on the host cost the worker's event loop more than it saved)
    const d1 = (m.devices[1] as Device).runs[0];
    expect(d1.tokens).toBe(tokens);
    expect(Array.from(d1.tokenRows!)).toEqual([0, 2, 4]);
    // rows, not sums: each row back in its place, as one device gives them
    const rowsWant = await one.run({ ...base, slices: slicesOf(single) });
    const rowsGot = await m.run({ ...base, slices: slicesOf(multi) });
    expect(Array.from(rowsGot)).toEqual(Array.from(rowsWant));
  });

  it("runs a device's share in parts of at most its slots, one after another, when placement left it more", async () => {
    const one = new Device(1);
    const devs = [new Device(1), new Device(1)];
    const m = new MultiDeviceBackend(devs);
    m.setDeviceCacheCapacity(2); // 1 slot each
    const single = [];
    const multi = [];
    for (const w of weights.slice(0, 4)) {
      single.push(await one.prepare(w));
      multi.push(await m.prepare(w));
    }
    // experts 0 and 2 live on device 0 (one slot): its share runs as two parts; 1 and 3 on device 1, likewise
    const slicesOf = (ps: PreparedExpert[]) => [
      { expert: ps[0], offset: 0, count: 2 },
      { expert: ps[1], offset: 2, count: 1 },
      { expert: ps[2], offset: 3, count: 3 },
      { expert: ps[3], offset: 6, count: 0 }, // no rows: not run at all
    ];
    const tokens = new Uint8Array(f32ToBf16(Float32Array.from({ length: 6 * d }, (_, i) => Math.sin(i))).buffer);
    const base = { dtype: DType.BFLOAT16, tokens, rows: 6, cols: d };
    let ms = 0;
    const got = await m.run({ ...base, slices: slicesOf(multi), onDeviceTime: (t) => (ms = t) });
    const want = await one.run({ ...base, slices: slicesOf(single) });
    expect(Array.from(got)).toEqual(Array.from(want));
    expect(devs[0].runs.map((r) => r.rows)).toEqual([2, 3]);
    expect(devs[1].runs.map((r) => r.rows)).toEqual([1]);
    expect(ms).toBe(2); // device 0's two parts, one after another
    // a deduplicated batch over the same parts: the parts' sums added in order
    const tokenRows = Uint32Array.from([0, 1, 1, 2, 0, 2]);
    const uniq = new Uint8Array(f32ToBf16(Float32Array.from({ length: 3 * d }, (_, i) => Math.cos(i))).buffer);
    const dd = { dtype: DType.BFLOAT16, tokens: uniq, rows: 6, cols: d, tokenRows, sumByToken: true };
    const gs = await m.run({ ...dd, slices: slicesOf(multi) });
    const ws = await one.run({ ...dd, slices: slicesOf(single) });
    const a = new Float32Array(gs.buffer, gs.byteOffset, gs.byteLength / 4);
    const b = new Float32Array(ws.buffer, ws.byteOffset, ws.byteLength / 4);
    for (let i = 0; i < b.length; i++)
      expect(Math.abs(a[i] - b[i])).toBeLessThanOrEqual(1e-5 * Math.max(1, Math.abs(b[i])));
  });

  it("a device that fails fails the run only once every device is done with it", async () => {
    const devs = [new Device(1), new Device(1)];
    const m = new MultiDeviceBackend(devs);
    const p0 = await m.prepare(weights[0]);
    const p1 = await m.prepare(weights[1]);
    devs[0].fail = new Error("device 0 lost");
    const base = { dtype: DType.FLOAT32, tokens: new Uint8Array(2 * d * 4), rows: 2, cols: d };
    const run = m.run({
      ...base,
      slices: [
        { expert: p0, offset: 0, count: 1 },
        { expert: p1, offset: 1, count: 1 },
      ],
    });
    await expect(run).rejects.toThrow(/device 0 lost/);
    expect(devs[1].finished).toBe(1); // not left running after the batch was answered
  });

  it("refuses deduplicated batches where its devices take none, and experts of another backend; aborts", async () => {
    const m = new MultiDeviceBackend([new ReferenceBackend(), new ReferenceBackend()]);
    expect(m.takesTokenRows).toBe(false);
    const p = await m.prepare(weights[0]);
    const q = await m.prepare(weights[1]);
    const base = { dtype: DType.FLOAT32, tokens: new Uint8Array(4 * d * 4), rows: 4, cols: d };
    const two = [
      { expert: p, offset: 0, count: 2 },
      { expert: q, offset: 2, count: 2 },
    ];
    await expect(m.run({ ...base, slices: two, tokenRows: new Uint32Array(4) })).rejects.toThrow(/expands them/);
    const foreign = await new ReferenceBackend().prepare(weights[1]);
    await expect(m.run({ ...base, slices: [{ expert: foreign, offset: 0, count: 4 }] })).rejects.toThrow(
      /not prepared by this multi-device backend/,
    );
    const ac = new AbortController();
    ac.abort(new Error("gone"));
    await expect(m.run({ ...base, slices: two, signal: ac.signal })).rejects.toThrow(/cancel/);
  });
});

describe("chunkShare", () => {
  // experts as plain objects: chunkShare compares them by identity only
  const [a, b, c] = [0, 1, 2].map((i) => ({ hiddenSize: i, intermediateSize: 0, bytes: 0 }));
  /** A share of slices [expert, rows] laid end to end, from rows 100, 200, ... of the request. */
  const share = (...slices: [typeof a, number][]): DeviceShare => {
    const g: DeviceShare = { slices: [], from: [], rows: 0 };
    slices.forEach(([expert, count], i) => {
      g.slices.push({ expert, offset: g.rows, count });
      g.from.push({ offset: 100 * (i + 1), count });
      g.rows += count;
    });
    return g;
  };
  /** Each part as its slices' [expert index, offset, count] and where their rows come from. */
  const view = (parts: DeviceShare[]) =>
    parts.map((p) => ({
      rows: p.rows,
      slices: p.slices.map((s) => [s.expert.hiddenSize, s.offset, s.count]),
      from: p.from.map((f) => [f.offset, f.count]),
    }));

  it("keeps a share that fits as it is", () => {
    const g = share([a, 3], [b, 4]);
    expect(chunkShare(g, { slots: 2, rows: 7 })).toEqual([g]);
    expect(chunkShare(g, {})).toEqual([g]);
  });

  it("cuts a slice with more rows than a part has room for, its rows to consecutive parts in order", () => {
    expect(view(chunkShare(share([a, 3], [b, 6], [c, 1]), { rows: 4 }))).toEqual([
      {
        rows: 4,
        slices: [
          [0, 0, 3],
          [1, 3, 1],
        ],
        from: [
          [100, 3],
          [200, 1],
        ],
      },
      { rows: 4, slices: [[1, 0, 4]], from: [[201, 4]] },
      {
        rows: 2,
        slices: [
          [1, 0, 1],
          [2, 1, 1],
        ],
        from: [
          [205, 1],
          [300, 1],
        ],
      },
    ]);
  });

  it("bounds experts and rows at once; one expert's rows over several parts take a slot in each", () => {
    expect(view(chunkShare(share([a, 2], [b, 5], [c, 2]), { slots: 2, rows: 5 }))).toEqual([
      {
        rows: 5,
        slices: [
          [0, 0, 2],
          [1, 2, 3],
        ],
        from: [
          [100, 2],
          [200, 3],
        ],
      },
      {
        rows: 4,
        slices: [
          [1, 0, 2],
          [2, 2, 2],
        ],
        from: [
          [203, 2],
          [300, 2],
        ],
      },
    ]);
    expect(view(chunkShare(share([a, 2], [b, 1], [c, 1]), { slots: 1, rows: 100 }))).toEqual([
      { rows: 2, slices: [[0, 0, 2]], from: [[100, 2]] },
      { rows: 1, slices: [[1, 0, 1]], from: [[200, 1]] },
      { rows: 1, slices: [[2, 0, 1]], from: [[300, 1]] },
    ]);
  });

  it("every row lands in exactly one part, in order, with no part above its bounds", () => {
    for (let seed = 1; seed <= 50; seed++) {
      let x = seed;
      const next = () => {
        x = (x * 48271) % 2147483647;
        return x / 2147483647;
      };
      const experts = [a, b, c];
      const slices: [typeof a, number][] = Array.from({ length: 1 + Math.floor(next() * 8) }, () => [
        experts[Math.floor(next() * 3)],
        1 + Math.floor(next() * 20),
      ]);
      const g = share(...slices);
      const limits = { slots: 1 + Math.floor(next() * 3), rows: 1 + Math.floor(next() * 25) };
      const parts = chunkShare(g, limits);
      const rows: number[] = [];
      for (const p of parts) {
        expect(p.rows).toBeLessThanOrEqual(limits.rows);
        expect(new Set(p.slices.map((s) => s.expert)).size).toBeLessThanOrEqual(limits.slots);
        expect(p.slices.reduce((n, s) => n + s.count, 0)).toBe(p.rows);
        p.from.forEach((f) => {
          for (let r = 0; r < f.count; r++) rows.push(f.offset + r);
        });
      }
      expect(rows).toEqual(g.from.flatMap((f) => Array.from({ length: f.count }, (_, r) => f.offset + r)));
    }
  });
});
