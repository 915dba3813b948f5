import { describe, expect, it } from "vitest";
import { isSwitchyardError, type SwitchyardError } from "./errors.js";
import { DType, Tensor } from "./gen/switchyard/v1/tensor.js";
import {
  bf16BitsToF32,
  bf16ToF32,
  bytesToFloat32,
  decodeTensor,
  dtypeSize,
  encodeTensor,
  f16BitsToF32,
  f16ToF32,
  f32ToBf16,
  f32ToBf16Bits,
  f32ToF16,
  f32ToF16Bits,
  roundTripHalf,
} from "./tensor.js";

const bitsToF32 = (u: number) => new Float32Array(new Uint32Array([u]).buffer)[0];
const f32Bits = (x: number) => new Uint32Array(new Float32Array([x]).buffer)[0];

// Independent oracle: nearest representable value by binary search over the (monotonic) positive bit patterns,
// computed in float64, ties to the even bit pattern; values at or past the midpoint above max overflow to Inf.
function nearestHalfBits(x: number, widen: (h: number) => number, maxFinite: number, infBits: number): number {
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  const maxVal = widen(maxFinite);
  const nextPow = widen(infBits - 1) + (widen(infBits - 1) - widen(infBits - 2)); // value one ulp past max
  if (a >= (maxVal + nextPow) / 2) return sign | infBits;
  let lo = 0;
  let hi = maxFinite;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (widen(mid) <= a) lo = mid;
    else hi = mid - 1;
  }
  if (lo === maxFinite) return sign | lo;
  const dLo = a - widen(lo);
  const dHi = widen(lo + 1) - a;
  if (dLo < dHi) return sign | lo;
  if (dHi < dLo) return sign | (lo + 1);
  return sign | (lo % 2 === 0 ? lo : lo + 1);
}

function randomF32Bits(n: number, seed: number): Uint32Array {
  let s = seed >>> 0;
  const out = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    let r = s ^ (s >>> 15);
    r = Math.imul(r, 0x2c1b3c6d) >>> 0;
    out[i] = (r ^ (r >>> 12)) >>> 0;
  }
  return out;
}

describe("bf16 conversion", () => {
  it("rounds to nearest even at ties and above/below ties", () => {
    expect(f32ToBf16Bits(1)).toBe(0x3f80);
    expect(f32ToBf16Bits(bitsToF32(0x3f808000))).toBe(0x3f80); // tie, even stays
    expect(f32ToBf16Bits(bitsToF32(0x3f818000))).toBe(0x3f82); // tie, odd rounds up
    expect(f32ToBf16Bits(bitsToF32(0x3f808001))).toBe(0x3f81);
    expect(f32ToBf16Bits(bitsToF32(0x3f807fff))).toBe(0x3f80);
    expect(f32ToBf16Bits(bitsToF32(0xbf818000))).toBe(0xbf82);
  });
  it("keeps Inf, overflows to Inf, keeps NaN quiet, handles subnormals and signed zero", () => {
    expect(f32ToBf16Bits(Infinity)).toBe(0x7f80);
    expect(f32ToBf16Bits(-Infinity)).toBe(0xff80);
    expect(f32ToBf16Bits(bitsToF32(0x7f7fffff))).toBe(0x7f80); // f32 max rounds up to Inf
    expect(f32ToBf16Bits(-bitsToF32(0x7f7fffff))).toBe(0xff80);
    const sNaN = new Float32Array(new Uint32Array([0x7f800001]).buffer);
    const h = f32ToBf16(sNaN)[0];
    expect(h & 0x7fc0).toBe(0x7fc0); // exponent all ones + quiet bit: a NaN, not Inf
    expect(Number.isNaN(bf16BitsToF32(h))).toBe(true);
    expect(Number.isNaN(bf16BitsToF32(f32ToBf16Bits(Number.NaN)))).toBe(true);
    expect(f32ToBf16Bits(bitsToF32(0x00010000))).toBe(0x0001); // smallest bf16 subnormal, exact
    expect(f32ToBf16Bits(bitsToF32(0x00008000))).toBe(0x0000); // tie to even 0
    expect(f32ToBf16Bits(bitsToF32(0x00018000))).toBe(0x0002); // tie to even 2
    expect(f32ToBf16Bits(-0)).toBe(0x8000);
    expect(Object.is(bf16BitsToF32(0x8000), -0)).toBe(true);
  });
  it("widening is exact and narrowing inverts it for all 65536 patterns (NaNs stay NaN)", () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const back = f32ToBf16(bf16ToF32(all));
    for (let i = 0; i < 65536; i++) {
      const nan = (i & 0x7f80) === 0x7f80 && (i & 0x7f) !== 0;
      if (nan) expect((back[i] & 0x7f80) === 0x7f80 && (back[i] & 0x7f) !== 0).toBe(true);
      else if (back[i] !== i) throw new Error(`bf16 ${i.toString(16)} -> ${back[i].toString(16)}`);
    }
  });
  it("matches a float64 nearest-value oracle on random f32 bit patterns", () => {
    const bits = randomF32Bits(20000, 7);
    const src = new Float32Array(bits.buffer);
    const out = f32ToBf16(src);
    for (let i = 0; i < src.length; i++) {
      const x = src[i];
      if (Number.isNaN(x)) {
        expect(Number.isNaN(bf16BitsToF32(out[i]))).toBe(true);
        continue;
      }
      const want = nearestHalfBits(x, bf16BitsToF32, 0x7f7f, 0x7f80);
      if (out[i] !== want)
        throw new Error(`f32 ${bits[i].toString(16)}: got ${out[i].toString(16)}, want ${want.toString(16)}`);
    }
  });
});

