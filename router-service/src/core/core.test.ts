import { DType, f32ToBf16, f32ToF16, valuesToBytes } from "@switchyard/protocol";
import { afterEach, describe, expect, it, vi } from "vitest";
import { Batcher, HOLD_CAP_MS } from "./batcher.js";
import { applyCapacity, expertCapacity } from "./capacity.js";
import { combineF32, combineInto, combineIntoTs, firstNonFinite, hasNonFinite, resultRows } from "./combine.js";
import { type LatencyAverage, withSample } from "./latency-average.js";
import { layoutRound } from "./plan-flush.js";
import { chooseReplica, type ReplicaChooser, type WorkerLoadView } from "./replicas.js";
import { collectAssignments, type TokenRouting, withSharedSlices } from "./routing.js";

function routing(experts: number[][], weights: number[][], ranking?: number[][]): TokenRouting {
  const slots = experts[0].length;
  return {
    tokens: experts.length,
    slots,
    experts: Int32Array.from(experts.flat()),
    weights: Float32Array.from(weights.flat()),
    ranking: ranking ? Int32Array.from(ranking.flat()) : undefined,
  };
}

describe("capacity", () => {
  it("computes ceil(cf * assignments / experts), null when dropless", () => {
    expect(expertCapacity(10, 4, 1)).toBe(3);
    expect(expertCapacity(10, 4, null)).toBeNull();
    expect(expertCapacity(1, 64, 1)).toBe(1);
  });

  it("is not pushed past an exact quotient by floating-point error", () => {
    // 1.1 * 100 / 10 is 11.000000000000002 in doubles: ceil gave 12
    expect(expertCapacity(100, 10, 1.1)).toBe(11);
    expect(expertCapacity(100, 2, 1.1)).toBe(55); // 55.00000000000001
    expect(expertCapacity(100, 4, 2.2)).toBe(55);
    expect(expertCapacity(30, 10, 0.7)).toBe(3); // 2.1
    // exact and just-over quotients keep their ceiling
    expect(expertCapacity(100, 10, 1)).toBe(10);
    expect(expertCapacity(101, 10, 1)).toBe(11);
    expect(expertCapacity(99, 10, 1.1)).toBe(11); // 10.89
    expect(expertCapacity(100, 10, 1.25)).toBe(13); // 12.5
    expect(expertCapacity(8, 8, 2)).toBe(2);
  });

  it("dropless keeps everything in one round", () => {
    const r = routing(
      [
        [0, 1],
        [0, 1],
        [0, 1],
      ],
      [
        [0.6, 0.4],
        [0.7, 0.3],
        [0.5, 0.5],
      ],
    );
    const res = applyCapacity(collectAssignments([r]), 4, null, "drop", [r]);
    expect(res.rounds).toHaveLength(1);
    expect(res.rounds[0]).toHaveLength(6);
    expect(res.dropped).toHaveLength(0);
  });

  it("drop keeps the highest-weight assignments, earlier token on ties", () => {
    // 4 tokens top-1 all to expert 0, 2 experts, cf 1 -> capacity 2.
    const r = routing([[0], [0], [0], [0]], [[0.5], [0.9], [0.5], [0.7]]);
    const res = applyCapacity(collectAssignments([r]), 2, 1, "drop", [r]);
    expect(res.capacity).toBe(2);
    expect(res.rounds[0].map((a) => a.token)).toEqual([1, 3]);
    expect(res.dropped.map((a) => a.token).sort()).toEqual([0, 2]);
  });

  it("spill moves overflow to the next-best expert with room", () => {
    const rank = [0, 1, 2];
    const r = routing([[0], [0], [0]], [[0.9], [0.8], [0.7]], [rank, rank, rank]);
    // 3 assignments, 3 experts, cf 1 -> capacity 1
    const res = applyCapacity(collectAssignments([r]), 3, 1, "spill", [r]);
    expect(res.dropped).toHaveLength(0);
    expect(res.rounds[0].map((a) => [a.token, a.expert])).toEqual([
      [0, 0],
      [1, 1],
      [2, 2],
    ]);
  });

  it("spill stops at a ranking's -1 end (experts past it are not candidates)", () => {
    const r = routing(
      [[0], [0]],
      [[0.9], [0.8]],
      [
        [0, 1],
        [0, -1],
      ],
    );
    // 2 assignments, 2 experts, cf 1 -> capacity 1: token 1 overflows and its ranking ends after expert 0
    const res = applyCapacity(collectAssignments([r]), 2, 1, "spill", [r]);
    expect(res.dropped.map((a) => a.token)).toEqual([1]);
    const r2 = routing(
      [[0], [0], [0]],
      [[0.9], [0.8], [0.7]],
      [
        [0, 1, 2],
        [0, -1, 2],
        [0, 1, 2],
      ],
    );
    // capacity 1: token 1 may not reach expert 2 past its -1; token 2 takes 1
    const res2 = applyCapacity(collectAssignments([r2]), 3, 1, "spill", [r2]);
    expect(res2.dropped.map((a) => a.token)).toEqual([1]);
    expect(res2.rounds[0].map((a) => [a.token, a.expert])).toEqual([
      [0, 0],
      [2, 1],
    ]);
  });

  it("spill without a ranking drops", () => {
    const r = routing([[0], [0]], [[0.9], [0.8]]);
    const res = applyCapacity(collectAssignments([r]), 2, 1, "spill", [r]);
    expect(res.dropped.map((a) => a.token)).toEqual([1]);
  });

  it("queue runs overflow in later rounds without drops", () => {
    const r = routing([[0], [0], [0], [1]], [[0.9], [0.8], [0.7], [1]]);
    const res = applyCapacity(collectAssignments([r]), 4, 1, "queue", [r]);
    expect(res.capacity).toBe(1);
    expect(res.dropped).toHaveLength(0);
    expect(res.rounds.map((rd) => rd.map((a) => a.token))).toEqual([[0, 3], [1], [2]]);
  });
});

