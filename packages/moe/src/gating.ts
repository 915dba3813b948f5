// Gating: router logits -> per-token expert ids and weights, computed as each family's transformers MoE block does.
//
//   softmax top-k (Mixtral, Qwen2/3-MoE): p = softmax(logits) in fp32; top-k of p; renormalise the k weights to sum
//     to 1 when normTopKProb (Mixtral always, Qwen per norm_topk_prob).
//   sigmoid group-limited top-k (DeepSeek-V3 DeepseekV3TopkRouter): s = sigmoid(logits); c = s + e_score_correction_bias
//     (selection only); group score = sum of the top-2 c in each of nGroup groups; keep the topkGroup best groups;
//     experts in other groups are masked out (-inf, as transformers 5.17 and DeepSeek's reference code do; some
//     older transformers versions masked with 0.0, which differs only when corrected scores go negative);
//     top-k of the rest; weights are
//     the uncorrected s of the chosen experts, divided by (sum + 1e-20) when normTopKProb, times routedScalingFactor.
//   top-p (dynamic k, "Harder tasks need more experts"): the smallest prefix of experts by descending softmax
//     probability whose mass reaches p, at least minK and at most maxK experts; unused slots hold id -1, weight 0;
//     weights (renormalised by default) times routedScalingFactor, as in top-k.
//
// Precision, in a bf16 (or fp16) model: Mixtral's and Qwen2/3-MoE's gates are F.linear in the activations' dtype, so
// their logits are rounded to it before the fp32 softmax, and Qwen's routing weights are cast to the logits' dtype
// afterwards; DeepSeek-V3's gate is fp32 throughout (gateLogitsDtype, gateWeightsDtype). Rounding matters
// because bf16 logits tie: at Qwen3-30B-A3B's 128 experts 5.2% of tokens have equal k-th and (k+1)-th logits, and
// unrounded fp32 logits picked other experts than transformers' bf16 block on 2.7% of tokens (Qwen1.5-MoE 1.6%,
// Mixtral 0.1%); rounded, the same experts on every token as transformers on an H200
// (bench/results/transformers-half-parity.json). Qwen2-MoE's sigmoid shared-expert gate rounds its logit and its
// sigmoid to the activations' dtype too (sharedGateScale): fp32, it was off transformers' on every token.
//
// Ties: the lower expert id wins (a stable selection scan), so routing is deterministic. torch.topk has no such
// rule: on the CPU (torch 2.11) topk of [1, 2, 2, 2, 0, 2] by 2 gives ids [3, 5] (bench/results/transformers-parity.json,
// torch_topk_ties); results differ from transformers only at exact ties. Rows come out sorted by descending score.
// Pure: no I/O. Inputs Float32Array [T, E] row-major; outputs ids Int32Array [T*k], weights Float32Array [T*k].

import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16, invalidArgument } from "@switchyard/protocol";
import type { GateScoring, ModelSpec, WeightDType } from "./spec.js";

export interface Routing {
  tokens: number;
  /** Slots per token (for top-p: maxK; unused slots id -1, weight 0). */
  k: number;
  ids: Int32Array;
  weights: Float32Array;
}

export interface GateConfig {
  scoring: GateScoring;
  topK: number;
  normTopKProb: boolean;
  nGroup: number;
  topkGroup: number;
  routedScalingFactor: number;
  /** The dtype the routing weights are rounded to (absent: float32): gateWeightsDtype. */
  weightsDtype?: WeightDType;
  /** The request field the logits came from, named in a bad-logit error (absent: "logits"). */
  field?: string;
}

/** Families whose transformers gate is F.linear in the activations' dtype, and those that cast the weights to it. */
const GATE_IN_ACTIVATION_DTYPE = new Set(["mixtral", "qwen2-moe", "qwen3-moe"]);
const WEIGHTS_IN_LOGITS_DTYPE = new Set(["qwen2-moe", "qwen3-moe"]);

