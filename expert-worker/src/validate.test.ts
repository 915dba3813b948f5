// validateBatch on its own (pure): cases the gRPC table in server.test.ts cannot reach with its checkpoint.

import { DType, type ExpertBatch, encodeTensor, SwitchyardError } from "@switchyard/protocol";
import { describe, expect, it } from "vitest";
import { type BatchContext, RESULT_ENVELOPE_BYTES, validateBatch } from "./validate.js";

const D = 8;

// DeepSeek-V3's layout in small: layer 0 is dense, layers 1-2 have routed experts; this worker serves them all
const ctx: BatchContext = {
  pool: "p",
  layers: 3,
  experts: 4,
  hiddenSize: D,
  isMoeLayer: (l) => l > 0,
  serves: (l) => l > 0,
};

const batch = (over: Partial<ExpertBatch> = {}): ExpertBatch => ({
  pool: "p",
  layer: 1,
  tokens: encodeTensor(new Float32Array(2 * D), [2, D], DType.FLOAT32),
  slices: [{ expert: 1, offset: 0, count: 2 }],
  rowWeights: undefined,
  batchId: 1n,
  timeoutMs: 0,
  tokenRows: [],
  combine: false,
  cancel: [],
  ...over,
});

const fieldOf = (b: ExpertBatch, c: BatchContext = ctx) => {
  try {
    validateBatch(b, c);
  } catch (err) {
    expect(err).toBeInstanceOf(SwitchyardError);
    expect((err as SwitchyardError).code).toBe("INVALID_ARGUMENT");
    return [(err as SwitchyardError).field, (err as Error).message];
  }
  return undefined;
};

describe("validateBatch", () => {
  it("names the layer for a dense layer, with or without slices", () => {
    expect(fieldOf(batch({ layer: 0 }))).toEqual(["layer", expect.stringMatching(/dense/)]);
    expect(fieldOf(batch({ layer: 0, slices: [] }))).toEqual(["layer", expect.stringMatching(/dense/)]);
    expect(fieldOf(batch())).toBeUndefined();
  });

  it("refuses more assignment rows than one per token and expert (a small message must not expand without bound)", () => {
    const one = encodeTensor(new Float32Array(D), [1, D], DType.FLOAT32);
    // 4 experts: one token may have 4 assignment rows, not 5
    const rows = (n: number) => ({
      tokens: one,
      tokenRows: new Array(n).fill(0),
      slices: [{ expert: 1, offset: 0, count: n }],
    });
    expect(fieldOf(batch(rows(4)))).toBeUndefined();
    expect(fieldOf(batch(rows(5)))).toEqual(["token_rows", expect.stringMatching(/5 assignment rows for 1 tokens/)]);
  });

  it("refuses a batch whose result would not fit the worker's message limit, naming what makes it large", () => {
    // room for 16 fp32 rows of 8 (512 bytes) beside the reply's other fields
    const limited = { ...ctx, maxMessageBytes: RESULT_ENVELOPE_BYTES + 16 * D * 4 };
    const tokens = (n: number, dtype = DType.FLOAT32) =>
      encodeTensor(new Float32Array(n * D), [n, D], dtype) as ExpertBatch["tokens"];
    // 4 distinct tokens, each to 4 experts: 16 rows fit, 17 (one more token) do not
    const deduped = (n: number, combine = false, dtype = DType.FLOAT32) => ({
      tokens: tokens(Math.ceil(n / 4), dtype),
      tokenRows: Array.from({ length: n }, (_, i) => i % Math.ceil(n / 4)),
      slices: [{ expert: 1, offset: 0, count: n }],
      combine,
    });
    expect(fieldOf(batch(deduped(16)), limited)).toBeUndefined();
    expect(fieldOf(batch(deduped(17)), limited)).toEqual([
      "token_rows",
      expect.stringMatching(
        /result would be 544 bytes \(\[17, 8\] × 4 bytes FLOAT32\), over this worker's message limit/,
      ),
    ]);
    // combine answers fp32 per distinct token: 16 bf16 tokens (a 256-byte request) fit, 17 do not
    expect(fieldOf(batch(deduped(16 * 4, true, DType.BFLOAT16)), limited)).toBeUndefined();
    expect(fieldOf(batch(deduped(17 * 4, true, DType.BFLOAT16)), limited)).toEqual([
      "combine",
      expect.stringMatching(/\[17, 8\] × 4 bytes FLOAT32/),
    ]);
    // rows as they came: the result is as large as the tokens
    const plain = (n: number) => ({ tokens: tokens(n), slices: [{ expert: 1, offset: 0, count: n }] });
    expect(fieldOf(batch(plain(16)), limited)).toBeUndefined();
    expect(fieldOf(batch(plain(17)), limited)?.[0]).toBe("tokens.shape[0]");
    // no limit given: unchecked
    expect(fieldOf(batch(deduped(17)))).toBeUndefined();
  });
});
