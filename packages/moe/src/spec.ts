// Model specs: the MoE-relevant shape of a model, parsed from / written to a Hugging Face config.json, and the
// Hugging Face checkpoint key names of each family (as in transformers' modeling_{mixtral,qwen2_moe,qwen3_moe,
// deepseek_v3}.py and the checkpoints published for them). Pure: no I/O.

import { invalidArgument } from "@switchyard/protocol";

export type ModelFamily = "mixtral" | "qwen2-moe" | "qwen3-moe" | "deepseek-v3" | "custom";
export const MODEL_FAMILIES: readonly ModelFamily[] = ["mixtral", "qwen2-moe", "qwen3-moe", "deepseek-v3", "custom"];

export type WeightDType = "bfloat16" | "float16" | "float32";
export const WEIGHT_DTYPES: readonly WeightDType[] = ["bfloat16", "float16", "float32"];

export type GateScoring = "softmax" | "sigmoid";

export interface ModelSpec {
  family: ModelFamily;
  /** num_hidden_layers (dense layers included). */
  layers: number;
  /** Routed experts per MoE layer. */
  experts: number;
  hiddenSize: number;
  /** Intermediate size of one routed expert (moe_intermediate_size for Qwen/DeepSeek). */
  intermediateSize: number;
  topK: number;
  /** Renormalise the top-k weights to sum to 1 (Mixtral always; Qwen/DeepSeek per norm_topk_prob). */
  normTopKProb: boolean;
  scoring: GateScoring;
  /** Expert groups for group-limited routing (DeepSeek-V3 n_group); 1 = no grouping. */
  nGroup: number;
  /** Groups kept per token (topk_group). */
  topkGroup: number;
  /** Multiplies the routed weights (DeepSeek-V3 routed_scaling_factor; 1 elsewhere). */
  routedScalingFactor: number;
  /** Shared experts per MoE layer (0 = none); they run as one MLP of sharedIntermediateSize. */
  sharedExperts: number;
  /** Intermediate size of the whole shared-expert MLP (DeepSeek: moe_intermediate_size × n_shared_experts). */
  sharedIntermediateSize: number;
  /** Qwen2-MoE: shared expert output is scaled by sigmoid(x · shared_expert_gate). */
  sharedExpertGate: boolean;
  /** dtype the checkpoint stores weights in. */
  dtype: WeightDType;
  /** DeepSeek first_k_dense_replace: layers [0, k) hold a dense MLP, no experts. */
  firstDenseLayers: number;
  /** Further dense layers (Qwen mlp_only_layers / decoder_sparse_step), sorted. */
  denseLayers?: number[];
}

export function isMoeLayer(spec: ModelSpec, layer: number): boolean {
  return (
    Number.isInteger(layer) &&
    layer >= spec.firstDenseLayers &&
    layer < spec.layers &&
    !(spec.denseLayers?.includes(layer) ?? false)
  );
}

/** Indices of the layers that have experts. */
export function moeLayers(spec: ModelSpec): number[] {
  const out: number[] = [];
  for (let l = 0; l < spec.layers; l++) if (isMoeLayer(spec, l)) out.push(l);
  return out;
}

/** Bytes of one routed expert's weights (gate + up + down) in the checkpoint dtype: a cache slot's size. */
export function expertWeightBytes(spec: ModelSpec): number {
  return 3 * spec.hiddenSize * spec.intermediateSize * (spec.dtype === "float32" ? 4 : 2);
}

/**
 * How many routed-expert-shaped slices the shared expert splits into, so that GPU workers can serve it like any
 * expert: SwiGLU is column-separable over its intermediate dimension, so an MLP of width m·f is exactly the sum of
 * m MLPs of width f (gate/up rows [j·f, (j+1)·f), down columns the same), each applied to every token. Slice j is
 * served under expert id `experts + j`. 0 when the model has no shared expert or its width is not a multiple of the
 * routed experts' (that shared expert can only run in the router).
 */
export function sharedSlices(spec: ModelSpec): number {
  if (spec.sharedExperts === 0 || spec.sharedIntermediateSize <= 0) return 0;
  const m = spec.sharedIntermediateSize / spec.intermediateSize;
  return Number.isInteger(m) ? m : 0;
}

