// Hand-written protobuf decoders for the router's hot incoming messages. ts-proto's generated decode copies every
// Tensor's bytes (`Buffer.from(reader.bytes())`); these return `data` as a view into the received message instead
// (zero copies of activations). Small nested messages (stats, errors) go through the generated decoders. Unknown
// fields are skipped, packed and unpacked repeated fields are both accepted, as protobuf requires.

import {
  type ExpertBatch,
  type ExpertResult,
  type ExpertSlice,
  ExpertStats,
  type ForwardRequest,
  type ForwardResponse,
  type ForwardStats,
  RpcError,
  type Tensor,
} from "@switchyard/protocol";

class Reader {
  pos: number;
  constructor(
    readonly buf: Buffer,
    start: number,
    readonly end: number,
  ) {
    this.pos = start;
  }

  varint(): number {
    let result = 0;
    let mul = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new Error("protobuf: truncated varint");
      const b = this.buf[this.pos++];
      result += (b & 0x7f) * mul;
      if (b < 0x80) return result;
      mul *= 128;
    }
    throw new Error("protobuf: varint too long");
  }

  varint64(): bigint {
    // Ids are small: read as a double (exact below 2^53; varint() also checks truncation and length) and make one
    // BigInt. BigInt arithmetic per byte allocated a new BigInt per step (~1 us per id). Larger values are re-read.
    const start = this.pos;
    const n = this.varint();
    if (n <= Number.MAX_SAFE_INTEGER) return BigInt(n);
    this.pos = start;
    let result = 0n;
    let shift = 0n;
    for (;;) {
      const b = this.buf[this.pos++];
      result |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return BigInt.asUintN(64, result);
      shift += 7n;
    }
  }

  /** Length-delimited field: [start, end) of its bytes. */
  span(): [number, number] {
    const len = this.varint();
    const start = this.pos;
    const end = start + len;
    if (end > this.end) throw new Error("protobuf: length past the end of the message");
    this.pos = end;
    return [start, end];
  }

  skip(wireType: number): void {
    switch (wireType) {
      case 0:
        this.varint();
        return;
      case 1:
        this.pos += 8;
        break;
      case 2:
        this.span();
        return;
      case 5:
        this.pos += 4;
        break;
      default:
        throw new Error(`protobuf: unsupported wire type ${wireType}`);
    }
    if (this.pos > this.end) throw new Error("protobuf: truncated field");
  }
}

/** ForwardStats (uint32 and double fields), decoded in place: ts-proto builds a reader object per nested message. */
function decodeForwardStatsAt(buf: Buffer, start: number, end: number): ForwardStats {
  const r = new Reader(buf, start, end);
  const m: ForwardStats = {
    expertsTouched: 0,
    workersUsed: 0,
    queueWaitMs: 0,
    totalMs: 0,
    droppedAssignments: 0,
    batchTokens: 0,
    batchRequests: 0,
  };
  while (r.pos < r.end) {
    const tag = r.varint();
    const field = Math.floor(tag / 8);
    const wt = tag & 7;
    if (wt === 0 && field >= 1 && field <= 7 && field !== 3 && field !== 4) {
      const v = r.varint() >>> 0;
      if (field === 1) m.expertsTouched = v;
      else if (field === 2) m.workersUsed = v;
      else if (field === 5) m.droppedAssignments = v;
      else if (field === 6) m.batchTokens = v;
      else m.batchRequests = v;
    } else if (wt === 1 && (field === 3 || field === 4)) {
      if (r.pos + 8 > r.end) throw new Error("protobuf: truncated field");
      const v = buf.readDoubleLE(r.pos);
      r.pos += 8;
      if (field === 3) m.queueWaitMs = v;
      else m.totalMs = v;
    } else r.skip(wt);
  }
  return m;
}

/** ExpertSlice { expert, offset, count } (uint32 each), decoded in place. */
function decodeExpertSliceAt(buf: Buffer, start: number, end: number): ExpertSlice {
  const r = new Reader(buf, start, end);
  const m: ExpertSlice = { expert: 0, offset: 0, count: 0 };
  while (r.pos < r.end) {
    const tag = r.varint();
    const field = Math.floor(tag / 8);
    const wt = tag & 7;
    if (wt === 0 && field === 1) m.expert = r.varint() >>> 0;
    else if (wt === 0 && field === 2) m.offset = r.varint() >>> 0;
    else if (wt === 0 && field === 3) m.count = r.varint() >>> 0;
    else r.skip(wt);
  }
  return m;
}

