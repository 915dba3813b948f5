import { describe, expect, it } from "vitest";
import {
  correctionBiasKey,
  defaultSpec,
  expertKeys,
  gateKey,
  hfConfigFor,
  hfConfigKey,
  MODEL_FAMILIES,
  moeLayers,
  sharedExpertGateKey,
  sharedExpertKeys,
  specFromHfConfig,
  validateSpec,
} from "./spec.js";

function expectInvalid(fn: () => unknown, message: string | RegExp): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err, "expected an error").toBeDefined();
  expect((err as { code?: string }).code).toBe("INVALID_ARGUMENT");
  if (typeof message === "string") expect((err as Error).message).toBe(message);
  else expect((err as Error).message).toMatch(message);
}

describe("HF key names", () => {
  it("mixtral uses block_sparse_moe and w1/w3/w2", () => {
    const s = defaultSpec("mixtral");
    expect(expertKeys(s, 3, 7)).toEqual({
      gate: "model.layers.3.block_sparse_moe.experts.7.w1.weight",
      up: "model.layers.3.block_sparse_moe.experts.7.w3.weight",
      down: "model.layers.3.block_sparse_moe.experts.7.w2.weight",
    });
    expect(gateKey(s, 3)).toBe("model.layers.3.block_sparse_moe.gate.weight");
    expect(sharedExpertKeys(s, 3)).toBeUndefined();
    expect(sharedExpertGateKey(s, 3)).toBeUndefined();
    expect(correctionBiasKey(s, 3)).toBeUndefined();
  });
  it("qwen2-moe has mlp.experts, shared_expert and shared_expert_gate", () => {
    const s = defaultSpec("qwen2-moe");
    expect(expertKeys(s, 0, 59).down).toBe("model.layers.0.mlp.experts.59.down_proj.weight");
    expect(gateKey(s, 0)).toBe("model.layers.0.mlp.gate.weight");
    expect(sharedExpertKeys(s, 1)).toEqual({
      gate: "model.layers.1.mlp.shared_expert.gate_proj.weight",
      up: "model.layers.1.mlp.shared_expert.up_proj.weight",
      down: "model.layers.1.mlp.shared_expert.down_proj.weight",
    });
    expect(sharedExpertGateKey(s, 1)).toBe("model.layers.1.mlp.shared_expert_gate.weight");
  });
  it("qwen3-moe has no shared expert", () => {
    const s = defaultSpec("qwen3-moe");
    expect(expertKeys(s, 2, 0).gate).toBe("model.layers.2.mlp.experts.0.gate_proj.weight");
    expect(sharedExpertKeys(s, 2)).toBeUndefined();
  });
  it("deepseek-v3 has shared_experts and gate.e_score_correction_bias", () => {
    const s = defaultSpec("deepseek-v3");
    expect(expertKeys(s, 5, 255).up).toBe("model.layers.5.mlp.experts.255.up_proj.weight");
    expect(sharedExpertKeys(s, 5)?.gate).toBe("model.layers.5.mlp.shared_experts.gate_proj.weight");
    expect(correctionBiasKey(s, 5)).toBe("model.layers.5.mlp.gate.e_score_correction_bias");
    expect(sharedExpertGateKey(s, 5)).toBeUndefined();
  });
});

