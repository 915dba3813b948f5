// The RoutingPolicy reconciler over in-memory caches and a recording client: a policy is Ready only when the
// router config uses it, and says why not otherwise (another policy wins, the pool has no plan).
import { gunzipSync } from "node:zlib";
import { describe, expect, it } from "vitest";
import type { ExpertPool, RoutingPolicy } from "../api/v1alpha1.js";
import type { EventRecorder } from "../runtime/events.js";
import type { Informer } from "../runtime/informer.js";
import { type Kube, KubeError } from "../runtime/kube.js";
import { RecentWrites } from "../runtime/recent.js";
import { desiredPlan } from "./desired.js";
import { testPolicy, testPool } from "./fixtures.js";
import {
  type PolicyDeps,
  PolicyReconciler,
  policyKeysForPool,
  RouterConfigFit,
  RouterConfigReconciler,
} from "./policy-controller.js";
import { type ConfigLimits, ROUTER_CONFIG_GZ_KEY, ROUTER_CONFIG_KEY } from "./router-config-fit.js";

type Obj = { metadata?: { name?: string; namespace?: string; resourceVersion?: string } };

class FakeCache<T extends Obj> {
  objs = new Map<string, T>();
  put(o: T) {
    this.objs.set(`${o.metadata?.namespace}/${o.metadata?.name}`, structuredClone(o));
  }
  del(ns: string, name: string) {
    this.objs.delete(`${ns}/${name}`);
  }
  get(ns: string | undefined, name: string) {
    return this.objs.get(`${ns}/${name}`);
  }
  list(ns?: string) {
    return [...this.objs.values()].filter((o) => !ns || o.metadata?.namespace === ns);
  }
}

/**
 * `synced`: the router config fitted once already (false: a manager that has just taken the lead). `elsewhere`: the
 * router ConfigMap lives in namespace "release", outside the watched "ns", in a cache of its own (its writes land
 * there); `recent`: the manager's memory of its writes.
 */
function harness(configLimits?: ConfigLimits, synced = true, elsewhere = false, recent = new RecentWrites()) {
  let rv = 100;
  let writes = 0;
  const pools = new FakeCache<ExpertPool>();
  const policies = new FakeCache<RoutingPolicy>();
  const configMaps = new FakeCache<Obj & { data?: Record<string, string> }>();
  const routerConfigMaps = elsewhere ? new FakeCache<Obj & { data?: Record<string, string> }>() : configMaps;
  const events: string[] = [];
  const served: string[] = [];
  const logs: string[] = [];
  // An error for the router ConfigMap's writes (RBAC, admission), or undefined.
  const server = { refuseRouter: undefined as Error | undefined };
  const kube = {
    apply: async (path: string, body: Obj & { status?: unknown }) => {
      if (server.refuseRouter && path.endsWith("/configmaps/switchyard-router")) throw server.refuseRouter;
      writes++;
      const name = body.metadata?.name as string;
      const ns = body.metadata?.namespace as string;
      if (path.includes("routingpolicies")) {
        const p = { ...(policies.get(ns, name) as RoutingPolicy), status: body.status } as RoutingPolicy;
        p.metadata = { ...p.metadata, resourceVersion: String(++rv) };
        policies.put(p);
        return structuredClone(p);
      }
      const stored = { ...body, metadata: { ...body.metadata, resourceVersion: String(++rv) } };
      (ns === "release" ? routerConfigMaps : configMaps).put(stored);
      return stored;
    },
  } as unknown as Kube;
  const deps: PolicyDeps = {
    kube,
    pools: pools as unknown as Informer<ExpertPool>,
    policies: policies as unknown as Informer<RoutingPolicy>,
    configMaps: configMaps as unknown as PolicyDeps["configMaps"],
    ...(elsewhere ? { routerConfigMaps: routerConfigMaps as unknown as PolicyDeps["configMaps"] } : {}),
    recent,
    events: {
      emit: async (_o: unknown, type: string, reason: string) => void events.push(`${type} ${reason}`),
    } as unknown as EventRecorder,
    router: { namespace: elsewhere ? "release" : "ns", name: "switchyard-router" },
    fit: Object.assign(new RouterConfigFit(), { synced }),
    configLimits,
    onServedChanged: (keys) => served.push(...keys),
    log: (m) => logs.push(m),
    now: () => "2026-01-01T00:00:00Z",
  };
  const publishPlan = (pool: ExpertPool) => {
    const r = desiredPlan(pool, undefined);
    if (!r.ok) throw new Error(r.message);
    configMaps.put({ ...r.configMap, metadata: { ...r.configMap.metadata, resourceVersion: "1" } } as Obj);
  };
  const ready = (name: string) => policies.get("ns", name)?.status?.conditions?.find((c) => c.type === "Ready");
  const routerTopK = () =>
    JSON.parse(configMaps.get("ns", "switchyard-router")?.data?.["router.json"] ?? "{}").pools[0]?.policy.gating.topK;
  return {
    deps,
    pools,
    policies,
    configMaps,
    routerConfigMaps,
    writes: () => writes,
    events,
    served,
    logs,
    server,
    publishPlan,
    ready,
    routerTopK,
    policyRec: new PolicyReconciler(deps),
    routerRec: new RouterConfigReconciler(deps),
  };
}

