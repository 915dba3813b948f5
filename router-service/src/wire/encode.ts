// Hand-written protobuf encoders for the router's hot messages (ExpertBatch out, ForwardResponse back, and the
// fake worker's ExpertResult). ts-proto's BinaryWriter copies a nested bytes field once per nesting level and
// once more into a Buffer (4 copies of every activation byte); these size the message first, allocate once, and
// let the caller write token rows / combined outputs straight into place. The bytes are identical to ts-proto's
// (same field order, proto3 zero-omission), which the tests check by decoding with the generated code.

import type { DType, ForwardStats, RpcError } from "@switchyard/protocol";

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

class Writer {
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
function tensorBodySize(
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
function writeTensorHead(
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

export interface SliceSpec {
  expert: number;
  offset: number;
  count: number;
}

function sliceSize(s: SliceSpec): number {
  return (
    (s.expert ? 1 + varintSize(s.expert) : 0) +
    (s.offset ? 1 + varintSize(s.offset) : 0) +
    (s.count ? 1 + varintSize(s.count) : 0)
  );
}

export interface BatchSpec {
  pool: string;
  layer: number;
  dtype: DType;
  rows: number;
  hidden: number;
  rowBytes: number;
  slices: readonly SliceSpec[];
  batchId: bigint;
  /** ExpertBatch.timeout_ms: what the caller still waits (the worker's deadline for this stream batch); 0 = none. */
  timeoutMs?: number;
}

/**
 * ExpertBatch with the token matrix [rows, hidden] filled by `fill(dst, offset)` (rows * rowBytes bytes at
 * dst[offset..]). No row_weights: the router applies gate weights itself, in fp32, at combine.
 */
export function encodeExpertBatch(
  b: BatchSpec,
  fill: (dst: Buffer, offset: number) => void,
  alloc: (bytes: number) => Buffer = Buffer.allocUnsafe,
): Buffer {
  const poolBytes = Buffer.byteLength(b.pool);
  const dataBytes = b.rows * b.rowBytes;
  const t = tensorBodySize(b.dtype, [b.rows, b.hidden], dataBytes);
  let size = 0;
  if (poolBytes) size += 1 + varintSize(poolBytes) + poolBytes;
  if (b.layer) size += 1 + varintSize(b.layer);
  size += 1 + varintSize(t.size) + t.size;
  for (const s of b.slices) {
    const n = sliceSize(s);
    size += 1 + varintSize(n) + n;
  }
  if (b.batchId !== 0n) size += 1 + varintSize(b.batchId);
  const timeoutMs = b.timeoutMs ?? 0;
  if (timeoutMs) size += 1 + varintSize(timeoutMs);
  const buf = alloc(size);
  const w = new Writer(buf);
  if (poolBytes) w.byte(10).varint(poolBytes).string(b.pool, poolBytes);
  if (b.layer) w.byte(16).varint(b.layer);
  w.byte(26).varint(t.size);
  const at = writeTensorHead(w, b.dtype, [b.rows, b.hidden], t.shapeBytes, dataBytes);
  for (const s of b.slices) {
    w.byte(34).varint(sliceSize(s));
    if (s.expert) w.byte(8).varint(s.expert);
    if (s.offset) w.byte(16).varint(s.offset);
    if (s.count) w.byte(24).varint(s.count);
  }
  if (b.batchId !== 0n) w.byte(48).varint(b.batchId);
  if (timeoutMs) w.byte(56).varint(timeoutMs);
  fill(buf, at);
  return buf;
}

function statsSize(s: ForwardStats): number {
  let n = 0;
  if (s.expertsTouched) n += 1 + varintSize(s.expertsTouched);
  if (s.workersUsed) n += 1 + varintSize(s.workersUsed);
  if (s.queueWaitMs) n += 9;
  if (s.totalMs) n += 9;
  if (s.droppedAssignments) n += 1 + varintSize(s.droppedAssignments);
  if (s.batchTokens) n += 1 + varintSize(s.batchTokens);
  if (s.batchRequests) n += 1 + varintSize(s.batchRequests);
  return n;
}

function writeStats(w: Writer, s: ForwardStats): void {
  if (s.expertsTouched) w.byte(8).varint(s.expertsTouched);
  if (s.workersUsed) w.byte(16).varint(s.workersUsed);
  if (s.queueWaitMs) w.byte(25).double(s.queueWaitMs);
  if (s.totalMs) w.byte(33).double(s.totalMs);
  if (s.droppedAssignments) w.byte(40).varint(s.droppedAssignments);
  if (s.batchTokens) w.byte(48).varint(s.batchTokens);
  if (s.batchRequests) w.byte(56).varint(s.batchRequests);
}

export interface EncodedResponse {
  /** The whole ForwardResponse message. */
  message: Buffer;
  /** Its hidden.data, a view into `message`, aligned to the element size (the caller writes the output here). */
  data: Buffer;
  /** The whole allocation `message` lives in (what goes back to the pool it came from). */
  backing: Buffer;
}

/**
 * ForwardResponse with hidden [shape] of `dtype` whose data the caller writes into `data` afterwards. The data
 * is placed at an address aligned to `align` bytes so typed-array views can write it directly.
 */
export function encodeForwardResponse(
  requestId: bigint,
  dtype: DType,
  shape: readonly number[],
  dataBytes: number,
  stats: ForwardStats | undefined,
  error: RpcError | undefined,
  align = 4,
  alloc?: (bytes: number) => Buffer,
): EncodedResponse {
  const t = tensorBodySize(dtype, shape, dataBytes);
  let size = 0;
  if (requestId !== 0n) size += 1 + varintSize(requestId);
  size += 1 + varintSize(t.size) + t.size;
  const sn = stats ? statsSize(stats) : 0;
  if (stats) size += 1 + varintSize(sn) + sn;
  let en = 0;
  const msgBytes = error ? Buffer.byteLength(error.message) : 0;
  if (error) {
    en = (error.code ? 1 + varintSize(error.code) : 0) + (msgBytes ? 1 + varintSize(msgBytes) + msgBytes : 0);
    size += 1 + varintSize(en) + en;
  }
  // Where the data lands relative to the message start, to pick a start offset that aligns it.
  let dataAt = 0;
  if (requestId !== 0n) dataAt += 1 + varintSize(requestId);
  dataAt += 1 + varintSize(t.size);
  const probe = tensorBodySize(dtype, shape, 0).size + 1 + varintSize(dataBytes);
  dataAt += dataBytes > 0 ? probe : 0;
  // No zero-fill; large ones from `alloc` (the reply pool); shift the start so the data lands aligned in memory.
  const raw = alloc ? alloc(size + align) : Buffer.allocUnsafe(size + align);
  const start = (align - ((raw.byteOffset + dataAt) % align)) % align;
  const buf = raw.subarray(start, start + size);
  const w = new Writer(buf);
  if (requestId !== 0n) w.byte(8).varint(requestId);
  w.byte(18).varint(t.size);
  const at = writeTensorHead(w, dtype, shape, t.shapeBytes, dataBytes);
  if (stats) {
    w.byte(26).varint(sn);
    writeStats(w, stats);
  }
  if (error) {
    w.byte(34).varint(en);
    if (error.code) w.byte(8).varint(error.code);
    if (msgBytes) w.byte(18).varint(msgBytes).string(error.message, msgBytes);
  }
  return { message: buf, data: buf.subarray(at, at + dataBytes), backing: raw };
}

/** ExpertResult { batch_id, output } whose output data the caller fills (the fake worker's echo). */
export function encodeExpertResult(batchId: bigint, dtype: DType, shape: readonly number[], data: Uint8Array): Buffer {
  const t = tensorBodySize(dtype, shape, data.byteLength);
  let size = 0;
  if (batchId !== 0n) size += 1 + varintSize(batchId);
  size += 1 + varintSize(t.size) + t.size;
  const buf = Buffer.allocUnsafe(size);
  const w = new Writer(buf);
  if (batchId !== 0n) w.byte(8).varint(batchId);
  w.byte(18).varint(t.size);
  const at = writeTensorHead(w, dtype, shape, t.shapeBytes, data.byteLength);
  buf.set(data, at);
  return buf;
}

/**
 * ExpertResult { batch_id, output } echoing `data` without copying it: the header is written into the `room` bytes
 * just before `data` in its own buffer (the already-parsed head of the ExpertBatch it came in), and the result is
 * a view from there to the end of the data. Returns null when the header does not fit (the caller copies instead).
 * The no-op expert of the overhead benchmark uses this, so it costs what the baseline's echo costs.
 */
export function encodeExpertResultInPlace(
  batchId: bigint,
  dtype: DType,
  shape: readonly number[],
  data: Buffer,
  room: number,
): Buffer | null {
  const t = tensorBodySize(dtype, shape, data.byteLength);
  const head = (batchId !== 0n ? 1 + varintSize(batchId) : 0) + 1 + varintSize(t.size) + (t.size - data.byteLength);
  if (head > room || data.byteLength === 0) return null;
  const buf = Buffer.from(data.buffer, data.byteOffset - head, head + data.byteLength);
  const w = new Writer(buf);
  if (batchId !== 0n) w.byte(8).varint(batchId);
  w.byte(18).varint(t.size);
  const at = writeTensorHead(w, dtype, shape, t.shapeBytes, data.byteLength);
  if (at !== head) throw new Error(`encodeExpertResultInPlace: header size ${at}, computed ${head}`);
  return buf;
}

/** A reply's pooled allocation: the server gives it back to the reply pool once the write has completed. */
export const BACKING = Symbol.for("switchyard.router.backing");

/** Marks a ForwardResponse object that already carries its encoded bytes (see routerServiceDefinition). */
export const ENCODED = Symbol.for("switchyard.router.encoded");
