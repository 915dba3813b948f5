import { DType, ExpertResult, encodeTensor } from "@switchyard/protocol";
import { describe, expect, it } from "vitest";
import { encodeResult, encodeResultParts } from "./encode-result.js";

describe("encodeResult", () => {
  it("writes the same bytes as ts-proto for results with an output and stats, and for errors", () => {
    const results: ExpertResult[] = [
      {
        batchId: 300n,
        output: encodeTensor(
          Float32Array.from({ length: 24 }, (_, i) => i - 7.5),
          [3, 8],
          DType.FLOAT32,
        ),
        stats: {
          tokens: 3,
          experts: 2,
          cacheHits: 1,
          cacheMisses: 1,
          queueWaitMs: 0.25,
          computeMs: 1.5,
          backend: "cuda",
        },
        error: undefined,
      },
      {
        batchId: 0n,
        output: encodeTensor(new Float32Array(4).fill(1), [2, 2], DType.BFLOAT16),
        stats: undefined,
        error: undefined,
      },
      { batchId: 9n, output: undefined, stats: undefined, error: { code: 3, message: "tokens: required" } },
    ];
    // an empty output (zero rows) and stats of an empty message too
    results.push({
      batchId: 2n ** 40n,
      output: encodeTensor(new Float32Array(0), [0, 8], DType.FLOAT32),
      stats: { tokens: 0, experts: 0, cacheHits: 0, cacheMisses: 0, queueWaitMs: 0, computeMs: 0, backend: "" },
      error: undefined,
    });
    for (const r of results) {
      const want = Buffer.from(ExpertResult.encode(r).finish());
      const fast = encodeResult(r);
      expect(Buffer.from(fast).equals(want)).toBe(true);
      expect(ExpertResult.decode(fast)).toEqual(ExpertResult.decode(want));
      // the data path's parts: the same bytes, the output passed on as the very same memory
      const parts = encodeResultParts(r);
      expect(Buffer.concat(parts).equals(want)).toBe(true);
      if (r.output && r.output.data.byteLength > 0) expect(parts.some((p) => p === r.output?.data)).toBe(true);
    }
  });
});