const aged = (topK: number, name: string, created: string) => {
  const rp = testPolicy({ gating: { topK } }, name);
  rp.metadata.creationTimestamp = created;
  return rp;
};

describe("PolicyReconciler", () => {
  it("two policies for one pool: the one the router uses is Ready, the other Superseded; it wins once that goes", async () => {
    const h = harness();
    const pool = testPool();
    h.pools.put(pool);
    h.publishPlan(pool);
    h.policies.put(aged(1, "rp-old", "2026-01-01T00:00:00Z"));
    h.policies.put(aged(4, "rp-new", "2026-02-01T00:00:00Z"));
    await h.routerRec.reconcile();
    await h.policyRec.reconcile("ns/rp-old");
    await h.policyRec.reconcile("ns/rp-new");
    expect(h.routerTopK()).toBe(1);
    expect(h.ready("rp-old")).toMatchObject({ status: "True", reason: "Resolved" });
    expect(h.ready("rp-new")).toMatchObject({ status: "False", reason: "Superseded" });
    expect(h.ready("rp-new")?.message).toMatch(/^RoutingPolicy rp-old also targets ExpertPool mix/);
    expect(h.policies.get("ns", "rp-new")?.status?.effective).toBeUndefined();
    expect(h.events).toEqual(["Normal Resolved", "Warning Superseded"]);

    // Deleting the winner re-queues the policies of its pool (policyKeysForPool); the other one takes over once the
    // router config holds it (the router pass requeues them: the pool's entry changed).
    h.policies.del("ns", "rp-old");
    expect(policyKeysForPool(h.policies.list("ns"), "ns", "mix")).toEqual(["ns/rp-new"]);
    await h.policyRec.reconcile("ns/rp-new");
    expect(h.ready("rp-new")).toMatchObject({ status: "False", reason: "Pending" });
    h.served.length = 0;
    await h.routerRec.reconcile();
    expect(h.served).toEqual(["ns/mix"]);
    await h.policyRec.reconcile("ns/rp-new");
    expect(h.routerTopK()).toBe(4);
    expect(h.ready("rp-new")).toMatchObject({ status: "True", reason: "Resolved" });
  });

  it("a pool without a published plan is PoolNotServed until the plan appears", async () => {
    const h = harness();
    const pool = testPool();
    h.pools.put(pool);
    h.policies.put(testPolicy({}, "rp"));
    await h.policyRec.reconcile("ns/rp");
    expect(h.ready("rp")).toMatchObject({ status: "False", reason: "PoolNotServed" });
    expect(h.ready("rp")?.message).toMatch(
      /^ExpertPool mix has no published placement plan in ConfigMap mix-placement/,
    );
    // The placement ConfigMap's event re-queues the pool's policies; Ready once the router config has the pool.
    h.publishPlan(pool);
    await h.policyRec.reconcile("ns/rp");
    expect(h.ready("rp")).toMatchObject({ status: "False", reason: "Pending" });
    await h.routerRec.reconcile();
    await h.policyRec.reconcile("ns/rp");
    expect(h.ready("rp")).toMatchObject({ status: "True", reason: "Resolved" });
  });

  it("Ready follows what the router ConfigMap holds: Pending after an edit until the router pass writes it, False with the error while that write fails", async () => {
    const h = harness();
    const pool = testPool();
    h.pools.put(pool);
    h.publishPlan(pool);
    h.policies.put(testPolicy({ gating: { topK: 1 } }, "rp"));
    await h.routerRec.reconcile();
    await h.policyRec.reconcile("ns/rp");
    expect(h.ready("rp")).toMatchObject({ status: "True", reason: "Resolved" });
    expect(h.deps.fit?.written.get("ns/mix")).toEqual({ name: "rp", uid: "uid-rp", generation: 1 });

    // The user edits topK: generation 2, not in the ConfigMap yet (the router pass is debounced).
    const edit = (topK: number, generation: number) => {
      const rp = h.policies.get("ns", "rp") as RoutingPolicy;
      h.policies.put({
        ...rp,
        metadata: { ...rp.metadata, generation },
        spec: { ...rp.spec, gating: { ...rp.spec.gating, topK } },
      });
    };
    edit(2, 2);
    h.events.length = 0;
    await h.policyRec.reconcile("ns/rp");
    expect(h.ready("rp")).toMatchObject({ status: "False", reason: "Pending", observedGeneration: 2 });
    expect(h.ready("rp")?.message).toMatch(/^generation 2 is resolved and not yet in ConfigMap ns\/switchyard-router/);
    const degraded = () => h.policies.get("ns", "rp")?.status?.conditions?.find((c) => c.type === "Degraded");
    expect(degraded()).toMatchObject({ status: "False", reason: "AsExpected" });
    expect(h.events).toEqual([]); // routine: no Warning

    // The router pass cannot write (403: RBAC taken away): the policy says so, with the API server's words.
    h.server.refuseRouter = new KubeError(
      403,
      "Forbidden",
      'PATCH configmaps: 403 Forbidden: configmaps "switchyard-router" is forbidden',
    );
    h.served.length = 0;
    await expect(h.routerRec.reconcile()).rejects.toThrow(/403 Forbidden/);
    expect(h.served).toEqual(["ns/mix"]); // its policies requeued, once per new error
    await expect(h.routerRec.reconcile()).rejects.toThrow(/403 Forbidden/);
    expect(h.served).toEqual(["ns/mix"]);
    expect(h.routerTopK()).toBe(1);
    await h.policyRec.reconcile("ns/rp");
    expect(h.ready("rp")).toMatchObject({ status: "False", reason: "RouterConfigWriteFailed" });
    expect(h.ready("rp")?.message).toContain('configmaps "switchyard-router" is forbidden');
    expect(degraded()).toMatchObject({ status: "True", reason: "RouterConfigWriteFailed" });
    expect(h.events).toEqual(["Warning RouterConfigWriteFailed"]);

    // The write goes through: Ready again.
    h.server.refuseRouter = undefined;
    h.served.length = 0;
    await h.routerRec.reconcile();
    expect(h.routerTopK()).toBe(2);
    expect(h.served).toContain("ns/mix");
    await h.policyRec.reconcile("ns/rp");
    expect(h.ready("rp")).toMatchObject({ status: "True", reason: "Resolved" });
    expect(h.events).toEqual(["Warning RouterConfigWriteFailed", "Normal Resolved"]);

    // Deleted and made again under the same name: generation 1 again, another uid; not what the ConfigMap holds.
    const again = testPolicy({ gating: { topK: 1 } }, "rp");
    again.metadata.uid = "uid-rp-2";
    h.policies.del("ns", "rp");
    h.deps.recent.forget("RoutingPolicy", "ns", "rp"); // as the manager does on the delete event
    h.policies.put(again);
    await h.policyRec.reconcile("ns/rp");
    expect(h.ready("rp")).toMatchObject({ status: "False", reason: "Pending" });
  });

  it("a new leader whose first router pass keeps failing: its policies say so (not requeued forever unseen), and it is logged once", async () => {
    const h = harness(undefined, false);
    const pool = testPool();
    h.pools.put(pool);
    h.publishPlan(pool);
    h.policies.put(testPolicy({}, "rp"));
    expect(await h.policyRec.reconcile("ns/rp")).toEqual({ requeueAfterMs: 1000 });
    h.server.refuseRouter = new KubeError(
      404,
      "NotFound",
      'PATCH configmaps: 404 NotFound: namespaces "gone" not found',
    );
    await expect(h.routerRec.reconcile()).rejects.toThrow(/404/);
    expect(h.served).toEqual(["ns/mix"]);
    expect(await h.policyRec.reconcile("ns/rp")).toBeUndefined();
    expect(h.ready("rp")).toMatchObject({ status: "False", reason: "RouterConfigWriteFailed" });
    await h.policyRec.reconcile("ns/rp");
    expect(h.logs).toHaveLength(1);
    expect(h.logs[0]).toMatch(
      /has not been written since this operator took the lead \(.*namespaces "gone" not found\)/,
    );
    h.server.refuseRouter = undefined;
    await h.routerRec.reconcile();
    expect(h.deps.fit?.synced).toBe(true);
    await h.policyRec.reconcile("ns/rp");
    expect(h.ready("rp")).toMatchObject({ status: "True", reason: "Resolved" });
  });
});