function view(partial: Partial<WorkerLoadView> = {}): WorkerLoadView {
  return {
    outstanding: () => 0,
    latencyMs: () => 0,
    resident: () => true,
    healthy: () => true,
    ...partial,
  };
}

function chooser(v: WorkerLoadView): ReplicaChooser {
  return { weights: { cacheAffinity: 1, load: 1, latency: 0.5 }, loadScale: 16, view: v };
}

describe("layoutRound", () => {
  it("groups rows by expert into contiguous slices, one batch per worker", () => {
    const r1 = routing(
      [
        [0, 1],
        [1, 2],
      ],
      [
        [0.5, 0.5],
        [0.5, 0.5],
      ],
    );
    const r2 = routing([[2, 0]], [[0.5, 0.5]]);
    const as = collectAssignments([r1, r2]);
    const lay = layoutRound(as, {
      layer: 0,
      replicas: [[0], [1], [0]],
      workers: 2,
      chooser: chooser(view()),
      splitTokens: 64,
    });
    expect(lay.expertsTouched).toBe(3);
    expect(lay.batches.map((b) => b.worker)).toEqual([0, 1]);
    const b0 = lay.batches[0];
    expect(b0.slices).toEqual([
      { expert: 0, offset: 0, count: 2 },
      { expert: 2, offset: 2, count: 2 },
    ]);
    expect(b0.rows.map((a) => [a.item, a.token])).toEqual([
      [0, 0],
      [1, 0],
      [0, 1],
      [1, 0],
    ]);
    expect(lay.batches[1].slices).toEqual([{ expert: 1, offset: 0, count: 2 }]);
  });

  it("leaves a worker out for one expert alone (excludeFor), the others' rows may still go to it", () => {
    const as = collectAssignments([routing([[0, 1]], [[0.5, 0.5]])]);
    const lay = layoutRound(as, {
      layer: 0,
      replicas: [
        [0, 1],
        [0, 1],
      ],
      workers: 2,
      chooser: chooser(view()),
      splitTokens: 64,
      excludeFor: new Map([[1, new Set([0])]]), // worker 0 refused expert 1
    });
    expect(lay.batches.map((b) => [b.worker, b.slices.map((x) => x.expert)])).toEqual([
      [0, [0]],
      [1, [1]],
    ]);
    // both exclusions apply: worker 1 out for every expert, worker 0 for expert 1, which has no replica left
    const both = layoutRound(as, {
      layer: 0,
      replicas: [[0, 1], [0]],
      workers: 2,
      chooser: chooser(view()),
      splitTokens: 64,
      exclude: new Set([1]),
      excludeFor: new Map([[1, new Set([0])]]),
    });
    expect(both.batches.map((b) => b.worker)).toEqual([0]);
    expect(both.unplaced.map((a) => a.expert)).toEqual([1]);
  });

  it("prefers a resident replica, then the less loaded one", () => {
    const r = routing([[0]], [[1]]);
    const as = collectAssignments([r]);
    const opts = (v: WorkerLoadView) => ({
      layer: 3,
      replicas: [[0, 1]],
      workers: 2,
      chooser: chooser(v),
      splitTokens: 64,
    });
    expect(layoutRound(as, opts(view({ resident: (w) => w === 1 }))).batches[0].worker).toBe(1);
    expect(layoutRound(as, opts(view({ outstanding: (w) => (w === 0 ? 100 : 0) }))).batches[0].worker).toBe(1);
    expect(layoutRound(as, opts(view({ latencyMs: (w) => (w === 0 ? 50 : 5) }))).batches[0].worker).toBe(1);
    expect(layoutRound(as, opts(view())).batches[0].worker).toBe(0); // tie -> lower index
    // A cache miss (1) outweighs small load differences (16 tokens = 1).
    expect(
      layoutRound(as, opts(view({ resident: (w) => w === 0, outstanding: (w) => (w === 0 ? 8 : 0) }))).batches[0]
        .worker,
    ).toBe(0);
  });

  it("measures latency against the fastest replica it may choose, not one that is down, excluded or not serving", () => {
    const r = routing([[0]], [[1]]);
    const as = collectAssignments([r]);
    // w1 and w2 are 10 and 13 ms, only w2 holds the expert: a 0.15 latency penalty against a cache miss of 1.
    // w0 answered fast (1 ms, errors are fast too) but cannot take the rows: against it the 3 ms gap would cost
    // 1.5 and outweigh the cache miss.
    const latencyMs = (w: number) => [1, 10, 13][w];
    const resident = (w: number) => w === 2;
    const opts = (v: WorkerLoadView, exclude?: ReadonlySet<number>) => ({
      layer: 0,
      replicas: [[0, 1, 2]],
      workers: 3,
      chooser: chooser(v),
      splitTokens: 64,
      exclude,
    });
    const down = view({ latencyMs, resident, healthy: (w) => w !== 0 });
    expect(layoutRound(as, opts(down)).batches[0].worker).toBe(2);
    expect(layoutRound(as, opts(view({ latencyMs, resident }), new Set([0]))).batches[0].worker).toBe(2);
    const notServing = view({ latencyMs, resident, serves: (w) => w !== 0 });
    expect(layoutRound(as, opts(notServing)).batches[0].worker).toBe(2);
  });

  it("water-fills groups across replicas and splits hot groups", () => {
    const r = routing(
      Array.from({ length: 8 }, (_, t) => [t < 6 ? 0 : 1]),
      Array.from({ length: 8 }, () => [1]),
    );
    const lay = layoutRound(collectAssignments([r]), {
      layer: 0,
      replicas: [
        [0, 1],
        [0, 1],
      ],
      workers: 2,
      chooser: chooser(view()),
      splitTokens: 4,
    });
    // expert 0 (6 rows) splits 3/3 over both workers; expert 1 (2 rows) goes to either.
    const rowsPer = lay.batches.map((b) => b.rows.length).sort();
    expect(rowsPer.reduce((a, b) => a + b, 0)).toBe(8);
    expect(lay.batches.every((b) => b.slices.some((s) => s.expert === 0 && s.count === 3))).toBe(true);
  });

  it("takes a replica whose worker has the expert loaded first, and splits a hot group over those only", () => {
    const r = routing(
      Array.from({ length: 8 }, () => [0]),
      Array.from({ length: 8 }, () => [1]),
    );
    // worker 0 is the better choice by load, but has not loaded expert 0 yet (a plan on its way)
    const v = view({ outstanding: (w) => (w === 1 ? 100 : 0), serves: (w, _l, e) => !(w === 0 && e === 0) });
    const lay = layoutRound(collectAssignments([r]), {
      layer: 0,
      replicas: [[0, 1]],
      workers: 2,
      chooser: chooser(v),
      splitTokens: 4,
    });
    expect(lay.batches.map((b) => [b.worker, b.rows.length])).toEqual([[1, 8]]);
    // when no replica has it loaded, the choice is made as before (the worker's answer then says what is wrong)
    const none = layoutRound(collectAssignments([r]), {
      layer: 0,
      replicas: [[0, 1]],
      workers: 2,
      chooser: chooser(view({ outstanding: (w) => (w === 1 ? 100 : 0), serves: () => false })),
      splitTokens: 64,
    });
    expect(none.batches.map((b) => b.worker)).toEqual([0]);
  });

  it("reports assignments with no healthy replica as unplaced", () => {
    const r = routing([[0], [1]], [[1], [1]]);
    const lay = layoutRound(collectAssignments([r]), {
      layer: 0,
      replicas: [[0], [1]],
      workers: 2,
      chooser: chooser(view({ healthy: (w) => w !== 1 })),
      splitTokens: 64,
    });
    expect(lay.unplaced.map((a) => a.expert)).toEqual([1]);
    expect(lay.batches).toHaveLength(1);
  });
});

