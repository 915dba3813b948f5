// PoolModel over a checkpoint: the router reads only what it needs per MoE layer (gate weight, DeepSeek's
// correction bias, the shared expert and Qwen2-MoE's shared-expert gate), never the routed experts.

import { loadNativeAddon, NativeCpuBackend, type PreparedExpert } from "@switchyard/expert-worker";
import {
  applyGate,
  type Checkpoint,
  checkConfigAgainstTensors,
  cpuBudget,
  type ExpertFFNWeights,
  type ExpertWeights,
  expertToFloat32,
  type GateConfig,
  type GatingPolicy,
  gateConfigFromSpec,
  gateLogitsDtype,
  gateWeightsDtype,
  isMoeLayer,
  type ModelSpec,
  openCheckpoint,
  referenceExpertFFN,
  roundToDtype,
  routerLogits,
  sharedGateScale,
  sharedSlices,
  sigmoidGroupTopK,
  softmaxTopK,
  softmaxTopP,
  toFloat32,
  type WeightDType,
} from "@switchyard/moe";
import { DType, invalidArgument } from "@switchyard/protocol";
import { type RouterAddon, refuseResizable, routerAddon } from "./core/native-combine.js";
import type { TokenRouting } from "./core/routing.js";
import type { PoolModel } from "./model.js";

interface LayerWeights {
  gate: Float32Array;
  /**
   * the shared expert as the checkpoint holds it (bf16): for the native CPU kernels, and widened on demand; read on
   * first need (loadShared), so a router whose workers run the shared expert never holds it
   */
  sharedRaw?: ExpertWeights;
  sharedLoading?: Promise<void>;
  /** its native prepared form, made on first use */
  sharedPrepared?: Promise<PreparedExpert>;
  /** the gate transposed [d, E], for the native router logits (made on first use) */
  gateT?: Float32Array;
  bias?: Float32Array;
  /** fp32, for the TypeScript path (made on first use) */
  shared?: ExpertFFNWeights;
  sharedGate?: Float32Array;
}

export class CheckpointModel implements PoolModel {
  readonly family: string;
  readonly layers: number;
  readonly experts: number;
  readonly hiddenSize: number;
  readonly hasShared: boolean;
  readonly sharedSlices: number;

  private nativeBackend?: NativeCpuBackend;

  private constructor(
    readonly spec: ModelSpec,
    private readonly weights: (LayerWeights | null)[],
    /** The checkpoint's directory: loadShared() reads the shared expert from it on first need. */
    private readonly dir: string,
  ) {
    this.family = spec.family;
    this.layers = spec.layers;
    this.experts = spec.experts;
    this.hiddenSize = spec.hiddenSize;
    this.hasShared = spec.sharedExperts > 0;
    this.sharedSlices = sharedSlices(spec);
  }

  static async open(dir: string): Promise<CheckpointModel> {
    const ckpt = await openCheckpoint(dir);
    try {
      return await CheckpointModel.fromCheckpoint(ckpt);
    } finally {
      await ckpt.close();
    }
  }

  static async fromCheckpoint(ckpt: Checkpoint): Promise<CheckpointModel> {
    const spec = ckpt.spec;
    // A wrong expert count fails naming its config.json key, not as the first gate's shape. No routed expert is
    // asked for: the router's share of a checkpoint (fetchCheckpointTensors) holds none.
    await checkConfigAgainstTensors(ckpt, { experts: false });
    const weights: (LayerWeights | null)[] = [];
    for (let l = 0; l < spec.layers; l++) {
      if (!isMoeLayer(spec, l)) {
        weights.push(null);
        continue;
      }
      const lw: LayerWeights = { gate: Float32Array.from(toFloat32(await ckpt.readGate(l))) };
      const bias = await ckpt.readCorrectionBias(l);
      if (bias) lw.bias = Float32Array.from(toFloat32(bias));
      const sg = await ckpt.readSharedExpertGate(l);
      if (sg) lw.sharedGate = Float32Array.from(toFloat32(sg));
      weights.push(lw);
    }
    return new CheckpointModel(spec, weights, ckpt.dir);
  }

