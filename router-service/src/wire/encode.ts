// Hand-written protobuf encoders for the router's hot messages (ExpertBatch out, ForwardResponse back, and the
// fake worker's ExpertResult). ts-proto's BinaryWriter copies a nested bytes field once per nesting level and
// once more into a Buffer (4 copies of every activation byte); these size the message first, allocate once, and
// let the caller write token rows / combined outputs straight into place. The bytes are identical to ts-proto's
// (same field order, proto3 zero-omission), which the tests check by decoding with the generated code.

import {
  DType,
  type ForwardStats,
  type RpcError,
  tensorBodySize,
  varintSize,
  Writer,
  writeTensorHead,
} from "@switchyard/protocol";

export { encodeExpertResult, varintSize } from "@switchyard/protocol";

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
  /**
   * ExpertBatch.token_rows: `rows` is then the number of distinct token rows filled, and the slices address
   * tokenRows.length assignment rows, row i reading token row tokenRows[i].
   */
  tokenRows?: Uint32Array;
  /** ExpertBatch.row_weights [tokenRows.length or rows] FLOAT32 (with `combine`: the gate weights). */
  rowWeights?: Float32Array;
  /** ExpertBatch.combine: the worker answers each token's weighted sum, FLOAT32 [rows, hidden]. */
  combine?: boolean;
}

/**
 * ExpertBatch with the token matrix [rows, hidden] filled by `fill(dst, offset)` (rows * rowBytes bytes at
 * dst[offset..]). Without `combine` the router applies the gate weights itself, in fp32, at combine.
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
  const wBytes = b.rowWeights ? b.rowWeights.length * 4 : 0;
  const wt = b.rowWeights ? tensorBodySize(DType.FLOAT32, [b.rowWeights.length], wBytes) : null;
  if (wt) size += 1 + varintSize(wt.size) + wt.size;
  if (b.batchId !== 0n) size += 1 + varintSize(b.batchId);
  const timeoutMs = b.timeoutMs ?? 0;
  if (timeoutMs) size += 1 + varintSize(timeoutMs);
  let trBytes = 0;
  if (b.tokenRows && b.tokenRows.length > 0) {
    for (let i = 0; i < b.tokenRows.length; i++) trBytes += varintSize(b.tokenRows[i]);
    size += 1 + varintSize(trBytes) + trBytes;
  }
  if (b.combine) size += 2;
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
  if (b.rowWeights && wt) {
    w.byte(42).varint(wt.size);
    const wa = writeTensorHead(w, DType.FLOAT32, [b.rowWeights.length], wt.shapeBytes, wBytes);
    const rw = b.rowWeights;
    Buffer.from(rw.buffer, rw.byteOffset, wBytes).copy(buf, wa);
  }
  if (b.batchId !== 0n) w.byte(48).varint(b.batchId);
  if (timeoutMs) w.byte(56).varint(timeoutMs);
  if (trBytes > 0) {
    const tr = b.tokenRows as Uint32Array;
    w.byte(66).varint(trBytes); // field 8, packed
    for (let i = 0; i < tr.length; i++) w.varint(tr[i]);
  }
  if (b.combine) w.byte(72).byte(1); // field 9, varint
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