describe("combineF32", () => {
  it("sums weighted rows in slot order for fp32 and bf16", () => {
    const d = 3;
    const resA = Float32Array.from([1, 2, 3, 10, 20, 30]); // rows 0, 1
    const resB = Float32Array.from([-1, 0.5, 4]);
    const input = {
      tokens: 2,
      d,
      slots: 2,
      weights: Float32Array.from([0.75, 0.25, 1, 0]),
      // token 0: slot0 -> A row 1, slot1 -> B row 0; token 1: slot0 -> A row 0, slot1 empty
      locations: Int32Array.from([0, 1, 1, 0, 0, 0, -1, 0]),
    };
    const f = combineF32({ ...input, dtype: DType.FLOAT32, results: [resA, resB] });
    expect(Array.from(f)).toEqual([0.75 * 10 - 0.25, 0.75 * 20 + 0.125, 0.75 * 30 + 1, 1, 2, 3]);
    const b = combineF32({ ...input, dtype: DType.BFLOAT16, results: [f32ToBf16(resA), f32ToBf16(resB)] });
    expect(Array.from(b)).toEqual(Array.from(f)); // all inputs are exact in bf16
  });
});

describe("hasNonFinite / firstNonFinite (combined rows)", () => {
  it("find every Inf and NaN pattern at any place, in every dtype, at any alignment, and nothing in finite rows", () => {
    let seed = 99;
    const rnd = () => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed / 2 ** 32;
    };
    // all-ones exponents with every sign and a few mantissas; the largest finite values and their neighbours
    const bad = {
      [DType.FLOAT32]: [0x7f800000, 0xff800000, 0x7fc00000, 0x7f800001, 0xffffffff],
      [DType.BFLOAT16]: [0x7f80, 0xff80, 0x7fc0, 0x7f81, 0xffff],
      [DType.FLOAT16]: [0x7c00, 0xfc00, 0x7e00, 0x7c01, 0xffff],
    };
    const good = {
      [DType.FLOAT32]: [0x7f7fffff, 0xff7fffff, 0, 0x80000000, 0x00000001, 0x3f800000],
      [DType.BFLOAT16]: [0x7f7f, 0xff7f, 0, 0x8000, 0x0001, 0x3f80],
      [DType.FLOAT16]: [0x7bff, 0xfbff, 0, 0x8000, 0x0001, 0x3c00],
    };
    for (const dtype of [DType.FLOAT32, DType.BFLOAT16, DType.FLOAT16] as const) {
      const el = dtype === DType.FLOAT32 ? 4 : 2;
      for (const n of [0, 1, 2, 3, 4, 5, 7, 8, 37, 64, 1001]) {
        for (const offset of [0, el, 2 * el, 3 * el]) {
          const buf = new ArrayBuffer(offset + n * el + 8);
          const dst = dtype === DType.FLOAT32 ? new Float32Array(buf, offset, n) : new Uint16Array(buf, offset, n);
          const bits = dtype === DType.FLOAT32 ? new Uint32Array(buf, offset, n) : (dst as Uint16Array);
          for (let i = 0; i < n; i++) bits[i] = good[dtype][Math.floor(rnd() * good[dtype].length)];
          // bytes around the rows are not theirs: an Inf there must not count
          new Uint8Array(buf).fill(0xff, 0, offset);
          new Uint8Array(buf).fill(0xff, offset + n * el);
          const where = `${DType[dtype]} n=${n} offset=${offset}`;
          expect(hasNonFinite(dst, dtype), where).toBe(false);
          expect(firstNonFinite(dst, dtype), where).toBe(-1);
          for (const i of new Set([0, n - 1, Math.floor(n / 2), Math.floor(rnd() * n)])) {
            if (i < 0 || i >= n) continue;
            const keep = bits[i];
            for (const b of bad[dtype]) {
              bits[i] = b;
              expect(hasNonFinite(dst, dtype), `${where} at ${i}: ${b.toString(16)}`).toBe(true);
              expect(firstNonFinite(dst, dtype), `${where} at ${i}`).toBe(i);
            }
            bits[i] = keep;
          }
        }
      }
    }
  });
});