  /**
   * Reads the layer's shared expert (88 MB a layer at DeepSeek-V3, 5 GB over its 58 MoE layers) the first time the
   * router itself must compute it: not at all while the plan has the workers run it as slices. shared() and
   * sharedBatch() need it loaded.
   */
  loadShared(layer: number): Promise<void> {
    const w = this.layer(layer);
    if (!this.hasShared || w.sharedRaw) return Promise.resolve();
    w.sharedLoading ??= (async () => {
      const ckpt = await openCheckpoint(this.dir);
      try {
        const raw = await ckpt.readSharedExpert(layer);
        if (!raw) throw new Error(`checkpoint ${this.dir}: layer ${layer} has no shared expert`);
        w.sharedRaw = raw;
      } finally {
        await ckpt.close();
      }
    })().catch((e) => {
      w.sharedLoading = undefined; // the next flush that needs it tries again
      throw e;
    });
    return w.sharedLoading;
  }

  private sharedOf(layer: number, w: LayerWeights): ExpertWeights | null {
    if (!this.hasShared) return null;
    if (!w.sharedRaw) throw new Error(`the shared expert of layer ${layer} is not loaded (loadShared first)`);
    return w.sharedRaw;
  }

  isMoeLayer(layer: number): boolean {
    return isMoeLayer(this.spec, layer);
  }

  private layer(l: number): LayerWeights {
    const w = this.weights[l];
    if (!w) throw invalidArgument("layer", `layer ${l} has no experts`);
    return w;
  }

  /**
   * Router logits for requests that come without them. Natively where the router's addon is built: the TypeScript
   * loop takes ~33 us a token at Mixtral's gate, ~265 us at Qwen3-30B-A3B's (2048 x 128) and ~1.9 ms at
   * DeepSeek-V3's (7168 x 256), which capped a router at a few hundred such tokens a second; the addon 2, 14 and
   * ~110 us (bench/router-logits.ts has the figures side by side).
   */
  logits(layer: number, hidden: Float32Array, tokens: number): Float32Array {
    return this.nativeLogits(layer, hidden, tokens) ?? routerLogits(hidden, this.layer(layer).gate, this.hiddenSize);
  }

  /** bf16 hidden states go to the addon as they came, without widening them first. */
  logitsBf16(layer: number, hidden: Uint16Array, tokens: number): Float32Array | null {
    return this.nativeLogits(layer, hidden, tokens);
  }

  /**
   * The gate off the event loop, on up to GATE_THREADS threads (a range of the gate's panels each), for products of
   * at least ASYNC_GATE_MACS multiply-adds: at DeepSeek-V3 a token is 1.8 M of them (~0.1-0.3 ms on one core), which
   * the router's event loop paid per token in the synchronous call (bench/results/logs/h200-e2e-dsv3-2336-prof/router-top.txt).
   */
  logitsAsync(layer: number, hidden: Float32Array | Uint16Array, tokens: number): Promise<Float32Array> | null {
    if (!this.gatesOffLoop(tokens)) return null;
    const g = this.nativeGate(layer, hidden, tokens);
    if (!g) return null;
    const { addon, gateT } = g;
    // hidden and the gate are read in place on the gate threads; the logits come in a new array of the addon's
    refuseResizable({ hidden, gateT });
    return addon.routerLogitsAsync(hidden, gateT, tokens, this.hiddenSize, this.experts, GATE_THREADS);
  }

  gatesOffLoop(tokens: number): boolean {
    return tokens * this.hiddenSize * this.experts >= ASYNC_GATE_MACS && routerAddon() !== null;
  }

  private nativeLogits(layer: number, hidden: Float32Array | Uint16Array, tokens: number): Float32Array | null {
    const g = this.nativeGate(layer, hidden, tokens);
    if (!g) return null;
    const out = new Float32Array(tokens * this.experts);
    g.addon.routerLogits(hidden, g.gateT, tokens, this.hiddenSize, this.experts, out);
    return out;
  }

