// Pure validation of an ExpertBatch against what this worker serves. Every failure is INVALID_ARGUMENT naming
// the offending field ("tokens.shape[1]", "slices[3].expert", ...). No decoding happens here: the token bytes go
// to the backend as they came (the native kernels widen bf16/fp16 themselves).

import {
  bytesToFloat32,
  DType,
  dtypeName,
  type ExpertBatch,
  failedPrecondition,
  invalidArgument,
  shapeElements,
} from "@switchyard/protocol";

export interface BatchContext {
  pool: string;
  layers: number;
  experts: number;
  /** The shared expert's slices, served as expert ids [experts, experts + sharedSlices) (0 = none). */
  sharedSlices?: number;
  hiddenSize: number;
  /** Layers that have routed experts (DeepSeek-V3's first layers are dense). */
  isMoeLayer: (layer: number) => boolean;
  /** Whether this worker may load (layer, expert): its share of the placement plan. */
  serves: (layer: number, expert: number) => boolean;
  /** Upper bound on rows per batch (protects memory); default unlimited. */
  maxRows?: number;
  /**
   * The largest message this worker sends (--max-message-bytes): a batch whose result would not fit is refused on
   * its own. Unchecked, grpc-js ends the whole stream RESOURCE_EXHAUSTED (every other batch on it lost) and the
   * router drops a data connection whose frame is over its limit. Default unlimited.
   */
  maxMessageBytes?: number;
}

/**
 * Bytes an ExpertResult holds beside its output's data: batch id, dtype, shape, the stats (fixed-size numbers and
 * the backend's short name) and their tags and lengths, a few hundred at most; rounded up.
 */
export const RESULT_ENVELOPE_BYTES = 1024;

export interface ValidSlice {
  expert: number;
  offset: number;
  count: number;
}

export interface ValidBatch {
  layer: number;
  dtype: DType;
  tokens: Uint8Array;
  rows: number;
  cols: number;
  /** In request order, zero-count slices kept (they cost nothing). */
  slices: ValidSlice[];
  rowWeights?: Float32Array;
  batchId: bigint;
  /**
   * Deduplicated batches (ExpertBatch.token_rows): `tokens` holds `distinct` rows and assignment row i reads row
   * tokenRows[i]; `rows` counts the assignment rows. Absent: `tokens` holds the `rows` rows.
   */
  tokenRows?: Uint32Array;
  distinct: number;
  /** Answer the distinct tokens' weighted sums, FLOAT32 [distinct, cols] (ExpertBatch.combine). */
  combine: boolean;
}

const TOKEN_DTYPES = [DType.FLOAT32, DType.BFLOAT16, DType.FLOAT16];

