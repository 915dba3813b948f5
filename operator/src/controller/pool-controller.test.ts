// The ExpertPool reconciler over in-memory caches and a recording client: what it writes on the first pass,
// that a second pass over what the server returned writes nothing, and what a spec change rewrites.
import { describe, expect, it } from "vitest";
import type { ExpertPool } from "../api/v1alpha1.js";
import type { Informer } from "../runtime/informer.js";
import type { Kube } from "../runtime/kube.js";
import { RecentWrites } from "../runtime/recent.js";
import { testPool } from "./fixtures.js";
import { type PoolCaches, PoolReconciler } from "./pool-controller.js";

type Obj = {
  metadata?: { name?: string; namespace?: string; resourceVersion?: string; labels?: Record<string, string> };
};

class FakeCache<T extends Obj> {
  objs = new Map<string, T>();
  put(o: T) {
    this.objs.set(`${o.metadata?.namespace}/${o.metadata?.name}`, structuredClone(o));
  }
  get(ns: string | undefined, name: string) {
    return this.objs.get(`${ns}/${name}`);
  }
  list(ns?: string) {
    return [...this.objs.values()].filter((o) => !ns || o.metadata?.namespace === ns);
  }
}

function harness(pool: ExpertPool) {
  let rv = 100;
  const caches = {
    pools: new FakeCache<ExpertPool>(),
    statefulSets: new FakeCache<Obj>(),
    services: new FakeCache<Obj>(),
    configMaps: new FakeCache<Obj>(),
    pods: new FakeCache<Obj>(),
  };
  caches.pools.put(pool);
  const applies: string[] = [];
  const events: string[] = [];
  // The "server": an apply merges into the stored object (server defaults stand in as an extra field) and the
  // watch delivers it to the cache.
  const kube = {
    apply: async (path: string, body: Obj & { status?: unknown }) => {
      applies.push(path);
      const name = body.metadata?.name as string;
      const ns = body.metadata?.namespace as string;
      const meta = { ...body.metadata, resourceVersion: String(++rv) };
      if (path.endsWith("/status")) {
        const p = { ...(caches.pools.get(ns, name) as ExpertPool), status: body.status } as ExpertPool;
        p.metadata = { ...p.metadata, resourceVersion: meta.resourceVersion };
        caches.pools.put(p);
        return p;
      }
      const cache = path.includes("statefulsets")
        ? caches.statefulSets
        : path.includes("services")
          ? caches.services
          : caches.configMaps;
      const stored = { ...body, metadata: meta, serverDefault: "x" } as Obj;
      cache.put(stored);
      return stored;
    },
  } as unknown as Kube;
  const rec = new PoolReconciler({
    kube,
    caches: caches as unknown as PoolCaches & Record<string, Informer<never>>,
    recent: new RecentWrites(),
    events: {
      emit: async (_o: unknown, type: string, reason: string) => void events.push(`${type} ${reason}`),
    } as never,
    log: () => {},
    now: () => "2026-01-01T00:00:00Z",
  });
  return { caches, applies, events, rec };
}

describe("PoolReconciler", () => {
  it("first pass applies the three children and status; a second pass over the result writes nothing", async () => {
    const h = harness(testPool({ replicas: 2 }));
    await h.rec.reconcile("ns/mix");
    expect(h.applies.sort()).toEqual([
      "/api/v1/namespaces/ns/configmaps/mix-placement",
      "/api/v1/namespaces/ns/services/mix-workers",
      "/apis/apps/v1/namespaces/ns/statefulsets/mix",
      "/apis/switchyard.dev/v1alpha1/namespaces/ns/expertpools/mix/status",
    ]);
    const status = h.caches.pools.get("ns", "mix")?.status;
    expect(status?.conditions?.find((c) => c.type === "Progressing")?.reason).toBe("ScalingUp"); // no pods yet
    h.applies.length = 0;
    await h.rec.reconcile("ns/mix");
    await h.rec.reconcile("ns/mix");
    expect(h.applies).toEqual([]);
  });

  it("a replica change rewrites the StatefulSet, the plan (new version) and status, not the Service", async () => {
    const h = harness(testPool({ replicas: 2 }));
    await h.rec.reconcile("ns/mix");
    h.applies.length = 0;
    const p = h.caches.pools.get("ns", "mix") as ExpertPool;
    h.caches.pools.put({ ...p, metadata: { ...p.metadata, generation: 2 }, spec: { ...p.spec, replicas: 3 } });
    await h.rec.reconcile("ns/mix");
    expect(h.applies.sort()).toEqual([
      "/api/v1/namespaces/ns/configmaps/mix-placement",
      "/apis/apps/v1/namespaces/ns/statefulsets/mix",
      "/apis/switchyard.dev/v1alpha1/namespaces/ns/expertpools/mix/status",
    ]);
    const plan = JSON.parse(
      (h.caches.configMaps.get("ns", "mix-placement") as { data: Record<string, string> }).data["plan.json"],
    );
    expect(plan.version).toBe(2);
    expect(plan.workers).toEqual(["mix-0", "mix-1", "mix-2"]);
    expect(h.events).toContain("Normal PlanPublished");
  });

  it("a pool that is gone or being deleted gets no writes", async () => {
    const h = harness(testPool());
    await h.rec.reconcile("ns/other");
    const p = h.caches.pools.get("ns", "mix") as ExpertPool;
    h.caches.pools.put({ ...p, metadata: { ...p.metadata, deletionTimestamp: "2026-01-01T00:00:00Z" } });
    await h.rec.reconcile("ns/mix");
    expect(h.applies).toEqual([]);
  });
});
