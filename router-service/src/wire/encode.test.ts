import { DType, ExpertBatch, ExpertResult, ForwardResponse } from "@switchyard/protocol";
import { describe, expect, it } from "vitest";
import { decodeExpertBatch, decodeExpertResult } from "./decode.js";
import {
  encodeExpertBatch,
  encodeExpertResult,
  encodeExpertResultInPlace,
  encodeForwardResponse,
  varintSize,
} from "./encode.js";

describe("hand-written protobuf encoders", () => {
  it("varint sizes", () => {
    expect(varintSize(0)).toBe(1);
    expect(varintSize(127)).toBe(1);
    expect(varintSize(128)).toBe(2);
    expect(varintSize(2 ** 35)).toBe(6);
    expect(varintSize(2n ** 63n)).toBe(10);
  });

  it("ExpertBatch: byte-identical to ts-proto", () => {
    const rows = 3;
    const d = 5;
    const data = Buffer.from(Array.from({ length: rows * d * 2 }, (_, i) => i % 251));
    const slices = [
      { expert: 0, offset: 0, count: 2 },
      { expert: 300, offset: 2, count: 1 },
    ];
    for (const batchId of [0n, 1n, 2n ** 40n + 7n]) {
      for (const [layer, timeoutMs] of [
        [0, 0],
        [1, 1],
        [200, 30_000],
        [3, 2 ** 32 - 1],
      ]) {
        const mine = encodeExpertBatch(
          { pool: "pöol", layer, dtype: DType.BFLOAT16, rows, hidden: d, rowBytes: d * 2, slices, batchId, timeoutMs },
          (dst, at) => data.copy(dst, at),
        );
        const ref = Buffer.from(
          ExpertBatch.encode({
            pool: "pöol",
            layer,
            tokens: { dtype: DType.BFLOAT16, shape: [rows, d], data },
            slices,
            rowWeights: undefined,
            batchId,
            timeoutMs,
            tokenRows: [],
            combine: false,
            cancel: [],
          }).finish(),
        );
        expect(mine.equals(ref)).toBe(true);
      }
    }
  });

  it("ExpertBatch with token_rows, row_weights and combine: byte-identical to ts-proto, and decoded back", () => {
    const distinct = 2;
    const d = 4;
    const data = Buffer.from(Array.from({ length: distinct * d * 2 }, (_, i) => (i * 7) % 251));
    const slices = [
      { expert: 1, offset: 0, count: 2 },
      { expert: 5, offset: 2, count: 2 },
    ];
    const tokenRows = new Uint32Array([0, 1, 1, 300]); // 300: a two-byte varint (the encoder does not check range)
    const weights = new Float32Array([0.5, 1.25, -2, 3]);
    for (const combine of [false, true]) {
      const mine = encodeExpertBatch(
        {
          pool: "p",
          layer: 1,
          dtype: DType.BFLOAT16,
          rows: distinct,
          hidden: d,
          rowBytes: d * 2,
          slices,
          batchId: 9n,
          timeoutMs: 100,
          tokenRows,
          rowWeights: combine ? weights : undefined,
          combine,
        },
        (dst, at) => data.copy(dst, at),
      );
      const msg = {
        pool: "p",
        layer: 1,
        tokens: { dtype: DType.BFLOAT16, shape: [distinct, d], data },
        slices,
        rowWeights: combine
          ? { dtype: DType.FLOAT32, shape: [4], data: Buffer.from(weights.buffer, weights.byteOffset, 16) }
          : undefined,
        batchId: 9n,
        timeoutMs: 100,
        tokenRows: [...tokenRows],
        combine,
        cancel: [],
      };
      expect(mine.equals(Buffer.from(ExpertBatch.encode(msg).finish()))).toBe(true);
      const back = decodeExpertBatch(mine);
      expect(back.tokenRows).toEqual([...tokenRows]);
      expect(back.combine).toBe(combine);
    }
    // unpacked token_rows (another encoder may send them so) decode too
    const unpacked = Buffer.concat([Buffer.from([64, 3, 64, 0x81, 0x01]), Buffer.from([72, 1])]);
    expect(decodeExpertBatch(unpacked)).toMatchObject({ tokenRows: [3, 129], combine: true });
  });

  it("ForwardResponse: byte-identical to ts-proto, data aligned for typed views", () => {
    const stats = {
      expertsTouched: 3,
      workersUsed: 2,
      queueWaitMs: 0.25,
      totalMs: 1.5,
      droppedAssignments: 0,
      batchTokens: 17,
      batchRequests: 4,
    };
    for (const requestId of [0n, 5n, 2n ** 50n]) {
      for (const [dtype, el] of [
        [DType.BFLOAT16, 2],
        [DType.FLOAT32, 4],
      ] as const) {
        const T = 2;
        const d = 3;
        const enc = encodeForwardResponse(requestId, dtype, [T, d], T * d * el, stats, undefined, el);
        expect(enc.data.byteOffset % el).toBe(0);
        for (let i = 0; i < enc.data.length; i++) enc.data[i] = (i * 7) % 256;
        const ref = Buffer.from(
          ForwardResponse.encode({
            requestId,
            hidden: { dtype, shape: [T, d], data: Buffer.from(enc.data) },
            stats,
            error: undefined,
          }).finish(),
        );
        expect(enc.message.equals(ref)).toBe(true);
      }
    }
    const err = encodeForwardResponse(9n, DType.FLOAT32, [0, 4], 0, undefined, { code: 3, message: "layer: bad" });
    const back = ForwardResponse.decode(err.message);
    expect(back.error).toEqual({ code: 3, message: "layer: bad" });
    expect(back.requestId).toBe(9n);
  });

  it("uint64 ids at every varint length and at the 49-, 53- and 64-bit edges round-trip with ts-proto both ways", () => {
    // Ids below 2^53 take the number path in encode and the double accumulator (first 7 bytes) in decode.
    const ids = [0n, 1n, 127n, 128n, 16383n, 16384n];
    for (let b = 21n; b <= 64n; b += 7n) ids.push(2n ** b - 1n, 2n ** b);
    ids.push(2n ** 49n - 1n, 2n ** 49n, 2n ** 49n + 1n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 53n + 1n);
    ids.push(2n ** 63n, 2n ** 64n - 2n, 2n ** 64n - 1n);
    const data = Buffer.alloc(8);
    for (const id of ids.filter((x) => x < 2n ** 64n)) {
      const ours = encodeExpertResult(id, DType.FLOAT32, [1, 2], data);
      const theirs = Buffer.from(
        ExpertResult.encode({
          batchId: id,
          output: { dtype: DType.FLOAT32, shape: [1, 2], data },
          stats: undefined,
          error: undefined,
        }).finish(),
      );
      expect(Array.from(ours), `encode ${id}`).toEqual(Array.from(theirs));
      expect(decodeExpertResult(theirs).batchId, `decode ${id}`).toBe(id);
    }
  });

  it("ExpertResult echo decodes", () => {
    const data = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]);
    const r = ExpertResult.decode(encodeExpertResult(77n, DType.FLOAT32, [1, 2], data));
    expect(r.batchId).toBe(77n);
    expect(r.output!.shape).toEqual([1, 2]);
    expect(Array.from(r.output!.data)).toEqual(Array.from(data));
  });

  it("ExpertResult in place: same bytes as the copying encoder, written over the batch's head; null without room", () => {
    const rows = 2;
    const d = 4;
    const data = Buffer.from(Array.from({ length: rows * d * 2 }, (_, i) => (i * 7) % 251));
    for (const batchId of [1n, 300n, 2n ** 40n]) {
      const msg = encodeExpertBatch(
        { pool: "bench", layer: 0, dtype: DType.BFLOAT16, rows, hidden: d, rowBytes: d * 2, slices: [], batchId },
        (dst, at) => data.copy(dst, at),
      );
      const b = decodeExpertBatch(msg);
      const t = b.tokens!;
      const room = t.data.byteOffset - msg.byteOffset;
      const want = encodeExpertResult(batchId, t.dtype, t.shape, t.data);
      const got = encodeExpertResultInPlace(batchId, t.dtype, t.shape, t.data as Buffer, room);
      expect(got).not.toBeNull();
      expect(got!.equals(want)).toBe(true);
      expect(got!.buffer).toBe(msg.buffer); // no copy
      expect(ExpertResult.decode(got!).output!.data.equals(data)).toBe(true);
      expect(encodeExpertResultInPlace(batchId, t.dtype, t.shape, t.data as Buffer, 3)).toBeNull();
    }
  });
});