export function validateBatch(b: ExpertBatch, ctx: BatchContext): ValidBatch {
  if (b.pool && b.pool !== ctx.pool)
    throw invalidArgument("pool", `this worker serves pool "${ctx.pool}", got "${b.pool}"`);
  if (!Number.isInteger(b.layer) || b.layer < 0 || b.layer >= ctx.layers)
    throw invalidArgument("layer", `out of range: ${b.layer} (model has ${ctx.layers} layers)`);
  // before the slices: their experts would otherwise be refused as "not served", hiding what is wrong
  if (!ctx.isMoeLayer(b.layer)) throw invalidArgument("layer", `layer ${b.layer} is dense (no routed experts)`);

  const t = b.tokens;
  if (!t) throw invalidArgument("tokens", "required");
  if (!TOKEN_DTYPES.includes(t.dtype))
    throw invalidArgument("tokens.dtype", `expected FLOAT32, BFLOAT16 or FLOAT16, got ${dtypeName(t.dtype)}`);
  if (!Array.isArray(t.shape) || t.shape.length !== 2)
    throw invalidArgument("tokens.shape", `expected rank 2 [N, d], got [${(t.shape ?? []).join(", ")}]`);
  const n = shapeElements(t.shape, "tokens.shape");
  const [distinct, cols] = t.shape as [number, number];
  if (cols !== ctx.hiddenSize)
    throw invalidArgument("tokens.shape[1]", `expected hidden size ${ctx.hiddenSize}, got ${cols}`);
  const tr = b.tokenRows ?? [];
  const deduped = tr.length > 0;
  // The assignment rows the slices address: the token rows themselves, or one per token_rows entry.
  const rows = deduped ? tr.length : distinct;
  if (ctx.maxRows !== undefined && distinct > ctx.maxRows)
    throw invalidArgument("tokens.shape[0]", `${distinct} rows exceed this worker's limit of ${ctx.maxRows}`);
  if (ctx.maxRows !== undefined && rows > ctx.maxRows)
    throw invalidArgument("token_rows", `${rows} rows exceed this worker's limit of ${ctx.maxRows}`);
  // A token has at most one assignment row per expert, shared slices included. Past that, a small message (one
  // token, millions of token_rows) would expand into gigabytes of gathered rows and output.
  const perToken = ctx.experts + (ctx.sharedSlices ?? 0);
  if (deduped && rows > distinct * perToken)
    throw invalidArgument(
      "token_rows",
      `${rows} assignment rows for ${distinct} tokens: a token has at most ${perToken} (one per expert)`,
    );
  let tokenRows: Uint32Array | undefined;
  if (deduped) {
    tokenRows = new Uint32Array(rows);
    for (let i = 0; i < rows; i++) {
      const r = tr[i];
      if (!Number.isInteger(r) || r < 0 || r >= distinct)
        throw invalidArgument(`token_rows[${i}]`, `${r} is past the ${distinct} token rows`);
      tokenRows[i] = r;
    }
  }
  if (b.combine && !deduped) throw invalidArgument("combine", "needs token_rows (the distinct tokens to sum into)");
  const size = t.dtype === DType.FLOAT32 ? 4 : 2;
  if (!(t.data instanceof Uint8Array) || t.data.byteLength !== n * size)
    throw invalidArgument(
      "tokens.data",
      `expected ${n * size} bytes ([${distinct}, ${cols}] × ${size} bytes ${dtypeName(t.dtype)}), got ${t.data?.byteLength ?? 0}`,
    );
  // The reply's size is known now: one row per assignment row in the tokens' dtype, or with combine one fp32 row
  // per distinct token. A request within the limit can still ask for more (token_rows repeat each distinct token
  // up to once per expert; combine widens bf16/fp16 to fp32).
  if (ctx.maxMessageBytes !== undefined) {
    const [outRows, outSize] = b.combine ? [distinct, 4] : [rows, size];
    const outBytes = outRows * cols * outSize;
    const room = ctx.maxMessageBytes - RESULT_ENVELOPE_BYTES;
    if (outBytes > room)
      throw invalidArgument(
        b.combine ? "combine" : deduped ? "token_rows" : "tokens.shape[0]",
        `the result would be ${outBytes} bytes ([${outRows}, ${cols}] × ${outSize} bytes ${b.combine ? "FLOAT32" : dtypeName(t.dtype)}), over this worker's message limit of ${ctx.maxMessageBytes} bytes (--max-message-bytes; ${RESULT_ENVELOPE_BYTES} of them kept for the reply's other fields): send fewer rows per batch`,
      );
  }

  const slices: ValidSlice[] = [];
  for (let i = 0; i < b.slices.length; i++) {
    const s = b.slices[i];
    const f = `slices[${i}]`;
    if (s.expert >= ctx.experts + (ctx.sharedSlices ?? 0))
      throw invalidArgument(`${f}.expert`, `unknown expert ${s.expert} (${expertIdsText(ctx)})`);
    const what = deduped ? "assignment rows (token_rows)" : "token rows";
    if (s.offset > rows) throw invalidArgument(`${f}.offset`, `${s.offset} is past the ${rows} ${what}`);
    if (s.offset + s.count > rows)
      throw invalidArgument(`${f}.count`, `rows [${s.offset}, ${s.offset + s.count}) exceed the ${rows} ${what}`);
    // FAILED_PRECONDITION, not INVALID_ARGUMENT: a valid expert this worker's plan (a ConfigMap that reaches router and
    // worker at different times) does not hold; the router sends the rows to another replica.
    if (s.count > 0 && !ctx.serves(b.layer, s.expert))
      throw failedPrecondition(`expert ${s.expert} of layer ${b.layer} is not served by this worker`, `${f}.expert`);
    slices.push({ expert: s.expert, offset: s.offset, count: s.count });
  }
  // Overlap: sort non-empty slices by offset and compare neighbours.
  const order = slices
    .map((s, i) => ({ s, i }))
    .filter((x) => x.s.count > 0)
    .sort((a, b2) => a.s.offset - b2.s.offset);
  for (let k = 1; k < order.length; k++) {
    const prev = order[k - 1];
    const cur = order[k];
    if (cur.s.offset < prev.s.offset + prev.s.count)
      throw invalidArgument(
        `slices[${cur.i}]`,
        `rows [${cur.s.offset}, ${cur.s.offset + cur.s.count}) overlap slices[${prev.i}] rows [${prev.s.offset}, ${prev.s.offset + prev.s.count})`,
      );
  }

  let rowWeights: Float32Array | undefined;
  const w = b.rowWeights;
  if (w) {
    if (w.dtype !== DType.FLOAT32)
      throw invalidArgument("row_weights.dtype", `expected FLOAT32, got ${dtypeName(w.dtype)}`);
    if (!Array.isArray(w.shape) || w.shape.length !== 1 || w.shape[0] !== rows)
      throw invalidArgument(
        "row_weights.shape",
        `expected [${rows}] (one weight per ${deduped ? "assignment row" : "token row"}), got [${(w.shape ?? []).join(", ")}]`,
      );
    if (!(w.data instanceof Uint8Array) || w.data.byteLength !== rows * 4)
      throw invalidArgument("row_weights.data", `expected ${rows * 4} bytes, got ${w.data?.byteLength ?? 0}`);
    // Copy: the native kernel reads it on another thread while grpc-js may reuse the message buffer.
    rowWeights = bytesToFloat32(w.data, DType.FLOAT32, true);
    // A NaN or infinite weight makes its row NaN, and through combine's sum (which scales even rows in no slice)
    // its whole token: refuse it here rather than hand the router poisoned hidden states.
    for (let i = 0; i < rows; i++)
      if (!Number.isFinite(rowWeights[i]))
        throw invalidArgument("row_weights.data", `the weight of row ${i} must be finite, got ${rowWeights[i]}`);
  }
  return {
    layer: b.layer,
    dtype: t.dtype,
    tokens: t.data,
    rows,
    cols,
    slices,
    rowWeights,
    batchId: b.batchId,
    tokenRows,
    distinct,
    combine: b.combine === true,
  };
}

/** "layer has 60 experts" or "layer has 60 experts and 4 shared slices (ids 60-63)": the ids an error allows. */
export function expertIdsText(shape: { experts: number; sharedSlices?: number }): string {
  const m = shape.sharedSlices ?? 0;
  return m > 0
    ? `layer has ${shape.experts} experts and ${m} shared slices (ids ${shape.experts}-${shape.experts + m - 1})`
    : `layer has ${shape.experts} experts`;
}