/**
 * The dtype the family's gate computes its logits in, for hidden states of `activations` (a model runs in the dtype
 * of its activations): Mixtral's and Qwen's F.linear(hidden, weight) rounds the product to it, DeepSeek-V3's gate casts
 * both to fp32 first. Custom models: fp32, as nothing says otherwise.
 */
export function gateLogitsDtype(spec: ModelSpec, activations: WeightDType): WeightDType {
  return GATE_IN_ACTIVATION_DTYPE.has(spec.family) ? activations : "float32";
}

/** The dtype the family's routing weights are rounded to, for logits of `logits`: Qwen casts them to it. */
export function gateWeightsDtype(spec: ModelSpec, logits: WeightDType): WeightDType {
  return WEIGHTS_IN_LOGITS_DTYPE.has(spec.family) ? logits : "float32";
}

export function gateConfigFromSpec(spec: ModelSpec): GateConfig {
  return {
    scoring: spec.scoring,
    topK: spec.topK,
    normTopKProb: spec.normTopKProb,
    nGroup: spec.nGroup,
    topkGroup: spec.topkGroup,
    routedScalingFactor: spec.routedScalingFactor,
  };
}

/**
 * Rounds values in place to the nearest `dtype` value (ties to even, as torch's casts), so that they hold what a tensor
 * of that dtype would; float32 or absent leaves them as they are.
 */
export function roundToDtype(values: Float32Array, dtype: WeightDType | undefined): Float32Array {
  if (dtype === "bfloat16") bf16ToF32(f32ToBf16(values), values);
  else if (dtype === "float16") f16ToF32(f32ToF16(values), values);
  return values;
}

/**
 * logits[t, e] = hidden[t, :] · gateWeight[e, :] (HF Linear weight [experts, hidden], no bias).
 * Accumulates in float64 and rounds once (transformers computes this in fp32; differences are ~1 ulp).
 */
export function routerLogits(
  hidden: Float32Array,
  gateWeight: Float32Array,
  hiddenSize: number,
  out?: Float32Array,
): Float32Array {
  if (!Number.isInteger(hiddenSize) || hiddenSize <= 0)
    throw invalidArgument("hiddenSize", `must be a positive integer, got ${hiddenSize}`);
  if (hidden.length % hiddenSize !== 0)
    throw invalidArgument("hidden", `length ${hidden.length} is not a multiple of hiddenSize ${hiddenSize}`);
  if (gateWeight.length % hiddenSize !== 0 || gateWeight.length === 0)
    throw invalidArgument(
      "gateWeight",
      `length ${gateWeight.length} is not a positive multiple of hiddenSize ${hiddenSize}`,
    );
  const T = hidden.length / hiddenSize;
  const E = gateWeight.length / hiddenSize;
  const o = out ?? new Float32Array(T * E);
  if (o.length < T * E) throw invalidArgument("out", `length ${o.length} < ${T * E}`);
  const d = hiddenSize;
  for (let t = 0; t < T; t++) {
    const xo = t * d;
    for (let e = 0; e < E; e++) {
      const wo = e * d;
      let s0 = 0;
      let s1 = 0;
      let i = 0;
      for (; i + 1 < d; i += 2) {
        s0 += hidden[xo + i] * gateWeight[wo + i];
        s1 += hidden[xo + i + 1] * gateWeight[wo + i + 1];
      }
      if (i < d) s0 += hidden[xo + i] * gateWeight[wo + i];
      o[t * E + e] = s0 + s1;
    }
  }
  return o;
}

