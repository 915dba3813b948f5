import { DEFAULT_LATENCY_QUERY, DEFAULT_QUEUE_DEPTH_QUERY, resolveRoutingPolicy } from "@switchyard/moe";
import { describe, expect, it, vi } from "vitest";
import {
  expandQuery,
  type FetchLike,
  PrometheusSignals,
  parseInstantQuery,
  poolNamespace,
  routerNamespaceFromEnv,
} from "./prometheus.js";

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

describe("query placeholders", () => {
  it("a pool's namespace: that of a namespace/name pool, else the router's own (POD_NAMESPACE), else unknown", () => {
    expect(poolNamespace("team-a/mix", "prod")).toBe("team-a");
    expect(poolNamespace("mix", "prod")).toBe("prod");
    expect(poolNamespace("mix", null)).toBeNull();
    expect(poolNamespace("team-a/mix", null)).toBe("team-a");
    // not a namespace name (so not a regular expression of just itself): unknown, not spliced into the query
    expect(poolNamespace("mix", 'a"b')).toBeNull();
    expect(poolNamespace("mix", "a.*")).toBeNull();
    expect(routerNamespaceFromEnv({ POD_NAMESPACE: "prod" })).toBe("prod");
    expect(routerNamespaceFromEnv({})).toBeNull();
    expect(routerNamespaceFromEnv({ POD_NAMESPACE: "" })).toBeNull();
  });

  it("fills $pool and $namespace; an unknown namespace matches any", () => {
    expect(expandQuery('x{pool="$pool", namespace=~"$namespace|"} / y{pool="$pool"}', "mix", "prod")).toBe(
      'x{pool="mix", namespace=~"prod|"} / y{pool="mix"}',
    );
    expect(expandQuery('x{pool="$pool", namespace=~"$namespace|"}', "mix", null)).toBe(
      'x{pool="mix", namespace=~".*|"}',
    );
    // a query without placeholders, or with only $pool, as written before $namespace existed
    expect(expandQuery("sum by (worker) (q)", "mix", "prod")).toBe("sum by (worker) (q)");
    expect(expandQuery('q{pool="$pool"}', "team-a/mix", "team-a")).toBe('q{pool="team-a/mix"}');
  });

  it("the default queries select the pool's workers by namespace too: same-named pools of two installs stay apart", () => {
    for (const q of [DEFAULT_QUEUE_DEPTH_QUERY, DEFAULT_LATENCY_QUERY]) {
      const selectors = [...q.matchAll(/switchyard_worker_\w+\{([^}]*)\}/g)].map((m) => m[1]);
      expect(selectors.length, q).toBeGreaterThan(0);
      for (const sel of selectors) expect(sel, q).toBe('pool="$pool", namespace=~"$namespace|"');
    }
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
      const value = q.includes("queued_rows") ? "7" : "0.02";
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

  it("asks for the pool's own namespace: the router's for a bare name, the named one for namespace/name", async () => {
    const queries: string[] = [];
    const fetchImpl: FetchLike = async (url) => {
      queries.push(new URL(url).searchParams.get("query")!);
      return {
        ok: true,
        status: 200,
        json: async () => ({
          status: "success",
          data: { resultType: "vector", result: [{ metric: { worker: "w0" }, value: [0, "1"] }] },
        }),
      };
    };
    const log = () => {};
    const ask = async (pool: string, routerNamespace: string | null) => {
      queries.length = 0;
      const s = new PrometheusSignals(policy, pool, fetchImpl, () => 0, log, routerNamespace);
      await s.refresh();
      expect(s.lastError).toBeNull();
      return { namespace: s.namespace, queries: [...queries] };
    };
    expect(await ask("mix", "prod")).toEqual({
      namespace: "prod",
      queries: [
        'sum by (worker) (switchyard_worker_queued_rows{pool="mix", namespace=~"prod|"})',
        'sum by (worker) (rate(switchyard_worker_run_duration_seconds_sum{pool="mix", namespace=~"prod|"}[1m])) / sum by (worker) (rate(switchyard_worker_run_duration_seconds_count{pool="mix", namespace=~"prod|"}[1m]))',
      ],
    });
    expect((await ask("team-a/mix", "prod")).queries[0]).toBe(
      'sum by (worker) (switchyard_worker_queued_rows{pool="team-a/mix", namespace=~"team-a|"})',
    );
    expect((await ask("mix", null)).queries[0]).toBe(
      'sum by (worker) (switchyard_worker_queued_rows{pool="mix", namespace=~".*|"})',
    );
  });

  it("logs a failure when it starts or changes and when it ends, not every round; an unreadable body is this side's", async () => {
    const lines: string[] = [];
    let mode: "ok" | "refused" | "truncated" | "http503" = "refused";
    const fetchImpl: FetchLike = async () => {
      if (mode === "refused") throw new Error("connect ECONNREFUSED");
      const ok = mode !== "http503";
      return {
        ok,
        status: ok ? 200 : 503,
        json: async () => {
          if (mode !== "ok") throw new SyntaxError("Unexpected end of JSON input");
          return {
            status: "success",
            data: { resultType: "vector", result: [{ metric: { worker: "w0" }, value: [0, "1"] }] },
          };
        },
      };
    };
    const s = new PrometheusSignals(
      policy,
      "mix",
      fetchImpl,
      () => 0,
      (l) => lines.push(l),
    );
    await s.refresh();
    await s.refresh(); // the same failure again: no second line
    mode = "truncated";
    await s.refresh();
    expect(s.lastError).toBe("prometheus: unreadable answer (HTTP 200): Unexpected end of JSON input");
    mode = "http503";
    await s.refresh();
    expect(s.lastError).toBe("prometheus: HTTP 503");
    mode = "ok";
    await s.refresh();
    await s.refresh();
    expect(s.lastError).toBeNull();
    expect(lines).toEqual([
      "pool mix: Prometheus load signals failed (connect ECONNREFUSED); the router uses its own counters once the last answer is 1000 ms old",
      "pool mix: Prometheus load signals failed (prometheus: unreadable answer (HTTP 200): Unexpected end of JSON input); the router uses its own counters once the last answer is 1000 ms old",
      "pool mix: Prometheus load signals failed (prometheus: HTTP 503); the router uses its own counters once the last answer is 1000 ms old",
      "pool mix: Prometheus load signals answer again",
    ]);
  });

  it("takes an empty queue answer (a query whose labels match nothing) as a failure, not as no load", async () => {
    const answer =
      (result: unknown[]): FetchLike =>
      async () => ({
        ok: true,
        status: 200,
        json: async () => ({ status: "success", data: { resultType: "vector", result } }),
      });
    const empty = new PrometheusSignals(policy, "mix", answer([]), () => 0);
    await empty.refresh();
    expect(empty.stale).toBe(true);
    expect(empty.lastError).toMatch(/queueDepth query returned no sample with a worker label \(pool mix\)/);
    // idle workers: queue gauges at 0, no latency sample (0/0 rates): fresh
    const idle = new PrometheusSignals(policy, "mix", answer([{ metric: { worker: "w0" }, value: [0, "0"] }]), () => 0);
    await idle.refresh();
    expect(idle.stale).toBe(false);
    expect(idle.fresh()!.queueDepth.get("w0")).toBe(0);
  });

  it("keeps one refresh loop when the policy is set while a round is in flight, and stop() ends it", async () => {
    vi.useFakeTimers();
    try {
      let calls = 0;
      const held: (() => void)[] = [];
      const fetchImpl: FetchLike = async () => {
        calls++;
        if (calls <= 2) await new Promise<void>((r) => held.push(r)); // round 1 hangs (a slow Prometheus)
        return {
          ok: true,
          status: 200,
          json: async () => ({ status: "success", data: { resultType: "vector", result: [] } }),
        };
      };
      const s = new PrometheusSignals(policy, "p", fetchImpl);
      s.start();
      await vi.advanceTimersByTimeAsync(0);
      expect(held).toHaveLength(2);
      s.setPolicy(policy); // a config reload sets the policy again (every plan change does)
      await vi.advanceTimersByTimeAsync(0);
      for (const r of held) r();
      await vi.advanceTimersByTimeAsync(0);
      const before = calls;
      await vi.advanceTimersByTimeAsync(10 * policy.refreshMs);
      // 10 refresh periods at 2 queries a round: one loop's worth, not two
      expect(calls - before).toBeLessThanOrEqual(2 * 10);
      expect(calls - before).toBeGreaterThanOrEqual(2 * 9);
      s.stop();
      const stopped = calls;
      await vi.advanceTimersByTimeAsync(10 * policy.refreshMs);
      expect(calls).toBe(stopped);
    } finally {
      vi.useRealTimers();
    }
  });

  it("starts querying when a reloaded policy turns the signals on, and stops when it turns them off", async () => {
    vi.useFakeTimers();
    try {
      let calls = 0;
      const fetchImpl: FetchLike = async () => {
        calls++;
        return {
          ok: true,
          status: 200,
          json: async () => ({
            status: "success",
            data: { resultType: "vector", result: [{ metric: { worker: "w0" }, value: [0, "1"] }] },
          }),
        };
      };
      const s = new PrometheusSignals(resolveRoutingPolicy({}).loadSignals, "p", fetchImpl);
      s.start(); // as a pool does when it is created, here without a Prometheus URL
      await vi.advanceTimersByTimeAsync(10 * policy.refreshMs);
      expect(calls).toBe(0);
      s.setPolicy(policy); // the config file now names a Prometheus
      await vi.advanceTimersByTimeAsync(0);
      expect(calls).toBeGreaterThan(0);
      expect(s.fresh()?.queueDepth.get("w0")).toBe(1);
      s.setPolicy(resolveRoutingPolicy({}).loadSignals);
      const off = calls;
      await vi.advanceTimersByTimeAsync(10 * policy.refreshMs);
      expect(calls).toBe(off);
      expect(s.stale).toBe(true);
      s.stop();
    } finally {
      vi.useRealTimers();
    }
  });

  it("a round in flight when the policy names another Prometheus is dropped, and the old answers with it", async () => {
    const held: (() => void)[] = [];
    const fetchImpl: FetchLike = async (url) => {
      const depth = url.startsWith("http://old") ? "7" : "3";
      if (url.startsWith("http://old") && held.length < 2) await new Promise<void>((r) => held.push(r));
      return {
        ok: true,
        status: 200,
        json: async () => ({
          status: "success",
          data: { resultType: "vector", result: [{ metric: { worker: "w0" }, value: [0, depth] }] },
        }),
      };
    };
    const s = new PrometheusSignals({ ...policy, prometheusUrl: "http://old:9090" }, "p", fetchImpl);
    const slow = s.refresh(); // the old Prometheus, slow to answer
    s.setPolicy({ ...policy, prometheusUrl: "http://new:9090" });
    await s.refresh();
    expect(s.fresh()?.queueDepth.get("w0")).toBe(3);
    for (const r of held) r();
    await slow;
    expect(s.fresh()?.queueDepth.get("w0")).toBe(3); // not the old Prometheus' 7
    // and a snapshot of the old source does not outlive the switch
    const t = new PrometheusSignals({ ...policy, prometheusUrl: "http://new:9090" }, "p", fetchImpl);
    await t.refresh();
    expect(t.stale).toBe(false);
    t.setPolicy({ ...policy, prometheusUrl: "http://other:9090" });
    expect(t.stale).toBe(true);
    t.setPolicy({ ...policy, prometheusUrl: "http://other:9090" });
    await t.refresh();
    t.setPolicy({ ...policy, prometheusUrl: "http://other:9090" }); // the same source set again keeps it
    expect(t.stale).toBe(false);
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
