// The worker's ExpertResult bytes, for both transports (the data path's frames and grpc-js's serializer): a result
// with an output goes through the one-copy encoder (packages/protocol wire-writer.ts), an error through ts-proto.
// ts-proto's writer copied each output four times; with DeepSeek-V3's 2 MB results that was the worker's largest
// JavaScript cost per batch, and most of its garbage (the 23:36 profile: 4.9 s of a 20 s load).

import { ExpertResult, ExpertStats, encodeExpertResult, encodeExpertResultParts } from "@switchyard/protocol";

export function encodeResult(res: ExpertResult): Buffer {
  const o = res.output;
  if (!o || res.error) {
    const b = ExpertResult.encode(res).finish();
    return Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  }
  return encodeExpertResult(
    res.batchId,
    o.dtype,
    o.shape,
    o.data,
    res.stats ? ExpertStats.encode(res.stats).finish() : undefined,
  );
}

/**
 * The same bytes as parts for the data path's writeFrameParts: a result with an output as [head, output, tail], its
 * output not copied (the backend's result memory goes to the socket as it is); anything else whole.
 */
export function encodeResultParts(res: ExpertResult): Uint8Array[] {
  const o = res.output;
  if (!o || res.error) return [encodeResult(res)];
  return encodeExpertResultParts(
    res.batchId,
    o.dtype,
    o.shape,
    o.data,
    res.stats ? ExpertStats.encode(res.stats).finish() : undefined,
  );
}
