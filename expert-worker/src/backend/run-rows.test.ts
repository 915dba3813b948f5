// The CUDA run row limit's pure parts: the bytes-per-row bound against the addon's own allocations, the limit from
// free memory, its override and --max-rows, and the log line.
import { describe, expect, it } from "vitest";
import { rng } from "../testing.js";
import { describeRowLimit, gpuMaxRows, MAX_ADDON_ROWS, runDeviceBytes, runHeadroom, runRowLimit } from "./run-rows.js";

const GIB = 2 ** 30;

/**
 * The device bytes one run's buffers take, transcribed from the code that allocates them, line by line, for checking
 * runDeviceBytes' bound: addon_cuda.cc RunWorker::Execute (d_stage, d_in, d_out, d_sum, ws) and sy_moe.cu
 * make_layout (the workspace, with num_experts = slots, top_k = 1, T = rows as the addon asks for it).
 */
function addonRunBytes(o: {
  d: number;
  f: number;
  slots: number;
  rows: number;
  u: number;
  dedup: boolean;
  sum: boolean;
}) {
  const { d, f, slots: E, rows, u } = o;
  // RunWorker::Execute
  const tokB = u * d * 2;
  const n4 = rows * 4;
  const offOffs = tokB + 3 * n4;
  const offOrder = offOffs + (u + 1) * 4;
  const inB = o.dedup ? offOrder + 2 * n4 : tokB + 2 * n4;
  const dIn = o.dedup ? rows * d * 2 : 0;
  const dOut = rows * d * 2;
  const dSum = o.sum ? u * d * 4 : 0;
  // make_layout
  const n = rows; // T * top_k
  const alignUp = (v: number) => Math.ceil(v / 256) * 256;
  let at = 0;
  const take = (bytes: number) => {
    at = alignUp(at + bytes);
  };
  const maxMTiles = Math.ceil(n / 16) + Math.min(n, E);
  for (const b of [n * 4, n * 4, n * 4, E * 4, E * 4, 16, (maxMTiles + E) * 16, n * 4, n * 4, n * 4]) take(b);
  take(n * d * 2); // x_perm
  take(n * f * 2); // h
  take(n * d * 2); // y
  take(rows * d * 4); // out_acc
  take(E * 4 * 128); // emaps
  return inB + dIn + dOut + dSum + at;
}

describe("runDeviceBytes", () => {
  it("bounds what the addon allocates for a run, in every kind of run, within the allocator's rounding", () => {
    const next = rng(42);
    const pick = (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1));
    for (let i = 0; i < 2000; i++) {
      const d = 8 * pick(1, 1024);
      const f = 8 * pick(1, 2560);
      const slots = pick(1, 1024);
      const rows = pick(0, 300_000);
      const dedup = next() < 0.5;
      const sum = dedup && next() < 0.5;
      // a deduplicated batch's distinct tokens: at most its rows here (more is expanded on the host: cuda.ts)
      const u = dedup ? pick(1, Math.max(1, rows)) : rows;
      const { perRow, fixed } = runDeviceBytes(d, f, slots);
      const bound = fixed + rows * perRow;
      const shape = JSON.stringify({ d, f, slots, rows, u, dedup, sum });
      expect(bound, shape).toBeGreaterThanOrEqual(addonRunBytes({ d, f, slots, rows, u, dedup, sum }));
      // the worst case (summed, a token per row) is the bound less the 10 MiB of cudaMalloc rounding, give or take
      // the 256-byte alignment, the tile list's rounding and the tile per slot of fewer rows than slots
      const worst = addonRunBytes({ d, f, slots, rows, u: rows, dedup: true, sum: true });
      const slack = bound - worst - 10 * 2 ** 20;
      expect(slack, shape).toBeGreaterThanOrEqual(0);
      expect(slack, shape).toBeLessThanOrEqual(15 * 256 + 32 + 16 * Math.max(0, slots - rows));
    }
  });

  it("is 18d + 2f + 49 bytes per row", () => {
    // DeepSeek-V3 (d 7168, f 2048), Qwen3-30B-A3B (2048, 768), Mixtral-8x7B (4096, 14336)
    expect(runDeviceBytes(7168, 2048, 256).perRow).toBe(18 * 7168 + 2 * 2048 + 49);
    expect(runDeviceBytes(2048, 768, 128).perRow).toBe(38449);
    expect(runDeviceBytes(4096, 14336, 8).perRow).toBe(102449);
  });
});

