// The ExpertPool reconciler over in-memory caches and a recording client: what it writes on the first pass,
// that a second pass over what the server returned writes nothing, and what a spec change rewrites.
import type { V1StatefulSet } from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import type { ExpertPool } from "../api/v1alpha1.js";
import type { Informer } from "../runtime/informer.js";
import { applyOwnership, type Kube, KubeError, type ManagedFieldsEntry } from "../runtime/kube.js";
import { RecentWrites } from "../runtime/recent.js";
import type { PlanOutcome } from "./desired.js";
import { testPool } from "./fixtures.js";
import { FIELD_MANAGER } from "./names.js";
import { fitsConfigMap, type PoolCaches, type PoolControllerDeps, PoolReconciler } from "./pool-controller.js";

type Obj = {
  metadata?: {
    name?: string;
    namespace?: string;
    uid?: string;
    resourceVersion?: string;
    labels?: Record<string, string>;
    managedFields?: ManagedFieldsEntry[];
  };
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

function harness(pool: ExpertPool, extra: Partial<PoolControllerDeps> = {}) {
  let rv = 100;
  const caches = {
    pools: new FakeCache<ExpertPool>(),
    statefulSets: new FakeCache<Obj>(),
    services: new FakeCache<Obj>(),
    configMaps: new FakeCache<Obj>(),
    pods: new FakeCache<Obj>(),
  };
  caches.pools.put(pool);
  // Every write's path (a create's as collection/name), and each request as "VERB path".
  const applies: string[] = [];
  const requests: string[] = [];
  const events: string[] = [];
  // What the "server" refuses (validation, admission): an error for that path, else undefined.
  const server = {
    refuse: (_path: string): Error | undefined => undefined,
    // The pools' watch trails the status writes: the cache keeps the pool as it was.
    statusLags: false,
    // Objects on the server that the caches do not see (not labelled as ours), by path.
    foreign: new Map<string, Obj>(),
    // The children's managedFields by path, which the caches drop (as the informer does): a create files the fields
    // under an Update entry of the manager, an apply under its Apply entry, leaving that Update entry as it is.
    managed: new Map<string, ManagedFieldsEntry[]>(),
    // The ownership move loses every race (three writes came between): the Update entry stays.
    settleRaced: false,
  };
  let uids = 0;
  const cacheOf = (path: string) =>
    path.includes("statefulsets")
      ? caches.statefulSets
      : path.includes("services")
        ? caches.services
        : caches.configMaps;
  const stored = (path: string): Obj | undefined => {
    const m = /namespaces\/([^/]+)\/[^/]+\/([^/]+)$/.exec(path);
    return server.foreign.get(path) ?? (m ? cacheOf(path).get(m[1], m[2]) : undefined);
  };
  // The "server": an apply merges into the stored object (server defaults stand in as an extra field) and the
  // watch delivers it to the cache.
  const write = (path: string, body: Obj & { status?: unknown }, operation: "Update" | "Apply" = "Apply") => {
    applies.push(path);
    const refused = server.refuse(path);
    if (refused) throw refused;
    const name = body.metadata?.name as string;
    const ns = body.metadata?.namespace as string;
    const meta = { ...body.metadata, resourceVersion: String(++rv) };
    if (path.endsWith("/status")) {
      const p = { ...(caches.pools.get(ns, name) as ExpertPool), status: body.status } as ExpertPool;
      p.metadata = { ...p.metadata, resourceVersion: meta.resourceVersion };
      if (!server.statusLags) caches.pools.put(p);
      return structuredClone(p);
    }
    const uid = (operation === "Apply" && stored(path)?.metadata?.uid) || `uid-child-${++uids}`;
    const obj = { ...body, metadata: { ...meta, uid }, serverDefault: "x" } as Obj;
    const mine = { manager: FIELD_MANAGER, operation, apiVersion: "v1", fieldsType: "FieldsV1", fieldsV1: {} };
    const kept = operation === "Apply" ? (server.managed.get(path) ?? []) : [];
    server.managed.set(path, [...kept.filter((m) => m.manager !== FIELD_MANAGER || m.operation !== operation), mine]);
    server.foreign.delete(path);
    cacheOf(path).put(obj);
    return withManaged(path, obj);
  };
  const withManaged = (path: string, o: Obj): Obj => {
    const out = structuredClone(o);
    out.metadata = { ...out.metadata, managedFields: structuredClone(server.managed.get(path) ?? []) };
    return out;
  };
  const kube = {
    apply: async (path: string, body: Obj & { status?: unknown }) => {
      requests.push(`APPLY ${path}`);
      return write(path, body);
    },
    createForApply: async (collection: string, body: Obj) => {
      const path = `${collection}/${body.metadata?.name}`;
      requests.push(`POST ${collection}`);
      if (stored(path))
        throw new KubeError(409, "AlreadyExists", `POST ${collection}: 409 AlreadyExists: ${body.metadata?.name}`);
      return write(path, body, "Update");
    },
    get: async (path: string) => {
      requests.push(`GET ${path}`);
      const o = stored(path);
      return o && withManaged(path, o);
    },
    // As Kube.settleFieldOwnership: a request only where there is an Update entry of the manager to fold.
    settleFieldOwnership: async (path: string, obj: Obj) => {
      const entries = applyOwnership(obj.metadata?.managedFields, FIELD_MANAGER);
      if (!entries) return obj;
      requests.push(`SETTLE ${path}`);
      if (server.settleRaced) return obj;
      server.managed.set(path, entries);
      return withManaged(path, obj);
    },
  } as unknown as Kube;
  const deps = (): PoolControllerDeps => ({
    kube,
    routerNamespace: "ns",
    caches: caches as unknown as PoolCaches & Record<string, Informer<never>>,
    recent: new RecentWrites(),
    events: {
      emit: async (_o: unknown, type: string, reason: string, message: string) =>
        void events.push(`${type} ${reason}`, message),
    } as never,
    log: () => {},
    now: () => "2026-01-01T00:00:00Z",
    ...extra,
  });
  const h = {
    caches,
    applies,
    requests,
    events,
    rec: new PoolReconciler(deps()),
    server,
    /** The operator started anew: nothing in memory, the same server and caches. */
    restart: () => {
      h.rec = new PoolReconciler(deps());
    },
  };
  return h;
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

  it("a setting removed from the spec is removed from the StatefulSet (containment alone never saw it gone)", async () => {
    const pool = testPool({ replicas: 2, worker: { nodeSelector: { gpu: "h200", zone: "a" } } });
    const h = harness(pool);
    await h.rec.reconcile("ns/mix");
    type Sts = V1StatefulSet & Obj;
    const selector = () => (h.caches.statefulSets.get("ns", "mix") as Sts).spec?.template.spec?.nodeSelector;
    expect(selector()).toEqual({ gpu: "h200", zone: "a" });
    for (const [next, want] of [
      [{ gpu: "h200" }, { gpu: "h200" }], // one key dropped
      [undefined, undefined], // the field dropped
    ] as const) {
      const edited = structuredClone(h.caches.pools.get("ns", "mix") as ExpertPool);
      edited.metadata.generation = (edited.metadata.generation ?? 1) + 1;
      if (next) edited.spec.worker.nodeSelector = { ...next };
      else delete edited.spec.worker.nodeSelector;
      h.caches.pools.put(edited);
      h.applies.length = 0;
      await h.rec.reconcile("ns/mix");
      expect(h.applies).toContain("/apis/apps/v1/namespaces/ns/statefulsets/mix");
      expect(selector()).toEqual(want);
    }
    // and then quiet again
    h.applies.length = 0;
    await h.rec.reconcile("ns/mix");
    expect(h.applies).toEqual([]);
  });

  it("the workers of a pool outside the router's namespace label their metrics namespace/name", async () => {
    const h = harness(testPool({ replicas: 2 }), { routerNamespace: "switchyard-system" });
    await h.rec.reconcile("ns/mix");
    const sts = h.caches.statefulSets.get("ns", "mix") as unknown as V1StatefulSet;
    const args = sts.spec?.template.spec?.containers[0].args ?? [];
    expect(args[args.indexOf("--metrics-pool") + 1]).toBe("ns/mix");
    expect(args[args.indexOf("--pool") + 1]).toBe("mix");
  });

  it("the operator's worker defaults (--worker-image-pull-secret, --worker-pod-label) reach the StatefulSet", async () => {
    const h = harness(testPool({ replicas: 2 }), {
      workerDefaults: { imagePullSecrets: ["regcred"], podLabels: { "cost-center": "inference" } },
    });
    await h.rec.reconcile("ns/mix");
    const tpl = (h.caches.statefulSets.get("ns", "mix") as unknown as V1StatefulSet).spec?.template;
    expect(tpl?.spec?.imagePullSecrets).toEqual([{ name: "regcred" }]);
    expect(tpl?.metadata?.labels?.["cost-center"]).toBe("inference");
    expect(tpl?.spec?.automountServiceAccountToken).toBe(false);
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

  it("a scale-up keeps every expert on the Ready workers until the new ones are Ready (make-before-break)", async () => {
    const h = harness(testPool({ replicas: 2, model: { layers: 1 } }));
    const podReady = (name: string, ready: boolean) =>
      h.caches.pods.put({
        metadata: { name, namespace: "ns", labels: { "switchyard.dev/pool": "mix" } },
        status: { conditions: [{ type: "Ready", status: ready ? "True" : "False" }] },
      } as Obj);
    await h.rec.reconcile("ns/mix");
    podReady("mix-0", true);
    podReady("mix-1", true);
    await h.rec.reconcile("ns/mix");
    const cm = () => (h.caches.configMaps.get("ns", "mix-placement") as { data: Record<string, string> }).data;
    const v1 = JSON.parse(cm()["plan.json"]);
    const p = h.caches.pools.get("ns", "mix") as ExpertPool;
    h.caches.pools.put({ ...p, metadata: { ...p.metadata, generation: 2 }, spec: { ...p.spec, replicas: 4 } });
    await h.rec.reconcile("ns/mix");
    const t = JSON.parse(cm()["plan.json"]);
    const target = JSON.parse(cm()["target-plan.json"]);
    expect(t).toMatchObject({ version: 2, workers: ["mix-0", "mix-1", "mix-2", "mix-3"] });
    expect(target.version).toBe(3);
    // mix-0 and mix-1 hold what they held; mix-2 and mix-3 what the target gives them
    const share = (plan: typeof t, w: number) =>
      plan.replicas[0].flatMap((hs: number[], e: number) => (hs.includes(w) ? [e] : []));
    for (const w of [0, 1]) expect(share(t, w)).toEqual(share(v1, w));
    for (const w of [2, 3]) expect(share(t, w)).toEqual(share(target, w));
    const i = h.events.indexOf("Normal PlanTransition");
    expect(h.events[i + 1]).toMatch(
      /^placement plan version 2: transitional, keeping 4 copies on ready workers until 2 new workers are Ready \(mix-2, mix-3\); then version 3, 4 expert copies moved now$/,
    );
    expect(h.events).not.toContain("Normal PlanPublished");
    let status = h.caches.pools.get("ns", "mix")?.status;
    expect(status?.placement).toMatchObject({ version: 2, workers: 4, slotsPerWorker: [4, 4, 2, 2], movedExperts: 4 });
    expect(status?.conditions?.find((c) => c.type === "Ready")).toMatchObject({
      status: "True",
      reason: "ExpertsServed",
    });
    // Passes while the new workers warm up (one of them Ready) leave the plan as it is (status counts the workers).
    podReady("mix-2", true);
    podReady("mix-3", false);
    h.applies.length = 0;
    await h.rec.reconcile("ns/mix");
    expect(h.applies).toEqual(["/apis/switchyard.dev/v1alpha1/namespaces/ns/expertpools/mix/status"]);
    // An operator restart meanwhile moves to the same target.
    h.restart();
    h.applies.length = 0;
    await h.rec.reconcile("ns/mix");
    expect(h.applies).toEqual([]);
    // Every new worker Ready: the target as announced, and the transition's key gone.
    podReady("mix-3", true);
    await h.rec.reconcile("ns/mix");
    expect(JSON.parse(cm()["plan.json"])).toEqual(target);
    expect(cm()["target-plan.json"]).toBeUndefined();
    expect(h.events).toContain("Normal PlanPublished");
    expect(h.events.at(-1)).toBe(
      "placement plan version 3: 0 expert copies moved, completing the transition from version 2",
    );
    status = h.caches.pools.get("ns", "mix")?.status;
    // the new workers loaded their copies with version 2; this one only drops the copies kept for the transition
    expect(status?.placement).toMatchObject({ version: 3, slotsPerWorker: [2, 2, 2, 2], movedExperts: 0 });
    h.applies.length = 0;
    await h.rec.reconcile("ns/mix");
    expect(h.applies).toEqual([]);
  });

  it("a refused plan ConfigMap holds the StatefulSet back: status keeps the published plan, no PlanPublished", async () => {
    const h = harness(testPool({ replicas: 2 }));
    await h.rec.reconcile("ns/mix");
    const p = h.caches.pools.get("ns", "mix") as ExpertPool;
    h.caches.pools.put({ ...p, metadata: { ...p.metadata, generation: 2 }, spec: { ...p.spec, replicas: 3 } });
    const message = 'configmaps "mix-placement" is forbidden: denied by a webhook';
    h.server.refuse = (path) =>
      path.includes("/configmaps/")
        ? new KubeError(403, "Forbidden", `PATCH ${path}: 403 Forbidden: ${message}`, { message })
        : undefined;
    for (let i = 0; i < 3; i++) await h.rec.reconcile("ns/mix").catch(() => undefined);
    const sts = h.caches.statefulSets.get("ns", "mix") as unknown as V1StatefulSet;
    expect(sts.spec?.replicas).toBe(2); // no third worker the published plan does not list
    const plan = JSON.parse(
      (h.caches.configMaps.get("ns", "mix-placement") as { data: Record<string, string> }).data["plan.json"],
    );
    const status = h.caches.pools.get("ns", "mix")?.status;
    expect(plan.version).toBe(1);
    expect(status?.placement).toMatchObject({ version: 1, workers: 2 });
    expect(status?.endpoints).toHaveLength(2);
    expect(status?.conditions?.find((c) => c.type === "Degraded")).toMatchObject({
      status: "True",
      reason: "ApplyFailed",
    });
    expect(h.events).not.toContain("Normal PlanPublished");
    // once the ConfigMap is taken, both follow
    h.server.refuse = () => undefined;
    await h.rec.reconcile("ns/mix");
    expect((h.caches.statefulSets.get("ns", "mix") as unknown as V1StatefulSet).spec?.replicas).toBe(3);
    expect(h.caches.pools.get("ns", "mix")?.status?.placement).toMatchObject({ version: 2, workers: 3 });
    expect(h.events).toContain("Normal PlanPublished");
  });

  it("a child the API server refuses is reported as Degraded in status, and the pass still fails (retry)", async () => {
    const h = harness(testPool({ replicas: 2 }));
    const message =
      'StatefulSet.apps "mix" is invalid: spec.template.spec.tolerations[0].operator: Invalid value: "Exists": value must be empty when `operator` is \'Exists\'';
    h.server.refuse = (path) =>
      path.includes("/statefulsets/")
        ? new KubeError(422, "Invalid", `PATCH ${path}: 422 Invalid: ${message}`, { message })
        : undefined;
    await expect(h.rec.reconcile("ns/mix")).rejects.toThrow(/422 Invalid/);
    const status = h.caches.pools.get("ns", "mix")?.status;
    const degraded = status?.conditions?.find((c) => c.type === "Degraded");
    expect(degraded).toMatchObject({ status: "True", reason: "ApplyFailed" });
    expect(degraded?.message).toContain("StatefulSet mix: ");
    expect(degraded?.message).toContain(message);
    expect(status?.conditions?.find((c) => c.type === "Ready")).toMatchObject({
      status: "False",
      reason: "ApplyFailed",
    });
    expect(status?.observedGeneration).toBe(1);
    expect(h.events).toContain("Warning ApplyFailed");
    // The retry finds the same refusal: no second status write, no second event.
    h.applies.length = 0;
    await expect(h.rec.reconcile("ns/mix")).rejects.toThrow(/422 Invalid/);
    expect(h.applies).toEqual(["/apis/apps/v1/namespaces/ns/statefulsets/mix"]);
    expect(h.events.filter((e) => e === "Warning ApplyFailed")).toHaveLength(1);
    // Once the server takes it (the spec was fixed), the pass succeeds and Degraded clears.
    h.server.refuse = () => undefined;
    await h.rec.reconcile("ns/mix");
    const after = h.caches.pools.get("ns", "mix")?.status?.conditions?.find((c) => c.type === "Degraded");
    expect(after).toMatchObject({ status: "False", reason: "AsExpected" });
  });

  it("a request too large (413) is a refusal like a 422: status says so and the StatefulSet waits", async () => {
    const h = harness(testPool({ replicas: 2 }));
    const message = "the request body is too large";
    h.server.refuse = (path) =>
      path.includes("/configmaps/")
        ? new KubeError(413, "RequestEntityTooLarge", `POST ${path}: 413 RequestEntityTooLarge: ${message}`, {
            message,
          })
        : undefined;
    await expect(h.rec.reconcile("ns/mix")).rejects.toThrow(/413 RequestEntityTooLarge/);
    const degraded = h.caches.pools.get("ns", "mix")?.status?.conditions?.find((c) => c.type === "Degraded");
    expect(degraded).toMatchObject({ status: "True", reason: "ApplyFailed" });
    expect(degraded?.message).toBe(`ConfigMap mix-placement: ${message}`);
    expect(h.caches.statefulSets.get("ns", "mix")).toBeUndefined();
  });

  it("a plan over a ConfigMap's 1 MiB is not sent: PlacementFailed with its size, and the retry plans nothing new", async () => {
    // 320 MoE layers x 1024 experts on 2 workers: ~1.3 MB of plan (the schema's CEL rule refuses such a spec)
    const h = harness(testPool({ replicas: 2, model: { layers: 320, experts: 1024 } }));
    await h.rec.reconcile("ns/mix");
    const degraded = h.caches.pools.get("ns", "mix")?.status?.conditions?.find((c) => c.type === "Degraded");
    expect(degraded).toMatchObject({ status: "True", reason: "PlacementFailed" });
    expect(degraded?.message).toMatch(
      /^the placement plan is \d{7} bytes \(1\.\d\d MiB\), over the 1\.00 MiB a ConfigMap holds: lower placement\.redundantExperts/,
    );
    expect(h.applies.filter((p) => !p.endsWith("/status"))).toEqual(["/api/v1/namespaces/ns/services/mix-workers"]);
    h.applies.length = 0;
    await h.rec.reconcile("ns/mix");
    expect(h.applies).toEqual([]);
  });

  it("fitsConfigMap passes a plan up to 1 MiB of data and fails one past it, naming its size", () => {
    const out = (bytes: number): PlanOutcome => ({
      ok: true,
      plan: {} as never,
      stats: {} as never,
      configMap: { data: { "plan.json": "x".repeat(bytes - "plan.json".length) } },
    });
    expect(fitsConfigMap(out(1 << 20)).ok).toBe(true);
    expect(fitsConfigMap(out((1 << 20) + 1))).toEqual({
      ok: false,
      message:
        "the placement plan is 1048577 bytes (1.00 MiB), over the 1.00 MiB a ConfigMap holds: lower placement.redundantExperts or replicas, or split the model's layers over several pools",
    });
    expect(fitsConfigMap({ ok: false, message: "no room" })).toEqual({ ok: false, message: "no room" });
  });

  it("a problem that turns both Degraded and Ready's reason is told once (one Warning, not one per condition)", async () => {
    const h = harness(testPool({ replicas: 2 }));
    await h.rec.reconcile("ns/mix"); // Ready=False (workers not ready yet), Degraded=False
    const p = h.caches.pools.get("ns", "mix") as ExpertPool;
    h.caches.pools.put({ ...p, metadata: { ...p.metadata, generation: 2 }, spec: { ...p.spec, replicas: 3 } });
    h.server.refuse = (path) =>
      path.includes("/statefulsets/")
        ? new KubeError(422, "Invalid", `PATCH ${path}: 422 Invalid: refused`, { message: "refused" })
        : undefined;
    await expect(h.rec.reconcile("ns/mix")).rejects.toThrow(/422 Invalid/);
    const conditions = h.caches.pools.get("ns", "mix")?.status?.conditions;
    expect(conditions?.find((c) => c.type === "Ready")).toMatchObject({ status: "False", reason: "ApplyFailed" });
    expect(h.events.filter((e) => e === "Warning ApplyFailed")).toHaveLength(1);
  });

  it("a pass before the cache has seen its last status write neither writes it again nor repeats its events", async () => {
    let now = "2026-01-01T00:00:00Z";
    const h = harness(testPool({ replicas: 2 }), { now: () => now });
    await h.rec.reconcile("ns/mix");
    // The workers come up; from here on the pools' watch trails our status writes.
    const sts = h.caches.statefulSets.get("ns", "mix") as Obj & Record<string, unknown>;
    const status = { replicas: 2, readyReplicas: 2, updatedReplicas: 2, observedGeneration: 1 };
    h.caches.statefulSets.put({
      ...sts,
      metadata: { ...sts.metadata, generation: 1, resourceVersion: "900" },
      status: { ...status, currentRevision: "a", updateRevision: "a" },
    } as Obj);
    for (const name of ["mix-0", "mix-1"])
      h.caches.pods.put({
        metadata: { name, namespace: "ns", labels: { "switchyard.dev/pool": "mix" } },
        status: { conditions: [{ type: "Ready", status: "True" }] },
      } as Obj);
    h.server.statusLags = true;
    now = "2026-01-01T00:00:10Z";
    h.applies.length = 0;
    await h.rec.reconcile("ns/mix");
    expect(h.applies).toEqual(["/apis/switchyard.dev/v1alpha1/namespaces/ns/expertpools/mix/status"]);
    expect(h.events).toContain("Normal Ready");
    h.applies.length = 0;
    h.events.length = 0;
    now = "2026-01-01T00:00:15Z"; // a pod event 5 s later, the pool in the cache still without that status
    await h.rec.reconcile("ns/mix");
    expect(h.applies).toEqual([]);
    expect(h.events).toEqual([]);
  });

  it("a pool that is gone gets no writes; one being deleted, only its status saying so (once), no child", async () => {
    const h = harness(testPool());
    await h.rec.reconcile("ns/other");
    expect(h.applies).toEqual([]);
    const p = h.caches.pools.get("ns", "mix") as ExpertPool;
    h.caches.pools.put({
      ...p,
      metadata: { ...p.metadata, deletionTimestamp: "2026-01-01T00:00:00Z", finalizers: ["example.com/hold"] } as never,
    });
    await h.rec.reconcile("ns/mix");
    expect(h.applies).toEqual(["/apis/switchyard.dev/v1alpha1/namespaces/ns/expertpools/mix/status"]);
    expect(h.caches.pools.get("ns", "mix")?.status?.conditions?.find((c) => c.type === "Ready")).toMatchObject({
      status: "False",
      reason: "Deleting",
      message: "ExpertPool is being deleted (waiting for finalizers: example.com/hold); the router no longer serves it",
    });
    await h.rec.reconcile("ns/mix");
    expect(h.applies).toHaveLength(1);
  });
});

// ---------- children whose names other objects hold ----------

describe("PoolReconciler and objects it does not control", () => {
  const CM = "/api/v1/namespaces/ns/configmaps/mix-placement";
  const SVC = "/api/v1/namespaces/ns/services/mix-workers";
  const STS = "/apis/apps/v1/namespaces/ns/statefulsets/mix";
  const degraded = (h: ReturnType<typeof harness>) =>
    h.caches.pools.get("ns", "mix")?.status?.conditions?.find((c) => c.type === "Degraded");

  it("leaves a same-named ConfigMap it did not make as it is, holds the workers back, and says so (ChildConflict)", async () => {
    const h = harness(testPool({ replicas: 2 }));
    const theirs = {
      apiVersion: "v1",
      kind: "ConfigMap",
      metadata: { name: "mix-placement", namespace: "ns" },
      data: { notes: "ours" },
    };
    h.server.foreign.set(CM, structuredClone(theirs));
    await expect(h.rec.reconcile("ns/mix")).rejects.toThrow(
      "ConfigMap mix-placement exists and is not owned by this ExpertPool (it has no controller)",
    );
    expect(h.server.foreign.get(CM)).toEqual(theirs); // no data of ours, no owner reference
    expect(h.requests).toContain(`GET ${CM}`);
    expect(h.requests.filter((r) => r.startsWith("APPLY") && !r.endsWith("/status"))).toEqual([]);
    expect(h.caches.statefulSets.get("ns", "mix")).toBeUndefined(); // no workers without a plan of ours
    expect(h.caches.services.get("ns", "mix-workers")).toBeDefined();
    expect(degraded(h)).toMatchObject({ status: "True", reason: "ChildConflict" });
    expect(degraded(h)?.message).toContain("ConfigMap mix-placement exists and is not owned by this ExpertPool");
    expect(h.events).toContain("Warning ChildConflict");
    // Once theirs is gone, the retry creates ours and the pool goes on.
    h.server.foreign.delete(CM);
    await h.rec.reconcile("ns/mix");
    expect(h.caches.configMaps.get("ns", "mix-placement")).toMatchObject({ data: { "plan.json": expect.any(String) } });
    expect(h.caches.statefulSets.get("ns", "mix")).toBeDefined();
    expect(degraded(h)).toMatchObject({ status: "False" });
  });

  it("never writes a cached child (labelled as ours) whose controller is someone else, nor reads its plan", async () => {
    const h = harness(testPool({ replicas: 2 }));
    await h.rec.reconcile("ns/mix");
    // The pool made anew under the same name (another uid) before the collector removed the old one's children.
    const p = h.caches.pools.get("ns", "mix") as ExpertPool;
    h.caches.pools.put({ ...p, metadata: { ...p.metadata, uid: "uid-new" }, status: undefined });
    h.applies.length = 0;
    await expect(h.rec.reconcile("ns/mix")).rejects.toThrow(
      /exists and is not owned by this ExpertPool \(its controller is ExpertPool mix\)/,
    );
    expect(h.applies).toEqual(["/apis/switchyard.dev/v1alpha1/namespaces/ns/expertpools/mix/status"]);
    expect(degraded(h)?.message).toMatch(/^ConfigMap mix-placement exists .*; Service mix-workers exists /);
    const status = h.caches.pools.get("ns", "mix")?.status;
    expect(status?.placement).toBeUndefined(); // the old pool's plan is not this one's
    expect(status?.replicas).toBe(0); // nor its StatefulSet
  });

  it("a Service name held by another object holds the StatefulSet back; the plan is still published", async () => {
    const h = harness(testPool({ replicas: 2 }));
    h.server.foreign.set(SVC, {
      metadata: {
        name: "mix-workers",
        namespace: "ns",
        ownerReferences: [{ kind: "Deployment", name: "vllm", uid: "u9", controller: true }],
      } as Obj["metadata"],
    });
    await expect(h.rec.reconcile("ns/mix")).rejects.toThrow(
      "Service mix-workers exists and is not owned by this ExpertPool (its controller is Deployment vllm)",
    );
    expect(h.caches.configMaps.get("ns", "mix-placement")).toBeDefined();
    expect(h.applies).not.toContain(STS);
    expect(h.applies).not.toContain(SVC);
  });

  it("takes up its own child that lost its labels (found by the create's 409, controlled by this pool)", async () => {
    const h = harness(testPool({ replicas: 2 }));
    // Its labels edited away: out of the label-selected cache, still on the server, still the pool's.
    const ours = { kind: "ExpertPool", name: "mix", uid: "uid-mix", controller: true };
    h.server.foreign.set(SVC, {
      metadata: { name: "mix-workers", namespace: "ns", ownerReferences: [ours] } as Obj["metadata"],
    });
    await h.rec.reconcile("ns/mix");
    expect(h.requests.filter((r) => r.includes("/services"))).toEqual([
      "POST /api/v1/namespaces/ns/services",
      `GET ${SVC}`,
      `APPLY ${SVC}`,
    ]);
    expect(h.caches.services.get("ns", "mix-workers")?.metadata?.labels).toMatchObject({
      "switchyard.dev/pool": "mix",
    });
    expect(degraded(h)).toMatchObject({ status: "False" });
  });
});

// ---------- field ownership of the children it creates ----------

describe("PoolReconciler and the field ownership of a created child", () => {
  const CMS = "/api/v1/namespaces/ns/configmaps";
  const SVCS = "/api/v1/namespaces/ns/services";
  const STSS = "/apis/apps/v1/namespaces/ns/statefulsets";
  const CM = `${CMS}/mix-placement`;
  const SVC = `${SVCS}/mix-workers`;
  const STS = `${STSS}/mix`;
  // The plan's and the StatefulSet's first apply after a create: read, ownership settled, applied.
  const READ_SETTLE_APPLY = [`GET ${CM}`, `SETTLE ${CM}`, `APPLY ${CM}`, `GET ${STS}`, `SETTLE ${STS}`, `APPLY ${STS}`];
  const children = (h: ReturnType<typeof harness>) => h.requests.filter((r) => !r.endsWith("/status"));
  const ours = (h: ReturnType<typeof harness>, path: string) =>
    (h.server.managed.get(path) ?? []).filter((m) => m.manager === FIELD_MANAGER).map((m) => m.operation);
  const scale = (h: ReturnType<typeof harness>, replicas: number) => {
    const p = h.caches.pools.get("ns", "mix") as ExpertPool;
    const generation = (p.metadata.generation ?? 1) + 1;
    h.caches.pools.put({ ...p, metadata: { ...p.metadata, generation }, spec: { ...p.spec, replicas } });
    h.requests.length = 0;
    return h.rec.reconcile("ns/mix");
  };

  it("a create is one write per child (the POST); the first apply to each after it moves the create's fields first", async () => {
    const h = harness(testPool({ replicas: 2 }));
    await h.rec.reconcile("ns/mix");
    const created = children(h);
    expect([...created].sort()).toEqual([`POST ${CMS}`, `POST ${SVCS}`, `POST ${STSS}`]);
    for (const path of [CM, SVC, STS]) expect(ours(h, path)).toEqual(["Update"]);
    await h.rec.reconcile("ns/mix"); // converged: nothing read, nothing written
    expect(children(h)).toEqual(created);

    // A scale rewrites the plan and the StatefulSet: each read (the cache has no managedFields) and settled, then
    // applied; the Service, not applied to, keeps its create's entry.
    await scale(h, 3);
    expect(children(h)).toEqual(READ_SETTLE_APPLY);
    expect(ours(h, CM)).toEqual(["Apply"]);
    expect(ours(h, STS)).toEqual(["Apply"]);
    expect(ours(h, SVC)).toEqual(["Update"]);
    // Settled once: the next apply is the apply alone.
    await scale(h, 4);
    expect(children(h)).toEqual([`APPLY ${CM}`, `APPLY ${STS}`]);
  });

  it("after a restart, the first apply to each child reads it and settles what a create left; nothing more", async () => {
    const h = harness(testPool({ replicas: 2 }));
    await h.rec.reconcile("ns/mix"); // created, then the operator stopped before any apply
    h.restart();
    await scale(h, 3);
    expect(children(h)).toEqual(READ_SETTLE_APPLY);
    // Children settled by an earlier process: one read each to see so, no patch.
    h.restart();
    await scale(h, 4);
    expect(children(h)).toEqual([`GET ${CM}`, `APPLY ${CM}`, `GET ${STS}`, `APPLY ${STS}`]);
    await scale(h, 5);
    expect(children(h)).toEqual([`APPLY ${CM}`, `APPLY ${STS}`]);
  });

  it("applies nothing to a child whose ownership move lost to other writes; the retry settles it, then applies", async () => {
    const h = harness(testPool({ replicas: 2 }));
    await h.rec.reconcile("ns/mix");
    h.server.settleRaced = true;
    await expect(scale(h, 3)).rejects.toThrow(
      "ConfigMap mix-placement: other writes raced the move of its field ownership three times; trying again",
    );
    expect(children(h).filter((r) => r.startsWith("APPLY"))).toEqual([]);
    expect(ours(h, CM)).toEqual(["Update"]);
    h.server.settleRaced = false;
    h.requests.length = 0;
    await h.rec.reconcile("ns/mix");
    expect(children(h)).toEqual(READ_SETTLE_APPLY);
    expect(ours(h, CM)).toEqual(["Apply"]);
  });

  it("a child that lost its labels, found by the create's 409, is settled from that read: no second one", async () => {
    const h = harness(testPool({ replicas: 2 }));
    const owner = { kind: "ExpertPool", name: "mix", uid: "uid-mix", controller: true };
    h.server.foreign.set(SVC, {
      metadata: { name: "mix-workers", namespace: "ns", uid: "u1", ownerReferences: [owner] } as Obj["metadata"],
    });
    h.server.managed.set(SVC, [{ manager: FIELD_MANAGER, operation: "Update", apiVersion: "v1", fieldsV1: {} }]);
    await h.rec.reconcile("ns/mix");
    expect(children(h).filter((r) => r.includes("/services"))).toEqual([
      `POST ${SVCS}`,
      `GET ${SVC}`,
      `SETTLE ${SVC}`,
      `APPLY ${SVC}`,
    ]);
    expect(ours(h, SVC)).toEqual(["Apply"]);
  });
});

// ---------- placement.rebalance: the heat comes from a fake Prometheus ----------

const HOT = [
  [1000, 100, 100, 100, 100, 100, 100, 100],
  [100, 100, 100, 800, 100, 100, 100, 100],
];

/** An instant-vector answer for load[layer][expert], plus `other` in the router's overflow series when given. */
function heatAnswer(load: number[][] | undefined, other = 0): string {
  const result = (load ?? []).flatMap((row, l) =>
    row.map((x, e) => ({ metric: { layer: String(l), expert: String(e) }, value: [0, String(x)] })),
  );
  if (other > 0) result.push({ metric: { layer: "0", expert: "other" }, value: [0, String(other)] });
  return JSON.stringify({ status: "success", data: { resultType: "vector", result } });
}

type PromReply = { status: number; body: string };

function fakePrometheus() {
  const state = {
    ms: 1_000_000,
    asked: [] as string[],
    reply: (): PromReply | Promise<PromReply> => ({ status: 200, body: heatAnswer(undefined) }),
    /** The pool keys the heat answers queued (deps.enqueue). */
    queued: [] as string[],
  };
  const fetch: PoolControllerDeps["fetch"] = async (url) => {
    state.asked.push(url);
    const r = await state.reply();
    return { ok: r.status < 300, status: r.status, text: async () => r.body };
  };
  return { state, deps: { fetch, clock: () => state.ms, enqueue: (k: string) => void state.queued.push(k) } };
}

/** Lets the answers already given reach the reconciler (they settle in microtasks). */
const flush = () => new Promise((r) => setImmediate(r));

/** A pass, then each pass a heat answer queued, as the controller's queue would run them: the last pass's result. */
async function pass(h: ReturnType<typeof harness>, prom: ReturnType<typeof fakePrometheus>) {
  let r = await h.rec.reconcile("ns/mix");
  for (;;) {
    await flush();
    if (prom.state.queued.length === 0) return r;
    prom.state.queued.length = 0;
    r = await h.rec.reconcile("ns/mix");
  }
}

const planOf = (h: ReturnType<typeof harness>) =>
  JSON.parse((h.caches.configMaps.get("ns", "mix-placement") as { data: Record<string, string> }).data["plan.json"]);

const rebalancing = () =>
  testPool({
    replicas: 4,
    model: { layers: 2 },
    placement: { redundantExperts: 4, rebalance: { prometheusUrl: "http://prom:9090/", intervalSeconds: 60 } },
  });

describe("PoolReconciler with placement.rebalance", () => {
  it("asks for the heat under the name the router serves the pool by: namespace/name outside its namespace", async () => {
    const prom = fakePrometheus();
    prom.state.reply = () => ({ status: 200, body: heatAnswer(HOT) });
    const h = harness(rebalancing(), { ...prom.deps, routerNamespace: "switchyard-system" });
    await pass(h, prom);
    expect(prom.state.asked).toEqual([
      `http://prom:9090/api/v1/query?query=${encodeURIComponent(
        'sum by (layer, expert) (increase(switchyard_router_expert_tokens_total{pool="ns/mix", namespace=~"switchyard-system|"}[10m]))',
      )}`,
    ]);
  });

  it("a pass never waits for Prometheus: the children come at once, and the answer queues the pass that uses it", async () => {
    const prom = fakePrometheus();
    let answer: (r: PromReply) => void = () => {};
    prom.state.reply = () => new Promise<PromReply>((r) => (answer = r)); // a Prometheus that answers when told
    const h = harness(rebalancing(), prom.deps);
    expect(await h.rec.reconcile("ns/mix")).toBeUndefined(); // no requeue: the answer will queue the pool
    expect(h.applies.sort()).toEqual([
      "/api/v1/namespaces/ns/configmaps/mix-placement",
      "/api/v1/namespaces/ns/services/mix-workers",
      "/apis/apps/v1/namespaces/ns/statefulsets/mix",
      "/apis/switchyard.dev/v1alpha1/namespaces/ns/expertpools/mix/status",
    ]);
    expect(planOf(h).version).toBe(1); // uniform meanwhile
    expect(h.caches.pools.get("ns", "mix")?.status?.placement?.rebalance?.loadSource).toBe("uniform");
    // Another pass while the query is out sends no second one.
    await h.rec.reconcile("ns/mix");
    expect(prom.state.asked).toHaveLength(1);
    expect(prom.state.queued).toEqual([]);
    answer({ status: 200, body: heatAnswer(HOT) });
    await flush();
    expect(prom.state.queued).toEqual(["ns/mix"]);
    expect(await pass(h, prom)).toEqual({ requeueAfterMs: 60_000 });
    expect(planOf(h).version).toBe(2);
    expect(planOf(h).replicas[0][0]).toEqual([0, 1, 2, 3]);
    expect(h.events).toContain("Normal PlanRebalanced");
  });

  it("with no queue to put the pool in, a pass while the query is out comes back after the query's timeout", async () => {
    const prom = fakePrometheus();
    prom.state.reply = () => new Promise<PromReply>(() => {});
    const { enqueue: _, ...deps } = prom.deps;
    const h = harness(rebalancing(), deps);
    expect(await h.rec.reconcile("ns/mix")).toEqual({ requeueAfterMs: 10_000 + 1000 }); // timeoutSeconds 10
    expect(h.caches.statefulSets.get("ns", "mix")).toBeDefined();
  });

  it("an answer for a pool deleted meanwhile is dropped: nothing stored, nothing queued", async () => {
    const prom = fakePrometheus();
    let answer: (r: PromReply) => void = () => {};
    prom.state.reply = () => new Promise<PromReply>((r) => (answer = r));
    const h = harness(rebalancing(), prom.deps);
    await h.rec.reconcile("ns/mix");
    h.caches.pools.objs.clear();
    await h.rec.reconcile("ns/mix");
    answer({ status: 200, body: heatAnswer(HOT) });
    await flush();
    expect(prom.state.queued).toEqual([]);
  });

  it("replans under the heat as soon as Prometheus answers, asks again after intervalSeconds; passes in between reuse it", async () => {
    const prom = fakePrometheus();
    prom.state.reply = () => ({ status: 200, body: heatAnswer(HOT) });
    const h = harness(rebalancing(), prom.deps);
    expect(await pass(h, prom)).toEqual({ requeueAfterMs: 60_000 });
    expect(prom.state.asked).toEqual([
      `http://prom:9090/api/v1/query?query=${encodeURIComponent(
        'sum by (layer, expert) (increase(switchyard_router_expert_tokens_total{pool="mix", namespace=~"ns|"}[10m]))',
      )}`,
    ]);
    const plan = planOf(h);
    expect(plan.version).toBe(2); // 1: uniform, at once; 2: under the heat, once it came
    expect(plan.replicas[0][0]).toEqual([0, 1, 2, 3]); // the hot expert of layer 0 on every worker
    expect(plan.replicas[1][3].length).toBeGreaterThan(1);
    const st = h.caches.pools.get("ns", "mix")?.status?.placement;
    expect(st?.rebalance).toMatchObject({
      loadSource: "prometheus",
      lastQueryTime: "2026-01-01T00:00:00Z",
      observedImbalance: expect.any(Number),
    });
    expect(st?.rebalance?.observedImbalance).toBeLessThan(1.1);

    // 20 s later: no query, nothing written; a spec edit rolls the workers but keeps the plan.
    prom.state.ms += 20_000;
    h.applies.length = 0;
    expect(await pass(h, prom)).toEqual({ requeueAfterMs: 40_000 });
    expect(h.applies).toEqual([]);
    const p = h.caches.pools.get("ns", "mix") as ExpertPool;
    h.caches.pools.put({
      ...p,
      metadata: { ...p.metadata, generation: 2 },
      spec: { ...p.spec, worker: { ...p.spec.worker, queueCapacity: 1024 } },
    });
    await pass(h, prom);
    expect(prom.state.asked).toHaveLength(1);
    expect(h.applies).not.toContain("/api/v1/namespaces/ns/configmaps/mix-placement");
    expect(planOf(h).version).toBe(2);

    // At the interval it asks again; the same heat moves nothing.
    prom.state.ms += 40_000;
    await pass(h, prom);
    expect(prom.state.asked).toHaveLength(2);
    expect(planOf(h).version).toBe(2);
  });

  it("starts uniform without traffic, then replans once heat appears (event PlanRebalanced)", async () => {
    const prom = fakePrometheus();
    const h = harness(rebalancing(), prom.deps);
    await pass(h, prom);
    expect(planOf(h).replicas[0][0]).toHaveLength(2); // uniform: the first four experts get the redundant slots
    expect(h.caches.pools.get("ns", "mix")?.status?.placement?.rebalance).toEqual({
      loadSource: "uniform",
      lastQueryTime: "2026-01-01T00:00:00Z",
      message:
        "no expert traffic for this pool in the last 10m. plan version 1 stays until there is heat to judge it by",
    });
    prom.state.reply = () => ({ status: 200, body: heatAnswer(HOT) });
    prom.state.ms += 60_000;
    await pass(h, prom);
    const plan = planOf(h);
    expect(plan.version).toBe(2);
    expect(plan.replicas[0][0]).toHaveLength(4);
    const i = h.events.indexOf("Normal PlanRebalanced");
    expect(i).toBeGreaterThanOrEqual(0);
    expect(h.events[i + 1]).toMatch(
      /^placement plan version 2 for the expert heat of the last 10m: imbalance 1\.\d{3} -> 1\.\d{3} \(\d+\.\d% lower\), \d+ expert copies moved$/,
    );
    expect(h.events).not.toContain("Normal PlanPublished");
  });

  it("a failing Prometheus keeps the plan, says why in status and once as an event, and never fails the pass", async () => {
    const prom = fakePrometheus();
    prom.state.reply = () => ({ status: 200, body: heatAnswer(HOT) });
    const h = harness(rebalancing(), prom.deps);
    await pass(h, prom);
    const before = planOf(h);
    prom.state.reply = () => ({ status: 503, body: "upstream down" });
    for (let k = 0; k < 2; k++) {
      prom.state.ms += 60_000;
      expect(await pass(h, prom)).toEqual({ requeueAfterMs: 60_000 });
    }
    expect(planOf(h)).toEqual(before);
    const rb = h.caches.pools.get("ns", "mix")?.status?.placement?.rebalance;
    expect(rb?.loadSource).toBe("prometheus"); // the last heat it had
    expect(rb?.message).toMatch(
      /^heat query failed \(http:\/\/prom:9090\/: HTTP 503, not a Prometheus API answer: upstream down\); using the heat from 2026-01-01T00:00:00Z\. plan version 2 /,
    );
    expect(h.events.filter((e) => e === "Warning HeatQueryFailed")).toHaveLength(1);
    const ready = h.caches.pools.get("ns", "mix")?.status?.conditions?.find((c) => c.type === "Degraded");
    expect(ready?.status).toBe("False");
  });

  it('does not judge a plan on heat the router folded into expert="other" (its series cap): the plan stays', async () => {
    const prom = fakePrometheus();
    prom.state.reply = () => ({ status: 200, body: heatAnswer(HOT, 5000) });
    const h = harness(rebalancing(), prom.deps);
    await pass(h, prom);
    expect(planOf(h).version).toBe(1);
    const rb = h.caches.pools.get("ns", "mix")?.status?.placement?.rebalance;
    expect(rb?.message).toMatch(/heat incomplete: the router folded 5000 of 8200 assignments into expert="other"/);
    expect(h.events.filter((e) => e === "Warning HeatQueryFailed")).toHaveLength(1);
    // still folded, more of it: the same failure, no second warning
    prom.state.reply = () => ({ status: 200, body: heatAnswer(HOT, 7000) });
    prom.state.ms += 60_000;
    await pass(h, prom);
    expect(h.caches.pools.get("ns", "mix")?.status?.placement?.rebalance?.message).toMatch(/folded 7000 of/);
    expect(h.events.filter((e) => e === "Warning HeatQueryFailed")).toHaveLength(1);
    // complete heat next time: the plan follows it
    prom.state.reply = () => ({ status: 200, body: heatAnswer(HOT) });
    prom.state.ms += 60_000;
    await pass(h, prom);
    expect(planOf(h).version).toBe(2);
  });

  it("a change of the shared expert's slices asks for heat of the new width at once, and plans", async () => {
    // DeepSeek-V3 with 2 shared experts on the workers: 2 slice columns, then 3 after sharedIntermediateSize grows.
    let slices = 2;
    const prom = fakePrometheus();
    prom.state.reply = () => ({
      status: 200,
      body: heatAnswer(HOT.map((row) => [...row, ...Array<number>(slices).fill(1000)])),
    });
    const pool = testPool({
      replicas: 4,
      model: { architecture: "deepseek-v3", layers: 2, sharedExperts: 2 },
      placement: { redundantExperts: 4, rebalance: { prometheusUrl: "http://prom:9090/", intervalSeconds: 60 } },
    });
    const h = harness(pool, prom.deps);
    await pass(h, prom);
    expect(planOf(h).replicas[0]).toHaveLength(8 + 2);
    const p = h.caches.pools.get("ns", "mix") as ExpertPool;
    h.caches.pools.put({
      ...p,
      metadata: { ...p.metadata, generation: 2 },
      spec: { ...p.spec, model: { ...p.spec.model, sharedIntermediateSize: 3 * p.spec.model.intermediateSize } },
    });
    slices = 3;
    prom.state.ms += 10_000; // well inside intervalSeconds: only a new key asks again
    await pass(h, prom);
    expect(prom.state.asked).toHaveLength(2);
    expect(planOf(h).replicas[0]).toHaveLength(8 + 3);
    const status = h.caches.pools.get("ns", "mix")?.status;
    expect(status?.placement?.rebalance?.loadSource).toBe("prometheus"); // judged under the heat of the new width
    expect(status?.conditions?.find((c) => c.type === "Degraded")).toMatchObject({ status: "False" });
  });

  it("turning rebalance off forgets the heat and plans as before (no query, no requeue)", async () => {
    const prom = fakePrometheus();
    prom.state.reply = () => ({ status: 200, body: heatAnswer(HOT) });
    const h = harness(rebalancing(), prom.deps);
    await pass(h, prom);
    const p = h.caches.pools.get("ns", "mix") as ExpertPool;
    h.caches.pools.put({
      ...p,
      metadata: { ...p.metadata, generation: 2 },
      spec: { ...p.spec, placement: { ...p.spec.placement, rebalance: undefined } },
    });
    expect(await pass(h, prom)).toBeUndefined();
    expect(prom.state.asked).toHaveLength(1);
    expect(planOf(h).version).toBe(3); // back to the uniform plan
    expect(planOf(h).replicas[0][0]).toHaveLength(2);
    expect(h.caches.pools.get("ns", "mix")?.status?.placement?.rebalance).toBeUndefined();
  });
});

describe("PoolReconciler in a namespace being deleted", () => {
  it("a 403 'being terminated' is no refusal: no Degraded/ApplyFailed, no Warning event, no retry", async () => {
    const h = harness(testPool());
    const said =
      'configmaps "mix-placement" is forbidden: unable to create new content in namespace ns because it is being terminated';
    h.server.refuse = (path) =>
      new KubeError(403, "Forbidden", `POST ${path}: 403 Forbidden: ${said}`, {
        message: said,
        details: { causes: [{ type: "NamespaceTerminating", field: "metadata.namespace" }] },
      });
    expect(await h.rec.reconcile("ns/mix")).toBeUndefined();
    expect(h.applies.filter((p) => p.endsWith("/status"))).toEqual([]);
    expect(h.events).toEqual([]);
    expect(h.caches.pools.get("ns", "mix")?.status).toBeUndefined();
  });
});