/** Family defaults; `overrides` win. Sizes default to a small model that is quick to generate. */
export function defaultSpec(family: ModelFamily, overrides: Partial<ModelSpec> = {}): ModelSpec {
  const base: ModelSpec = {
    family,
    layers: 2,
    experts: 8,
    hiddenSize: 1024,
    intermediateSize: 3584,
    topK: 2,
    normTopKProb: true,
    scoring: "softmax",
    nGroup: 1,
    topkGroup: 1,
    routedScalingFactor: 1,
    sharedExperts: 0,
    sharedIntermediateSize: 0,
    sharedExpertGate: false,
    dtype: "bfloat16",
    firstDenseLayers: 0,
  };
  switch (family) {
    case "mixtral":
    case "custom":
      break;
    case "qwen2-moe":
      Object.assign(base, { normTopKProb: false, sharedExperts: 1, sharedExpertGate: true, topK: 4 });
      break;
    case "qwen3-moe":
      Object.assign(base, { normTopKProb: true, topK: 4 });
      break;
    case "deepseek-v3":
      Object.assign(base, {
        experts: 16,
        topK: 4,
        scoring: "sigmoid",
        nGroup: 4,
        topkGroup: 2,
        routedScalingFactor: 2.5,
        sharedExperts: 1,
        normTopKProb: true,
      });
      break;
    default:
      throw invalidArgument("family", `unknown model family ${String(family)}`);
  }
  // Only ModelSpec fields are taken from overrides (callers pass wider option objects).
  const picked: Partial<ModelSpec> = {};
  for (const k of [...Object.keys(base), "denseLayers"] as (keyof ModelSpec)[]) {
    if (overrides[k] !== undefined) (picked as Record<string, unknown>)[k] = overrides[k];
  }
  const spec = { ...base, ...picked, family };
  // Qwen2-MoE's default shared expert comes with its gate: asking for no shared expert (the generator's
  // --shared-experts 0, which has no flag for the gate) means no gate either, unless the gate is asked for too.
  if (picked.sharedExperts === 0 && picked.sharedExpertGate === undefined) spec.sharedExpertGate = false;
  if (spec.sharedExperts > 0 && spec.sharedIntermediateSize === 0 && overrides.sharedIntermediateSize === undefined) {
    spec.sharedIntermediateSize =
      family === "deepseek-v3" ? spec.intermediateSize * spec.sharedExperts : spec.intermediateSize;
  }
  return validateSpec(spec);
}

/** The most layers a spec may have (the largest MoE models have ~100). */
const MAX_LAYERS = 4096;

/**
 * The most expert ids an MoE layer may have, routed experts and shared-expert slices together (DeepSeek-V3 has 257):
 * the router keys an expert as layer * 65536 + expert. A config.json that claims more is wrong, and a worker would
 * size its lists by it before reading a tensor.
 */
export const MAX_EXPERTS = 65536;

function posInt(v: unknown, field: string): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v <= 0)
    throw invalidArgument(field, `must be a positive integer, got ${JSON.stringify(v)}`);
  return v;
}
function nonNegInt(v: unknown, field: string): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0)
    throw invalidArgument(field, `must be a non-negative integer, got ${JSON.stringify(v)}`);
  return v;
}

/** Check internal consistency; returns the spec. Errors name the field ("spec.topK"). */
export function validateSpec(spec: ModelSpec, prefix = "spec"): ModelSpec {
  return checkSpec(
    spec,
    (k) => k,
    (name) => `${prefix}.${name}`,
  );
}

/**
 * validateSpec's checks. `name` spells a spec field wherever a message mentions it (a config.json's own key, see
 * hfConfigKey) and `path` turns a spelled name into the error's field.
 */
