import { notFound } from "@switchyard/protocol";
import { describe, expect, it } from "vitest";
import { parseExpertSpec, parseWorkerArgs, servedFromPlan, startFailure } from "./config.js";

describe("parseWorkerArgs", () => {
  it("reads flags, env fallbacks and defaults", () => {
    const f = parseWorkerArgs(["--checkpoint", "/ckpt", "--pool=p", "--port", "0", "--cache-capacity", "16"], {
      SWITCHYARD_WORKER_ID: "w0",
      SWITCHYARD_BACKEND: "cpu",
      SWITCHYARD_POOL: "ignored-because-flag-wins",
    });
    expect(f).toMatchObject({
      checkpoint: "/ckpt",
      pool: "p",
      workerId: "w0",
      port: 0,
      metricsPort: 9401,
      cacheCapacity: 16,
      backend: "cpu",
      queueCapacity: 64,
      maxMessageBytes: 256 * 1024 * 1024,
      warm: true,
    });
    const base = ["--checkpoint", "c", "--pool", "p", "--worker-id", "w"];
    expect(parseWorkerArgs([...base, "--warm", "false"]).warm).toBe(false);
    expect(parseWorkerArgs(base, { SWITCHYARD_WARM: "false" }).warm).toBe(false);
    expect(parseWorkerArgs(base).maxRows).toBeUndefined();
    expect(parseWorkerArgs([...base, "--max-rows", "65536"]).maxRows).toBe(65536);
  });

  it("labels the metrics with --metrics-pool, else with --pool", () => {
    const base = ["--checkpoint", "c", "--pool", "mix", "--worker-id", "w"];
    expect(parseWorkerArgs(base).metricsPool).toBe("mix");
    const f = parseWorkerArgs([...base, "--metrics-pool", "team-a/mix"]);
    expect(f).toMatchObject({ pool: "mix", metricsPool: "team-a/mix" });
    expect(parseWorkerArgs(base, { SWITCHYARD_METRICS_POOL: "team-b/mix" }).metricsPool).toBe("team-b/mix");
    expect(() => parseWorkerArgs([...base, "--metrics-pool", " team-a/mix"])).toThrow(/--metrics-pool/);
  });

  it("names the flag in errors", () => {
    expect(() => parseWorkerArgs(["--pool", "p", "--worker-id", "w"], {})).toThrow(/--checkpoint is required/);
    expect(() => parseWorkerArgs(["--checkpoint", "c", "--pool", "p", "--worker-id", "w", "--backend", "tpu"])).toThrow(
      /--backend/,
    );
    expect(() =>
      parseWorkerArgs(["--checkpoint", "c", "--pool", "p", "--worker-id", "w", "--queue-capacity", "-1"]),
    ).toThrow(/--queue-capacity/);
    expect(() => parseWorkerArgs(["--nope", "1"])).toThrow(/unknown flag --nope/);
    expect(() => parseWorkerArgs(["--checkpoint", "c", "--pool", "p", "--worker-id", "w", "--max-rows", "0"])).toThrow(
      /--max-rows: expected an integer >= 1/,
    );
    expect(() => parseWorkerArgs(["--checkpoint", "c", "--pool", "p", "--worker-id", "w", "--warm", "yes"])).toThrow(
      /--warm: expected true or false/,
    );
  });

  it("--host-cache-capacity (env SWITCHYARD_HOST_CACHE_CAPACITY): the host tier, at least --cache-capacity", () => {
    const base = ["--checkpoint", "c", "--pool", "p", "--worker-id", "w"];
    expect(parseWorkerArgs(base).hostCacheCapacity).toBeUndefined();
    expect(parseWorkerArgs([...base, "--cache-capacity", "4", "--host-cache-capacity", "64"])).toMatchObject({
      cacheCapacity: 4,
      hostCacheCapacity: 64,
    });
    expect(parseWorkerArgs(base, { SWITCHYARD_HOST_CACHE_CAPACITY: "32" }).hostCacheCapacity).toBe(32);
    expect(parseWorkerArgs([...base, "--host-cache-capacity=4", "--cache-capacity=4"]).hostCacheCapacity).toBe(4);
    expect(() => parseWorkerArgs([...base, "--cache-capacity", "8", "--host-cache-capacity", "4"])).toThrow(
      /^--host-cache-capacity: 4 is less than --cache-capacity 8/,
    );
    expect(() => parseWorkerArgs([...base, "--host-cache-capacity", "0"])).toThrow(
      /--host-cache-capacity: expected an integer >= 1, got "0"/,
    );
    expect(() => parseWorkerArgs([...base, "--host-cache-capacity", "1e3"])).toThrow(/--host-cache-capacity/);
  });

  it("refuses an empty, blank or non-decimal integer instead of reading it as 0", () => {
    const base = ["--checkpoint", "c", "--pool", "p", "--worker-id", "w"];
    expect(() => parseWorkerArgs([...base, "--port="])).toThrow(/--port: expected a port 0-65535, got ""/);
    expect(() => parseWorkerArgs([...base, "--port", " "])).toThrow(/--port: expected a port 0-65535, got " "/);
    expect(() => parseWorkerArgs([...base, "--queue-capacity="])).toThrow(/--queue-capacity: expected an integer/);
    expect(() => parseWorkerArgs([...base, "--metrics-port=0x10"])).toThrow(/--metrics-port: expected a port/);
    expect(() => parseWorkerArgs([...base, "--max-rows=1e3"])).toThrow(/--max-rows: expected an integer/);
    expect(parseWorkerArgs([...base, "--data-port=-1", "--port=0"])).toMatchObject({ dataPort: -1, port: 0 });
  });

  it("refuses a port beyond 65535 naming the flag (-1 = off for --data-port only)", () => {
    const base = ["--checkpoint", "c", "--pool", "p", "--worker-id", "w"];
    expect(() => parseWorkerArgs([...base, "--port", "70000"])).toThrow(
      /^--port: expected a port 0-65535, got "70000"$/,
    );
    expect(() => parseWorkerArgs([...base, "--port", "-1"])).toThrow(/^--port: expected a port 0-65535, got "-1"$/);
    expect(() => parseWorkerArgs(base, { SWITCHYARD_METRICS_PORT: "65536" })).toThrow(/^--metrics-port: .* "65536"$/);
    expect(() => parseWorkerArgs([...base, "--data-port=65536"])).toThrow(
      /^--data-port: expected a port 0-65535 or -1 \(off\), got "65536"$/,
    );
    expect(() => parseWorkerArgs([...base, "--data-port=-2"])).toThrow(/^--data-port: .* got "-2"$/);
    expect(parseWorkerArgs([...base, "--port=65535", "--metrics-port=65535", "--data-port=65535"])).toMatchObject({
      port: 65535,
      metricsPort: 65535,
      dataPort: 65535,
    });
  });
});