// The pool name of the last message and its bytes: every message of a stream names the same pool, so the string
// is reused when the bytes match instead of being decoded again (a UTF-8 decode and a string per message).
let lastPoolBytes = Buffer.alloc(0);
let lastPool = "";

function poolName(buf: Buffer, start: number, end: number): string {
  const n = end - start;
  if (n === lastPoolBytes.length && n <= 64) {
    let same = true;
    for (let i = 0; i < n; i++) {
      if (buf[start + i] !== lastPoolBytes[i]) {
        same = false;
        break;
      }
    }
    if (same) return lastPool;
  }
  lastPool = buf.toString("utf8", start, end);
  lastPoolBytes = Buffer.from(buf.subarray(start, end));
  return lastPool;
}

/** A view (no copy) of buf[start, end) as a Buffer. */
function view(buf: Buffer, start: number, end: number): Buffer {
  return buf.subarray(start, end);
}

/** The data of a tensor whose message has no data field (zero bytes: shared, nothing can be written into it). */
const NO_DATA = Buffer.alloc(0);

function decodeTensorAt(buf: Buffer, start: number, end: number): Tensor {
  const r = new Reader(buf, start, end);
  // Not a fresh Buffer.alloc(0) per tensor: four to six tensors are decoded per routed request.
  const t: Tensor = { dtype: 0, shape: [], data: NO_DATA };
  while (r.pos < r.end) {
    const tag = r.varint();
    const field = Math.floor(tag / 8);
    const wt = tag & 7;
    if (field === 1 && wt === 0) t.dtype = r.varint() | 0;
    else if (field === 2 && wt === 2) {
      const [s, e] = r.span();
      const pr = new Reader(buf, s, e);
      while (pr.pos < pr.end) t.shape.push(pr.varint());
    } else if (field === 2 && wt === 0) t.shape.push(r.varint());
    else if (field === 3 && wt === 2) {
      const [s, e] = r.span();
      t.data = view(buf, s, e);
    } else r.skip(wt);
  }
  return t;
}

export function decodeForwardRequest(buf: Buffer): ForwardRequest {
  const r = new Reader(buf, 0, buf.length);
  const m: ForwardRequest = { pool: "", layer: 0, hidden: undefined, gate: undefined, requestId: 0n };
  while (r.pos < r.end) {
    const tag = r.varint();
    const field = Math.floor(tag / 8);
    const wt = tag & 7;
    if (field === 1 && wt === 2) {
      const [s, e] = r.span();
      m.pool = poolName(buf, s, e);
    } else if (field === 2 && wt === 0) m.layer = r.varint();
    else if (field === 3 && wt === 2) {
      const [s, e] = r.span();
      m.hidden = decodeTensorAt(buf, s, e);
    } else if (field === 4 && wt === 2) {
      const [s, e] = r.span();
      m.gate = { $case: "routerLogits", value: decodeTensorAt(buf, s, e) };
    } else if (field === 5 && wt === 2) {
      const [s, e] = r.span();
      const ar = new Reader(buf, s, e);
      const a: { expertIds: Tensor | undefined; weights: Tensor | undefined } = {
        expertIds: undefined,
        weights: undefined,
      };
      while (ar.pos < ar.end) {
        const t2 = ar.varint();
        const f2 = Math.floor(t2 / 8);
        const w2 = t2 & 7;
        if (f2 === 1 && w2 === 2) {
          const [s2, e2] = ar.span();
          a.expertIds = decodeTensorAt(buf, s2, e2);
        } else if (f2 === 2 && w2 === 2) {
          const [s2, e2] = ar.span();
          a.weights = decodeTensorAt(buf, s2, e2);
        } else ar.skip(w2);
      }
      m.gate = { $case: "assignment", value: a };
    } else if (field === 6 && wt === 0) m.requestId = r.varint64();
    else if (field === 7 && wt === 0) m.routedOnly = r.varint() !== 0;
    else if (field === 8 && wt === 0) m.timeoutMs = r.varint();
    else r.skip(wt);
  }
  return m;
}

