import { DType, encodeTensor, type ForwardResponse } from "@switchyard/protocol";
import { describe, expect, it } from "vitest";
import type { PoolSummary } from "../router.js";
import {
  parseSmokeArgs,
  pickPools,
  replyProblems,
  smokeRequest,
  unhealthyWorkers,
  unloadedProblems,
} from "./checks.js";

const pool: PoolSummary = {
  name: "dsv3",
  family: "deepseek-v3",
  layers: 5,
  moeLayers: [3, 4],
  experts: 16,
  hiddenSize: 8,
  planVersion: 2,
  workers: [
    { id: "w0", address: "10.0.0.1:50061", healthy: true, dataPath: true },
    { id: "w1", address: "10.0.0.2:50061", healthy: false, dataPath: false },
  ],
};

const stats = {
  expertsTouched: 3,
  workersUsed: 1,
  queueWaitMs: 0,
  totalMs: 1,
  droppedAssignments: 0,
  batchTokens: 2,
  batchRequests: 1,
};

function reply(values: Float32Array, shape = [2, 8], dtype = DType.BFLOAT16): ForwardResponse {
  return { requestId: 1n, hidden: encodeTensor(values, shape, dtype), stats: { ...stats }, error: undefined };
}

describe("parseSmokeArgs", () => {
  it("takes the flags, with defaults", () => {
    expect(parseSmokeArgs(["--router", "sy-router:50051", "--http", "http://sy-router:9400/"])).toEqual({
      router: "sy-router:50051",
      http: "http://sy-router:9400",
      dataPort: 0,
      pools: [],
      tokens: 4,
      timeoutMs: 20_000,
    });
    const a = parseSmokeArgs([
      "--router",
      "127.0.0.1:1",
      "--http",
      "https://x",
      "--data-port",
      "50052",
      "--pool",
      "a",
      "--pool",
      "b",
      "--tokens",
      "16",
      "--timeout-ms",
      "500",
    ]);
    expect(a).toMatchObject({ dataPort: 50052, pools: ["a", "b"], tokens: 16, timeoutMs: 500 });
  });

  it("names the flag at fault", () => {
    const base = ["--router", "r:1", "--http", "http://r:2"];
    expect(() => parseSmokeArgs(["--http", "http://r:2"])).toThrow(/^--router: required/);
    expect(() => parseSmokeArgs(["--router", "r:1"])).toThrow(/^--http: required/);
    expect(() => parseSmokeArgs(["--router", "r"])).toThrow(/^--router: expected host:port/);
    expect(() => parseSmokeArgs(["--router", "r:1", "--http", "ftp://r"])).toThrow(/^--http: expected http/);
    expect(() => parseSmokeArgs(["--router", "r:1", "--http", "::"])).toThrow(/^--http: not a URL/);
    expect(() => parseSmokeArgs([...base, "--tokens", "0"])).toThrow(/^--tokens: expected an integer in \[1, 4096\]/);
    expect(() => parseSmokeArgs([...base, "--tokens", "2.5"])).toThrow(/^--tokens/);
    expect(() => parseSmokeArgs([...base, "--data-port", "70000"])).toThrow(/^--data-port/);
    expect(() => parseSmokeArgs([...base, "--timeout-ms"])).toThrow(/^--timeout-ms: missing value/);
    expect(() => parseSmokeArgs([...base, "--pool", "--tokens", "2"])).toThrow(/^--pool: missing value/);
    expect(() => parseSmokeArgs([...base, "--verbose", "1"])).toThrow(/^unknown flag --verbose/);
  });
});

