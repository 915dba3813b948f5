// validateBatch on its own (pure): cases the gRPC table in server.test.ts cannot reach with its checkpoint.

import { DType, type ExpertBatch, encodeTensor, SwitchyardError } from "@switchyard/protocol";
import { describe, expect, it } from "vitest";
import { type BatchContext, validateBatch } from "./validate.js";

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
  ...over,
});

const fieldOf = (b: ExpertBatch) => {
  try {
    validateBatch(b, ctx);
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
});
