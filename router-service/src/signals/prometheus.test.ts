import { resolveRoutingPolicy } from "@switchyard/moe";
import { describe, expect, it } from "vitest";
import { type FetchLike, PrometheusSignals, parseInstantQuery } from "./prometheus.js";

describe("parseInstantQuery", () => {
  it("reads vectors and scalars, and surfaces Prometheus errors", () => {
    expect(
      parseInstantQuery({
        status: "success",
        data: { resultType: "vector", result: [{ metric: { worker: "w0" }, value: [1, "3.5"] }] },
      }),
    ).toEqual([{ labels: { worker: "w0" }, value: 3.5 }]);
    expect(parseInstantQuery({ status: "success", data: { resultType: "scalar", result: [1, "2"] } })).toEqual([
      { labels: {}, value: 2 },
    ]);
    expect(() => parseInstantQuery({ status: "error", errorType: "bad_data", error: "parse error at char 3" })).toThrow(
      /bad_data: parse error at char 3/,
    );
    expect(() => parseInstantQuery({ status: "success", data: { resultType: "matrix", result: [] } })).toThrow(
      /instant vector/,
    );
  });
});

describe("PrometheusSignals (fake clock and fetch)", () => {
  const policy = resolveRoutingPolicy({
    loadSignals: { prometheusUrl: "http://prom:9090/", refreshMs: 100, stalenessMs: 1000, timeoutMs: 50 },
  }).loadSignals;

  it("substitutes $pool, converts seconds to ms, and ages into staleness", async () => {
    let now = 0;
    const urls: string[] = [];
    let up = true;
    const fetchImpl: FetchLike = async (url) => {
      urls.push(url);
      if (!up) throw new Error("connect ECONNREFUSED");
      const q = decodeURIComponent(new URL(url).searchParams.get("query")!);
      const value = q.includes("queue_depth") ? "7" : "0.02";
      return {
        ok: true,
        status: 200,
        json: async () => ({
          status: "success",
          data: { resultType: "vector", result: [{ metric: { worker: "w1" }, value: [0, value] }] },
        }),
      };
    };
    const s = new PrometheusSignals(policy, "mix", fetchImpl, () => now);
    expect(s.stale).toBe(true);
    await s.refresh();
    expect(urls[0].startsWith("http://prom:9090/api/v1/query?query=")).toBe(true);
    expect(decodeURIComponent(urls[0])).toContain('pool="mix"');
    expect(s.fresh()!.queueDepth.get("w1")).toBe(7);
    expect(s.fresh()!.latencyMs.get("w1")).toBeCloseTo(20);
    up = false;
    now = 900;
    await s.refresh();
    expect(s.lastError).toMatch(/ECONNREFUSED/);
    expect(s.stale).toBe(false); // last good answer is 900 ms old
    now = 1001;
    expect(s.stale).toBe(true);
    expect(s.fresh()).toBeNull();
  });

  it("is off (stale, no queries) without a URL", async () => {
    const s = new PrometheusSignals(resolveRoutingPolicy({}).loadSignals, "p", async () => {
      throw new Error("must not be called");
    });
    await s.refresh();
    expect(s.enabled).toBe(false);
    expect(s.stale).toBe(true);
  });
});