function checkSpec(spec: ModelSpec, name: (k: keyof ModelSpec) => string, path: (name: string) => string): ModelSpec {
  const f = (k: keyof ModelSpec, suffix = "") => path(`${name(k)}${suffix}`);
  const n = name;
  if (!MODEL_FAMILIES.includes(spec.family))
    throw invalidArgument(f("family"), `unknown model family ${JSON.stringify(spec.family)}`);
  posInt(spec.layers, f("layers"));
  // no model has near this many; a config.json that claims more would cost time and memory per layer
  if (spec.layers > MAX_LAYERS) throw invalidArgument(f("layers"), `must be at most ${MAX_LAYERS}, got ${spec.layers}`);
  posInt(spec.experts, f("experts"));
  if (spec.experts > MAX_EXPERTS)
    throw invalidArgument(f("experts"), `must be at most ${MAX_EXPERTS}, got ${spec.experts}`);
  posInt(spec.hiddenSize, f("hiddenSize"));
  posInt(spec.intermediateSize, f("intermediateSize"));
  posInt(spec.topK, f("topK"));
  if (spec.topK > spec.experts)
    throw invalidArgument(f("topK"), `${spec.topK} exceeds ${n("experts")} (${spec.experts})`);
  if (spec.scoring !== "softmax" && spec.scoring !== "sigmoid")
    throw invalidArgument(f("scoring"), `must be softmax or sigmoid, got ${JSON.stringify(spec.scoring)}`);
  posInt(spec.nGroup, f("nGroup"));
  posInt(spec.topkGroup, f("topkGroup"));
  if (spec.experts % spec.nGroup !== 0)
    throw invalidArgument(f("nGroup"), `${spec.nGroup} does not divide ${n("experts")} (${spec.experts})`);
  if (spec.topkGroup > spec.nGroup)
    throw invalidArgument(f("topkGroup"), `${spec.topkGroup} exceeds ${n("nGroup")} (${spec.nGroup})`);
  if (spec.nGroup > 1) {
    const perGroup = spec.experts / spec.nGroup;
    // transformers scores a group by the sum of its top-2 experts.
    if (perGroup < 2) throw invalidArgument(f("nGroup"), `groups need at least 2 experts each, got ${perGroup}`);
    if (spec.topK > spec.topkGroup * perGroup)
      throw invalidArgument(
        f("topK"),
        `${spec.topK} exceeds the experts in ${n("topkGroup")} groups (${spec.topkGroup * perGroup})`,
      );
  }
  if (
    typeof spec.routedScalingFactor !== "number" ||
    !Number.isFinite(spec.routedScalingFactor) ||
    spec.routedScalingFactor <= 0
  )
    throw invalidArgument(
      f("routedScalingFactor"),
      `must be a positive number, got ${JSON.stringify(spec.routedScalingFactor)}`,
    );
  nonNegInt(spec.sharedExperts, f("sharedExperts"));
  nonNegInt(spec.sharedIntermediateSize, f("sharedIntermediateSize"));
  if (spec.sharedExperts > 0 && spec.sharedIntermediateSize === 0)
    throw invalidArgument(f("sharedIntermediateSize"), `must be positive when ${n("sharedExperts")} > 0`);
  // the shared expert's slices are served under expert ids experts, experts + 1, ... (sharedSlices)
  if (spec.experts + sharedSlices(spec) > MAX_EXPERTS)
    throw invalidArgument(
      f("sharedIntermediateSize"),
      `${n("experts")} (${spec.experts}) plus the shared expert's ${sharedSlices(spec)} slices exceed ${MAX_EXPERTS} expert ids`,
    );
  if (spec.sharedExpertGate && spec.sharedExperts === 0)
    throw invalidArgument(f("sharedExpertGate"), `needs ${n("sharedExperts")} > 0`);
  if (!WEIGHT_DTYPES.includes(spec.dtype))
    throw invalidArgument(f("dtype"), `must be bfloat16, float16 or float32, got ${JSON.stringify(spec.dtype)}`);
  nonNegInt(spec.firstDenseLayers, f("firstDenseLayers"));
  if (spec.firstDenseLayers >= spec.layers)
    throw invalidArgument(f("firstDenseLayers"), `${spec.firstDenseLayers} leaves no MoE layer of ${spec.layers}`);
  if (spec.denseLayers) {
    for (const [i, l] of spec.denseLayers.entries()) {
      if (!Number.isInteger(l) || l < 0 || l >= spec.layers)
        throw invalidArgument(f("denseLayers", `[${i}]`), `must be a layer index in [0, ${spec.layers}), got ${l}`);
    }
    if (moeLayers(spec).length === 0)
      throw invalidArgument(f("denseLayers"), `[${spec.denseLayers.join(", ")}] leave no MoE layer of ${spec.layers}`);
  }
  return spec;
}