  /** What a native gate call takes (the panel-layout gate made on first use), or null where none can run. */
  private nativeGate(
    layer: number,
    hidden: Float32Array | Uint16Array,
    tokens: number,
  ): { addon: RouterAddon; gateT: Float32Array } | null {
    const w = this.layer(layer);
    const addon = routerAddon();
    if (!addon || hidden.length !== tokens * this.hiddenSize) return null;
    w.gateT ??= transposeGate(w.gate, this.experts, this.hiddenSize);
    return { addon, gateT: w.gateT };
  }

  /**
   * Rounds the gate's product in place to the dtype the family's gate computes it in for hidden states of `hidden`
   * (bf16 logits for Mixtral and Qwen from bf16 hidden states: packages/moe gating.ts says why); returns that dtype,
   * which route() takes.
   */
  roundLogits(logits: Float32Array, hidden: DType): DType {
    const dtype = gateLogitsDtype(this.spec, weightDType(hidden));
    roundToDtype(logits, dtype);
    return DTYPE_OF[dtype];
  }

  route(
    layer: number,
    logits: Float32Array,
    tokens: number,
    g: GatingPolicy,
    logitsDtype: DType = DType.FLOAT32,
    field = "logits",
  ): TokenRouting {
    const E = this.experts;
    const w = this.layer(layer);
    const base = {
      ...gateConfigFromSpec(this.spec),
      weightsDtype: gateWeightsDtype(this.spec, weightDType(logitsDtype)),
    };
    const topK = g.topK ?? base.topK;
    if (topK > E) throw invalidArgument("policy.gating.topK", `${topK} exceeds the pool's ${E} experts`);
    // A group-limited gate (DeepSeek-V3) picks among the experts of the groups it keeps, not all E.
    const kept = base.scoring === "sigmoid" ? base.topkGroup * (E / base.nGroup) : E;
    if (topK > kept)
      throw invalidArgument(
        "policy.gating.topK",
        `${topK} exceeds the ${kept} experts a token can reach: the gate keeps ${base.topkGroup} of ${base.nGroup} groups of ${E / base.nGroup}`,
      );
    let r: { k: number; ids: Int32Array; weights: Float32Array };
    if (g.topP !== null) {
      if (base.scoring !== "softmax") {
        throw invalidArgument(
          "policy.gating.topP",
          `top-p routing needs a softmax gate; ${this.family} gates with ${base.scoring}`,
        );
      }
      const maxK = Math.min(E, g.maxK ?? Math.max(topK, 2 * base.topK));
      r = softmaxTopP(logits, E, {
        topP: g.topP,
        maxK,
        // the model's own convention for its chosen experts' weights, as its top-k: Qwen1.5-MoE and Qwen2-57B
        // (norm_topk_prob false) weight them by their softmax probabilities, not renormalised
        normalize: base.normTopKProb,
        routedScalingFactor: base.routedScalingFactor,
        weightsDtype: base.weightsDtype,
        field,
      });
    } else {
      // The native gate where the addon has it: the same ids and weights (native/src/gate.h), without the
      // TypeScript softmax's ~9% of a router's busy time at Qwen3-30B-A3B (bench/results/logs/h200-x2-prof-0358-*).
      r = applyGate(logits, E, { ...base, topK, field }, w.bias, NATIVE_GATE ? routerAddon()?.routerGate : undefined);
    }
    const routing: TokenRouting = { tokens, slots: r.k, experts: r.ids, weights: r.weights };
    if (g.capacityFactor !== null && g.overflow === "spill") routing.ranking = rankExperts(logits, E, base, w.bias);
    return routing;
  }

  shared(layer: number, hidden: Float32Array, tokens: number, dtype: DType = DType.FLOAT32): Float32Array | null {
    const w = this.layer(layer);
    const raw = this.sharedOf(layer, w);
    if (!raw) return null;
    w.shared ??= expertToFloat32(raw);
    const d = this.hiddenSize;
    const y = referenceExpertFFN(hidden, d, [{ expert: 0, offset: 0, count: tokens }], () => w.shared!);
    const scale = this.sharedGateOf(w, hidden, dtype);
    if (scale)
      for (let t = 0; t < tokens; t++) {
        const s = scale[t];
        for (let j = 0; j < d; j++) y[t * d + j] *= s;
      }
    return y;
  }

