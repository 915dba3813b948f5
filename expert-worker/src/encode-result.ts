// The worker's ExpertResult bytes, for both transports (the data path's frames and grpc-js's serializer): a result
// with an output goes through the one-copy encoder (packages/protocol wire-writer.ts), an error through ts-proto.
// ts-proto's writer copied each output four times; with DeepSeek-V3's 2 MB results that was the worker's largest
// JavaScript cost per batch, and most of its garbage (the 23:36 profile: 4.9 s of a 20 s load).

import { ExpertResult, ExpertStats, encodeExpertResultParts } from "@switchyard/protocol";

/**
 * The encoded result as parts for the data path's writeFrameParts: a result with an output as [head, output, tail],
 * its output not copied (the backend's result memory goes to the socket as it is); an error whole, through ts-proto.
 */
export function encodeResultParts(res: ExpertResult): Uint8Array[] {
  const o = res.output;
  if (!o || res.error) {
    const b = ExpertResult.encode(res).finish();
    return [Buffer.from(b.buffer, b.byteOffset, b.byteLength)];
  }
  const stats = res.stats ? ExpertStats.encode(res.stats).finish() : undefined;
  return encodeExpertResultParts(res.batchId, o.dtype, o.shape, o.data, stats);
}

/** The same bytes in one buffer (grpc-js's serializer): the output copied once. */
export function encodeResult(res: ExpertResult): Buffer {
  const parts = encodeResultParts(res);
  return parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts);
}
