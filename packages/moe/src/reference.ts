// Reference expert computation: the oracle native kernels are tested against.
//
//   referenceExpertFFN: for each slice {expert, offset, count} of a token matrix x [N, d],
//     y[r] = rowWeight[r] · down( silu(x[r]·Wg^T) ⊙ (x[r]·Wu^T) ),  Wg, Wu [f, d], Wd [d, f] (HF Linear [out, in]).
//     Rows in no slice come out 0. Dot products accumulate in float64 and the intermediate activation is stored as
//     f32 (the fp32 oracle); referenceExpertFFN64 keeps everything in float64 (the oracle for the oracle).
//   referenceMoeBlock: a whole MoE block of a family (router, gate, routed experts, shared experts incl. Qwen2's
//     sigmoid shared-expert gate), as transformers' Mixtral/Qwen2Moe/Qwen3Moe SparseMoeBlock and DeepseekV3MoE do.
// Pure: no I/O.

import { invalidArgument } from "@switchyard/protocol";
import type { ExpertFFNWeights, MoeLayerWeights } from "./checkpoint.js";
import {
  applyGate,
  type GateConfig,
  gateConfigFromSpec,
  gateLogitsDtype,
  gateWeightsDtype,
  groupByExpert,
  type Routing,
  roundToDtype,
  routerLogits,
  sharedGateScale,
} from "./gating.js";
import type { ModelSpec, WeightDType } from "./spec.js";

export interface ExpertSliceRef {
  expert: number;
  offset: number;
  count: number;
}

type FloatArray = Float32Array | Float64Array;

function silu(v: number): number {
  return v / (1 + Math.exp(-v));
}

/** Validates slices (inside [0, n), non-overlapping); returns which rows they cover. */
function checkSlices(n: number, slices: readonly ExpertSliceRef[], field = "slices"): Uint8Array {
  const covered = new Uint8Array(n);
  slices.forEach((s, i) => {
    if (
      !Number.isInteger(s.offset) ||
      s.offset < 0 ||
      !Number.isInteger(s.count) ||
      s.count < 0 ||
      s.offset + s.count > n
    )
      throw invalidArgument(`${field}[${i}]`, `rows [${s.offset}, ${s.offset + s.count}) outside [0, ${n})`);
    for (let r = s.offset; r < s.offset + s.count; r++) {
      if (covered[r]) throw invalidArgument(`${field}[${i}]`, `row ${r} is already in another slice`);
      covered[r] = 1;
    }
  });
  return covered;
}

function checkWeights(w: ExpertFFNWeights, d: number, field: string): void {
  if (w.hidden !== d) throw invalidArgument(`${field}.hidden`, `expected ${d}, got ${w.hidden}`);
  const f = w.intermediate;
  if (w.gate.length !== f * d) throw invalidArgument(`${field}.gate`, `length ${w.gate.length}, expected ${f}×${d}`);
  if (w.up.length !== f * d) throw invalidArgument(`${field}.up`, `length ${w.up.length}, expected ${f}×${d}`);
  if (w.down.length !== d * f) throw invalidArgument(`${field}.down`, `length ${w.down.length}, expected ${d}×${f}`);
}

// Rows are processed 4 at a time so each weight row loaded from memory feeds 4 dot products.
function ffnRows(
  x: FloatArray,
  d: number,
  row0: number,
  count: number,
  w: ExpertFFNWeights,
  rowWeights: FloatArray | undefined,
  out: FloatArray,
  act: FloatArray,
): void {
  const f = w.intermediate;
  const { gate: wg, up: wu, down: wd } = w;
  for (let r = row0; r < row0 + count; r += 4) {
    const nb = Math.min(4, row0 + count - r);
    const x0 = r * d;
    const x1 = nb > 1 ? x0 + d : x0;
    const x2 = nb > 2 ? x0 + 2 * d : x0;
    const x3 = nb > 3 ? x0 + 3 * d : x0;
    for (let j = 0; j < f; j++) {
      const wo = j * d;
      let g0 = 0;
      let g1 = 0;
      let g2 = 0;
      let g3 = 0;
      let u0 = 0;
      let u1 = 0;
      let u2 = 0;
      let u3 = 0;
      for (let i = 0; i < d; i++) {
        const a = wg[wo + i];
        const b = wu[wo + i];
        const v0 = x[x0 + i];
        const v1 = x[x1 + i];
        const v2 = x[x2 + i];
        const v3 = x[x3 + i];
        g0 += v0 * a;
        u0 += v0 * b;
        g1 += v1 * a;
        u1 += v1 * b;
        g2 += v2 * a;
        u2 += v2 * b;
        g3 += v3 * a;
        u3 += v3 * b;
      }
      act[j] = silu(g0) * u0;
      act[f + j] = silu(g1) * u1;
      act[2 * f + j] = silu(g2) * u2;
      act[3 * f + j] = silu(g3) * u3;
    }
    for (let i = 0; i < d; i++) {
      const wo = i * f;
      let y0 = 0;
      let y1 = 0;
      let y2 = 0;
      let y3 = 0;
      for (let j = 0; j < f; j++) {
        const a = wd[wo + j];
        y0 += act[j] * a;
        y1 += act[f + j] * a;
        y2 += act[2 * f + j] * a;
        y3 += act[3 * f + j] * a;
      }
      out[r * d + i] = rowWeights ? y0 * rowWeights[r] : y0;
      if (nb > 1) out[(r + 1) * d + i] = rowWeights ? y1 * rowWeights[r + 1] : y1;
      if (nb > 2) out[(r + 2) * d + i] = rowWeights ? y2 * rowWeights[r + 2] : y2;
      if (nb > 3) out[(r + 3) * d + i] = rowWeights ? y3 * rowWeights[r + 3] : y3;
    }
  }
}

