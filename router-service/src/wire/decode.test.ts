import { DType, ExpertBatch, ExpertResult, ForwardRequest, ForwardResponse } from "@switchyard/protocol";
import { describe, expect, it } from "vitest";
import { decodeExpertBatch, decodeExpertResult, decodeForwardRequest, decodeForwardResponse } from "./decode.js";

const t = (dtype: DType, shape: number[], n: number) => ({
  dtype,
  shape,
  data: Buffer.from(Array.from({ length: n }, (_, i) => (i * 13) % 256)),
});

function norm(x: unknown): unknown {
  return JSON.parse(
    JSON.stringify(x, (_k, v) => (typeof v === "bigint" ? `${v}n` : v instanceof Uint8Array ? Array.from(v) : v)),
  );
}

describe("zero-copy decoders agree with ts-proto", () => {
  it("ForwardRequest: every gate case, big ids, and data as a view of the message", () => {
    const cases: ForwardRequest[] = [
      {
        pool: "mixtral-å",
        layer: 3,
        hidden: t(DType.BFLOAT16, [2, 4], 16),
        gate: undefined,
        requestId: 2n ** 63n + 5n,
      },
      {
        pool: "p",
        layer: 0,
        hidden: t(DType.FLOAT32, [1, 2], 8),
        gate: { $case: "routerLogits", value: t(DType.FLOAT32, [1, 3], 12) },
        requestId: 0n,
        routedOnly: true,
        timeoutMs: 250,
      },
      {
        pool: "p",
        layer: 300,
        hidden: t(DType.FLOAT16, [1, 2], 4),
        gate: {
          $case: "assignment",
          value: { expertIds: t(DType.INT32, [1, 2], 8), weights: t(DType.FLOAT32, [1, 2], 8) },
        },
        requestId: 7n,
        routedOnly: false,
        timeoutMs: 4_000_000_000,
      },
    ];
    for (const c of cases) {
      const bytes = Buffer.from(ForwardRequest.encode(c).finish());
      const mine = decodeForwardRequest(bytes);
      expect(norm(mine)).toEqual(norm(ForwardRequest.decode(bytes)));
      expect(mine.hidden!.data.buffer).toBe(bytes.buffer); // a view, not a copy
    }
  });

  it("ExpertResult with stats and error; ExpertBatch with slices", () => {
    const res: ExpertResult = {
      batchId: 99n,
      output: t(DType.BFLOAT16, [3, 2], 12),
      stats: {
        tokens: 3,
        experts: 2,
        cacheHits: 1,
        cacheMisses: 1,
        queueWaitMs: 0.5,
        computeMs: 2,
        backend: "cpu-native",
      },
      error: { code: 14, message: "down" },
    };
    const rb = Buffer.from(ExpertResult.encode(res).finish());
    expect(norm(decodeExpertResult(rb))).toEqual(norm(ExpertResult.decode(rb)));
    const batch: ExpertBatch = {
      pool: "p",
      layer: 1,
      tokens: t(DType.FLOAT32, [2, 2], 16),
      slices: [
        { expert: 5, offset: 0, count: 1 },
        { expert: 0, offset: 1, count: 1 },
      ],
      rowWeights: t(DType.FLOAT32, [2], 8),
      batchId: 1n,
      timeoutMs: 1500,
      tokenRows: [],
      combine: false,
      cancel: [],
    };
    const fr: ForwardResponse = {
      requestId: 3n,
      hidden: t(DType.BFLOAT16, [1, 2], 4),
      stats: {
        expertsTouched: 2,
        workersUsed: 1,
        queueWaitMs: 0.1,
        totalMs: 1,
        droppedAssignments: 0,
        batchTokens: 1,
        batchRequests: 1,
      },
      error: undefined,
    };
    const fb = Buffer.from(ForwardResponse.encode(fr).finish());
    expect(norm(decodeForwardResponse(fb))).toEqual(norm(ForwardResponse.decode(fb)));
    const bb = Buffer.from(ExpertBatch.encode(batch).finish());
    expect(norm(decodeExpertBatch(bb))).toEqual(norm(ExpertBatch.decode(bb)));
  });

  it("pool names decode right when consecutive messages name different pools (the decoder reuses the last one)", () => {
    const names = [
      "pa",
      "pb",
      "pa",
      "pa",
      "",
      "mixtral-å",
      "mixtral-a",
      "mixtral-å",
      "x".repeat(100),
      "x".repeat(100),
      "p",
    ];
    for (const pool of names) {
      const req = Buffer.from(
        ForwardRequest.encode({ pool, layer: 0, hidden: undefined, gate: undefined, requestId: 0n }).finish(),
      );
      expect(decodeForwardRequest(req).pool).toBe(pool);
      const batch = Buffer.from(
        ExpertBatch.encode({
          pool,
          layer: 0,
          tokens: undefined,
          slices: [],
          batchId: 1n,
          timeoutMs: 0,
          tokenRows: [],
          combine: false,
          cancel: [],
        }).finish(),
      );
      expect(decodeExpertBatch(batch).pool).toBe(pool);
    }
  });

  it("reads ExpertBatch.cancel as ts-proto writes it (packed), and unpacked, ids past 2^53 kept", () => {
    const ids = [1n, 2n ** 53n + 1n, 2n ** 64n - 1n];
    const packed = Buffer.from(ExpertBatch.encode(ExpertBatch.fromPartial({ cancel: ids })).finish());
    expect(decodeExpertBatch(packed)).toEqual(ExpertBatch.decode(packed));
    expect(decodeExpertBatch(packed).cancel).toEqual(ids);
    // field 10, varint (wire type 0), once per id: what a writer that does not pack may send
    const unpacked = Buffer.from([0x50, 0x07, 0x50, 0x09]);
    expect(decodeExpertBatch(unpacked).cancel).toEqual([7n, 9n]);
  });

  it("skips unknown fields and rejects truncated input", () => {
    const bytes = Buffer.from(
      ForwardRequest.encode({ pool: "p", layer: 1, hidden: undefined, gate: undefined, requestId: 1n }).finish(),
    );
    const withUnknown = Buffer.concat([Buffer.from([0x78, 0x05, 0x82, 0x01, 0x02, 0xaa, 0xbb]), bytes]); // field 15 varint, field 16 bytes
    expect(decodeForwardRequest(withUnknown).layer).toBe(1);
    expect(() => decodeForwardRequest(Buffer.from([0x1a, 0x10, 0x00]))).toThrow(/past the end/);
  });
});