describe("f16 conversion", () => {
  it("rounds to nearest even, overflows to Inf, rounds subnormals", () => {
    expect(f32ToF16Bits(1)).toBe(0x3c00);
    expect(f32ToF16Bits(65504)).toBe(0x7bff);
    expect(f32ToF16Bits(65519.99)).toBe(0x7bff);
    expect(f32ToF16Bits(65520)).toBe(0x7c00); // tie past max goes to even = Inf
    expect(f32ToF16Bits(1e6)).toBe(0x7c00);
    expect(f32ToF16Bits(-1e6)).toBe(0xfc00);
    expect(f32ToF16Bits(1 + 2 ** -11)).toBe(0x3c00); // tie, even
    expect(f32ToF16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie, odd -> up
    expect(f32ToF16Bits(2 ** -24)).toBe(0x0001); // smallest subnormal
    expect(f32ToF16Bits(2 ** -25)).toBe(0x0000); // tie to even 0
    expect(f32ToF16Bits(1.5 * 2 ** -24)).toBe(0x0002); // tie to even 2
    expect(f32ToF16Bits(2 ** -25 * 1.0001)).toBe(0x0001);
    expect(f32ToF16Bits(2 ** -14 - 2 ** -25)).toBe(0x0400); // subnormal rounds up into the smallest normal
    expect(f32ToF16Bits(-0)).toBe(0x8000);
    expect(f16BitsToF32(0x0001)).toBe(2 ** -24);
    expect(f16BitsToF32(0x03ff)).toBe(1023 * 2 ** -24);
    expect(f16BitsToF32(0x7c00)).toBe(Infinity);
    expect(f16BitsToF32(0xfc00)).toBe(-Infinity);
    expect(Number.isNaN(f16BitsToF32(0x7c01))).toBe(true);
    const h = f32ToF16(new Float32Array(new Uint32Array([0x7f800001]).buffer))[0];
    expect(h & 0x7e00).toBe(0x7e00);
    expect(Number.isNaN(f16BitsToF32(f32ToF16Bits(Number.NaN)))).toBe(true);
  });
  it("widening is exact and narrowing inverts it for all 65536 patterns", () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const wide = f16ToF32(all);
    const back = f32ToF16(wide);
    for (let i = 0; i < 65536; i++) {
      const nan = (i & 0x7c00) === 0x7c00 && (i & 0x3ff) !== 0;
      if (nan) expect(Number.isNaN(wide[i])).toBe(true);
      else if (back[i] !== i) throw new Error(`f16 ${i.toString(16)} -> ${back[i].toString(16)}`);
    }
    // widened finite values equal the textbook formula
    for (const i of [0x3555, 0x0200, 0x8001, 0x4248, 0x7bff]) {
      const e = (i >>> 10) & 0x1f;
      const m = i & 0x3ff;
      const v = e === 0 ? m * 2 ** -24 : (1 + m / 1024) * 2 ** (e - 15);
      expect(wide[i]).toBe(i & 0x8000 ? -v : v);
    }
  });
  it("matches a float64 nearest-value oracle on random f32 values near the f16 range", () => {
    const bits = randomF32Bits(30000, 11);
    // fold exponents into [2^-30, 2^20] so most values hit normal, subnormal and overflow paths
    for (let i = 0; i < bits.length; i++) {
      const e = 97 + (((bits[i] >>> 23) & 0xff) % 50);
      bits[i] = (bits[i] & 0x807fffff) | (e << 23);
    }
    const src = new Float32Array(bits.buffer);
    const out = f32ToF16(src);
    for (let i = 0; i < src.length; i++) {
      const want = nearestHalfBits(src[i], f16BitsToF32, 0x7bff, 0x7c00);
      if (out[i] !== want)
        throw new Error(`f32 ${bits[i].toString(16)}: got ${out[i].toString(16)}, want ${want.toString(16)}`);
    }
  });
});

