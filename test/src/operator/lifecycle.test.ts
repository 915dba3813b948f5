// Lifecycle review fixes against a real control plane (etcd, kube-apiserver, kube-controller-manager, scheduler,
// kwok): pods refused at admission make the pool Degraded with the API server's words; Ready means "can serve" and
// holds through a rollout that keeps every expert served; a deleted pool a finalizer holds says so; a RoutingPolicy is
// Ready only once the router ConfigMap holds its generation, and says why not while that write fails; the operator's
// memory of its own writes forgets objects that are deleted.
import type { Manager } from "@switchyard/operator";
import { describeWithCluster } from "@switchyard/test/cluster/vitest";
import { afterAll, beforeAll, expect, it, vi } from "vitest";
import { waitUntil } from "../cluster/index.js";
import {
  adminClient,
  cond,
  createNamespace,
  getPool,
  type Obj,
  pool,
  RP,
  routerConfigOf,
  startOperator,
  waitReady,
  XP,
} from "./helpers.js";

vi.setConfig({ testTimeout: 180_000 });

const ROUTER_CM = "/api/v1/namespaces/default/configmaps/switchyard-router";

interface Ev {
  type: string;
  reason: string;
  message: string;
  involvedObject: { kind: string; name: string };
}

describeWithCluster("operator lifecycle on a real cluster", { nodes: 2, gpusPerNode: 8 }, (cluster) => {
  let op: Manager | undefined;
  const admin = () => adminClient(cluster());
  const poolEvents = async (ns: string, name: string) =>
    (await admin().list<Ev>(`/api/v1/namespaces/${ns}/events`)).items.filter(
      (e) => e.involvedObject.kind === "ExpertPool" && e.involvedObject.name === name,
    );

  beforeAll(async () => {
    const c = cluster();
    await c.kubectl(["apply", "-f", "crds/"]);
    await c.kubectl([
      "wait",
      "--for=condition=Established",
      "crd/expertpools.switchyard.dev",
      "crd/routingpolicies.switchyard.dev",
    ]);
    // A router pass a few seconds after a change, as in the chart (5 s): long enough to see a policy wait for it.
    op = startOperator(c, { routerDebounceMs: 3000 });
    await op.start();
  }, 60_000);

  afterAll(async () => {
    await op?.stop();
  });

  it("pods refused at admission (Pod Security): Degraded PodCreateFailed with the API server's message, until allowed", async () => {
    const k = admin();
    await k.create("/api/v1/namespaces", {
      apiVersion: "v1",
      kind: "Namespace",
      metadata: { name: "psa", labels: { "pod-security.kubernetes.io/enforce": "baseline" } },
    });
    // The StatefulSet is admitted (Pod Security only warns on workloads); its pods, with a hostPath volume, are not.
    await k.create(XP("psa"), pool("hp", "psa", { replicas: 1 }));
    let last: Obj | undefined;
    await waitUntil(
      async () => {
        last = await getPool(k, "psa", "hp");
        return cond(last, "Degraded")?.reason === "PodCreateFailed";
      },
      { timeoutMs: 60_000, what: `hp Degraded/PodCreateFailed (${JSON.stringify(last?.status?.conditions)})` },
    );
    expect(cond(last, "Degraded")).toMatchObject({ status: "True" });
    expect(cond(last, "Degraded")?.message).toMatch(/violates PodSecurity "baseline:latest": .*hostPath volumes/);
    expect(cond(last, "Ready")).toMatchObject({ status: "False", reason: "PodCreateFailed" });
    expect(cond(last, "Progressing")).toMatchObject({ status: "True", reason: "ScalingUp" });
    await waitUntil(async () => (await poolEvents("psa", "hp")).some((e) => e.reason === "PodCreateFailed"), {
      timeoutMs: 10_000,
      what: "a PodCreateFailed event on the pool",
    });
    expect((await poolEvents("psa", "hp")).find((e) => e.reason === "PodCreateFailed")?.type).toBe("Warning");

    // The namespace lets them in: the StatefulSet controller's retry creates the pod, and the pool heals.
    await cluster().kubectl(["label", "ns", "psa", "pod-security.kubernetes.io/enforce=privileged", "--overwrite"]);
    // The StatefulSet controller retries a failed create with a growing backoff; a change to the StatefulSet queues it
    // at once (an annotation of another field manager, which the operator's applies leave alone).
    await cluster().kubectl(["annotate", "-n", "psa", "statefulset/hp", "switchyard.dev/test-nudge=1"]);
    const healed = await waitReady(k, "psa", "hp", 120_000);
    expect(cond(healed, "Degraded")).toMatchObject({ status: "False", reason: "AsExpected" });
  });

  it("Ready holds through a rolling update while every expert keeps a ready copy; Progressing carries it, in Normal events", async () => {
    const k = admin();
    await createNamespace(k, "roll");
    // Every expert on both workers (8 experts + 8 redundant slots per layer on 2 workers).
    await k.create(XP("roll"), pool("r", "roll", { replicas: 2, placement: { redundantExperts: 8 } }));
    const before = await waitReady(k, "roll", "r");
    const readySince = (cond(before, "Ready") as { lastTransitionTime?: string } | undefined)?.lastTransitionTime;
    const oldPods = new Map(
      (await k.list<Obj>("/api/v1/namespaces/roll/pods", { labelSelector: "switchyard.dev/pool=r" })).items.map((p) => [
        p.metadata.name,
        p.metadata.uid,
      ]),
    );
    const seen = new Set<string>();
    await cluster().kubectl([
      ...["patch", "-n", "roll", "xp", "r", "--type=merge", "-p"],
      '{"spec":{"worker":{"image":"switchyard/expert-worker:0.2.0"}}}',
    ]);
    await waitUntil(
      async () => {
        const p = await getPool(k, "roll", "r");
        const r = cond(p, "Ready");
        const pr = cond(p, "Progressing");
        seen.add(`Ready=${r?.status} Progressing=${pr?.status}/${pr?.reason}`);
        if (p?.status?.observedGeneration !== p?.metadata.generation || pr?.status !== "False") return false;
        const pods = (await k.list<Obj>("/api/v1/namespaces/roll/pods", { labelSelector: "switchyard.dev/pool=r" }))
          .items;
        return pods.length === 2 && pods.every((x) => x.metadata.uid !== oldPods.get(x.metadata.name));
      },
      { timeoutMs: 120_000, intervalMs: 100, what: "the workers rolled to the new image" },
    );
    const after = await getPool(k, "roll", "r");
    expect([...seen].filter((s) => s.startsWith("Ready=False"))).toEqual([]);
    // Ready never flipped: its lastTransitionTime is where it was before the roll.
    expect(cond(after, "Ready")).toMatchObject({
      status: "True",
      reason: "WorkersReady",
      lastTransitionTime: readySince,
    });
    const events = await poolEvents("roll", "r");
    expect(events.filter((e) => e.type === "Warning")).toEqual([]);
    expect(events.map((e) => e.reason)).toContain("RolloutComplete");
  });

  it("a deleted pool a finalizer holds says it is being deleted (Ready False Deleting) and leaves the router config", async () => {
    const k = admin();
    await createNamespace(k, "held");
    const p = pool("h", "held", { replicas: 1 });
    (p.metadata as { finalizers?: string[] }).finalizers = ["example.com/hold"];
    await k.create(XP("held"), p);
    await waitReady(k, "held", "h");
    await k.request("delete", "DELETE", `${XP("held")}/h`);
    let last: Obj | undefined;
    await waitUntil(
      async () => {
        last = await getPool(k, "held", "h");
        return cond(last, "Ready")?.reason === "Deleting";
      },
      { timeoutMs: 30_000, what: `h Ready/Deleting (${JSON.stringify(last?.status?.conditions)})` },
    );
    expect(cond(last, "Ready")).toMatchObject({
      status: "False",
      message: "ExpertPool is being deleted (waiting for finalizers: example.com/hold); the router no longer serves it",
    });
    await waitUntil(
      async () => !(routerConfigOf(await k.get<Obj>(ROUTER_CM)).pools ?? []).some((x) => x.name === "held/h"),
      {
        timeoutMs: 20_000,
        what: "held/h out of the router config",
      },
    );
    await cluster().kubectl([
      "patch",
      "-n",
      "held",
      "xp",
      "h",
      "--type=merge",
      "-p",
      '{"metadata":{"finalizers":null}}',
    ]);
    await waitUntil(async () => (await getPool(k, "held", "h")) === undefined, { timeoutMs: 20_000, what: "h gone" });
  });

  it("a RoutingPolicy is Ready only once the router ConfigMap holds its generation; its deletion is forgotten at once", async () => {
    const k = admin();
    await createNamespace(k, "pol");
    await k.create(XP("pol"), pool("a", "pol", { replicas: 1 }));
    await k.create(RP("pol"), {
      apiVersion: "switchyard.dev/v1alpha1",
      kind: "RoutingPolicy",
      metadata: { name: "rp", namespace: "pol" },
      spec: { poolRef: { name: "a" }, gating: { topK: 1 } },
    });
    const routerTopK = async () =>
      routerConfigOf(await k.get<Obj>(ROUTER_CM)).pools?.find((x) => x.name === "pol/a")?.policy.gating.topK;
    await waitUntil(async () => cond(await k.get<Obj>(`${RP("pol")}/rp`), "Ready")?.status === "True", {
      timeoutMs: 60_000,
      what: "RoutingPolicy pol/rp Ready",
    });
    expect(await routerTopK()).toBe(1);

    // An edit: Pending until the (debounced) router pass writes it; Ready True only with it in the ConfigMap.
    await cluster().kubectl([
      "patch",
      "-n",
      "pol",
      "routingpolicy",
      "rp",
      "--type=merge",
      "-p",
      '{"spec":{"gating":{"topK":2}}}',
    ]);
    const reasons = new Set<string>();
    let topKWhenReady: number | null | undefined;
    await waitUntil(
      async () => {
        const rp = await k.get<Obj>(`${RP("pol")}/rp`);
        if (rp?.status?.observedGeneration !== rp?.metadata.generation) return false;
        const r = cond(rp, "Ready");
        reasons.add(`${r?.status}/${r?.reason}`);
        if (r?.status !== "True") return false;
        topKWhenReady = await routerTopK();
        return true;
      },
      { timeoutMs: 30_000, intervalMs: 50, what: "RoutingPolicy pol/rp Ready at its new generation" },
    );
    expect(reasons).toContain("False/Pending");
    expect(topKWhenReady).toBe(2);

    // Deleted: the manager's memory of its status writes lets go of it with the delete event, not 30 s later.
    await k.request("delete", "DELETE", `${RP("pol")}/rp`);
    await k.request("delete", "DELETE", `${XP("pol")}/a`);
    await waitUntil(() => !op?.policies.get("pol", "rp") && !op?.pools.get("pol", "a"), {
      timeoutMs: 10_000,
      what: "the operator's caches without pol/rp and pol/a",
    });
    expect(op?.recent.pick("RoutingPolicy", "pol", "rp", undefined)).toBeUndefined();
    expect(op?.recent.pick("ExpertPool", "pol", "a", undefined)).toBeUndefined();
  });

  it("a router ConfigMap the operator cannot write: its policies say RouterConfigWriteFailed (logged once), then Ready once it can", async () => {
    await op?.stop();
    op = undefined;
    const k = admin();
    await createNamespace(k, "rw");
    await k.create(XP("rw"), pool("a", "rw", { replicas: 1 }));
    await k.create(RP("rw"), {
      apiVersion: "switchyard.dev/v1alpha1",
      kind: "RoutingPolicy",
      metadata: { name: "rp", namespace: "rw" },
      spec: { poolRef: { name: "a" } },
    });
    const logs: string[] = [];
    // The router config in a namespace that does not exist (yet): every write is refused (404).
    const m = startOperator(cluster(), {
      routerConfigMap: { namespace: "nowhere", name: "switchyard-router" },
      log: (line) => logs.push(line),
    });
    await m.start();
    try {
      let last: Obj | undefined;
      await waitUntil(
        async () => {
          last = await k.get<Obj>(`${RP("rw")}/rp`);
          return cond(last, "Ready")?.reason === "RouterConfigWriteFailed";
        },
        { timeoutMs: 60_000, what: `rw/rp RouterConfigWriteFailed (${JSON.stringify(last?.status?.conditions)})` },
      );
      expect(cond(last, "Ready")?.status).toBe("False");
      expect(cond(last, "Ready")?.message).toContain('namespaces "nowhere" not found');
      expect(cond(last, "Degraded")).toMatchObject({ status: "True", reason: "RouterConfigWriteFailed" });
      await waitUntil(() => logs.some((l) => l.includes("has not been written since this operator took the lead")), {
        timeoutMs: 10_000,
        what: "the once-only log line",
      });
      await createNamespace(k, "nowhere");
      await waitUntil(async () => cond(await k.get<Obj>(`${RP("rw")}/rp`), "Ready")?.status === "True", {
        timeoutMs: 60_000,
        what: "rw/rp Ready once the ConfigMap can be written",
      });
      expect(logs.filter((l) => l.includes("has not been written since this operator took the lead"))).toHaveLength(1);
    } finally {
      await m.stop();
    }
  });
});