/**
 * Qwen2-MoE's shared-expert gate, sigmoid(hidden · sharedGate) per token [T], as transformers computes it for hidden
 * states of `activations`. shared_expert_gate is an nn.Linear like the routed gate, so its logit is rounded to the
 * dtype gateLogitsDtype names (bf16 in a bf16 model), and F.sigmoid of that tensor computes in fp32 and rounds its
 * result to the same dtype: the scale is itself a bf16 value there (on test/parity's Qwen1.5-MoE case, the fp32 one
 * was off transformers' on every token, by up to 2.6e-3). The reference block and the router both scale the shared
 * expert by this, so that the two cannot drift apart.
 */
export function sharedGateScale(
  spec: ModelSpec,
  hidden: Float32Array,
  sharedGate: Float32Array,
  activations: WeightDType = "float32",
): Float32Array {
  const dtype = gateLogitsDtype(spec, activations);
  const s = roundToDtype(routerLogits(hidden, sharedGate, spec.hiddenSize), dtype);
  for (let t = 0; t < s.length; t++) s[t] = 1 / (1 + Math.exp(-s[t]));
  return roundToDtype(s, dtype);
}

/** The logits' shape against `experts`; returns the token count. */
function checkLogitsShape(logits: Float32Array, experts: number, field: string): number {
  if (!Number.isInteger(experts) || experts <= 0)
    throw invalidArgument("experts", `must be a positive integer, got ${experts}`);
  if (logits.length % experts !== 0)
    throw invalidArgument(field, `length ${logits.length} is not a multiple of experts (${experts})`);
  return logits.length / experts;
}

function invalidLogit(logits: Float32Array, experts: number, field: string, i: number): Error {
  return invalidArgument(
    `${field}[${Math.floor(i / experts)}, ${i % experts}]`,
    `must be finite or -Infinity, got ${logits[i]}`,
  );
}

function checkLogits(logits: Float32Array, experts: number, field: string): number {
  const T = checkLogitsShape(logits, experts, field);
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i];
    // -Inf is allowed (an expert masked out); NaN and +Inf make softmax/sigmoid undefined.
    if (Number.isNaN(v) || v === Number.POSITIVE_INFINITY) throw invalidLogit(logits, experts, field, i);
  }
  return T;
}

/**
 * A native twin of softmaxTopK / sigmoidGroupTopK (the router's addon, router-service/native/src/gate.h): the same
 * steps in the same IEEE order, so the same ids and weights. It checks the logits' values itself: returns -1, or the
 * flat index of the first NaN / +Infinity logit. The TypeScript callers check everything else first.
 */
export type GateKernel = (
  logits: Float32Array,
  tokens: number,
  experts: number,
  k: number,
  sigmoid: 0 | 1,
  normTopK: 0 | 1,
  scale: number,
  nGroup: number,
  topkGroup: number,
  bias: Float32Array | null,
  ids: Int32Array,
  weights: Float32Array,
) => number;

/** Row softmax in fp32 semantics (max-subtracted; exp and sum in float64, stored as f32). */
export function softmaxRows(
  logits: Float32Array,
  experts: number,
  out: Float32Array = new Float32Array(logits.length),
): Float32Array {
  const T = logits.length / experts;
  for (let t = 0; t < T; t++) {
    const o = t * experts;
    let m = Number.NEGATIVE_INFINITY;
    for (let e = 0; e < experts; e++) if (logits[o + e] > m) m = logits[o + e];
    if (m === Number.NEGATIVE_INFINITY) {
      // every expert masked: torch gives NaN; we give a uniform row so routing stays defined
      for (let e = 0; e < experts; e++) out[o + e] = 1 / experts;
      continue;
    }
    let sum = 0;
    for (let e = 0; e < experts; e++) {
      const v = Math.exp(logits[o + e] - m);
      out[o + e] = v;
      sum += out[o + e];
    }
    for (let e = 0; e < experts; e++) out[o + e] = out[o + e] / sum;
  }
  return out;
}

/**
 * Select the k largest of vals[off .. off+n) into idx/score (descending; lower index wins ties).
 * Returns how many were selected (< k only if n < k).
 */