describe("pickPools", () => {
  it("takes every pool, or the named ones, naming a pool that is not served", () => {
    const other = { ...pool, name: "mixtral" };
    expect(pickPools([pool, other], []).map((p) => p.name)).toEqual(["dsv3", "mixtral"]);
    expect(pickPools([pool, other], ["mixtral"]).map((p) => p.name)).toEqual(["mixtral"]);
    expect(() => pickPools([pool, other], ["qwen"])).toThrow('pool "qwen" is not served (serving: dsv3, mixtral)');
    expect(() => pickPools([], [])).toThrow(/serves no pools/);
    // a named pool the router could not load is reported by unloadedProblems, not as "not served"
    const unloaded = [{ name: "qwen", error: "pools[2].checkpoint: no such file" }];
    expect(pickPools([pool, other], ["qwen", "dsv3"], unloaded).map((p) => p.name)).toEqual(["dsv3"]);
    expect(unloadedProblems(unloaded, ["qwen"])).toEqual([
      "pool qwen: configured but not loaded by the router: pools[2].checkpoint: no such file",
    ]);
    expect(unloadedProblems(unloaded, [])).toHaveLength(1);
    expect(unloadedProblems(unloaded, ["dsv3"])).toEqual([]);
  });
});

describe("smokeRequest", () => {
  it("sends bf16 N(0, 1) hidden states at the first MoE layer, no gate input, with the timeout", () => {
    const req = smokeRequest(pool, 3, 1500, 7);
    expect(req).toMatchObject({ pool: "dsv3", layer: 3, gate: undefined, timeoutMs: 1500, requestId: 7n });
    expect(req.hidden).toMatchObject({ dtype: DType.BFLOAT16, shape: [3, 8] });
    expect(req.hidden!.data.byteLength).toBe(3 * 8 * 2);
    // the same seed gives the same states (a failure can be replayed), another seed others
    expect(smokeRequest(pool, 3, 1500, 7).hidden!.data).toEqual(req.hidden!.data);
    expect(smokeRequest(pool, 3, 1500, 8).hidden!.data).not.toEqual(req.hidden!.data);
    // an odd element count fills its last element too
    const odd = smokeRequest({ ...pool, hiddenSize: 3 }, 1, 1, 1).hidden!.data;
    expect(new Uint16Array(odd.buffer, odd.byteOffset, 3)[2]).not.toBe(0);
  });

  it("refuses a model without MoE layers", () => {
    expect(() => smokeRequest({ ...pool, moeLayers: [] }, 1, 1)).toThrow("pool dsv3: its model has no MoE layer");
  });
});

describe("replyProblems", () => {
  const req = smokeRequest(pool, 2, 1000);
  const good = Float32Array.from({ length: 16 }, (_, i) => i - 7.5);

  it("passes a reply of the request's shape and dtype with finite values and experts that ran", () => {
    expect(replyProblems(pool, req, reply(good))).toEqual([]);
  });

  it("names what is wrong", () => {
    expect(replyProblems(pool, req, reply(good.subarray(0, 8), [1, 8]))).toEqual([
      "reply hidden.shape[0]: expected 2, got 1",
    ]);
    expect(replyProblems(pool, req, reply(good, [2, 8], DType.FLOAT32))).toEqual([
      "reply hidden.dtype: expected BFLOAT16, got FLOAT32",
    ]);
    const nan = good.slice();
    nan[3] = Number.NaN;
    nan[9] = Number.POSITIVE_INFINITY;
    expect(replyProblems(pool, req, reply(nan))).toEqual(["reply hidden: 2 of 16 values are not finite"]);
    expect(replyProblems(pool, req, reply(new Float32Array(16)))).toEqual([
      "reply hidden: every value is 0 (no expert contributed)",
    ]);
    const idle = reply(good);
    idle.stats = { ...stats, expertsTouched: 0, workersUsed: 0 };
    expect(replyProblems(pool, req, idle)).toEqual([
      "reply stats.experts_touched: 0 (no expert ran)",
      "reply stats.workers_used: 0 (no worker answered)",
    ]);
    expect(replyProblems(pool, req, { ...reply(good), stats: undefined })).toEqual(["reply stats: missing"]);
    expect(replyProblems(pool, req, { ...reply(good), hidden: undefined })).toEqual(["reply hidden: required"]);
    expect(
      replyProblems(pool, req, { ...reply(good), error: { code: 14, message: "worker w1: unavailable" } }),
    ).toEqual(["the router answered UNAVAILABLE: worker w1: unavailable"]);
  });
});

describe("unhealthyWorkers", () => {
  it("names each worker the router is backing off from", () => {
    expect(unhealthyWorkers(pool)).toEqual([
      "worker w1 (10.0.0.2:50061): not answering the router (in backoff after a failed call)",
    ]);
  });
});