// combineInto's answer (the native combine's store-loop test, or hasNonFinite after the TypeScript one): what the router
// refuses a reply on.
describe("combineInto says whether it wrote an Inf or NaN", () => {
  it("for one slot and several, with and without a base, in every dtype, where the finite sum overflows", () => {
    const d = 19;
    const row = Float32Array.from({ length: 2 * d }, (_, i) => 1 + (i % 7) / 8);
    for (const dtype of [DType.FLOAT32, DType.BFLOAT16, DType.FLOAT16]) {
      const conv = (x: Float32Array) =>
        dtype === DType.FLOAT32 ? x : dtype === DType.BFLOAT16 ? f32ToBf16(x) : f32ToF16(x);
      for (const slots of [1, 2]) {
        for (const base of [null, new Float32Array(d)]) {
          for (const [w, col, want] of [
            [0.5, -1, false],
            [3e38, -1, true], // every product of 3e38 and >= 1 overflows fp32
            [1e38, 3, true], // only column 3's row value is huge: one element alone
          ] as const) {
            const results = Float32Array.from(row);
            if (col >= 0) results[col] = 1e10;
            const weights = new Float32Array(slots).fill(w);
            const locations = Int32Array.from(slots === 1 ? [0, 0] : [0, 0, 0, 1]);
            const input = { tokens: 1, d, dtype, slots, weights, locations, results: [conv(results)], base };
            const dst = dtype === DType.FLOAT32 ? new Float32Array(d) : new Uint16Array(d);
            const where = `${DType[dtype]} slots ${slots} base ${!!base} w ${w} col ${col}`;
            // fp16 overflows at 65504: a weight of 0.5 times rows near 2 stays finite, the others do not.
            expect(combineInto(input, dst), where).toBe(want);
            expect(hasNonFinite(dst, dtype), where).toBe(want);
          }
        }
      }
    }
  });
  it("at bf16's rounding edge: a sum from 0x7f7f8000 up narrows to Inf, one just below to the largest finite", () => {
    const d = 3;
    const bits = (u: number) => new Float32Array(Uint32Array.of(u).buffer)[0];
    for (const [u, want] of [
      [0x7f7f7fff, false],
      [0x7f7f8000, true],
      [0xff7f8000, true], // -Inf
      [0x7f800001, true], // NaN
    ] as const) {
      const base = Float32Array.of(1, bits(u), -2);
      const input = {
        tokens: 1,
        d,
        dtype: DType.BFLOAT16,
        slots: 1,
        weights: Float32Array.of(0),
        locations: Int32Array.of(0, 0),
        results: [f32ToBf16(Float32Array.of(1, 1, 1))],
        base,
      };
      const dst = new Uint16Array(d);
      expect(combineInto(input, dst), u.toString(16)).toBe(want);
      expect(hasNonFinite(dst, DType.BFLOAT16), u.toString(16)).toBe(want);
    }
  });
});