function runFFN<T extends FloatArray>(
  tokens: FloatArray,
  hidden: number,
  slices: readonly ExpertSliceRef[],
  weightsOf: (expert: number) => ExpertFFNWeights,
  rowWeights: FloatArray | undefined,
  out: T,
  actOf: (f: number) => FloatArray,
): T {
  if (!Number.isInteger(hidden) || hidden <= 0)
    throw invalidArgument("hidden", `must be a positive integer, got ${hidden}`);
  if (tokens.length % hidden !== 0)
    throw invalidArgument("tokens", `length ${tokens.length} is not a multiple of hidden (${hidden})`);
  const n = tokens.length / hidden;
  if (rowWeights && rowWeights.length !== n)
    throw invalidArgument("rowWeights", `length ${rowWeights.length}, expected ${n}`);
  if (out.length !== tokens.length) throw invalidArgument("out", `length ${out.length}, expected ${tokens.length}`);
  const covered = checkSlices(n, slices);
  // Covered rows are overwritten below; only the rest need zeroing (callers often pass one slice of a big matrix).
  for (let r = 0; r < n; r++) if (!covered[r]) out.fill(0, r * hidden, (r + 1) * hidden);
  slices.forEach((s, i) => {
    if (s.count === 0) return;
    const w = weightsOf(s.expert);
    if (!w) throw invalidArgument(`slices[${i}].expert`, `no weights for expert ${s.expert}`);
    checkWeights(w, hidden, `experts[${s.expert}]`);
    ffnRows(tokens, hidden, s.offset, s.count, w, rowWeights, out, actOf(w.intermediate));
  });
  return out;
}

/** fp32 reference grouped expert FFN (see file comment). Returns y [N, d]. */
export function referenceExpertFFN(
  tokens: Float32Array,
  hidden: number,
  slices: readonly ExpertSliceRef[],
  weightsOf: (expert: number) => ExpertFFNWeights,
  rowWeights?: Float32Array,
  out: Float32Array = new Float32Array(tokens.length),
): Float32Array {
  return runFFN(tokens, hidden, slices, weightsOf, rowWeights, out, (f) => new Float32Array(4 * f));
}

/** float64 everywhere (inputs are widened exactly); for tests of the fp32 paths. */
export function referenceExpertFFN64(
  tokens: Float32Array | Float64Array,
  hidden: number,
  slices: readonly ExpertSliceRef[],
  weightsOf: (expert: number) => ExpertFFNWeights,
  rowWeights?: Float32Array | Float64Array,
): Float64Array {
  return runFFN(
    tokens,
    hidden,
    slices,
    weightsOf,
    rowWeights,
    new Float64Array(tokens.length),
    (f) => new Float64Array(4 * f),
  );
}

/** FLOPs of one expert FFN over `rows` tokens (3 matmuls, 2 flops per multiply-add). */
export function expertFFNFlops(rows: number, hidden: number, intermediate: number): number {
  return 2 * 3 * rows * hidden * intermediate;
}

export interface MoeBlockResult {
  /** [T, d] */
  output: Float32Array;
  /** [T, E] router logits (absent when a routing was supplied). */
  logits?: Float32Array;
  routing: Routing;
}

