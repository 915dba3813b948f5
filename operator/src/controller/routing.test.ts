import { defaultRoutingPolicy, resolveRoutingPolicy } from "@switchyard/moe";
import { describe, expect, it } from "vitest";
import { desiredPlan } from "./desired.js";
import { testPolicy, testPool } from "./fixtures.js";
import { buildPolicyStatus, buildRouterConfig, resolvePolicy } from "./routing.js";

describe("resolvePolicy", () => {
  it("fills defaults and keeps what the spec says", () => {
    const r = resolvePolicy(testPolicy({ gating: { topK: 4 }, batching: { maxBatchTokens: 512 } }), testPool());
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.policy.gating.topK).toBe(4);
    expect(r.policy.batching).toEqual({
      enabled: true,
      maxBatchTokens: 512,
      maxWaitMs: 2,
      maxQueueTokens: 65536,
      flushesInFlight: 2,
    });
    // The router re-validates the same JSON on load; the resolved form must pass it unchanged.
    expect(resolveRoutingPolicy(JSON.parse(JSON.stringify(r.policy)))).toEqual(r.policy);
  });

  it("refuses topK above the pool's experts and a missing pool, with reasons", () => {
    const big = resolvePolicy(testPolicy({ gating: { topK: 9 } }), testPool());
    expect(big).toMatchObject({ ok: false, reason: "TopKExceedsExperts" });
    expect(resolvePolicy(testPolicy(), undefined)).toMatchObject({ ok: false, reason: "PoolNotFound" });
  });

  it("status: Ready with the effective policy, or Degraded with the reason", () => {
    const pool = testPool();
    const good = buildPolicyStatus(testPolicy(), resolvePolicy(testPolicy(), pool), "switchyard-router", "t");
    expect(good.status.conditions?.[0]).toMatchObject({ type: "Ready", status: "True", reason: "Resolved" });
    expect(good.status.effective).toMatchObject({ gating: { overflow: "drop" } });
    const bad = buildPolicyStatus(testPolicy(), resolvePolicy(testPolicy(), undefined), "switchyard-router", "t");
    expect(bad.status.conditions?.[1]).toMatchObject({ type: "Degraded", status: "True", reason: "PoolNotFound" });
    expect(bad.status.effective).toBeUndefined();
  });
});

describe("buildRouterConfig", () => {
  it("lists every pool with a plan, using its policy or the defaults, sorted, namespace-qualified elsewhere", () => {
    const a = testPool({}, "a");
    const b = testPool({}, "b");
    const c = testPool({}, "c"); // no plan yet: left out
    const other = testPool({}, "a");
    other.metadata.namespace = "team";
    const plans = new Map();
    for (const p of [a, b, other]) {
      const r = desiredPlan(p, undefined);
      if (r.ok) plans.set(`${p.metadata.namespace}/${p.metadata.name}`, r.plan);
    }
    const cfg = buildRouterConfig({
      pools: [b, a, c, other],
      policies: [testPolicy({ gating: { topK: 1 } }, "rp-a", "a"), testPolicy({ gating: { topK: 99 } }, "rp-b", "b")],
      plans,
      routerNamespace: "ns",
      defaults: defaultRoutingPolicy(),
    });
    expect(cfg.pools.map((p) => p.name)).toEqual(["a", "b", "team/a"]);
    expect(cfg.pools[0].policy.gating.topK).toBe(1);
    expect(cfg.pools[1].policy).toEqual(defaultRoutingPolicy()); // its policy does not resolve (topK 99 > 8)
    expect(cfg.pools[0].checkpoint).toBe("/models/mix");
    expect(cfg.pools[0].endpoints["a-0"]).toBe("a-0.a-workers.ns.svc:50061");
  });
});