// combineInto runs the native addon when it is built (native-combine.test.ts compares the two at scale).
describe.each([
  ["combineInto", combineInto],
  ["combineIntoTs", combineIntoTs],
])("%s", (name, combineInto) => {
  it("writes the same bits as combineF32 + rounding, for every dtype, with a base, empty tokens and NaN/-0", () => {
    const d = 37; // odd width: no alignment assumptions
    const tokens = 4;
    const slots = 3;
    const rnd = (i: number) => Math.sin(i * 12.9898) * 43758.5453 - Math.floor(Math.sin(i * 12.9898) * 43758.5453);
    const resA = Float32Array.from({ length: 3 * d }, (_, i) => (rnd(i) - 0.5) * 8);
    const resB = Float32Array.from({ length: 2 * d }, (_, i) => (rnd(i + 999) - 0.5) * 3);
    resA[5] = Number.NaN;
    resB[d + 2] = -0;
    const weights = Float32Array.from({ length: tokens * slots }, (_, i) => 0.1 + rnd(i + 77));
    // token 0: three slots; token 1: one slot (B row 1 only, holds -0); token 2: all empty; token 3: slot 1 and 2
    const locations = Int32Array.from([
      0, 0, 1, 0, 0, 2, /* t1 */ 1, 1, -1, 0, -1, 0, /* t2 */ -1, 0, -1, 0, -1, 0, /* t3 */ -1, 0, 0, 1, 1, 0,
    ]);
    for (const base of [null, Float32Array.from({ length: tokens * d }, (_, i) => rnd(i + 5000) - 0.5)]) {
      for (const dtype of [DType.FLOAT32, DType.BFLOAT16, DType.FLOAT16]) {
        const conv = (x: Float32Array) =>
          dtype === DType.FLOAT32 ? x : dtype === DType.BFLOAT16 ? f32ToBf16(x) : f32ToF16(x);
        const input = { tokens, d, dtype, slots, weights, locations, results: [conv(resA), conv(resB)], base };
        const want = valuesToBytes(combineF32(input), dtype);
        const dst = dtype === DType.FLOAT32 ? new Float32Array(tokens * d) : new Uint16Array(tokens * d);
        dst.fill(0x5555); // garbage: every element must be written
        combineInto(input, dst);
        expect(Buffer.from(dst.buffer).equals(Buffer.from(want)), `dtype ${DType[dtype]} base ${!!base}`).toBe(true);
        if (dtype === DType.FLOAT32) {
          if (name !== "combineInto") continue; // resultRows pairs with combineInto (native or not), not the TS one
          // fp32 rows at an odd address go through resultRows (bytes for the native combine, aligned copy otherwise).
          const oddRows = input.results.map((x) => {
            const u = new Uint8Array(x.byteLength + 1);
            u.set(new Uint8Array(x.buffer, x.byteOffset, x.byteLength), 1);
            return resultRows({ data: u.subarray(1), dtype });
          });
          dst.fill(0x5555);
          combineInto({ ...input, results: oddRows }, dst);
          expect(Buffer.from(dst.buffer).equals(Buffer.from(want)), `unaligned fp32 base ${!!base}`).toBe(true);
          continue;
        }
        // Half rows at an odd address (as grpc-js may hand them over) are read as bytes, same result.
        const odd = (x: Float32Array | Uint16Array) => {
          const bytes = new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
          const u = new Uint8Array(bytes.length + 1);
          u.set(bytes, 1);
          return u.subarray(1);
        };
        dst.fill(0x5555);
        combineInto({ ...input, results: input.results.map(odd) }, dst);
        expect(Buffer.from(dst.buffer).equals(Buffer.from(want)), `unaligned ${DType[dtype]} base ${!!base}`).toBe(
          true,
        );
      }
    }
  });
});