// ---------------------------------------------------------------------------------------------------------------
// Hugging Face config.json

type HfConfig = Record<string, unknown>;

const MODEL_TYPE: Record<ModelFamily, string> = {
  mixtral: "mixtral",
  "qwen2-moe": "qwen2_moe",
  "qwen3-moe": "qwen3_moe",
  "deepseek-v3": "deepseek_v3",
  custom: "switchyard_moe",
};
const ARCHITECTURE: Record<ModelFamily, string> = {
  mixtral: "MixtralForCausalLM",
  "qwen2-moe": "Qwen2MoeForCausalLM",
  "qwen3-moe": "Qwen3MoeForCausalLM",
  "deepseek-v3": "DeepseekV3ForCausalLM",
  custom: "SwitchyardMoeForCausalLM",
};

// The config.json key each spec field is read from, per family (exactly what specFromHfConfig reads), so that an
// error about a config.json names the key its author wrote ("num_experts_per_tok"), not our field ("topK").
const COMMON_KEYS: Partial<Record<keyof ModelSpec, string>> = {
  family: "model_type",
  layers: "num_hidden_layers",
  hiddenSize: "hidden_size",
  topK: "num_experts_per_tok",
  dtype: "torch_dtype",
};
const QWEN_KEYS: Partial<Record<keyof ModelSpec, string>> = {
  experts: "num_experts",
  intermediateSize: "moe_intermediate_size",
  normTopKProb: "norm_topk_prob",
  // Qwen has no first_k_dense_replace: every dense layer comes from these two
  firstDenseLayers: "mlp_only_layers/decoder_sparse_step",
  denseLayers: "mlp_only_layers/decoder_sparse_step",
};
const GROUP_KEYS: Partial<Record<keyof ModelSpec, string>> = {
  scoring: "scoring_func",
  nGroup: "n_group",
  topkGroup: "topk_group",
  routedScalingFactor: "routed_scaling_factor",
  firstDenseLayers: "first_k_dense_replace",
};
const HF_KEYS: Record<ModelFamily, Partial<Record<keyof ModelSpec, string>>> = {
  mixtral: { experts: "num_local_experts", intermediateSize: "intermediate_size" },
  "qwen2-moe": {
    ...QWEN_KEYS,
    // one shared expert, with its gate, exactly when shared_expert_intermediate_size > 0
    sharedExperts: "shared_expert_intermediate_size",
    sharedIntermediateSize: "shared_expert_intermediate_size",
    sharedExpertGate: "shared_expert_intermediate_size",
  },
  "qwen3-moe": QWEN_KEYS,
  "deepseek-v3": {
    ...GROUP_KEYS,
    experts: "n_routed_experts",
    intermediateSize: "moe_intermediate_size",
    normTopKProb: "norm_topk_prob",
    sharedExperts: "n_shared_experts",
    // moe_intermediate_size × n_shared_experts
    sharedIntermediateSize: "n_shared_experts",
  },
  custom: {
    ...GROUP_KEYS,
    experts: "num_experts",
    intermediateSize: "moe_intermediate_size",
    normTopKProb: "norm_topk_prob",
    sharedExperts: "n_shared_experts",
    sharedIntermediateSize: "shared_expert_intermediate_size",
    sharedExpertGate: "shared_expert_gate",
  },
};

/**
 * The config.json key(s) that `field` is read from in `family`'s config ("a/b" when two keys decide it); the
 * field's own name when the family fixes it (Mixtral's normTopKProb).
 */
export function hfConfigKey(family: ModelFamily, field: keyof ModelSpec): string {
  return HF_KEYS[family]?.[field] ?? COMMON_KEYS[field] ?? field;
}