describe("config.json", () => {
  it("round-trips every family through hfConfigFor/specFromHfConfig", () => {
    for (const family of MODEL_FAMILIES) {
      const s = defaultSpec(family, { layers: 3, dtype: "float16" });
      expect(specFromHfConfig(hfConfigFor(s))).toEqual(s);
    }
  });
  it("hfConfigFor refuses what the family's config.json cannot say, instead of writing a different model", () => {
    // Mixtral always renormalises, scales by 1 and has no shared expert: a generated checkpoint would ignore these
    expectInvalid(
      () => hfConfigFor(defaultSpec("mixtral", { normTopKProb: false })),
      /^spec\.normTopKProb: a mixtral config\.json cannot express false/,
    );
    expectInvalid(() => hfConfigFor(defaultSpec("qwen3-moe", { sharedExperts: 1 })), /^spec\.sharedExperts: /);
    expectInvalid(() => hfConfigFor(defaultSpec("mixtral", { routedScalingFactor: 2 })), /^spec\.routedScalingFactor/);
    // leading dense layers are expressible for Qwen, as mlp_only_layers
    const q = defaultSpec("qwen2-moe", { layers: 4, firstDenseLayers: 1, denseLayers: [3] });
    expect(moeLayers(specFromHfConfig(hfConfigFor(q)))).toEqual([1, 2]);
  });
  it("reads a real Mixtral-8x7B config", () => {
    const s = specFromHfConfig({
      architectures: ["MixtralForCausalLM"],
      model_type: "mixtral",
      hidden_size: 4096,
      intermediate_size: 14336,
      num_hidden_layers: 32,
      num_local_experts: 8,
      num_experts_per_tok: 2,
      hidden_act: "silu",
      torch_dtype: "bfloat16",
    });
    expect(s).toMatchObject({
      family: "mixtral",
      experts: 8,
      topK: 2,
      normTopKProb: true,
      scoring: "softmax",
      hiddenSize: 4096,
      intermediateSize: 14336,
    });
  });
  it("refuses a null gating key (transformers keeps None, which its MoE block reads unlike the default) and a missing size, naming the key", () => {
    const dsv3 = {
      model_type: "deepseek_v3",
      hidden_size: 64,
      moe_intermediate_size: 32,
      num_hidden_layers: 4,
      n_routed_experts: 16,
      num_experts_per_tok: 4,
    };
    // without the key, transformers' default (true): the same spec as with it given
    expect(specFromHfConfig(dsv3).normTopKProb).toBe(true);
    const err = (config: Record<string, unknown>) => {
      try {
        specFromHfConfig(config, "/ckpt/config.json");
      } catch (e) {
        return (e as Error).message;
      }
      return "accepted";
    };
    for (const key of ["norm_topk_prob", "n_group", "topk_group", "routed_scaling_factor", "first_k_dense_replace"])
      expect(err({ ...dsv3, [key]: null })).toBe(
        `/ckpt/config.json: ${key}: must not be null (leave the key out for transformers' default, or give a value)`,
      );
    const { n_routed_experts: _, ...missing } = dsv3;
    expect(err(missing)).toBe(
      "/ckpt/config.json: n_routed_experts: required: Switchyard does not assume transformers' config-class default for the model's sizes and expert counts",
    );
    // metadata keys a null leaves absent
    expect(err({ ...dsv3, torch_dtype: null, quantization_config: null })).toBe("accepted");
  });
  it("reads a DeepSeek-V3 config (groups, scaling, first dense layers, shared experts)", () => {
    const s = specFromHfConfig({
      model_type: "deepseek_v3",
      hidden_size: 7168,
      intermediate_size: 18432,
      moe_intermediate_size: 2048,
      num_hidden_layers: 61,
      n_routed_experts: 256,
      n_shared_experts: 1,
      num_experts_per_tok: 8,
      n_group: 8,
      topk_group: 4,
      routed_scaling_factor: 2.5,
      norm_topk_prob: true,
      first_k_dense_replace: 3,
      scoring_func: "sigmoid",
      torch_dtype: "bfloat16",
    });
    expect(s).toMatchObject({
      experts: 256,
      topK: 8,
      nGroup: 8,
      topkGroup: 4,
      routedScalingFactor: 2.5,
      sharedExperts: 1,
      sharedIntermediateSize: 2048,
      firstDenseLayers: 3,
      scoring: "sigmoid",
    });
    expect(moeLayers(s)[0]).toBe(3);
    expect(moeLayers(s).length).toBe(58);
  });
  it("reads a Qwen1.5-MoE config with norm_topk_prob default false and sparse-step dense layers", () => {
    const s = specFromHfConfig({
      model_type: "qwen2_moe",
      hidden_size: 2048,
      moe_intermediate_size: 1408,
      shared_expert_intermediate_size: 5632,
      num_hidden_layers: 4,
      num_experts: 60,
      num_experts_per_tok: 4,
      decoder_sparse_step: 2,
      mlp_only_layers: [3],
    });
    expect(s).toMatchObject({
      normTopKProb: false,
      sharedExperts: 1,
      sharedIntermediateSize: 5632,
      sharedExpertGate: true,
      dtype: "float32",
    });
    expect(moeLayers(s)).toEqual([1]);
  });
  it("refuses a config.json claiming more layers than any model has (it costs time and memory per layer)", () => {
    expect(() =>
      specFromHfConfig({
        model_type: "qwen2_moe",
        hidden_size: 8,
        moe_intermediate_size: 8,
        num_hidden_layers: 1_000_000,
        num_experts: 4,
        num_experts_per_tok: 2,
        decoder_sparse_step: 2,
      }),
    ).toThrow(/num_hidden_layers: must be at most 4096, got 1000000/);
  });
  it("refuses a config.json claiming more experts than the router can key (a worker sizes its lists by it)", () => {
    const mixtral = {
      model_type: "mixtral",
      hidden_size: 8,
      intermediate_size: 8,
      num_hidden_layers: 2,
      num_experts_per_tok: 2,
    };
    expectInvalid(
      () => specFromHfConfig({ ...mixtral, num_local_experts: 30_000_000 }, "/ckpt/config.json"),
      "/ckpt/config.json: num_local_experts: must be at most 65536, got 30000000",
    );
    expect(specFromHfConfig({ ...mixtral, num_local_experts: 65536 }).experts).toBe(65536);
    // the shared expert's slices take expert ids after the routed experts': 65535 + 1 fit, 65536 + 1 do not
    const ds = { nGroup: 1, topkGroup: 1, intermediateSize: 8 };
    expect(defaultSpec("deepseek-v3", { ...ds, experts: 65535 }).experts).toBe(65535);
    expectInvalid(
      () => defaultSpec("deepseek-v3", { ...ds, experts: 65536 }),
      /^spec\.sharedIntermediateSize: experts \(65536\) plus the shared expert's 1 slices exceed 65536 expert ids$/,
    );
  });
  it("fills fields a config leaves out with transformers' own defaults (DeepseekV3Config, Qwen2MoeConfig)", () => {
    const ds = specFromHfConfig({
      model_type: "deepseek_v3",
      hidden_size: 7168,
      moe_intermediate_size: 2048,
      num_hidden_layers: 61,
      n_routed_experts: 256,
      num_experts_per_tok: 8,
    });
    expect(ds).toMatchObject({
      nGroup: 8,
      topkGroup: 4,
      routedScalingFactor: 2.5,
      firstDenseLayers: 3,
      normTopKProb: true,
      sharedExperts: 1,
    });
    const qw = specFromHfConfig({
      model_type: "qwen2_moe",
      hidden_size: 2048,
      moe_intermediate_size: 1408,
      num_hidden_layers: 24,
      num_experts: 60,
      num_experts_per_tok: 4,
    });
    // Qwen2MoeSparseMoeBlock always has a shared expert and its sigmoid gate
    expect(qw).toMatchObject({ sharedExperts: 1, sharedIntermediateSize: 5632, sharedExpertGate: true });
  });
  it("refuses quantized checkpoints (DeepSeek-V3's FP8 release) instead of taking them for torch_dtype", () => {
    const ds = {
      ...hfConfigFor(defaultSpec("deepseek-v3")),
      quantization_config: { quant_method: "fp8", fmt: "e4m3", weight_block_size: [128, 128] },
    };
    expectInvalid(() => specFromHfConfig(ds, "c.json"), /^c\.json: quantization_config: fp8-quantized weights/);
    expect(specFromHfConfig({ ...ds, quantization_config: null }).family).toBe("deepseek-v3");
  });
  it("names the bad field", () => {
    const good = hfConfigFor(defaultSpec("mixtral"));
    expectInvalid(() => specFromHfConfig([], "/x/config.json"), "/x/config.json: must be a JSON object");
    expectInvalid(
      () => specFromHfConfig({ ...good, model_type: undefined }, "c.json"),
      /^c\.json: model_type: required/,
    );
    expectInvalid(
      () => specFromHfConfig({ ...good, model_type: "llama" }, "c.json"),
      /^c\.json: model_type: unsupported model type "llama"/,
    );
    expectInvalid(
      () => specFromHfConfig({ ...good, num_local_experts: 0 }, "c.json"),
      "c.json: num_local_experts: must be a positive integer, got 0",
    );
    expectInvalid(
      () => specFromHfConfig({ ...good, hidden_size: "4096" }, "c.json"),
      'c.json: hidden_size: must be a positive integer, got "4096"',
    );
    expectInvalid(
      () => specFromHfConfig({ ...good, torch_dtype: "int8" }, "c.json"),
      'c.json: torch_dtype: must be bfloat16, float16 or float32, got "int8"',
    );
    expectInvalid(() => specFromHfConfig({ ...good, hidden_act: "gelu" }, "c.json"), /hidden_act: only silu/);
    const ds = hfConfigFor(defaultSpec("deepseek-v3"));
    expectInvalid(
      () => specFromHfConfig({ ...ds, scoring_func: "softmax" }, "c.json"),
      /scoring_func: DeepseekV3 routes with sigmoid/,
    );
    expectInvalid(
      () => specFromHfConfig({ ...ds, norm_topk_prob: "yes" }, "c.json"),
      'c.json: norm_topk_prob: must be a boolean, got "yes"',
    );
  });
  it("names the config.json keys the user wrote, not the spec's fields, in cross-field errors", () => {
    const mixtral = hfConfigFor(defaultSpec("mixtral"));
    const qwen2 = hfConfigFor(defaultSpec("qwen2-moe"));
    const qwen3 = hfConfigFor(defaultSpec("qwen3-moe", { layers: 4 }));
    const ds = hfConfigFor(defaultSpec("deepseek-v3"));
    const custom = hfConfigFor(defaultSpec("custom"));
    const cases: [Record<string, unknown>, string][] = [
      [{ ...mixtral, num_experts_per_tok: 9 }, "num_experts_per_tok: 9 exceeds num_local_experts (8)"],
      [{ ...qwen2, num_experts_per_tok: 9 }, "num_experts_per_tok: 9 exceeds num_experts (8)"],
      [{ ...ds, num_experts_per_tok: 9 }, "num_experts_per_tok: 9 exceeds the experts in topk_group groups (8)"],
      [{ ...ds, num_experts_per_tok: 17 }, "num_experts_per_tok: 17 exceeds n_routed_experts (16)"],
      [{ ...ds, n_group: 3 }, "n_group: 3 does not divide n_routed_experts (16)"],
      [{ ...ds, n_group: 16, topk_group: 4 }, "n_group: groups need at least 2 experts each, got 1"],
      [{ ...ds, topk_group: 5 }, "topk_group: 5 exceeds n_group (4)"],
      [{ ...ds, routed_scaling_factor: 0 }, "routed_scaling_factor: must be a positive number, got 0"],
      [{ ...ds, first_k_dense_replace: 2 }, "first_k_dense_replace: 2 leaves no MoE layer of 2"],
      [
        { ...qwen3, decoder_sparse_step: 5 },
        "mlp_only_layers/decoder_sparse_step: [0, 1, 2, 3] leave no MoE layer of 4",
      ],
      [{ ...custom, scoring_func: "relu" }, 'scoring_func: must be softmax or sigmoid, got "relu"'],
      [{ ...custom, shared_expert_gate: true }, "shared_expert_gate: needs n_shared_experts > 0"],
      [
        { ...custom, n_shared_experts: 1 },
        "shared_expert_intermediate_size: must be positive when n_shared_experts > 0",
      ],
    ];
    for (const [config, message] of cases) {
      expectInvalid(() => specFromHfConfig(config, "/ckpt/config.json"), `/ckpt/config.json: ${message}`);
    }
  });
  it("hfConfigKey names keys the family's config.json really has", () => {
    for (const family of MODEL_FAMILIES) {
      const spec = defaultSpec(family);
      const config = hfConfigFor(spec);
      for (const field of Object.keys(spec) as (keyof typeof spec)[]) {
        const key = hfConfigKey(family, field);
        if (key === field) continue; // not in this family's config.json (fixed by the family)
        for (const k of key.split("/")) expect(config, `${family} ${field} -> ${k}`).toHaveProperty(k);
      }
    }
    expect(hfConfigKey("deepseek-v3", "experts")).toBe("n_routed_experts");
    expect(hfConfigKey("mixtral", "experts")).toBe("num_local_experts");
    expect(hfConfigKey("qwen3-moe", "denseLayers")).toBe("mlp_only_layers/decoder_sparse_step");
  });
  it("defaultSpec: sharedExperts 0 also drops the family's shared-expert gate (it has nothing to gate)", () => {
    expect(defaultSpec("qwen2-moe", { sharedExperts: 0 })).toMatchObject({
      sharedExperts: 0,
      sharedIntermediateSize: 0,
      sharedExpertGate: false,
    });
    // asked for explicitly, the contradiction is still an error
    expectInvalid(
      () => defaultSpec("qwen2-moe", { sharedExperts: 0, sharedExpertGate: true }),
      "spec.sharedExpertGate: needs sharedExperts > 0",
    );
  });
  it("validateSpec catches inconsistent specs", () => {
    expectInvalid(
      () => validateSpec({ ...defaultSpec("deepseek-v3"), topK: 9 }),
      "spec.topK: 9 exceeds the experts in topkGroup groups (8)",
    );
    expectInvalid(
      () => validateSpec({ ...defaultSpec("mixtral"), sharedExpertGate: true }),
      "spec.sharedExpertGate: needs sharedExperts > 0",
    );
    expectInvalid(
      () => validateSpec({ ...defaultSpec("mixtral"), firstDenseLayers: 2 }),
      "spec.firstDenseLayers: 2 leaves no MoE layer of 2",
    );
    // Qwen: decoder_sparse_step beyond the last layer, like first_k_dense_replace >= layers, leaves nothing to serve
    expectInvalid(
      () =>
        specFromHfConfig({ ...hfConfigFor(defaultSpec("qwen3-moe", { layers: 4 })), decoder_sparse_step: 5 }, "c.json"),
      "c.json: mlp_only_layers/decoder_sparse_step: [0, 1, 2, 3] leave no MoE layer of 4",
    );
    expectInvalid(
      () => defaultSpec("mixtral", { experts: 8, nGroup: 8, topkGroup: 1, topK: 1 }),
      "spec.nGroup: groups need at least 2 experts each, got 1",
    );
  });
});

describe("hfConfigJson", () => {
  it("writes integral float fields as floats (transformers 5.x validates types strictly) and round-trips", async () => {
    const { hfConfigJson } = await import("./spec.js");
    const s = defaultSpec("deepseek-v3", { routedScalingFactor: 1 });
    const text = hfConfigJson(s);
    expect(text).toContain('"routed_scaling_factor": 1.0');
    expect(text).not.toContain("float:");
    expect(specFromHfConfig(JSON.parse(text))).toEqual(s);
  });
});

describe("expertWeightBytes", () => {
  it("is 3·d·f·sizeof(dtype)", async () => {
    const { expertWeightBytes } = await import("./spec.js");
    expect(expertWeightBytes(defaultSpec("mixtral"))).toBe(3 * 1024 * 3584 * 2);
    expect(expertWeightBytes(defaultSpec("mixtral", { dtype: "float32" }))).toBe(3 * 1024 * 3584 * 4);
  });
});