describe("Batcher", () => {
  afterEach(() => vi.useRealTimers());

  it("merges within maxWait and flushes at maxBatchTokens", () => {
    vi.useFakeTimers();
    const flushed: number[][] = [];
    const b = new Batcher<{ tokens: number; enqueuedAt: number; id: number }>(
      { enabled: true, maxBatchTokens: 4, maxWaitMs: 5 },
      (_k, items) => {
        flushed.push(items.map((i) => i.id));
      },
    );
    b.add("k", { tokens: 1, enqueuedAt: 0, id: 1 });
    b.add("k", { tokens: 1, enqueuedAt: 0, id: 2 });
    b.add("other", { tokens: 1, enqueuedAt: 0, id: 9 });
    expect(flushed).toEqual([]);
    vi.advanceTimersByTime(5);
    expect(flushed).toEqual([[1, 2], [9]]);
    b.add("k", { tokens: 3, enqueuedAt: 0, id: 3 });
    b.add("k", { tokens: 1, enqueuedAt: 0, id: 4 }); // reaches 4 -> flush now
    expect(flushed.at(-1)).toEqual([3, 4]);
    b.add("k", { tokens: 3, enqueuedAt: 0, id: 5 });
    b.add("k", { tokens: 3, enqueuedAt: 0, id: 6 }); // would overflow -> 5 leaves first
    expect(flushed.at(-1)).toEqual([5]);
    expect(b.queuedTokens).toBe(3);
    vi.advanceTimersByTime(5);
    expect(flushed.at(-1)).toEqual([6]);
  });

  /** A batcher (maxBatchTokens 100, maxWait 2 ms, fake timers) whose flushes run until the test calls finish[i](). */
  function openFlushes(o: { flushesInFlight?: number }) {
    vi.useFakeTimers();
    const flushed: number[][] = [];
    const finish: (() => void)[] = [];
    const b = new Batcher<{ tokens: number; enqueuedAt: number; id: number }>(
      { enabled: true, maxBatchTokens: 100, maxWaitMs: 2, ...o },
      (_k, items) => {
        flushed.push(items.map((i) => i.id));
        return new Promise<void>((r) => {
          finish.push(r);
        });
      },
    );
    return { b, flushed, finish };
  }

  it("holds requests behind a running flush of the same key, then sends them together", async () => {
    const { b, flushed, finish } = openFlushes({});
    b.add("k", { tokens: 1, enqueuedAt: 0, id: 1 });
    vi.advanceTimersByTime(2);
    expect(flushed).toEqual([[1]]); // idle pipeline: maxWait applies
    b.add("k", { tokens: 1, enqueuedAt: 0, id: 2 });
    b.add("k", { tokens: 1, enqueuedAt: 0, id: 3 });
    b.add("other", { tokens: 1, enqueuedAt: 0, id: 9 });
    vi.advanceTimersByTime(10);
    expect(flushed).toEqual([[1], [9]]); // key k is busy: 2 and 3 wait; another key is not held
    finish[0](); // the flush of [1] completes
    await vi.advanceTimersByTimeAsync(0);
    expect(flushed.at(-1)).toEqual([2, 3]); // left together the moment the running flush completed
    b.add("k", { tokens: 1, enqueuedAt: 0, id: 4 });
    await vi.advanceTimersByTimeAsync(HOLD_CAP_MS);
    expect(flushed.at(-1)).toEqual([4]); // a stuck flush holds nobody past the cap
  });

  it("flushesInFlight: that many flushes of a key run at once, the next one is held until one completes", async () => {
    const { b, flushed, finish } = openFlushes({ flushesInFlight: 2 });
    b.add("k", { tokens: 1, enqueuedAt: 0, id: 1 });
    vi.advanceTimersByTime(2);
    b.add("k", { tokens: 1, enqueuedAt: 0, id: 2 });
    vi.advanceTimersByTime(2);
    expect(flushed).toEqual([[1], [2]]); // one running: the second still leaves after maxWait
    b.add("k", { tokens: 1, enqueuedAt: 0, id: 3 });
    b.add("k", { tokens: 1, enqueuedAt: 0, id: 4 });
    vi.advanceTimersByTime(10);
    expect(flushed).toHaveLength(2); // two running: 3 and 4 wait
    finish[1](); // either running flush completing frees a place
    await vi.advanceTimersByTimeAsync(0);
    expect(flushed.at(-1)).toEqual([3, 4]);
    finish[0](); // [1] done: [3, 4] runs alone
    await vi.advanceTimersByTimeAsync(0);
    b.add("k", { tokens: 1, enqueuedAt: 0, id: 5 }); // one running: not held, maxWait applies
    finish[2](); // [3, 4] done: 5 was not held, so it does not leave early
    await vi.advanceTimersByTimeAsync(1);
    expect(flushed).toHaveLength(3);
    await vi.advanceTimersByTimeAsync(1);
    expect(flushed.at(-1)).toEqual([5]);
  });

  it("reports each request that stays queued (onQueued), held or not, and none that leaves at once", async () => {
    vi.useFakeTimers();
    const queued: number[] = [];
    const finish: (() => void)[] = [];
    const b = new Batcher<{ tokens: number; enqueuedAt: number; id: number }>(
      { enabled: true, maxBatchTokens: 100, maxWaitMs: 2 },
      () =>
        new Promise<void>((r) => {
          finish.push(r);
        }),
      (_k, item) => queued.push(item.id),
    );
    b.add("k", { tokens: 1, enqueuedAt: 0, id: 1 }); // idle: waits maxWait, not held
    vi.advanceTimersByTime(2);
    b.add("k", { tokens: 1, enqueuedAt: 0, id: 2 }); // [1] runs: held
    b.add("k", { tokens: 1, enqueuedAt: 0, id: 3 }); // joins the held queue
    b.add("other", { tokens: 1, enqueuedAt: 0, id: 9 }); // another key is not held
    expect(queued).toEqual([1, 2, 3, 9]);
    b.add("big", { tokens: 100, enqueuedAt: 0, id: 5 }); // flushes at once (maxBatchTokens): not reported
    expect(queued).toEqual([1, 2, 3, 9]);
    finish[0]();
    await vi.advanceTimersByTimeAsync(0); // [2, 3] leave; one running again
    b.add("k", { tokens: 1, enqueuedAt: 0, id: 4 });
    expect(queued).toEqual([1, 2, 3, 9, 4]);
  });

  it("raising flushesInFlight frees requests held behind a running flush at once", async () => {
    const { b, flushed } = openFlushes({}); // no flush is finished here
    b.add("k", { tokens: 1, enqueuedAt: 0, id: 1 });
    vi.advanceTimersByTime(2);
    b.add("k", { tokens: 1, enqueuedAt: 0, id: 2 }); // held behind [1]
    vi.advanceTimersByTime(10);
    expect(flushed).toEqual([[1]]);
    b.setOptions({ enabled: true, maxBatchTokens: 100, maxWaitMs: 2, flushesInFlight: 2 });
    expect(flushed).toEqual([[1], [2]]);
  });

  it("flushes each request alone when disabled", () => {
    const flushed: number[][] = [];
    const b = new Batcher<{ tokens: number; enqueuedAt: number; id: number }>(
      { enabled: false, maxBatchTokens: 4, maxWaitMs: 5 },
      (_k, items) => {
        flushed.push(items.map((i) => i.id));
      },
    );
    b.add("k", { tokens: 1, enqueuedAt: 0, id: 1 });
    b.add("k", { tokens: 1, enqueuedAt: 0, id: 2 });
    expect(flushed).toEqual([[1], [2]]);
  });
});