export function decodeExpertResult(buf: Buffer): ExpertResult {
  const r = new Reader(buf, 0, buf.length);
  const m: ExpertResult = { batchId: 0n, output: undefined, stats: undefined, error: undefined };
  while (r.pos < r.end) {
    const tag = r.varint();
    const field = Math.floor(tag / 8);
    const wt = tag & 7;
    if (field === 1 && wt === 0) m.batchId = r.varint64();
    else if (field === 2 && wt === 2) {
      const [s, e] = r.span();
      m.output = decodeTensorAt(buf, s, e);
    } else if (field === 3 && wt === 2) {
      const [s, e] = r.span();
      m.stats = ExpertStats.decode(buf.subarray(s, e));
    } else if (field === 4 && wt === 2) {
      const [s, e] = r.span();
      m.error = RpcError.decode(buf.subarray(s, e));
    } else r.skip(wt);
  }
  return m;
}

export function decodeExpertBatch(buf: Buffer): ExpertBatch {
  const r = new Reader(buf, 0, buf.length);
  const m: ExpertBatch = {
    pool: "",
    layer: 0,
    tokens: undefined,
    slices: [],
    rowWeights: undefined,
    batchId: 0n,
    timeoutMs: 0,
    tokenRows: [],
    combine: false,
    cancel: [],
  };
  while (r.pos < r.end) {
    const tag = r.varint();
    const field = Math.floor(tag / 8);
    const wt = tag & 7;
    if (field === 1 && wt === 2) {
      const [s, e] = r.span();
      m.pool = poolName(buf, s, e);
    } else if (field === 2 && wt === 0) m.layer = r.varint();
    else if (field === 3 && wt === 2) {
      const [s, e] = r.span();
      m.tokens = decodeTensorAt(buf, s, e);
    } else if (field === 4 && wt === 2) {
      const [s, e] = r.span();
      m.slices.push(decodeExpertSliceAt(buf, s, e));
    } else if (field === 5 && wt === 2) {
      const [s, e] = r.span();
      m.rowWeights = decodeTensorAt(buf, s, e);
    } else if (field === 6 && wt === 0) m.batchId = r.varint64();
    else if (field === 7 && wt === 0) m.timeoutMs = r.varint();
    else if (field === 8 && wt === 2) {
      const [s, e] = r.span();
      const p = new Reader(buf, s, e);
      while (p.pos < p.end) m.tokenRows.push(p.varint());
    } else if (field === 8 && wt === 0) m.tokenRows.push(r.varint());
    else if (field === 9 && wt === 0) m.combine = r.varint() !== 0;
    else if (field === 10 && wt === 2) {
      const [s, e] = r.span();
      const p = new Reader(buf, s, e);
      while (p.pos < p.end) m.cancel.push(p.varint64());
    } else if (field === 10 && wt === 0) m.cancel.push(r.varint64());
    else r.skip(wt);
  }
  return m;
}

/** ForwardResponse (engines and the benchmark's client): hidden.data is a view into the message. */
export function decodeForwardResponse(buf: Buffer): ForwardResponse {
  const r = new Reader(buf, 0, buf.length);
  const m: ForwardResponse = { requestId: 0n, hidden: undefined, stats: undefined, error: undefined };
  while (r.pos < r.end) {
    const tag = r.varint();
    const field = Math.floor(tag / 8);
    const wt = tag & 7;
    if (field === 1 && wt === 0) m.requestId = r.varint64();
    else if (field === 2 && wt === 2) {
      const [s, e] = r.span();
      m.hidden = decodeTensorAt(buf, s, e);
    } else if (field === 3 && wt === 2) {
      const [s, e] = r.span();
      m.stats = decodeForwardStatsAt(buf, s, e);
    } else if (field === 4 && wt === 2) {
      const [s, e] = r.span();
      m.error = RpcError.decode(buf.subarray(s, e));
    } else r.skip(wt);
  }
  return m;
}