function expectInvalid(fn: () => unknown, message: string, field?: string): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(isSwitchyardError(err, "INVALID_ARGUMENT"), `expected INVALID_ARGUMENT, got ${String(err)}`).toBe(true);
  expect((err as SwitchyardError).message).toBe(message);
  if (field) expect((err as SwitchyardError).field).toBe(field);
}

describe("decodeTensor validation", () => {
  const good = () => encodeTensor(new Float32Array(8), [2, 4], DType.FLOAT32);
  it("rejects a missing tensor", () =>
    expectInvalid(() => decodeTensor(undefined, "hidden"), "hidden: required", "hidden"));
  it("rejects an unset dtype", () =>
    expectInvalid(
      () => decodeTensor({ ...good(), dtype: DType.DTYPE_UNSPECIFIED }, "hidden"),
      "hidden.dtype: must be set (FLOAT32, BFLOAT16, FLOAT16 or INT32)",
      "hidden.dtype",
    ));
  it("rejects an unknown dtype", () =>
    expectInvalid(() => decodeTensor({ ...good(), dtype: 9 as DType }, "hidden"), "hidden.dtype: unknown dtype 9"));
  it("rejects a dtype the caller does not allow", () => {
    expectInvalid(() => decodeTensor(good(), "w", { dtype: DType.INT32 }), "w.dtype: expected INT32, got FLOAT32");
    expectInvalid(
      () =>
        decodeTensor(encodeTensor(new Int32Array(2), [2], DType.INT32), "hidden", {
          dtype: [DType.FLOAT32, DType.BFLOAT16],
        }),
      "hidden.dtype: expected one of FLOAT32, BFLOAT16, got INT32",
    );
  });
  it("rejects a missing shape", () =>
    expectInvalid(() => decodeTensor({ ...good(), shape: [] }, "hidden"), "hidden.shape: required (rank >= 1)"));
  it("rejects a wrong rank", () => {
    expectInvalid(() => decodeTensor(good(), "hidden", { rank: 3 }), "hidden.shape: expected rank 3, got 2 ([2, 4])");
    expectInvalid(
      () => decodeTensor(good(), "hidden", { shape: [2] }),
      "hidden.shape: expected rank 1, got 2 ([2, 4])",
    );
  });
  it("rejects a wrong dim and names it", () => {
    const t = encodeTensor(new Float32Array(2 * 4095), [2, 4095], DType.FLOAT32);
    expectInvalid(
      () => decodeTensor(t, "hidden", { shape: [null, 4096] }),
      "hidden.shape[1]: expected 4096, got 4095",
      "hidden.shape[1]",
    );
  });
  it("rejects a non-integer or negative dim (in-process callers)", () => {
    expectInvalid(
      () => decodeTensor({ ...good(), shape: [2, -4] }, "x"),
      "x.shape[1]: must be a non-negative integer, got -4",
    );
    expectInvalid(
      () => decodeTensor({ ...good(), shape: [2.5, 4] }, "x"),
      "x.shape[0]: must be a non-negative integer, got 2.5",
    );
  });
  it("refuses to encode a dim the wire's uint32 cannot carry (it would go out as its low 32 bits)", () => {
    expectInvalid(
      () => encodeTensor(new Float32Array(0), [2 ** 32, 0], DType.FLOAT32),
      "shape[0]: must be at most 4294967295 (uint32), got 4294967296",
    );
  });
  it("rejects a byte length that does not match the shape", () => {
    const t = good();
    expectInvalid(
      () => decodeTensor({ ...t, data: t.data.subarray(0, 30) }, "hidden"),
      "hidden.data: expected 32 bytes ([2, 4] × 4 bytes FLOAT32), got 30",
      "hidden.data",
    );
    const h = encodeTensor(new Float32Array(3), [3], DType.BFLOAT16);
    expectInvalid(
      () => decodeTensor({ ...h, shape: [4] }, "w"),
      "w.data: expected 8 bytes ([4] × 2 bytes BFLOAT16), got 6",
    );
  });
  it("rejects too many elements", () =>
    expectInvalid(
      () => decodeTensor(good(), "hidden", { maxElements: 7 }),
      "hidden.shape: 8 elements exceed the limit of 7",
    ));
  it("rejects bad encode input", () => {
    expectInvalid(
      () => encodeTensor(new Float32Array(3), [2, 2], DType.FLOAT32),
      "values: length 3 does not match shape [2, 2] (4 elements)",
    );
    expectInvalid(
      () => encodeTensor(new Int32Array(4), [4], DType.FLOAT32),
      "dtype: FLOAT32 needs Float32Array values",
    );
    expectInvalid(() => encodeTensor(new Float32Array(4), [4], DType.INT32), "dtype: INT32 needs Int32Array values");
    expectInvalid(() => encodeTensor(new Float32Array(4), [4], 0 as DType), "dtype: unknown dtype 0");
  });
  it("accepts zero-sized tensors", () => {
    const d = decodeTensor(encodeTensor(new Float32Array(0), [0, 4096], DType.BFLOAT16), "hidden", {
      shape: [null, 4096],
    });
    expect(d.values.length).toBe(0);
    expect(d.shape).toEqual([0, 4096]);
  });
});