describe("withSharedSlices", () => {
  it("appends one slot per slice to every token, weighted 1 or by the per-token scale", () => {
    const r: TokenRouting = {
      tokens: 2,
      slots: 2,
      experts: Int32Array.from([3, 1, 0, -1]),
      weights: Float32Array.from([0.6, 0.4, 1, 0]),
      ranking: Int32Array.from([3, 1, 0, 2, 0, 1, 2, 3]),
    };
    const w = withSharedSlices(r, 4, 2, null);
    expect(w.slots).toBe(4);
    expect([...w.experts]).toEqual([3, 1, 4, 5, 0, -1, 4, 5]);
    expect([...w.weights]).toEqual([0.6, 0.4, 1, 1, 1, 0, 1, 1].map(Math.fround));
    expect(w.ranking).toBe(r.ranking); // spill still ranks the routed experts only
    const scaled = withSharedSlices(r, 4, 1, Float32Array.from([0.25, 0.5]));
    expect([...scaled.experts]).toEqual([3, 1, 4, 0, -1, 4]);
    expect([...scaled.weights]).toEqual([0.6, 0.4, 0.25, 1, 0, 0.5].map(Math.fround));
    expect([...r.experts]).toEqual([3, 1, 0, -1]); // the input is left as it was
  });
});