function selectTopK(
  vals: ArrayLike<number>,
  off: number,
  n: number,
  k: number,
  idx: Int32Array,
  score: Float64Array,
): number {
  let count = 0;
  for (let i = 0; i < n; i++) {
    const v = vals[off + i];
    if (count === k && !(v > score[k - 1])) continue;
    // insertion: shift strictly smaller scores down; equal scores stay ahead (lower index wins)
    let j = count < k ? count : k - 1;
    while (j > 0 && v > score[j - 1]) {
      score[j] = score[j - 1];
      idx[j] = idx[j - 1];
      j--;
    }
    score[j] = v;
    idx[j] = i;
    if (count < k) count++;
  }
  return count;
}

function checkK(k: number, experts: number, field: string): void {
  if (!Number.isInteger(k) || k < 1 || k > experts)
    throw invalidArgument(field, `must be an integer in [1, ${experts}], got ${k}`);
}

/** Softmax top-k (Mixtral, Qwen2/3-MoE). */
export function softmaxTopK(
  logits: Float32Array,
  experts: number,
  opts: {
    topK: number;
    normTopKProb: boolean;
    routedScalingFactor?: number;
    field?: string;
    weightsDtype?: WeightDType;
  },
  kernel?: GateKernel,
): Routing {
  const field = opts.field ?? "logits";
  const k = opts.topK;
  const scale = opts.routedScalingFactor ?? 1;
  if (kernel) {
    const T = checkLogitsShape(logits, experts, field);
    checkK(k, experts, "topK");
    const r: Routing = { tokens: T, k, ids: new Int32Array(T * k), weights: new Float32Array(T * k) };
    const bad = kernel(logits, T, experts, k, 0, opts.normTopKProb ? 1 : 0, scale, 1, 1, null, r.ids, r.weights);
    if (bad >= 0) throw invalidLogit(logits, experts, field, bad);
    roundToDtype(r.weights, opts.weightsDtype);
    return r;
  }
  const T = checkLogits(logits, experts, field);
  checkK(k, experts, "topK");
  const probs = softmaxRows(logits, experts);
  const ids = new Int32Array(T * k);
  const weights = new Float32Array(T * k);
  const idx = new Int32Array(k);
  const sc = new Float64Array(k);
  for (let t = 0; t < T; t++) {
    selectTopK(probs, t * experts, experts, k, idx, sc);
    let sum = 0;
    for (let j = 0; j < k; j++) sum += Math.fround(sc[j]);
    for (let j = 0; j < k; j++) {
      ids[t * k + j] = idx[j];
      const w = opts.normTopKProb ? Math.fround(sc[j]) / sum : sc[j];
      weights[t * k + j] = w * scale;
    }
  }
  roundToDtype(weights, opts.weightsDtype);
  return { tokens: T, k, ids, weights };
}