export function familyOfModelType(modelType: string): ModelFamily | undefined {
  for (const fam of MODEL_FAMILIES) if (MODEL_TYPE[fam] === modelType) return fam;
  return undefined;
}

/**
 * Parse a Hugging Face config.json object. `source` names it in errors ("/ckpt/config.json").
 * Reads exactly the fields transformers' MoE blocks use for each family.
 */
export function specFromHfConfig(config: unknown, source = "config.json"): ModelSpec {
  if (typeof config !== "object" || config === null || Array.isArray(config))
    throw invalidArgument(source, "must be a JSON object");
  const c = config as HfConfig;
  const fld = (k: string) => `${source}: ${k}`;
  const get = (k: string) => c[k];
  // The sizes and counts the checkpoint's tensors must agree with are required. transformers would fall back to its
  // config class's defaults (MixtralConfig's 8 experts, ...), which a config that leaves them out is unlikely to
  // mean; the error says so rather than guess.
  const req = (k: string) => {
    if (get(k) === undefined)
      throw invalidArgument(
        fld(k),
        "required: Switchyard does not assume transformers' config-class default for the model's sizes and expert counts",
      );
    return posInt(get(k), fld(k));
  };
  // An optional key left out gets transformers' default. A null is refused: transformers keeps None, which its MoE
  // blocks read differently from the default (norm_topk_prob None skips the renormalisation; None group counts fail).
  const opt = <T>(k: string, dflt: T): T => {
    const v = get(k);
    if (v === null)
      throw invalidArgument(fld(k), "must not be null (leave the key out for transformers' default, or give a value)");
    return v === undefined ? dflt : (v as T);
  };
  // Keys where a null means absent (they name no model behaviour: the dtype metadata, a quantization block).
  const optOrNull = <T>(k: string, dflt: T): T => (get(k) === undefined || get(k) === null ? dflt : (get(k) as T));
  const bool = (k: string, dflt: boolean): boolean => {
    const v = opt<unknown>(k, dflt);
    if (typeof v !== "boolean") throw invalidArgument(fld(k), `must be a boolean, got ${JSON.stringify(v)}`);
    return v;
  };
  const modelType = get("model_type");
  if (typeof modelType !== "string")
    throw invalidArgument(fld("model_type"), "required (mixtral, qwen2_moe, qwen3_moe, deepseek_v3 or switchyard_moe)");
  const family = familyOfModelType(modelType);
  if (!family)
    throw invalidArgument(
      fld("model_type"),
      `unsupported model type ${JSON.stringify(modelType)} (mixtral, qwen2_moe, qwen3_moe, deepseek_v3 or switchyard_moe)`,
    );
  const dtypeRaw = optOrNull<unknown>("torch_dtype", optOrNull<unknown>("dtype", "float32"));
  if (typeof dtypeRaw !== "string" || !WEIGHT_DTYPES.includes(dtypeRaw as WeightDType))
    throw invalidArgument(fld("torch_dtype"), `must be bfloat16, float16 or float32, got ${JSON.stringify(dtypeRaw)}`);
  const dtype = dtypeRaw as WeightDType;
  // torch_dtype names the compute dtype only: a quantized checkpoint (DeepSeek-V3's float8_e4m3fn release with
  // weight_scale_inv block scales, GPTQ, AWQ, ...) stores other tensors that we must not read as plain weights.
  const quant = optOrNull<unknown>("quantization_config", undefined);
  if (quant !== undefined) {
    const method = (quant as { quant_method?: unknown }).quant_method;
    throw invalidArgument(
      fld("quantization_config"),
      `${typeof method === "string" ? method : "quantized"}-quantized weights are not supported; dequantize the checkpoint to bfloat16 first`,
    );
  }
  const act = opt<unknown>("hidden_act", "silu");
  if (act !== "silu" && act !== "swish")
    throw invalidArgument(fld("hidden_act"), `only silu (SwiGLU experts) is supported, got ${JSON.stringify(act)}`);
  const layers = req("num_hidden_layers");
  const hiddenSize = req("hidden_size");
  const base = {
    family,
    layers,
    hiddenSize,
    dtype,
    scoring: "softmax" as GateScoring,
    nGroup: 1,
    topkGroup: 1,
    routedScalingFactor: 1,
    sharedExperts: 0,
    sharedIntermediateSize: 0,
    sharedExpertGate: false,
    firstDenseLayers: 0,
  };
  let spec: ModelSpec;
  switch (family) {
    case "mixtral":
      spec = {
        ...base,
        experts: req("num_local_experts"),
        intermediateSize: req("intermediate_size"),
        topK: req("num_experts_per_tok"),
        normTopKProb: true, // MixtralSparseMoeBlock always renormalises the top-k
      };
      break;
    case "qwen2-moe":
    case "qwen3-moe": {
      // Defaults where a config leaves a field out are transformers' own (Qwen2MoeConfig, DeepseekV3Config).
      const shared =
        family === "qwen2-moe"
          ? nonNegInt(opt("shared_expert_intermediate_size", 5632), fld("shared_expert_intermediate_size"))
          : 0;
      spec = {
        ...base,
        experts: req("num_experts"),
        intermediateSize: req("moe_intermediate_size"),
        topK: req("num_experts_per_tok"),
        normTopKProb: bool("norm_topk_prob", false),
        sharedExperts: shared > 0 ? 1 : 0,
        sharedIntermediateSize: shared,
        sharedExpertGate: shared > 0,
      };
      const dense = qwenDenseLayers(c, layers, fld);
      if (dense.length > 0) spec.denseLayers = dense;
      break;
    }
    case "deepseek-v3": {
      const scoring = opt<unknown>("scoring_func", "sigmoid");
      if (scoring !== "sigmoid")
        throw invalidArgument(fld("scoring_func"), `DeepseekV3 routes with sigmoid, got ${JSON.stringify(scoring)}`);
      const moeInter = req("moe_intermediate_size");
      const nShared = nonNegInt(opt("n_shared_experts", 1), fld("n_shared_experts"));
      spec = {
        ...base,
        experts: req("n_routed_experts"),
        intermediateSize: moeInter,
        topK: req("num_experts_per_tok"),
        normTopKProb: bool("norm_topk_prob", true),
        scoring: "sigmoid",
        nGroup: posInt(opt("n_group", 8), fld("n_group")),
        topkGroup: posInt(opt("topk_group", 4), fld("topk_group")),
        routedScalingFactor: opt<number>("routed_scaling_factor", 2.5),
        sharedExperts: nShared,
        sharedIntermediateSize: moeInter * nShared,
        firstDenseLayers: nonNegInt(opt("first_k_dense_replace", 3), fld("first_k_dense_replace")),
      };
      break;
    }
    case "custom": {
      const scoring = opt<unknown>("scoring_func", "softmax");
      const shared = nonNegInt(opt("shared_expert_intermediate_size", 0), fld("shared_expert_intermediate_size"));
      spec = {
        ...base,
        experts: req("num_experts"),
        intermediateSize: req("moe_intermediate_size"),
        topK: req("num_experts_per_tok"),
        normTopKProb: bool("norm_topk_prob", true),
        scoring: scoring as GateScoring,
        nGroup: posInt(opt("n_group", 1), fld("n_group")),
        topkGroup: posInt(opt("topk_group", 1), fld("topk_group")),
        routedScalingFactor: opt<number>("routed_scaling_factor", 1),
        sharedExperts: nonNegInt(opt("n_shared_experts", shared > 0 ? 1 : 0), fld("n_shared_experts")),
        sharedIntermediateSize: shared,
        sharedExpertGate: bool("shared_expert_gate", false),
        firstDenseLayers: nonNegInt(opt("first_k_dense_replace", 0), fld("first_k_dense_replace")),
      };
      break;
    }
  }
  return checkSpec(spec, (k) => hfConfigKey(family, k), fld);
}