export interface MoeBlockOptions {
  /** Use this routing instead of computing the gate (the router's explicit-assignment mode). */
  routing?: Routing;
  /** Use these logits instead of hidden · gate^T. */
  logits?: Float32Array;
  /** Override the spec's gate (top-k etc.). */
  gate?: GateConfig;
  /**
   * The dtype the hidden states came in (default float32): the gate computes in it where the family's does
   * (gateLogitsDtype: bf16 logits for Mixtral and Qwen in a bf16 model), and so does Qwen2-MoE's shared-expert gate
   * (sharedGateScale), with a given routing too.
   */
  activations?: WeightDType;
  /** The dtype of given `logits` (default float32): Qwen rounds the routing weights to it. */
  logitsDtype?: WeightDType;
}

/**
 * The whole MoE block in fp32: gate -> routed experts (weighted) -> + shared experts.
 * hidden [T, d]; returns [T, d].
 */
export function referenceMoeBlock(
  spec: ModelSpec,
  w: MoeLayerWeights,
  hidden: Float32Array,
  opts: MoeBlockOptions = {},
): MoeBlockResult {
  const d = spec.hiddenSize;
  const E = spec.experts;
  if (hidden.length % d !== 0)
    throw invalidArgument("hidden", `length ${hidden.length} is not a multiple of hiddenSize (${d})`);
  const T = hidden.length / d;
  if (w.experts.length !== E) throw invalidArgument("weights.experts", `${w.experts.length} experts, expected ${E}`);
  let logits: Float32Array | undefined;
  let routing = opts.routing;
  if (!routing) {
    // the model's gate rounds its own product to the dtype it computes in; given logits are used as they came
    const logitsDtype = opts.logits
      ? (opts.logitsDtype ?? "float32")
      : gateLogitsDtype(spec, opts.activations ?? "float32");
    logits = opts.logits ?? roundToDtype(routerLogits(hidden, w.gate, d), logitsDtype);
    const base = opts.gate ?? gateConfigFromSpec(spec);
    const gate = { ...base, weightsDtype: base.weightsDtype ?? gateWeightsDtype(spec, logitsDtype) };
    if (logits.length !== T * E) throw invalidArgument("logits", `length ${logits.length}, expected ${T}×${E}`);
    if (spec.scoring === "sigmoid" && !w.correctionBias && spec.family === "deepseek-v3")
      throw invalidArgument("weights.correctionBias", "required for deepseek-v3");
    routing = applyGate(logits, E, gate, w.correctionBias);
  } else if (routing.tokens !== T) {
    throw invalidArgument("routing.tokens", `${routing.tokens}, expected ${T}`);
  }

  const output = new Float32Array(T * d);
  // Group tokens by expert into one contiguous matrix with slices, as the router sends them to workers.
  const groups = groupByExpert(routing, E);
  let rows = 0;
  for (const g of groups) rows += g.tokens.length;
  const x = new Float32Array(rows * d);
  const rw = new Float32Array(rows);
  const slices: ExpertSliceRef[] = [];
  let r = 0;
  for (const g of groups) {
    slices.push({ expert: g.expert, offset: r, count: g.tokens.length });
    for (let i = 0; i < g.tokens.length; i++, r++) {
      x.set(hidden.subarray(g.tokens[i] * d, (g.tokens[i] + 1) * d), r * d);
      rw[r] = g.weights[i];
    }
  }
  const y = referenceExpertFFN(x, d, slices, (e) => w.experts[e], rw);
  r = 0;
  for (const g of groups) {
    for (let i = 0; i < g.tokens.length; i++, r++) {
      const o = g.tokens[i] * d;
      for (let j = 0; j < d; j++) output[o + j] += y[r * d + j];
    }
  }

  if (spec.sharedExperts > 0) {
    if (!w.shared)
      throw invalidArgument("weights.shared", `required: the model has ${spec.sharedExperts} shared expert(s)`);
    const ys = referenceExpertFFN(hidden, d, [{ expert: 0, offset: 0, count: T }], () => w.shared!);
    let scale: Float32Array | undefined;
    if (spec.sharedExpertGate) {
      if (!w.sharedGate || w.sharedGate.length !== d)
        throw invalidArgument("weights.sharedGate", `required, length ${d}`);
      scale = sharedGateScale(spec, hidden, w.sharedGate, opts.activations);
    }
    for (let t = 0; t < T; t++) {
      const s = scale ? scale[t] : 1;
      for (let j = 0; j < d; j++) output[t * d + j] += s * ys[t * d + j];
    }
  }
  return logits ? { output, logits, routing } : { output, routing };
}