  /**
   * The shared expert of a whole flush at once, on the expert worker's native CPU kernels (bf16 weights, the
   * Qwen2-MoE gate as a row scale), off the event loop. The TypeScript shared() takes 58.6 ms for a token
   * at Qwen1.5-MoE-A2.7B's 2048 x 5632 shared expert and 76.6 ms at DeepSeek-V3's, this 1.71 and 1.93 ms
   * (bench/results/router-shared.json); a flush of decode tokens is bound by reading the expert's weights once. null when the native addon is not built (the router then calls shared()).
   */
  sharedBatch(
    layer: number,
    hidden: Float32Array,
    tokens: number,
    dtype: DType = DType.FLOAT32,
  ): Promise<Float32Array> | null {
    const w = this.layer(layer);
    const addon = loadNativeAddon();
    const raw = this.sharedOf(layer, w);
    if (!raw || !addon) return null;
    this.nativeBackend ??= new NativeCpuBackend(addon);
    const backend = this.nativeBackend;
    w.sharedPrepared ??= backend.prepare(raw);
    const d = this.hiddenSize;
    const rowWeights = this.sharedGateOf(w, hidden, dtype) ?? undefined;
    return w.sharedPrepared.then(async (expert) => {
      const out = await backend.run({
        dtype: DType.FLOAT32,
        tokens: new Uint8Array(hidden.buffer, hidden.byteOffset, hidden.byteLength),
        rows: tokens,
        cols: d,
        slices: [{ expert, offset: 0, count: tokens }],
        rowWeights,
      });
      return new Float32Array(out.buffer, out.byteOffset, tokens * d);
    });
  }

  sharedScale(
    layer: number,
    hidden: () => Float32Array,
    _tokens: number,
    dtype: DType = DType.FLOAT32,
  ): Float32Array | null {
    const w = this.layer(layer);
    return w.sharedGate ? this.sharedGateOf(w, hidden(), dtype) : null;
  }

  /**
   * Qwen2-MoE's sigmoid shared-expert gate per token, or null when it has none: the reference block's own
   * (sharedGateScale), so that shared(), the native run's row scale and the workers' slice weight all give what
   * transformers does for hidden states of `dtype` (a bf16 scale from bf16 ones).
   */
  private sharedGateOf(w: LayerWeights, hidden: Float32Array, dtype: DType): Float32Array | null {
    return w.sharedGate ? sharedGateScale(this.spec, hidden, w.sharedGate, weightDType(dtype)) : null;
  }
}

/**
 * Why a shared expert the router computes itself for `model` runs in TypeScript on the event loop (shared(), tens of
 * times slower) instead of on the expert worker's native CPU kernels (sharedBatch): that addon did not load. null
 * when it loads, or the model has no shared expert or is not a checkpoint's. The router says so when it loads a pool.
 */
export function sharedExpertFallback(model: PoolModel): string | null {
  if (!(model instanceof CheckpointModel) || !model.hasShared || loadNativeAddon()) return null;
  return "the expert worker's native addon (expert-worker/build/switchyard_native.node) is not built or did not load";
}

/** SWITCHYARD_ROUTER_NATIVE_GATE=0 keeps the gate's selection in TypeScript (the native addon's other parts stay). */
const NATIVE_GATE = process.env.SWITCHYARD_ROUTER_NATIVE_GATE !== "0";

/**
 * Gate products of at least this many multiply-adds run off the event loop (below it the synchronous gate costs
 * less than a hop to a thread, tens of microseconds): SWITCHYARD_ROUTER_GATE_ASYNC_MACS, default 1M (DeepSeek-V3:
 * every flush; Qwen3-30B-A3B: flushes of 4 tokens and more; Mixtral: 32 and more).
 */
const ASYNC_GATE_MACS = gateAsyncMacs(process.env.SWITCHYARD_ROUTER_GATE_ASYNC_MACS);