// Qwen2/3-MoE: layer l is sparse iff l not in mlp_only_layers and (l + 1) % decoder_sparse_step == 0.
function qwenDenseLayers(c: HfConfig, layers: number, fld: (k: string) => string): number[] {
  const step = c["decoder_sparse_step"] ?? 1;
  posInt(step, fld("decoder_sparse_step"));
  const only = c["mlp_only_layers"] ?? [];
  if (!Array.isArray(only)) throw invalidArgument(fld("mlp_only_layers"), "must be an array of layer indices");
  const onlySet = new Set(only);
  const dense: number[] = [];
  for (let l = 0; l < Math.min(layers, MAX_LAYERS + 1); l++) {
    if (onlySet.has(l) || (l + 1) % (step as number) !== 0) dense.push(l);
  }
  return dense;
}

/**
 * A config.json for `spec` that transformers 5.x loads for the family (MoE fields exact; attention fields are
 * plausible small values so AutoConfig accepts it).
 */
export function hfConfigFor(spec: ModelSpec): Record<string, unknown> {
  validateSpec(spec);
  const config = configFor(spec);
  // A spec field the family's config.json has no way to say would be dropped, and a checkpoint generated from
  // the spec would then load as a different model than the one whose tensors (and reference outputs) it holds.
  const back = specFromHfConfig(config);
  for (const k of Object.keys(back) as (keyof ModelSpec)[]) {
    if (k === "firstDenseLayers" || k === "denseLayers" || spec[k] === back[k]) continue;
    throw invalidArgument(
      `spec.${k}`,
      `a ${spec.family} config.json cannot express ${JSON.stringify(spec[k])} (it reads back as ${JSON.stringify(back[k])})`,
    );
  }
  const [want, got] = [moeLayers(spec), moeLayers(back)];
  if (want.length !== got.length || want.some((l, i) => l !== got[i]))
    throw invalidArgument(
      spec.denseLayers?.length ? "spec.denseLayers" : "spec.firstDenseLayers",
      `a ${spec.family} config.json cannot express MoE layers [${want.join(", ")}] (it reads back as [${got.join(", ")}])`,
    );
  return config;
}