describe("encode/decode round trips", () => {
  const special = new Float32Array([0, -0, 1, -1.5, 2.71, 1e-40, -1e-45, 65504, 1e30, Infinity, -Infinity, Number.NaN]);
  it("FLOAT32 round-trips bit-exactly through the protobuf wire", () => {
    const t = encodeTensor(special, [3, 4], DType.FLOAT32);
    const wire = Tensor.decode(Tensor.encode(t).finish());
    const d = decodeTensor(wire, "x", { shape: [3, 4], dtype: DType.FLOAT32 });
    expect(Array.from(new Uint32Array(d.values.buffer, d.values.byteOffset, d.values.length))).toEqual(
      Array.from(new Uint32Array(special.buffer)),
    );
  });
  it("INT32 round-trips", () => {
    const v = new Int32Array([0, -1, 2 ** 31 - 1, -(2 ** 31), 42]);
    const d = decodeTensor(Tensor.decode(Tensor.encode(encodeTensor(v, [5], DType.INT32)).finish()), "ids");
    expect(d.values).toBeInstanceOf(Int32Array);
    expect(Array.from(d.values)).toEqual(Array.from(v));
  });
  for (const dtype of [DType.BFLOAT16, DType.FLOAT16]) {
    it(`${dtype === DType.BFLOAT16 ? "BFLOAT16" : "FLOAT16"} round-trips to the RNE-rounded values, NaN/Inf kept`, () => {
      const t = encodeTensor(special, [12], dtype);
      expect(t.data.byteLength).toBe(24);
      const d = decodeTensor(Tensor.decode(Tensor.encode(t).finish()), "x");
      expect(d.values).toBeInstanceOf(Float32Array);
      const want = roundTripHalf(special, dtype);
      for (let i = 0; i < special.length; i++) {
        if (Number.isNaN(special[i])) expect(Number.isNaN(d.values[i])).toBe(true);
        else expect(Object.is(d.values[i], want[i])).toBe(true);
      }
      expect(d.values[9]).toBe(Infinity);
      expect(d.values[10]).toBe(-Infinity);
      if (dtype === DType.FLOAT16)
        expect(d.values[8]).toBe(Infinity); // 1e30 overflows f16
      else expect(d.values[8]).toBeCloseTo(1e30, -27);
    });
  }
  it("FLOAT32 decode aliases aligned bytes and copies unaligned ones", () => {
    const src = new Float32Array([1, 2, 3, 4]);
    const aligned = encodeTensor(src, [4], DType.FLOAT32);
    const a = decodeTensor(aligned, "x");
    expect(a.values.buffer).toBe(aligned.data.buffer);
    const copied = decodeTensor(aligned, "x", {}, { copy: true });
    expect(copied.values.buffer).not.toBe(aligned.data.buffer);
    const raw = Buffer.alloc(17);
    Buffer.from(src.buffer).copy(raw, 1);
    const d = decodeTensor({ dtype: DType.FLOAT32, shape: [4], data: raw.subarray(1) }, "x");
    expect(Array.from(d.values)).toEqual([1, 2, 3, 4]);
    const h = Buffer.alloc(9);
    Buffer.from(f32ToBf16(src).buffer).copy(h, 1);
    expect(Array.from(bytesToFloat32(h.subarray(1), DType.BFLOAT16))).toEqual([1, 2, 3, 4]);
  });
  it("raw bytes that are not whole elements are refused, not truncated", () => {
    for (const [dtype, bytes] of [
      [DType.FLOAT32, 6],
      [DType.BFLOAT16, 5],
      [DType.FLOAT16, 3],
    ] as const) {
      const e = (() => {
        try {
          bytesToFloat32(new Uint8Array(bytes), dtype);
        } catch (err) {
          return err as SwitchyardError;
        }
      })();
      expect(isSwitchyardError(e, "INVALID_ARGUMENT") && e.field).toBe("data");
    }
  });
  it("dtypeSize", () => {
    expect([DType.FLOAT32, DType.BFLOAT16, DType.FLOAT16, DType.INT32].map(dtypeSize)).toEqual([4, 2, 2, 4]);
    expect(f32Bits(1)).toBe(0x3f800000);
  });
});