describe("chooseReplica and a latency reading that goes stale", () => {
  const choose = (v: WorkerLoadView) => chooseReplica(chooser(v), 0, 0, [0, 1], new Float64Array(2));

  it("fades a stale penalty towards the fastest reading, to nothing, so the copy wins ties again", () => {
    const latencyMs = (w: number) => (w === 0 ? 5 : 1);
    expect(choose(view({ latencyMs, latencyAgeMs: () => 0 }))).toBe(1);
    // w0's 5 ms is 2 s old, w1's fresh: the stale penalty is gone, the tie goes to the lower index
    expect(choose(view({ latencyMs, latencyAgeMs: (w) => (w === 0 ? 2000 : 0) }))).toBe(0);
    // it fades to the fastest, not below it: a long-idle copy does not read fastest and draw every batch
    const idle = view({
      outstanding: (w) => w,
      latencyMs: (w) => (w === 0 ? 1 : 5),
      latencyAgeMs: (w) => (w === 1 ? 60_000 : 0),
    });
    expect(choose(idle)).toBe(0);
  });

  it("gives a tie to the copy heard from longest ago, then to the lower index (light load takes turns)", () => {
    expect(choose(view({ latencyAgeMs: (w) => (w === 1 ? 30 : 2) }))).toBe(1);
    expect(choose(view({ latencyAgeMs: () => 5 }))).toBe(0);
    expect(choose(view({ outstanding: (w) => w, latencyAgeMs: (w) => (w === 1 ? 30 : 2) }))).toBe(0); // not a tie
  });

  it("counts a copy never sampled (age Infinity) as the oldest on a tie, and fades nothing of its reading", () => {
    const never = Number.POSITIVE_INFINITY;
    // a new copy beside one sampled long ago wins the tie: else it would get no batch at light load
    expect(choose(view({ latencyAgeMs: (w) => (w === 1 ? never : 60_000) }))).toBe(1);
    // among copies never sampled (a fresh router), the lower index: the first batches go to the first copy
    expect(choose(view({ latencyAgeMs: () => never }))).toBe(0);
    // a latency it reads all the same (Prometheus' run time) is not ours to fade: its penalty stays whole
    expect(choose(view({ latencyMs: (w) => (w === 0 ? 10 : 1), latencyAgeMs: (w) => (w === 0 ? never : 0) }))).toBe(1);
  });

  it("costs nothing for a gap within round-trip noise (up to 1.5x), then the gap beyond it", () => {
    const load = (w: number) => (w === 0 ? 1 : 0); // w0 has one row more (1/16 with loadScale 16)
    expect(choose(view({ outstanding: load, latencyMs: (w) => (w === 1 ? 1.4 : 1) }))).toBe(1);
    expect(choose(view({ outstanding: load, latencyMs: (w) => (w === 1 ? 1.8 : 1) }))).toBe(0);
  });

  it("gives a copy frozen out by one slow sample its even share back (simulated clock)", () => {
    // Both copies answer a row in 2 ms. w0's average reads 10 ms from one slow batch (a cold start, a GC pause).
    // Each ms one row is chosen; it stays outstanding until answered, when its worker's average takes the sample.
    // Before the fade, w0 lost every choice for good: no batch, no sample, no correction.
    const avg: LatencyAverage[] = [
      { ms: 10, at: 0 },
      { ms: 2, at: 0 },
    ];
    const inFlight: { w: number; until: number }[] = [];
    let now = 0;
    const v = view({
      outstanding: (w) => inFlight.filter((f) => f.w === w).length,
      latencyMs: (w) => avg[w].ms,
      latencyAgeMs: (w) => now - avg[w].at,
    });
    const rows = [0, 0];
    let firstBack = -1;
    for (now = 1; now <= 8000; now++) {
      while (inFlight.length > 0 && inFlight[0].until <= now) {
        const f = inFlight.shift()!;
        avg[f.w] = withSample(avg[f.w], 2, now);
      }
      const w = choose(v);
      if (w === 0 && firstBack < 0) firstBack = now;
      if (now > 4000) rows[w]++;
      inFlight.push({ w, until: now + 2 });
    }
    expect(firstBack).toBeGreaterThan(0);
    expect(firstBack).toBeLessThan(2000);
    expect(avg[0].ms).toBeLessThan(3); // corrected by the samples it got
    expect(rows[0] / (rows[0] + rows[1])).toBeCloseTo(0.5, 1); // the planner's even split, last 4 s
  });
});