/** DeepSeek-V3 sigmoid + correction bias + group-limited top-k. */
export function sigmoidGroupTopK(
  logits: Float32Array,
  experts: number,
  opts: {
    topK: number;
    normTopKProb: boolean;
    nGroup: number;
    topkGroup: number;
    routedScalingFactor: number;
    correctionBias?: Float32Array;
    field?: string;
  },
  kernel?: GateKernel,
): Routing {
  const field = opts.field ?? "logits";
  const T = kernel ? checkLogitsShape(logits, experts, field) : checkLogits(logits, experts, field);
  const k = opts.topK;
  checkK(k, experts, "topK");
  const G = opts.nGroup;
  if (!Number.isInteger(G) || G < 1 || experts % G !== 0)
    throw invalidArgument("nGroup", `must divide experts (${experts}), got ${G}`);
  const per = experts / G;
  if (G > 1 && per < 2) throw invalidArgument("nGroup", `groups need at least 2 experts each, got ${per}`);
  const TG = opts.topkGroup;
  if (!Number.isInteger(TG) || TG < 1 || TG > G)
    throw invalidArgument("topkGroup", `must be an integer in [1, ${G}], got ${TG}`);
  // Beyond this the top-k would take masked experts of dropped groups (a RoutingPolicy topK can ask for it).
  if (k > TG * per)
    throw invalidArgument(
      "topK",
      `${k} exceeds the ${TG * per} experts of the topkGroup (${TG}) groups kept per token`,
    );
  const bias = opts.correctionBias;
  if (bias && bias.length !== experts)
    throw invalidArgument("correctionBias", `length ${bias.length}, expected ${experts}`);
  // A NaN bias never compares greater, so its expert is silently never chosen (+Inf: always chosen); the native
  // kernel checks only the logits. A checkpoint's bias is checked on read; this guards every other caller.
  if (bias) {
    for (let e = 0; e < experts; e++)
      if (!Number.isFinite(bias[e])) throw invalidArgument(`correctionBias[${e}]`, `must be finite, got ${bias[e]}`);
  }
  if (kernel) {
    const r: Routing = { tokens: T, k, ids: new Int32Array(T * k), weights: new Float32Array(T * k) };
    const norm = opts.normTopKProb ? 1 : 0;
    const bad = kernel(logits, T, experts, k, 1, norm, opts.routedScalingFactor, G, TG, bias ?? null, r.ids, r.weights);
    if (bad >= 0) throw invalidLogit(logits, experts, field, bad);
    return r;
  }

  const ids = new Int32Array(T * k);
  const weights = new Float32Array(T * k);
  const s = new Float32Array(experts);
  const choice = new Float32Array(experts);
  const groupScore = new Float64Array(G);
  const gIdx = new Int32Array(TG);
  const gSc = new Float64Array(TG);
  const top2 = new Int32Array(2);
  const top2s = new Float64Array(2);
  const keep = new Uint8Array(G);
  const idx = new Int32Array(k);
  const sc = new Float64Array(k);
  for (let t = 0; t < T; t++) {
    const o = t * experts;
    for (let e = 0; e < experts; e++) {
      s[e] = 1 / (1 + Math.exp(-logits[o + e]));
      choice[e] = bias ? s[e] + bias[e] : s[e];
    }
    if (G > 1 && TG < G) {
      for (let g = 0; g < G; g++) {
        selectTopK(choice, g * per, per, 2, top2, top2s);
        groupScore[g] = Math.fround(Math.fround(top2s[0]) + Math.fround(top2s[1]));
      }
      selectTopK(groupScore, 0, G, TG, gIdx, gSc);
      keep.fill(0);
      for (let j = 0; j < TG; j++) keep[gIdx[j]] = 1;
      for (let e = 0; e < experts; e++) if (!keep[Math.floor(e / per)]) choice[e] = Number.NEGATIVE_INFINITY;
    }
    selectTopK(choice, 0, experts, k, idx, sc);
    let sum = 0;
    for (let j = 0; j < k; j++) sum += s[idx[j]];
    sum = Math.fround(sum);
    for (let j = 0; j < k; j++) {
      ids[t * k + j] = idx[j];
      let w = s[idx[j]];
      if (opts.normTopKProb) w = Math.fround(w / (sum + 1e-20));
      weights[t * k + j] = w * opts.routedScalingFactor;
    }
  }
  return { tokens: T, k, ids, weights };
}

export interface TopPOptions {
  /** Probability mass to reach, in (0, 1]. */
  topP: number;
  /** Most experts per token (the output's k). */
  maxK: number;
  /** Fewest experts per token (default 1). */
  minK?: number;
  /** Renormalise the chosen weights to sum to 1 (default true). */
  normalize?: boolean;
  /** Multiplies the final weights, after renormalising, as in top-k (the model's routed_scaling_factor; default 1). */
  routedScalingFactor?: number;
  /** The dtype the final weights are rounded to, as in top-k (GateConfig.weightsDtype; default float32). */
  weightsDtype?: WeightDType;
  field?: string;
}

