// Hand-written protobuf writing for the hot messages (the router's ExpertBatch and ForwardResponse in
// router-service/src/wire/encode.ts, the worker's ExpertResult here): size the message first, allocate once, write
// the big bytes field straight into place. The bytes are identical to ts-proto's (same field order, proto3
// zero-omission), which the tests check by decoding with the generated code.

import type { DType } from "./gen/switchyard/v1/tensor.js";

/** Largest uint64 that a double holds exactly: below it a bigint takes the number path (no BigInt per step). */
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

export function varintSize(v: number | bigint): number {
  if (typeof v === "bigint" && v >= 0n && v <= MAX_SAFE) v = Number(v);
  if (typeof v === "bigint") {
    let n = 1;
    let x = BigInt.asUintN(64, v);
    while (x >= 128n) {
      x >>= 7n;
      n++;
    }
    return n;
  }
  let n = 1;
  while (v >= 128) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}

export class Writer {
  pos: number;
  constructor(
    readonly buf: Buffer,
    start = 0,
  ) {
    this.pos = start;
  }
  varint(v: number | bigint): this {
    if (typeof v === "bigint" && v >= 0n && v <= MAX_SAFE) v = Number(v);
    if (typeof v === "bigint") {
      let x = BigInt.asUintN(64, v);
      while (x >= 128n) {
        this.buf[this.pos++] = Number(x & 127n) | 128;
        x >>= 7n;
      }
      this.buf[this.pos++] = Number(x);
      return this;
    }
    while (v >= 128) {
      this.buf[this.pos++] = (v & 127) | 128;
      v = Math.floor(v / 128);
    }
    this.buf[this.pos++] = v;
    return this;
  }
  byte(b: number): this {
    this.buf[this.pos++] = b;
    return this;
  }
  double(v: number): this {
    this.buf.writeDoubleLE(v, this.pos);
    this.pos += 8;
    return this;
  }
  string(s: string, bytes: number): this {
    this.buf.write(s, this.pos, bytes, "utf8");
    this.pos += bytes;
    return this;
  }
}

/** Size of a Tensor message body with `dataBytes` of data (dtype, packed shape, data). */
export function tensorBodySize(
  dtype: DType,
  shape: readonly number[],
  dataBytes: number,
): { size: number; shapeBytes: number } {
  let size = 0;
  if (dtype !== 0) size += 1 + varintSize(dtype);
  let shapeBytes = 0;
  for (const s of shape) shapeBytes += varintSize(s);
  if (shape.length > 0) size += 1 + varintSize(shapeBytes) + shapeBytes;
  if (dataBytes > 0) size += 1 + varintSize(dataBytes) + dataBytes;
  return { size, shapeBytes };
}

/** Writes a Tensor body up to the data; returns the data's offset (the caller fills dataBytes there). */
export function writeTensorHead(
  w: Writer,
  dtype: DType,
  shape: readonly number[],
  shapeBytes: number,
  dataBytes: number,
): number {
  if (dtype !== 0) w.byte(8).varint(dtype);
  if (shape.length > 0) {
    w.byte(18).varint(shapeBytes);
    for (const s of shape) w.varint(s);
  }
  if (dataBytes > 0) w.byte(26).varint(dataBytes);
  const at = w.pos;
  w.pos += dataBytes;
  return at;
}

/**
 * ExpertResult { batch_id, output, stats } as three parts, [head, output, tail]: the output's bytes are not copied at
 * all. A socket writes the parts in one writev (the worker's data path, writeFrameParts); the encoded message is
 * their concatenation. `stats` is the ExpertStats message already encoded (small).
 */
export function encodeExpertResultParts(
  batchId: bigint,
  dtype: DType,
  shape: readonly number[],
  data: Uint8Array,
  stats?: Uint8Array,
): [Buffer, Uint8Array, Buffer] {
  const t = tensorBodySize(dtype, shape, data.byteLength);
  let headSize = 1 + varintSize(t.size) + (t.size - data.byteLength);
  if (batchId !== 0n) headSize += 1 + varintSize(batchId);
  const head = Buffer.allocUnsafe(headSize);
  const w = new Writer(head);
  if (batchId !== 0n) w.byte(8).varint(batchId);
  w.byte(18).varint(t.size);
  writeTensorHead(w, dtype, shape, t.shapeBytes, data.byteLength);
  let tail = EMPTY;
  if (stats) {
    // an empty message is still written, as ts-proto does
    tail = Buffer.allocUnsafe(1 + varintSize(stats.byteLength) + stats.byteLength);
    const ws = new Writer(tail);
    ws.byte(26).varint(stats.byteLength);
    tail.set(stats, ws.pos);
  }
  return [head, data, tail];
}

const EMPTY = Buffer.alloc(0);

/**
 * ExpertResult in one allocation, the output's bytes copied once: ts-proto's writer copies a nested bytes field once
 * per nesting level and again when it joins (4 copies, and the garbage of them, of every output byte: the worker's
 * largest JavaScript cost per batch before this). For grpc-js, whose serializer wants one buffer.
 */
export function encodeExpertResult(
  batchId: bigint,
  dtype: DType,
  shape: readonly number[],
  data: Uint8Array,
  stats?: Uint8Array,
): Buffer {
  const parts = encodeExpertResultParts(batchId, dtype, shape, data, stats);
  return Buffer.concat(parts, parts[0].byteLength + data.byteLength + parts[2].byteLength);
}