function configFor(spec: ModelSpec): Record<string, unknown> {
  const common: Record<string, unknown> = {
    architectures: [ARCHITECTURE[spec.family]],
    model_type: MODEL_TYPE[spec.family],
    hidden_size: spec.hiddenSize,
    num_hidden_layers: spec.layers,
    num_attention_heads: Math.max(1, Math.floor(spec.hiddenSize / 128)),
    num_key_value_heads: Math.max(1, Math.floor(spec.hiddenSize / 512)),
    hidden_act: "silu",
    rms_norm_eps: 1e-6,
    vocab_size: 32000,
    max_position_embeddings: 4096,
    tie_word_embeddings: false,
    torch_dtype: spec.dtype,
  };
  switch (spec.family) {
    case "mixtral":
      return {
        ...common,
        intermediate_size: spec.intermediateSize,
        num_local_experts: spec.experts,
        num_experts_per_tok: spec.topK,
        output_router_logits: false,
      };
    case "qwen2-moe":
    case "qwen3-moe": {
      const out: Record<string, unknown> = {
        ...common,
        intermediate_size: spec.intermediateSize * 4,
        moe_intermediate_size: spec.intermediateSize,
        num_experts: spec.experts,
        num_experts_per_tok: spec.topK,
        norm_topk_prob: spec.normTopKProb,
        decoder_sparse_step: 1,
        // every dense layer, the leading ones (firstDenseLayers) included: Qwen has no first_k_dense_replace
        mlp_only_layers: Array.from({ length: spec.layers }, (_, l) => l).filter((l) => !isMoeLayer(spec, l)),
        output_router_logits: false,
      };
      if (spec.family === "qwen2-moe") out["shared_expert_intermediate_size"] = spec.sharedIntermediateSize;
      else out["head_dim"] = 128;
      return out;
    }
    case "deepseek-v3":
      return {
        ...common,
        intermediate_size: spec.intermediateSize * 4,
        moe_intermediate_size: spec.intermediateSize,
        n_routed_experts: spec.experts,
        n_shared_experts: spec.sharedExperts,
        num_experts_per_tok: spec.topK,
        n_group: spec.nGroup,
        topk_group: spec.topkGroup,
        routed_scaling_factor: spec.routedScalingFactor,
        norm_topk_prob: spec.normTopKProb,
        first_k_dense_replace: spec.firstDenseLayers,
        scoring_func: "sigmoid",
        topk_method: "noaux_tc",
        kv_lora_rank: 512,
        q_lora_rank: 1536,
        qk_rope_head_dim: 64,
        qk_nope_head_dim: 128,
        v_head_dim: 128,
      };
    case "custom":
      return {
        ...common,
        moe_intermediate_size: spec.intermediateSize,
        num_experts: spec.experts,
        num_experts_per_tok: spec.topK,
        norm_topk_prob: spec.normTopKProb,
        scoring_func: spec.scoring,
        n_group: spec.nGroup,
        topk_group: spec.topkGroup,
        routed_scaling_factor: spec.routedScalingFactor,
        n_shared_experts: spec.sharedExperts,
        shared_expert_intermediate_size: spec.sharedIntermediateSize,
        shared_expert_gate: spec.sharedExpertGate,
        first_k_dense_replace: spec.firstDenseLayers,
      };
  }
}