describe("startFailure", () => {
  it("a flag's error exits 2, other user errors 1, each as one line; anything else keeps its stack", () => {
    expect(startFailure(new Error('--experts: expert range "0-9" out of range (experts 0-3)'))).toEqual({
      line: '--experts: expert range "0-9" out of range (experts 0-3)',
      status: 2,
    });
    expect(startFailure(new Error("--plan /p.json: plan.replicas: has 1 layers, the model has 2")).status).toBe(2);
    expect(startFailure(new Error("--host-cache-capacity: 4 is less than --cache-capacity 8")).status).toBe(2);
    expect(startFailure(notFound("/ckpt/config.json: no such file"))).toEqual({
      line: "/ckpt/config.json: no such file",
      status: 1,
    });
    const inUse = Object.assign(new Error("listen EADDRINUSE: address already in use 0.0.0.0:9401"), {
      code: "EADDRINUSE",
      syscall: "listen",
    });
    expect(startFailure(inUse)).toEqual({ line: inUse.message, status: 1 });
    const bug = new TypeError("x is undefined");
    expect(startFailure(bug)).toEqual({ line: bug.stack, status: 1 });
    // an unknown flag's name is no flag
    expect(startFailure(new Error("--nope: x")).line).toMatch(/\n\s+at /);
  });
});

describe("parseExpertSpec", () => {
  it("expands ranges over every MoE layer or one layer", () => {
    expect([...parseExpertSpec("0-1", [1, 2], 4)].sort()).toEqual(["1:0", "1:1", "2:0", "2:1"]);
    expect([...parseExpertSpec("2:3,1:*", [1, 2], 4)].sort()).toEqual(["1:0", "1:1", "1:2", "1:3", "2:3"]);
    expect(() => parseExpertSpec("0-9", [0], 4)).toThrow(/out of range/);
    expect(() => parseExpertSpec("5:0", [0], 4)).toThrow(/not an MoE layer/);
    // an empty layer is no layer (Number("") would read it as layer 0)
    expect(() => parseExpertSpec(":3", [0, 1], 4)).toThrow(/":3": layer "" is not an MoE layer/);
    expect(() => parseExpertSpec("0x1:3", [0, 1], 4)).toThrow(/not an MoE layer/);
  });
});

describe("servedFromPlan", () => {
  it("collects what the plan gives this worker id", () => {
    const plan = { version: 1, pool: "p", workers: ["w0", "w1"], replicas: [[[0], [1], [0, 1]]] };
    expect([...servedFromPlan(plan, "w1", "p")].sort()).toEqual(["0:1", "0:2"]);
    expect(servedFromPlan(plan, "w9", "p").size).toBe(0);
    expect(() => servedFromPlan(plan, "w0", "other")).toThrow(/pool/);
  });
});
