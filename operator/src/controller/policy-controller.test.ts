// The RoutingPolicy reconciler over in-memory caches and a recording client: a policy is Ready only when the
// router config uses it, and says why not otherwise (another policy wins, the pool has no plan).
import { describe, expect, it } from "vitest";
import type { ExpertPool, RoutingPolicy } from "../api/v1alpha1.js";
import type { EventRecorder } from "../runtime/events.js";
import type { Informer } from "../runtime/informer.js";
import type { Kube } from "../runtime/kube.js";
import { RecentWrites } from "../runtime/recent.js";
import { desiredPlan } from "./desired.js";
import { testPolicy, testPool } from "./fixtures.js";
import { type PolicyDeps, PolicyReconciler, policyKeysForPool, RouterConfigReconciler } from "./policy-controller.js";

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

function harness() {
  let rv = 100;
  const pools = new FakeCache<ExpertPool>();
  const policies = new FakeCache<RoutingPolicy>();
  const configMaps = new FakeCache<Obj & { data?: Record<string, string> }>();
  const events: string[] = [];
  const kube = {
    apply: async (path: string, body: Obj & { status?: unknown }) => {
      const name = body.metadata?.name as string;
      const ns = body.metadata?.namespace as string;
      if (path.includes("routingpolicies")) {
        const p = { ...(policies.get(ns, name) as RoutingPolicy), status: body.status } as RoutingPolicy;
        p.metadata = { ...p.metadata, resourceVersion: String(++rv) };
        policies.put(p);
        return structuredClone(p);
      }
      const stored = { ...body, metadata: { ...body.metadata, resourceVersion: String(++rv) } };
      configMaps.put(stored);
      return stored;
    },
  } as unknown as Kube;
  const deps: PolicyDeps = {
    kube,
    pools: pools as unknown as Informer<ExpertPool>,
    policies: policies as unknown as Informer<RoutingPolicy>,
    configMaps: configMaps as unknown as PolicyDeps["configMaps"],
    recent: new RecentWrites(),
    events: {
      emit: async (_o: unknown, type: string, reason: string) => void events.push(`${type} ${reason}`),
    } as unknown as EventRecorder,
    router: { namespace: "ns", name: "switchyard-router" },
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
    pools,
    policies,
    configMaps,
    events,
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
    await h.policyRec.reconcile("ns/rp-old");
    await h.policyRec.reconcile("ns/rp-new");
    await h.routerRec.reconcile();
    expect(h.routerTopK()).toBe(1);
    expect(h.ready("rp-old")).toMatchObject({ status: "True", reason: "Resolved" });
    expect(h.ready("rp-new")).toMatchObject({ status: "False", reason: "Superseded" });
    expect(h.ready("rp-new")?.message).toMatch(/^RoutingPolicy rp-old also targets ExpertPool mix/);
    expect(h.policies.get("ns", "rp-new")?.status?.effective).toBeUndefined();
    expect(h.events).toEqual(["Normal Resolved", "Warning Superseded"]);

    // Deleting the winner re-queues the policies of its pool (policyKeysForPool); the other one takes over.
    h.policies.del("ns", "rp-old");
    expect(policyKeysForPool(h.policies.list("ns"), "ns", "mix")).toEqual(["ns/rp-new"]);
    await h.policyRec.reconcile("ns/rp-new");
    await h.routerRec.reconcile();
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
    // The placement ConfigMap's event re-queues the pool's policies.
    h.publishPlan(pool);
    await h.policyRec.reconcile("ns/rp");
    expect(h.ready("rp")).toMatchObject({ status: "True", reason: "Resolved" });
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