/** Top-p dynamic routing over softmax probabilities. */
export function softmaxTopP(logits: Float32Array, experts: number, opts: TopPOptions): Routing {
  const field = opts.field ?? "logits";
  const T = checkLogits(logits, experts, field);
  if (!(opts.topP > 0 && opts.topP <= 1)) throw invalidArgument("topP", `must be in (0, 1], got ${opts.topP}`);
  const maxK = opts.maxK;
  checkK(maxK, experts, "maxK");
  const minK = opts.minK ?? 1;
  if (!Number.isInteger(minK) || minK < 1 || minK > maxK)
    throw invalidArgument("minK", `must be an integer in [1, ${maxK}], got ${minK}`);
  const normalize = opts.normalize ?? true;
  const scale = opts.routedScalingFactor ?? 1;
  if (!(Number.isFinite(scale) && scale > 0))
    throw invalidArgument("routedScalingFactor", `must be a positive finite number, got ${scale}`);
  const probs = softmaxRows(logits, experts);
  const ids = new Int32Array(T * maxK).fill(-1);
  const weights = new Float32Array(T * maxK);
  const idx = new Int32Array(maxK);
  const sc = new Float64Array(maxK);
  for (let t = 0; t < T; t++) {
    selectTopK(probs, t * experts, experts, maxK, idx, sc);
    let n = 0;
    let mass = 0;
    while (n < maxK && (n < minK || mass < opts.topP)) {
      mass += sc[n];
      n++;
    }
    for (let j = 0; j < n; j++) {
      ids[t * maxK + j] = idx[j];
      weights[t * maxK + j] = (normalize ? sc[j] / mass : sc[j]) * scale;
    }
  }
  roundToDtype(weights, opts.weightsDtype);
  return { tokens: T, k: maxK, ids, weights };
}

/** The family's gate (softmax top-k, or sigmoid group top-k) from a GateConfig; `kernel` runs it natively. */
export function applyGate(
  logits: Float32Array,
  experts: number,
  cfg: GateConfig,
  correctionBias?: Float32Array,
  kernel?: GateKernel,
): Routing {
  if (cfg.scoring === "sigmoid") return sigmoidGroupTopK(logits, experts, { ...cfg, correctionBias }, kernel);
  return softmaxTopK(logits, experts, cfg, kernel);
}

/** Tokens routed to each expert (ids of -1 skipped). */
export function expertCounts(r: Routing, experts: number): Int32Array {
  const c = new Int32Array(experts);
  for (let i = 0; i < r.ids.length; i++) {
    const e = r.ids[i];
    if (e >= 0) c[e]++;
  }
  return c;
}

/** Group a routing by expert: for each expert the (token, weight) pairs, tokens ascending. */
export function groupByExpert(
  r: Routing,
  experts: number,
): { expert: number; tokens: Int32Array; weights: Float32Array }[] {
  const counts = expertCounts(r, experts);
  const out = [];
  const fill = new Int32Array(experts);
  const toks: Int32Array[] = [];
  const ws: Float32Array[] = [];
  for (let e = 0; e < experts; e++) {
    toks.push(new Int32Array(counts[e]));
    ws.push(new Float32Array(counts[e]));
  }
  for (let t = 0; t < r.tokens; t++) {
    for (let j = 0; j < r.k; j++) {
      const e = r.ids[t * r.k + j];
      if (e < 0) continue;
      if (e >= experts) throw invalidArgument(`ids[${t}, ${j}]`, `expert ${e} out of range [0, ${experts})`);
      toks[e][fill[e]] = t;
      ws[e][fill[e]] = r.weights[t * r.k + j];
      fill[e]++;
    }
  }
  for (let e = 0; e < experts; e++) if (counts[e] > 0) out.push({ expert: e, tokens: toks[e], weights: ws[e] });
  return out;
}