describe("runRowLimit", () => {
  const dsv3 = { d: 7168, f: 2048, slots: 256 };

  it("fits every set of run buffers at the limit in the free memory less the headroom", () => {
    const free = 27 * GIB;
    const l = runRowLimit({ ...dsv3, runsInFlight: 2, freeBytes: free });
    expect(l.from).toBe("free memory");
    expect(l.headroomBytes).toBe(runHeadroom(free));
    expect(l.headroomBytes).toBeCloseTo(2.7 * GIB);
    expect(l.rows).toBe(l.deviceRows);
    const { perRow, fixed } = runDeviceBytes(dsv3.d, dsv3.f, dsv3.slots);
    const used = (rows: number) => 2 * (fixed + rows * perRow);
    expect(used(l.rows)).toBeLessThanOrEqual(free - runHeadroom(free));
    expect(used(l.rows + 1)).toBeGreaterThan(free - runHeadroom(free));
    expect(l.rows).toBe(97885);
    // one set: about twice the rows
    const one = runRowLimit({ ...dsv3, runsInFlight: 1, freeBytes: free });
    expect(one.rows).toBeGreaterThan(2 * l.rows - 2);
  });

  it("keeps at least 1 GiB back, and 10% of larger free memory", () => {
    expect(runHeadroom(2 * GIB)).toBe(GIB);
    expect(runHeadroom(100 * GIB)).toBe(10 * GIB);
  });

  it("is one row where nothing is left (the runs then fail out of memory, RESOURCE_EXHAUSTED), at most the addon's bound", () => {
    expect(runRowLimit({ ...dsv3, runsInFlight: 2, freeBytes: 0.5 * GIB }).rows).toBe(1);
    expect(runRowLimit({ d: 8, f: 8, slots: 1, runsInFlight: 1, freeBytes: 1e15 }).rows).toBe(MAX_ADDON_ROWS);
  });

  it("takes SWITCHYARD_GPU_MAX_ROWS in place of free memory, and never more than --max-rows", () => {
    const free = 27 * GIB;
    expect(runRowLimit({ ...dsv3, runsInFlight: 2, freeBytes: free, override: 500_000 })).toMatchObject({
      rows: 500_000,
      from: "SWITCHYARD_GPU_MAX_ROWS",
    });
    expect(runRowLimit({ ...dsv3, runsInFlight: 2, freeBytes: free, maxRows: 4096 })).toMatchObject({
      rows: 4096,
      deviceRows: 97885,
    });
    expect(runRowLimit({ ...dsv3, runsInFlight: 2, freeBytes: free, maxRows: 1e6 }).rows).toBe(97885);
    expect(runRowLimit({ ...dsv3, runsInFlight: 2, override: 64, maxRows: 100 }).rows).toBe(64);
    // nothing known: the addon's bound, or --max-rows
    expect(runRowLimit({ ...dsv3, runsInFlight: 2 })).toMatchObject({ rows: MAX_ADDON_ROWS, from: "unknown" });
    expect(runRowLimit({ ...dsv3, runsInFlight: 2, maxRows: 100 }).rows).toBe(100);
  });

  it("reads SWITCHYARD_GPU_MAX_ROWS, naming it on bad input", () => {
    expect(gpuMaxRows({})).toBeUndefined();
    expect(gpuMaxRows({ SWITCHYARD_GPU_MAX_ROWS: "" })).toBeUndefined();
    expect(gpuMaxRows({ SWITCHYARD_GPU_MAX_ROWS: "8192" })).toBe(8192);
    for (const bad of ["0", "-1", "1.5", "1e4", "lots", " 8"])
      expect(() => gpuMaxRows({ SWITCHYARD_GPU_MAX_ROWS: bad })).toThrow(/^SWITCHYARD_GPU_MAX_ROWS: expected/);
  });

  it("says in one log line the limit, the free memory it saw, the bytes per row it assumed, and what capped it", () => {
    const free = 27 * GIB;
    expect(describeRowLimit(runRowLimit({ ...dsv3, runsInFlight: 2, freeBytes: free }), 1)).toBe(
      "GPU runs on CUDA device 1: at most 97885 rows each (27.0 GiB free after the expert slots, less 2.7 GiB " +
        "headroom, over 2 runs in flight at 133169 bytes per row + 10.1 MiB each: 97885 rows); a batch with more " +
        "runs in parts",
    );
    expect(describeRowLimit(runRowLimit({ ...dsv3, runsInFlight: 2, freeBytes: free, maxRows: 4096 }), 0)).toMatch(
      /^GPU runs on CUDA device 0: at most 4096 rows each \(.*: 97885 rows; --max-rows 4096\)/,
    );
    expect(describeRowLimit(runRowLimit({ ...dsv3, runsInFlight: 2, override: 64 }), 0)).toMatch(
      /at most 64 rows each \(SWITCHYARD_GPU_MAX_ROWS=64 .*133169 bytes per row\)/,
    );
    expect(describeRowLimit(runRowLimit({ ...dsv3, runsInFlight: 1 }), 0)).toMatch(/free device memory unknown/);
  });
});