describe("RouterConfigReconciler: the router ConfigMap outside the watched namespace", () => {
  it("is read from its own cache: no write once it holds what we wrote, one when it is gone", async () => {
    // ttl -1: our own write is forgotten at once, as 30 s after it (the cache alone says what is there)
    const h = harness(undefined, true, true, new RecentWrites(-1));
    const pool = testPool();
    h.pools.put(pool);
    h.publishPlan(pool);
    await h.routerRec.reconcile();
    expect(h.writes()).toBe(1);
    expect(h.routerConfigMaps.get("release", "switchyard-router")).toBeDefined();
    expect(h.configMaps.get("release", "switchyard-router")).toBeUndefined();
    await h.routerRec.reconcile();
    expect(h.writes()).toBe(1);
    h.routerConfigMaps.del("release", "switchyard-router");
    await h.routerRec.reconcile();
    expect(h.writes()).toBe(2);
    expect(h.routerConfigMaps.get("release", "switchyard-router")).toBeDefined();
  });
});

describe("RouterConfigReconciler: a config past what a ConfigMap holds", () => {
  // Pools of 24 layers x 64 experts on 8 workers, each created a day after the one before.
  const bigPool = (name: string, day: number) => {
    const p = testPool({ replicas: 8, model: { layers: 24, experts: 64 } }, name);
    p.metadata.creationTimestamp = `2026-01-${String(day).padStart(2, "0")}T00:00:00Z`;
    return p;
  };

  it("gzips it past the plain limit, and the router config decodes to every pool", async () => {
    const h = harness({ plainMaxBytes: 4096, maxBytes: 1 << 20 });
    for (const [i, n] of ["a", "b"].entries()) {
      const p = bigPool(n, i + 1);
      h.pools.put(p);
      h.publishPlan(p);
    }
    await h.routerRec.reconcile();
    const cm = h.configMaps.get("ns", "switchyard-router") as { data: Record<string, string> } & {
      binaryData?: Record<string, string>;
    };
    expect(JSON.parse(cm.data[ROUTER_CONFIG_KEY])).toEqual({ gzipFile: ROUTER_CONFIG_GZ_KEY });
    const doc = JSON.parse(gunzipSync(Buffer.from(cm.binaryData?.[ROUTER_CONFIG_GZ_KEY] ?? "", "base64")).toString());
    expect(doc.pools.map((p: { name: string }) => p.name)).toEqual(["a", "b"]);
    expect(h.deps.fit).toMatchObject({ compressed: true, served: 2 });
    expect(h.deps.fit?.leftOut.size).toBe(0);
  });

  it("leaves the newest pools out with a Warning on each, and their policies say RouterConfigFull until room is made", async () => {
    // Plans packed under random heat, 96 layers x 256 experts: irregular and large against the text every entry
    // shares (its policy), so gzip finds little in common between pools, as between real ones.
    let seed = 7;
    const rand = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return (seed / 2 ** 31) * 1000;
    };
    const pools = ["a", "b", "c"].map((n, i) => bigPool(n, i + 1));
    const plans = pools.map((p) => {
      p.spec.model.layers = 96;
      p.spec.model.experts = 256;
      const r = desiredPlan(
        p,
        undefined,
        Array.from({ length: 96 }, () => Array.from({ length: 256 }, rand)),
      );
      if (!r.ok) throw new Error(r.message);
      return r.configMap;
    });
    const setUp = (limits: ConfigLimits, n = 3) => {
      const h = harness(limits);
      for (const [i, p] of pools.slice(0, n).entries()) {
        h.pools.put(p);
        h.configMaps.put({ ...plans[i], metadata: { ...plans[i].metadata, resourceVersion: "1" } } as never);
      }
      h.policies.put(testPolicy({}, "rp-c", "c"));
      return h;
    };
    // What one pool takes gzipped (with the pointer), then room for two and a half of that.
    const one = setUp({ plainMaxBytes: 0, maxBytes: 1 << 20 }, 1);
    await one.routerRec.reconcile();
    const bytes = one.deps.fit?.bytes ?? 0;
    expect(bytes).toBeGreaterThan(8000);
    const h = setUp({ plainMaxBytes: 0, maxBytes: Math.floor(bytes * 2.5) });
    await h.routerRec.reconcile();
    expect(h.deps.fit?.served).toBe(2);
    expect([...(h.deps.fit?.leftOut.keys() ?? [])]).toEqual(["ns/c"]);
    expect(h.events).toEqual(["Warning RouterConfigFull"]);
    expect(h.served).toEqual(["ns/c"]);
    await h.policyRec.reconcile("ns/rp-c");
    expect(h.ready("rp-c")).toMatchObject({ status: "False", reason: "RouterConfigFull" });
    expect(h.ready("rp-c")?.message).toMatch(
      /^ExpertPool c is left out of the router config: ConfigMap ns\/switchyard-router holds at most/,
    );
    expect(h.events).toEqual(["Warning RouterConfigFull", "Warning RouterConfigFull"]); // the pool's, the policy's
    // Unchanged caches: nothing new to say.
    await h.routerRec.reconcile();
    expect(h.events).toHaveLength(2);
    expect(h.served).toEqual(["ns/c"]);

    // A new leader: its policy pass waits for its first router pass (else "c" would read Ready and flip back), and
    // that pass requeues every pool's policies.
    const fresh = setUp({ plainMaxBytes: 0, maxBytes: Math.floor(bytes * 2.5) });
    fresh.deps.fit!.synced = false;
    expect(await fresh.policyRec.reconcile("ns/rp-c")).toEqual({ requeueAfterMs: 1000 });
    expect(fresh.ready("rp-c")).toBeUndefined();
    await fresh.routerRec.reconcile();
    expect(fresh.served.sort()).toEqual(["ns/a", "ns/b", "ns/c"]);
    await fresh.policyRec.reconcile("ns/rp-c");
    expect(fresh.ready("rp-c")).toMatchObject({ status: "False", reason: "RouterConfigFull" });
    expect(fresh.events.filter((e) => e.includes("Resolved"))).toEqual([]);

    // "a" deleted: "c" fits, its policy is requeued and becomes Ready.
    h.pools.del("ns", "a");
    await h.routerRec.reconcile();
    expect(h.deps.fit?.leftOut.size).toBe(0);
    expect(h.served).toEqual(["ns/c", "ns/c"]);
    await h.policyRec.reconcile("ns/rp-c");
    expect(h.ready("rp-c")).toMatchObject({ status: "True", reason: "Resolved" });
  });
});

describe("policyKeysForPool", () => {
  it("lists the policies pointing at one pool of one namespace", () => {
    const other = testPolicy({}, "rp-team");
    other.metadata.namespace = "team";
    const keys = policyKeysForPool(
      [testPolicy({}, "a"), testPolicy({}, "b", "other-pool"), testPolicy({}, "c"), other],
      "ns",
      "mix",
    );
    expect(keys).toEqual(["ns/a", "ns/c"]);
  });
});
