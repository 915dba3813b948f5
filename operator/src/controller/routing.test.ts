import { defaultRoutingPolicy, resolveRoutingPolicy } from "@switchyard/moe";
import { describe, expect, it } from "vitest";
import { desiredPlan } from "./desired.js";
import { testPolicy, testPool } from "./fixtures.js";
import {
  buildPolicyStatus,
  buildRouterConfig,
  policyOutcome,
  resolvePolicy,
  whyNotServed,
  winningPolicy,
} from "./routing.js";

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

  it("refuses topP on a deepseek-v3 pool (sigmoid gate: the router refuses it per request), naming the field", () => {
    const ds = testPool({ model: { architecture: "deepseek-v3" } });
    const r = resolvePolicy(testPolicy({ gating: { topP: 0.9 } }), ds);
    expect(r).toMatchObject({ ok: false, reason: "TopPNeedsSoftmaxGate" });
    if (!r.ok) expect(r.message).toMatch(/^spec\.gating\.topP needs a softmax gate; ExpertPool mix is deepseek-v3/);
    expect(resolvePolicy(testPolicy({ gating: { topK: 4 } }), ds).ok).toBe(true);
    expect(resolvePolicy(testPolicy({ gating: { topP: 0.9 } }), testPool()).ok).toBe(true); // mixtral: softmax
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

describe("status.effective: the gating figures the router takes from the pool, filled in", () => {
  const pool = testPool(); // mixtral-shaped fixture: 8 experts, top-2
  const effective = (spec: Parameters<typeof testPolicy>[0], p = pool) => {
    const rp = testPolicy(spec);
    return buildPolicyStatus(rp, resolvePolicy(rp, p), "switchyard-router", "t").status.effective as {
      gating: { topK: number | null; topP: number | null; maxK: number | null };
    };
  };

  it("top-k gating without gating.topK: the model's topK (the TopK column is never blank)", () => {
    expect(effective({ batching: { maxBatchTokens: 512 } }).gating).toMatchObject({ topK: 2, topP: null, maxK: null });
    expect(effective({ gating: { topK: 4 } }).gating).toMatchObject({ topK: 4, maxK: null });
  });

  it("top-p gating: maxK resolved as the router does (max(topK, 2 × model topK), at most the experts)", () => {
    expect(effective({ gating: { topP: 0.9, maxK: 2 } }).gating).toEqual(
      expect.objectContaining({ topK: null, topP: 0.9, maxK: 2 }),
    );
    expect(effective({ gating: { topP: 0.9 } }).gating).toMatchObject({ topK: null, maxK: 4 });
    expect(effective({ gating: { topP: 0.9, topK: 3 } }).gating).toMatchObject({ topK: 3, maxK: 4 });
    const narrow = testPool({ model: { experts: 3, topK: 2 } });
    expect(effective({ gating: { topP: 0.9 } }, narrow).gating).toMatchObject({ maxK: 3 });
  });

  it("the router config keeps the policy as resolved (the router reads the model's figures from its checkpoint)", () => {
    const r = resolvePolicy(testPolicy(), pool);
    expect(r.ok && r.policy.gating.topK).toBeNull();
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
    expect(cfg.pools[0]).not.toHaveProperty("hfEndpoint");
  });

  it("passes an hf:// pool's checkpoint.endpoint (its Hub mirror) to the router, which downloads its gate from it", () => {
    const m = testPool({}, "m");
    m.spec.model.checkpoint = { uri: "hf://org/m", endpoint: "https://hf-mirror.example.com" };
    const r = desiredPlan(m, undefined);
    if (!r.ok) throw new Error(r.message);
    const cfg = buildRouterConfig({
      pools: [m],
      policies: [],
      plans: new Map([["ns/m", r.plan]]),
      routerNamespace: "ns",
      defaults: defaultRoutingPolicy(),
    });
    expect(cfg.pools[0]).toMatchObject({ checkpoint: "hf://org/m", hfEndpoint: "https://hf-mirror.example.com" });
    expect(cfg.pools[0]).not.toHaveProperty("hfTokenFile");
  });

  it("points the router at the pool's own Hub token for an hf:// pool with a tokenSecret (key namespace_pool)", () => {
    const gated = testPool({}, "gated");
    gated.spec.model.checkpoint = { uri: "hf://org/gated", tokenSecret: { name: "hf" } };
    const https = testPool({}, "web");
    https.spec.model.checkpoint = { uri: "https://example.com/m/", tokenSecret: { name: "hf" } };
    const plans = new Map();
    for (const p of [gated, https]) {
      const r = desiredPlan(p, undefined);
      if (r.ok) plans.set(`ns/${p.metadata.name}`, r.plan);
    }
    const cfg = buildRouterConfig({
      pools: [gated, https],
      policies: [],
      plans,
      routerNamespace: "ns",
      defaults: defaultRoutingPolicy(),
    });
    expect(cfg.pools.find((p) => p.name === "gated")?.hfTokenFile).toBe("/etc/switchyard/hf-tokens/ns_gated");
    // the token is for the Hub only (packages/moe/src/fetch/uri.ts sends it to hf:// sources)
    expect(cfg.pools.find((p) => p.name === "web")).not.toHaveProperty("hfTokenFile");
  });
});

describe("which policy the router uses, and what the others say", () => {
  const pool = testPool();
  const plan = (() => {
    const r = desiredPlan(pool, undefined);
    if (!r.ok) throw new Error(r.message);
    return r.plan;
  })();
  const aged = (topK: number, name: string, created: string) => {
    const rp = testPolicy({ gating: { topK } }, name);
    rp.metadata.creationTimestamp = created;
    return rp;
  };
  const older = aged(1, "rp-new-name", "2026-01-01T00:00:00Z");
  const newer = aged(4, "rp-a", "2026-02-01T00:00:00Z");

  it("the oldest that resolves wins; the router config and every policy's status agree on it", () => {
    expect(winningPolicy(pool, [newer, older])?.rp.metadata.name).toBe("rp-new-name");
    const cfg = buildRouterConfig({
      pools: [pool],
      policies: [newer, older],
      plans: new Map([["ns/mix", plan]]),
      routerNamespace: "ns",
      defaults: defaultRoutingPolicy(),
    });
    expect(cfg.pools[0].policy.gating.topK).toBe(1);
    expect(policyOutcome(older, pool, [older, newer], plan)).toMatchObject({ ok: true });
    const lost = policyOutcome(newer, pool, [older, newer], plan);
    expect(lost).toMatchObject({ ok: false, reason: "Superseded" });
    if (!lost.ok) expect(lost.message).toMatch(/^RoutingPolicy rp-new-name also targets ExpertPool mix/);
    const st = buildPolicyStatus(newer, lost, "ns/switchyard-router", "t").status;
    expect(st.conditions?.[0]).toMatchObject({ type: "Ready", status: "False", reason: "Superseded" });
    expect(st.effective).toBeUndefined();
    // The winner deleted: the other one takes over.
    expect(policyOutcome(newer, pool, [newer], plan)).toMatchObject({ ok: true });
    // One that does not resolve wins nothing: the next one is used, and it says so.
    const broken = aged(99, "rp-broken", "2025-01-01T00:00:00Z");
    expect(policyOutcome(older, pool, [broken, older, newer], plan)).toMatchObject({ ok: true });
    expect(policyOutcome(broken, pool, [broken, older], plan)).toMatchObject({ reason: "TopKExceedsExperts" });
    // Same creation second: the name decides.
    const twin = aged(2, "rp-0", "2026-01-01T00:00:00Z");
    expect(winningPolicy(pool, [older, twin])?.rp.metadata.name).toBe("rp-0");
    // Policies of other pools or namespaces do not compete.
    const elsewhere = aged(2, "rp-other", "2020-01-01T00:00:00Z");
    elsewhere.metadata.namespace = "team";
    expect(winningPolicy(pool, [elsewhere, testPolicy({}, "x", "other-pool"), older])?.rp).toBe(older);
  });

  it("Ready only while the router config has the pool: no published plan, or the pool going, is PoolNotServed", () => {
    const rp = testPolicy();
    const failed = testPool();
    failed.status = {
      conditions: [
        { type: "Ready", status: "False", reason: "PlacementFailed", message: "m", lastTransitionTime: "t" },
      ],
    };
    const none = policyOutcome(rp, failed, [rp], undefined);
    expect(none).toMatchObject({ ok: false, reason: "PoolNotServed" });
    if (!none.ok)
      expect(none.message).toBe(
        "ExpertPool mix has no published placement plan in ConfigMap mix-placement (its Ready condition: PlacementFailed); the router serves the pool once it has one",
      );
    const going = testPool();
    going.metadata.deletionTimestamp = "2026-01-02T00:00:00Z";
    expect(policyOutcome(rp, going, [rp], plan)).toMatchObject({ ok: false, reason: "PoolNotServed" });
    expect(whyNotServed(going, plan)).toBe("ExpertPool mix is being deleted");
    expect(policyOutcome(rp, pool, [rp], plan)).toMatchObject({ ok: true });
  });
});
