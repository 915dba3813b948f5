import { describe, expect, it } from "vitest";
import { defaultRoutingPolicy } from "./policy.js";
import { PolicyError, parseDurationMs, resolveRoutingPolicy } from "./validate.js";

function errorOf(input: unknown): PolicyError {
  try {
    resolveRoutingPolicy(input);
  } catch (e) {
    if (e instanceof PolicyError) return e;
    throw e;
  }
  throw new Error("expected a PolicyError");
}

describe("resolveRoutingPolicy", () => {
  it("fills defaults: dropless, batching on", () => {
    const p = resolveRoutingPolicy({});
    expect(p).toEqual(defaultRoutingPolicy());
    expect(p.gating.capacityFactor).toBeNull();
    expect(resolveRoutingPolicy(undefined)).toEqual(defaultRoutingPolicy());
  });

  it("keeps given values and parses durations", () => {
    const p = resolveRoutingPolicy({
      gating: { topK: 4, topP: 0.6, maxK: 6, capacityFactor: 1.25, overflow: "spill" },
      batching: { maxBatchTokens: 64, maxWait: "5ms" },
      placement: { cacheAffinity: 2, load: 0.5, latency: 0 },
      loadSignals: { prometheusUrl: "http://prom:9090", refresh: "1s", staleness: "10s" },
    });
    expect(p.gating).toEqual({ topK: 4, topP: 0.6, maxK: 6, capacityFactor: 1.25, overflow: "spill" });
    expect(p.batching.maxWaitMs).toBe(5);
    expect(p.loadSignals.refreshMs).toBe(1000);
    expect(p.loadSignals.stalenessMs).toBe(10000);
    expect(p.placement.cacheAffinity).toBe(2);
  });

  it("an unset timeoutMs is 2000 ms, but never longer than refreshMs (the CRD accepts refreshMs 1000 alone)", () => {
    expect(resolveRoutingPolicy({ loadSignals: { refreshMs: 1000 } }).loadSignals.timeoutMs).toBe(1000);
    expect(resolveRoutingPolicy({ loadSignals: { refresh: "500ms" } }).loadSignals.timeoutMs).toBe(500);
    expect(resolveRoutingPolicy({ loadSignals: { refreshMs: 10000 } }).loadSignals.timeoutMs).toBe(2000);
    expect(resolveRoutingPolicy({}).loadSignals.timeoutMs).toBe(2000);
    // a given one is kept as given
    expect(resolveRoutingPolicy({ loadSignals: { refreshMs: 1000, timeoutMs: 3000 } }).loadSignals.timeoutMs).toBe(
      3000,
    );
  });

  it("accepts load-signal durations up to setTimeout's limit, 2^31-1 ms", () => {
    const max = 2_147_483_647;
    const p = resolveRoutingPolicy({ loadSignals: { refreshMs: max, stalenessMs: max, timeoutMs: max } });
    expect(p.loadSignals).toMatchObject({ refreshMs: max, stalenessMs: max, timeoutMs: max });
    expect(() => resolveRoutingPolicy({ loadSignals: { refresh: "35791m", staleness: "35791m" } })).not.toThrow();
  });

  it("says which of two spellings to drop when both are set", () => {
    expect(errorOf({ loadSignals: { refresh: "1s", refreshMs: 1000 } }).message).toBe(
      "policy.loadSignals.refresh: set refresh or refreshMs, not both",
    );
    expect(errorOf({ batching: { maxWait: "1ms", maxWaitMs: 1 } }).message).toBe(
      "policy.batching.maxWait: set maxWait or maxWaitMs, not both",
    );
  });

  it("treats capacityFactor 0 as dropless", () => {
    expect(resolveRoutingPolicy({ gating: { capacityFactor: 0 } }).gating.capacityFactor).toBeNull();
  });

  it.each([
    [{ gating: { topP: 1.5 } }, "policy.gating.topP"],
    [{ gating: { topP: 0 } }, "policy.gating.topP"],
    [{ gating: { topK: 2.5 } }, "policy.gating.topK"],
    [{ gating: { overflow: "evict" } }, "policy.gating.overflow"],
    [{ gating: { maxK: 4 } }, "policy.gating.maxK"],
    [{ gating: { topK: 4, topP: 0.5, maxK: 2 } }, "policy.gating.maxK"],
    [{ gating: { capacityFactor: -1 } }, "policy.gating.capacityFactor"],
    [{ gating: { tokK: 2 } }, "policy.gating.tokK"],
    [{ batching: { maxBatchTokens: 0 } }, "policy.batching.maxBatchTokens"],
    [{ batching: { maxWait: "soon" } }, "policy.batching.maxWait"],
    [{ batching: { maxWait: "1ms", maxWaitMs: 1 } }, "policy.batching.maxWait"],
    [{ batching: { maxBatchTokens: 512, maxQueueTokens: 100 } }, "policy.batching.maxQueueTokens"],
    [{ batching: { enabled: "yes" } }, "policy.batching.enabled"],
    [{ batching: { flushesInFlight: 0 } }, "policy.batching.flushesInFlight"],
    [{ batching: { flushesInFlight: 1.5 } }, "policy.batching.flushesInFlight"],
    [{ placement: { load: -1 } }, "policy.placement.load"],
    [{ loadSignals: { prometheusUrl: "ftp://x" } }, "policy.loadSignals.prometheusUrl"],
    [{ loadSignals: { prometheusUrl: "not a url" } }, "policy.loadSignals.prometheusUrl"],
    [{ loadSignals: { refreshMs: 5000, stalenessMs: 1000 } }, "policy.loadSignals.stalenessMs"],
    [{ loadSignals: { queries: { depth: "x" } } }, "policy.loadSignals.queries.depth"],
    // above 2^31-1 ms setTimeout fires after 1 ms (and AbortSignal.timeout throws above 2^32-1)
    [{ loadSignals: { refreshMs: 2 ** 31, stalenessMs: 2 ** 31 } }, "policy.loadSignals.refreshMs"],
    [{ loadSignals: { stalenessMs: 2 ** 31 } }, "policy.loadSignals.stalenessMs"],
    [{ loadSignals: { timeoutMs: 2 ** 32 } }, "policy.loadSignals.timeoutMs"],
    [{ loadSignals: { refresh: "40000m", staleness: "40000m" } }, "policy.loadSignals.refresh"],
    [{ loadSignals: { staleness: "2147484s" } }, "policy.loadSignals.staleness"],
    [{ loadSignals: { refresh: "1s", refreshMs: 1000 } }, "policy.loadSignals.refresh"],
    [{ loadSignals: { staleness: "10s", stalenessMs: 10000 } }, "policy.loadSignals.staleness"],
    [{ extra: 1 }, "policy.extra"],
    [[1], "policy"],
    [{ gating: 3 }, "policy.gating"],
  ])("rejects %j naming %s", (input, field) => {
    const e = errorOf(input);
    expect(e.field).toBe(field);
    expect(e.message.startsWith(`${field}: `)).toBe(true);
  });
});

describe("parseDurationMs", () => {
  it("parses ms, s, m and numbers", () => {
    expect(parseDurationMs("250ms", "f")).toBe(250);
    expect(parseDurationMs("1.5s", "f")).toBe(1500);
    expect(parseDurationMs("2m", "f")).toBe(120000);
    expect(parseDurationMs(7, "f")).toBe(7);
    expect(() => parseDurationMs("2h", "f")).toThrow(/^f: /);
  });
});