export function gateAsyncMacs(env: string | undefined): number {
  if (env === undefined || env === "") return 1 << 20;
  const n = Number(env);
  if (!Number.isSafeInteger(n) || n < 0)
    throw new Error(`SWITCHYARD_ROUTER_GATE_ASYNC_MACS: expected an integer >= 0, got "${env}"`);
  return n;
}

/**
 * Threads the asynchronous gate may use: SWITCHYARD_ROUTER_GATE_THREADS, else up to 4 and one fewer than the CPUs
 * the process may keep busy (the event loop keeps one; packages/moe cpuBudget: a pod's CPU limit caps the cores).
 */
export const GATE_THREADS = gateThreads(process.env.SWITCHYARD_ROUTER_GATE_THREADS);

export function gateThreads(env: string | undefined, cores = cpuBudget()): number {
  if (env !== undefined && env !== "") {
    const n = Number(env);
    if (!Number.isInteger(n) || n < 1 || n > 256)
      throw new Error(`SWITCHYARD_ROUTER_GATE_THREADS: expected an integer in [1, 256], got "${env}"`);
    return n;
  }
  return Math.max(1, Math.min(4, cores - 1));
}

/** Experts per panel of the native gate's layout (router-service/native/src/logits.h kGatePanel). */
export const GATE_PANEL = 32;

/**
 * [E, d] -> the native gate's layout: experts in panels of GATE_PANEL (the last one narrower), each panel a
 * contiguous [d, width] block at offset e0 * d. One panel is one sequential read, reused by every token of a call.
 */
export function transposeGate(gate: Float32Array, experts: number, d: number): Float32Array {
  const t = new Float32Array(gate.length);
  for (let e0 = 0; e0 < experts; e0 += GATE_PANEL) {
    const width = Math.min(GATE_PANEL, experts - e0);
    const base = e0 * d;
    for (let e = 0; e < width; e++) for (let i = 0; i < d; i++) t[base + i * width + e] = gate[(e0 + e) * d + i];
  }
  return t;
}

/**
 * Per token, the experts the gate could have chosen, best first, by the gate's own selection score: spill order.
 * [T * E], each row ended by -1 where fewer than E are left. Ranked by the selection code itself (softmaxTopK,
 * sigmoidGroupTopK asked for every expert they can reach) so that the two cannot drift apart: softmax gates order by
 * probability (the logits' order), DeepSeek-V3's by sigmoid(logit) + e_score_correction_bias. Left out:
 * - the experts of the groups a group-limited gate dropped for the token: it can never pick them, so spilling there
 *   would route the token where the model never sends it;
 * - experts masked with a -Infinity logit (probability, or sigmoid, 0): the caller ruled them out.
 * The TypeScript selection, not the native gate: it is only run under the spill policy, and the same ids either way.
 */
export function rankExperts(logits: Float32Array, E: number, cfg: GateConfig, bias?: Float32Array): Int32Array {
  const grouped = cfg.scoring === "sigmoid" && cfg.nGroup > 1 && cfg.topkGroup < cfg.nGroup;
  const reach = grouped ? cfg.topkGroup * (E / cfg.nGroup) : E;
  const r =
    cfg.scoring === "sigmoid"
      ? sigmoidGroupTopK(logits, E, { ...cfg, topK: reach, correctionBias: bias })
      : softmaxTopK(logits, E, { topK: E, normTopKProb: false });
  const out = new Int32Array(r.tokens * E).fill(-1);
  for (let t = 0; t < r.tokens; t++) {
    let n = t * E;
    for (let j = 0; j < reach; j++) {
      const e = r.ids[t * reach + j];
      if (logits[t * E + e] !== Number.NEGATIVE_INFINITY) out[n++] = e;
    }
  }
  return out;
}

const DTYPE_OF: Record<WeightDType, DType> = {
  float32: DType.FLOAT32,
  bfloat16: DType.BFLOAT16,
  float16: DType.FLOAT16,
};

/** A float tensor dtype as the moe library names it (anything else counts as float32: it is widened to it). */
function weightDType(d: DType): WeightDType {
  return d === DType.BFLOAT16 ? "bfloat16" : d === DType.FLOAT16 ? "float16" : "float32";
}