// transformers 5.x validates config fields strictly: a float field given as 1 (an int in JSON) is rejected.
const FLOAT_KEYS = new Set(["routed_scaling_factor", "rms_norm_eps", "router_jitter_noise", "rope_theta"]);

/** config.json text for `spec`, with float fields written as floats ("2.0", not "2"). */
export function hfConfigJson(spec: ModelSpec): string {
  const MARK = "\u0000float:";
  const text = JSON.stringify(
    hfConfigFor(spec),
    (k, v) => (FLOAT_KEYS.has(k) && typeof v === "number" && Number.isInteger(v) ? `${MARK}${v}` : v),
    2,
  );
  return `${text.replace(/"\\u0000float:(-?\d+)"/g, "$1.0")}\n`;
}

// ---------------------------------------------------------------------------------------------------------------
// Checkpoint key names

/** The three projections of a SwiGLU expert: y = down(silu(gate(x)) * up(x)). HF Linear weights are [out, in]. */
export interface ExpertKeys {
  gate: string;
  up: string;
  down: string;
}

function moePrefix(spec: ModelSpec, layer: number): string {
  return spec.family === "mixtral" ? `model.layers.${layer}.block_sparse_moe` : `model.layers.${layer}.mlp`;
}

export function expertKeys(spec: ModelSpec, layer: number, expert: number): ExpertKeys {
  const p = `${moePrefix(spec, layer)}.experts.${expert}`;
  if (spec.family === "mixtral") return { gate: `${p}.w1.weight`, up: `${p}.w3.weight`, down: `${p}.w2.weight` };
  return { gate: `${p}.gate_proj.weight`, up: `${p}.up_proj.weight`, down: `${p}.down_proj.weight` };
}

/** Router weight [experts, hidden]. */
export function gateKey(spec: ModelSpec, layer: number): string {
  return `${moePrefix(spec, layer)}.gate.weight`;
}

/** Shared expert MLP keys (Qwen2-MoE `shared_expert`, DeepSeek-V3 `shared_experts`), or undefined when none. */
export function sharedExpertKeys(spec: ModelSpec, layer: number): ExpertKeys | undefined {
  if (spec.sharedExperts === 0) return undefined;
  const p = `${moePrefix(spec, layer)}.${spec.family === "deepseek-v3" ? "shared_experts" : "shared_expert"}`;
  return { gate: `${p}.gate_proj.weight`, up: `${p}.up_proj.weight`, down: `${p}.down_proj.weight` };
}

/** Qwen2-MoE shared expert gate [1, hidden], or undefined when the family has none. */
export function sharedExpertGateKey(spec: ModelSpec, layer: number): string | undefined {
  return spec.sharedExpertGate ? `${moePrefix(spec, layer)}.shared_expert_gate.weight` : undefined;
}

/** DeepSeek-V3 e_score_correction_bias [experts] (selection only), or undefined for softmax families. */
export function correctionBiasKey(spec: ModelSpec, layer: number): string | undefined {
  return spec.scoring === "sigmoid" ? `${moePrefix(spec, layer)}.gate.e_score_correction_bias` : undefined;
}
