import { defaultSpec } from "@switchyard/moe";
import { describe, expect, it } from "vitest";
import { localModel, parseLocalArgs, workerEnv } from "./main.js";

describe("npm start flags", () => {
  it("defaults to a run that fits a 2-core machine", () => {
    const o = parseLocalArgs([]);
    expect(o).toMatchObject({
      family: "mixtral",
      size: "tiny",
      workers: 2,
      concurrency: 16,
      durationS: 20,
      dtype: "bf16",
    });
    expect(o.policy.batching.enabled).toBe(true);
  });

  it("--shared-experts: workers or router, the default left to the run (workers where the model can)", () => {
    expect(parseLocalArgs([]).sharedExperts).toBeNull();
    expect(parseLocalArgs(["--shared-experts", "router"]).sharedExperts).toBe("router");
    expect(parseLocalArgs(["--family=deepseek-v3", "--shared-experts=workers"]).sharedExperts).toBe("workers");
    expect(() => parseLocalArgs(["--shared-experts", "gpu"])).toThrow(/--shared-experts: workers or router, got "gpu"/);
  });

  it("--engine-batch: sequences per Forward, 1 unless given", () => {
    expect(parseLocalArgs([]).engineBatch).toBe(1);
    expect(parseLocalArgs(["--engine-batch", "32"]).engineBatch).toBe(32);
    expect(() => parseLocalArgs(["--engine-batch", "0"])).toThrow(/--engine-batch: must be an integer >= 1, got "0"/);
  });
  it("--gate: the router computes the router logits unless the engine (the drivers) sends them", () => {
    expect(parseLocalArgs([]).gate).toBe("router");
    expect(parseLocalArgs(["--gate", "engine"]).gate).toBe("engine");
    expect(() => parseLocalArgs(["--gate", "worker"])).toThrow(/--gate: router or engine, got "worker"/);
  });

  it("takes family, size, workers, concurrency, duration and an inline policy", () => {
    const o = parseLocalArgs([
      "--family",
      "deepseek-v3",
      "--size=small",
      "--workers",
      "3",
      "--concurrency",
      "4",
      "--duration",
      "5s",
      "--policy",
      '{"batching":{"enabled":false}}',
    ]);
    expect(o).toMatchObject({ family: "deepseek-v3", size: "small", workers: 3, concurrency: 4, durationS: 5 });
    expect(o.policy.batching.enabled).toBe(false);
    expect(parseLocalArgs(["--policy", "/etc/policy.json"]).policyFile).toBe("/etc/policy.json");
  });

  it("takes --size full and the verification flags", () => {
    const o = parseLocalArgs(["--size", "full", "--verify", "sample", "--verify-threads", "3"]);
    expect(o).toMatchObject({ size: "full", verify: "sample", verifyThreads: 3 });
    expect(parseLocalArgs([])).toMatchObject({ verify: null, verifyThreads: null });
    expect(() => parseLocalArgs(["--verify", "some"])).toThrow(/^--verify: all or sample/);
    for (const d of ["0", "-1", "Infinity", "x"])
      expect(() => parseLocalArgs(["--duration", d])).toThrow(/^--duration: seconds > 0/);
    expect(() => parseLocalArgs(["--verify-threads", "0"])).toThrow(/^--verify-threads: /);
    expect(() => parseLocalArgs(["--size", "huge"])).toThrow(/^--size: one of tiny, small, medium, full/);
  });

  it("--size full is each family's published MoE shape, with 2 MoE layers", () => {
    const shape = (f: Parameters<typeof localModel>[0]) => {
      const s = defaultSpec(f, localModel(f, "full"));
      return [s.layers, s.hiddenSize, s.intermediateSize, s.experts, s.topK, s.sharedExperts, s.sharedIntermediateSize];
    };
    expect(shape("mixtral")).toEqual([2, 4096, 14336, 8, 2, 0, 0]); // Mixtral-8x7B
    expect(shape("qwen2-moe")).toEqual([2, 2048, 1408, 60, 4, 1, 5632]); // Qwen1.5-MoE-A2.7B
    expect(shape("qwen3-moe")).toEqual([2, 2048, 768, 128, 8, 0, 0]); // Qwen3-30B-A3B
    expect(shape("deepseek-v3")).toEqual([2, 7168, 2048, 256, 8, 1, 2048]); // DeepSeek-V3
    const ds = defaultSpec("deepseek-v3", localModel("deepseek-v3", "full"));
    expect([ds.nGroup, ds.topkGroup, ds.scoring, ds.routedScalingFactor]).toEqual([8, 4, "sigmoid", 2.5]);
    // the small sizes give DeepSeek-V3 twice the experts, so its groups hold several
    expect(localModel("deepseek-v3", "tiny").experts).toBe(16);
    expect(localModel("mixtral", "tiny").experts).toBe(8);
  });

  it("names the bad flag", () => {
    expect(() => parseLocalArgs(["--family", "gpt"])).toThrow(/^--family: /);
    expect(() => parseLocalArgs(["--workers", "0"])).toThrow(/^--workers: /);
    expect(() => parseLocalArgs(["--policy", '{"gating":{"topP":3}}'])).toThrow(/policy\.gating\.topP/);
    expect(() => parseLocalArgs(["--bogus", "1"])).toThrow(/unknown flag --bogus/);
    // an empty or non-decimal count is not 0 or a hex number in disguise
    expect(() => parseLocalArgs(["--seed="])).toThrow(/^--seed: must be an integer in \[0, 4294967295\], got ""/);
    expect(() => parseLocalArgs(["--redundant", " "])).toThrow(/^--redundant: /);
    expect(() => parseLocalArgs(["--workers", "0x10"])).toThrow(/^--workers: /);
  });
  it("--seed is the generator's 32-bit seed: a larger one is a flag error, not a failure in the generator", () => {
    expect(parseLocalArgs(["--seed", String(2 ** 32 - 1)]).seed).toBe(2 ** 32 - 1);
    expect(() => parseLocalArgs(["--seed", "9999999999"])).toThrow(
      /^--seed: must be an integer in \[0, 4294967295\], got "9999999999"/,
    );
  });
  it("--tolerance is finite: Infinity (or 1e400, read as it) would pass every answer", () => {
    expect(parseLocalArgs(["--tolerance", "0.05"]).tolerance).toBe(0.05);
    for (const v of ["Infinity", "1e400", "NaN", "0", "-1"])
      expect(() => parseLocalArgs(["--tolerance", v])).toThrow(/^--tolerance: a finite number > 0/);
  });
  it("--request-timeout: each request's deadline in seconds, 30 unless given", () => {
    expect(parseLocalArgs([]).requestTimeoutS).toBe(30);
    expect(parseLocalArgs(["--request-timeout", "2.5s"]).requestTimeoutS).toBe(2.5);
    for (const v of ["0", "Infinity", "x", "1e10"])
      expect(() => parseLocalArgs(["--request-timeout", v])).toThrow(/^--request-timeout: /);
  });
  it("refuses a policy the model cannot route before anything starts (the router would fail every request)", () => {
    expect(() => parseLocalArgs(["--policy", '{"gating":{"topK":20}}'])).toThrow(
      /^--policy: gating\.topK 20 exceeds the 8 experts of mixtral --size tiny/,
    );
    expect(parseLocalArgs(["--policy", '{"gating":{"topK":8}}']).policy.gating.topK).toBe(8);
    // DeepSeek-V3 tiny: 16 experts in 8 groups, the gate keeps 4 groups: 8 experts a token can reach
    expect(() => parseLocalArgs(["--family", "deepseek-v3", "--policy", '{"gating":{"topK":10}}'])).toThrow(
      /^--policy: gating\.topK 10 exceeds the 8 experts a token of deepseek-v3/,
    );
    expect(() => parseLocalArgs(["--family", "deepseek-v3", "--policy", '{"gating":{"topP":0.9}}'])).toThrow(
      /^--policy: gating\.topP needs a softmax gate; deepseek-v3 .* gates with sigmoid/,
    );
    // the model is the flags' whatever their order
    expect(() => parseLocalArgs(["--policy", '{"gating":{"topK":20}}', "--size", "medium"])).not.toThrow();
  });
  it("refuses flags that contradict the model or the machine before anything starts", () => {
    expect(() => parseLocalArgs(["--shared-experts", "workers"])).toThrow(
      /^--shared-experts workers: mixtral has no shared expert/,
    );
    expect(parseLocalArgs(["--family", "qwen2-moe", "--shared-experts", "workers"]).sharedExperts).toBe("workers");
    expect(() => parseLocalArgs(["--gpus", "2"], { CUDA_VISIBLE_DEVICES: "0" })).toThrow(
      /^--gpus: 2 GPUs asked for, CUDA_VISIBLE_DEVICES lists 1/,
    );
    expect(parseLocalArgs(["--gpus", "2"], { CUDA_VISIBLE_DEVICES: "0,1" }).gpus).toBe(2);
  });
  it("--gpus spreads the workers over GPUs through CUDA_VISIBLE_DEVICES", () => {
    expect(parseLocalArgs([]).gpus).toBeNull();
    expect(parseLocalArgs(["--gpus", "2"], {}).gpus).toBe(2);
    expect(parseLocalArgs([]).routers).toBe(1);
    expect(parseLocalArgs(["--routers", "3", "--drivers", "2"])).toMatchObject({ routers: 3, drivers: 2 });
    expect(() => parseLocalArgs(["--routers", "0"])).toThrow(/--routers/);
    expect(() => parseLocalArgs(["--gpus", "0"])).toThrow(/--gpus/);
    const env = { PATH: "/bin" };
    expect(workerEnv(null, 3, env)).toBe(env);
    // without --gpus a worker runs on every GPU it sees: libuv threads for two runs in flight on each
    expect(workerEnv(null, 0, env, 1)).toBe(env);
    expect(workerEnv(null, 0, env, 2).UV_THREADPOOL_SIZE).toBe("6");
    expect(workerEnv(null, 1, env, 8).UV_THREADPOOL_SIZE).toBe("18");
    expect(workerEnv(null, 0, { SWITCHYARD_CUDA_DEVICES: "1" }, 2).UV_THREADPOOL_SIZE).toBeUndefined();
    expect(workerEnv(null, 0, { SWITCHYARD_CUDA_DEVICES: "2" }, 4).UV_THREADPOOL_SIZE).toBe("6");
    expect(workerEnv(null, 0, { UV_THREADPOOL_SIZE: "9" }, 2).UV_THREADPOOL_SIZE).toBe("9"); // the user's stays
    expect([0, 1, 2, 3].map((i) => workerEnv(2, i, env).CUDA_VISIBLE_DEVICES)).toEqual(["0", "1", "0", "1"]);
    expect(workerEnv(2, 1, env).PATH).toBe("/bin");
    // counted within the GPUs this process was given
    expect(workerEnv(2, 1, { CUDA_VISIBLE_DEVICES: "4, 6" }).CUDA_VISIBLE_DEVICES).toBe("6");
    expect(() => workerEnv(3, 0, { CUDA_VISIBLE_DEVICES: "4,6" })).toThrow(/--gpus: 3 GPUs .* lists 2/);
  });
});
