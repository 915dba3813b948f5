// Must show (issue 5), against a real control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
// kwok fake GPU nodes): pools become Ready, GPU shortage is reported, scale/edit/delete work, and the operator
// converges without duplicates through its own restart, an API server restart and a leader change, then goes quiet.

import { randomBytes } from "node:crypto";
import { KubeConfig } from "@kubernetes/client-node";
import {
  CONFIG_MAP_MAX_BYTES,
  DEFAULT_CONFIG_LIMITS,
  type EncodedConfig,
  encodeRouterConfig,
  type KubeError,
  type Manager,
  paths,
  ROUTER_CONFIG_GZ_KEY,
  ROUTER_CONFIG_KEY,
} from "@switchyard/operator";
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
  sleep,
  startOperator,
  waitReady,
  XP,
} from "./helpers.js";

// Garbage collection of a new kind waits for the collector's discovery resync (~30 s) and an API server restart
// sends every client into reconnect backoff: these tests wait on real controllers, on a shared 2-core machine.
vi.setConfig({ testTimeout: 180_000 });

const WRITE_VERBS = new Set(["create", "update", "patch", "apply", "delete"]);

/** Counts a manager's writes, leaving out its Lease renewals (leader election writes by design). */
function countWrites(m: Manager): () => number {
  let n = 0;
  m.kube.onRequest((r) => {
    if (WRITE_VERBS.has(r.verb) && !r.path.includes("/leases")) n++;
  });
  return () => n;
}

describeWithCluster("operator on a real cluster", { nodes: 2, gpusPerNode: 8 }, (cluster) => {
  let op: Manager | undefined;
  let metricsPort = 0;
  let healthPort = 0;
  const admin = () => adminClient(cluster());
  const list = async (path: string, selector?: string) =>
    (await admin().list<Obj>(path, { labelSelector: selector })).items;

  beforeAll(async () => {
    const c = cluster();
    await c.kubectl(["apply", "-f", "crds/"]);
    await c.kubectl([
      "wait",
      "--for=condition=Established",
      "crd/expertpools.switchyard.dev",
      "crd/routingpolicies.switchyard.dev",
    ]);
    for (const ns of ["life", "restart", "leader"]) await createNamespace(admin(), ns);
    // port 0: the servers take any free ports (a port picked here could be taken before they listen)
    op = startOperator(c, { metricsPort: 0, healthPort: 0 });
    await op.start();
    metricsPort = op.ports.metrics ?? 0;
    healthPort = op.ports.health ?? 0;
  }, 60_000);

  afterAll(async () => {
    await op?.stop();
  });

  it("an ExpertPool becomes Ready once its worker pods run on fake GPU nodes; children are owned", async () => {
    const k = admin();
    const created = await k.create<Obj>(XP("life"), pool("a", "life"));
    const p = await waitReady(k, "life", "a");
    expect(p.status).toMatchObject({
      replicas: 2,
      readyReplicas: 2,
      observedGeneration: p.metadata.generation,
      selector: "app.kubernetes.io/component=expert-worker,switchyard.dev/pool=a",
      placement: { version: 1, configMap: "a-placement", workers: 2, slotsPerWorker: [8, 8] },
    });
    const owned = (o: Obj | undefined) => o?.metadata.ownerReferences?.[0]?.uid === created.metadata.uid;
    const sts = await k.get<
      Obj & { spec: { template: { spec: { containers: { resources: { limits: Record<string, string> } }[] } } } }
    >("/apis/apps/v1/namespaces/life/statefulsets/a");
    expect(owned(sts)).toBe(true);
    expect(sts?.spec.template.spec.containers[0].resources.limits["nvidia.com/gpu"]).toBe("1");
    const svc = await k.get<Obj & { spec: { clusterIP: string } }>("/api/v1/namespaces/life/services/a-workers");
    expect(owned(svc) && svc?.spec.clusterIP).toBe("None");
    const cm = await k.get<Obj>("/api/v1/namespaces/life/configmaps/a-placement");
    expect(owned(cm)).toBe(true);
    const plan = JSON.parse(cm?.data?.["plan.json"] ?? "{}");
    expect(plan).toMatchObject({ version: 1, pool: "a", workers: ["a-0", "a-1"] });
    expect(plan.replicas).toHaveLength(2);
    const pods = await list("/api/v1/namespaces/life/pods", "switchyard.dev/pool=a");
    expect(pods).toHaveLength(2);
    for (const pod of pods) expect((pod.spec as { nodeName?: string }).nodeName).toMatch(/^gpu-node-/);
    // The router's config lists the pool with its plan and endpoints.
    await waitUntil(
      async () => {
        const rc = await k.get<Obj>("/api/v1/namespaces/default/configmaps/switchyard-router");
        const cfg = routerConfigOf(rc);
        const entry = cfg.pools?.find((x: { name: string }) => x.name === "life/a");
        return entry?.plan?.version === 1 && entry.endpoints["a-1"] === "a-1.a-workers.life.svc:50061";
      },
      { timeoutMs: 20_000, what: "router config listing life/a" },
    );
  });

  it("serves /metrics under controller-runtime's names, /healthz and /readyz", async () => {
    const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    for (const series of [
      'controller_runtime_reconcile_total{controller="expertpool",result="success"}',
      "controller_runtime_reconcile_errors_total",
      'controller_runtime_reconcile_time_seconds_bucket{le="0.005",controller="expertpool"}',
      'workqueue_depth{name="expertpool",controller="expertpool"}',
      'workqueue_adds_total{name="expertpool",controller="expertpool"}',
      "workqueue_retries_total",
      'workqueue_queue_duration_seconds_count{name="expertpool",controller="expertpool"}',
      'workqueue_work_duration_seconds_count{name="expertpool",controller="expertpool"}',
      "workqueue_unfinished_work_seconds",
      "workqueue_longest_running_processor_seconds",
      'switchyard_operator_pools{condition="True"} 1',
      "rest_client_requests_total{",
    ]) {
      expect(text, series).toContain(series);
    }
    for (const port of [metricsPort, healthPort]) {
      expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
      expect((await fetch(`http://127.0.0.1:${port}/readyz`)).status).toBe(200);
    }
  });

  it("a RoutingPolicy resolves into status and the router config; one with topK > experts is Degraded", async () => {
    const k = admin();
    await k.create(RP("life"), {
      apiVersion: "switchyard.dev/v1alpha1",
      kind: "RoutingPolicy",
      metadata: { name: "a-policy", namespace: "life" },
      spec: { poolRef: { name: "a" }, gating: { topK: 1 }, batching: { maxBatchTokens: 128 } },
    });
    await k.create(RP("life"), {
      apiVersion: "switchyard.dev/v1alpha1",
      kind: "RoutingPolicy",
      metadata: { name: "too-wide", namespace: "life" },
      spec: { poolRef: { name: "a" }, gating: { topK: 12 } },
    });
    await waitUntil(
      async () => {
        const good = await k.get<Obj>(`${RP("life")}/a-policy`);
        const bad = await k.get<Obj>(`${RP("life")}/too-wide`);
        return (
          cond(good, "Ready")?.status === "True" &&
          (good?.status?.effective as { gating: { topK: number } } | undefined)?.gating.topK === 1 &&
          cond(bad, "Degraded")?.reason === "TopKExceedsExperts"
        );
      },
      { timeoutMs: 20_000, what: "RoutingPolicy statuses" },
    );
    await waitUntil(
      async () => {
        const rc = await k.get<Obj>("/api/v1/namespaces/default/configmaps/switchyard-router");
        const entry = routerConfigOf(rc).pools?.find((x: { name: string }) => x.name === "life/a");
        return entry?.policy.gating.topK === 1 && entry.policy.batching.maxBatchTokens === 128;
      },
      { timeoutMs: 20_000, what: "router config with the policy" },
    );
  });

  it("the router config's size as the API server counts it: gzipped up to the limit accepted, past 1 MiB refused", async () => {
    // The operator decides from encodeRouterConfig's bytes whether a config fits (router-config-fit.ts); this checks
    // that count and the 1 MiB limit against the API server itself, and that server-side apply drops the gzip when
    // the config shrinks back to plain JSON.
    const k = admin();
    const path = "/api/v1/namespaces/life/configmaps/size-check";
    const cm = (e: EncodedConfig) => ({
      apiVersion: "v1",
      kind: "ConfigMap",
      metadata: { name: "size-check", namespace: "life" },
      data: e.data,
      ...(e.binaryData ? { binaryData: e.binaryData } : {}),
    });
    // Random hex gzips to ~55%: a document sized to land just under the limit, and one just over 1 MiB.
    const sized = async (target: number) => {
      let n = Math.floor(target / 0.55);
      for (let i = 0; i < 20; i++) {
        const e = await encodeRouterConfig({
          pools: [{ name: "x", blob: randomBytes(Math.floor(n / 2)).toString("hex") }],
        });
        if (e.bytes <= target && e.bytes > target - 4096) return e;
        n = Math.floor((n * target) / e.bytes) - 64;
      }
      throw new Error(`no document of ${target} bytes gzipped`);
    };
    const full = await sized(DEFAULT_CONFIG_LIMITS.maxBytes);
    expect(full.compressed).toBe(true);
    await k.apply(path, cm(full), "switchyard-test");
    const stored = await k.get<Obj & { binaryData?: Record<string, string> }>(path);
    expect(stored?.binaryData?.[ROUTER_CONFIG_GZ_KEY]).toBe(full.binaryData?.[ROUTER_CONFIG_GZ_KEY]);

    const over = await sized(CONFIG_MAP_MAX_BYTES + 4096);
    const refused = await k.apply(path, cm(over), "switchyard-test").then(
      () => undefined,
      (e: KubeError) => e,
    );
    expect(refused?.code).toBe(422);
    expect(refused?.message).toMatch(/1048576/);

    const small = await encodeRouterConfig({ pools: [] });
    await k.apply(path, cm(small), "switchyard-test");
    const back = await k.get<Obj & { binaryData?: Record<string, string> }>(path);
    expect(back?.data?.[ROUTER_CONFIG_KEY]).toBe('{"pools":[]}');
    expect(back?.binaryData).toBeUndefined();
  });

  it("a pool asking for more GPUs than the cluster has stays Progressing with a reason that says so", async () => {
    const k = admin();
    // Workers of 9 GPUs on 8-GPU nodes: none can ever fit (so none lingers to block later tests while the
    // garbage collector has not yet discovered the ExpertPool kind).
    await k.create(XP("life"), pool("big", "life", { replicas: 3, worker: { gpusPerWorker: 9 } }));
    let last: Obj | undefined;
    await waitUntil(
      async () => {
        last = await getPool(k, "life", "big");
        return cond(last, "Progressing")?.reason === "InsufficientGPU";
      },
      { timeoutMs: 30_000, what: `big Progressing/InsufficientGPU (${JSON.stringify(last?.status?.conditions)})` },
    );
    await sleep(3000);
    last = await getPool(k, "life", "big");
    expect(cond(last, "Progressing")).toMatchObject({ status: "True", reason: "InsufficientGPU" });
    expect(cond(last, "Progressing")?.message).toContain("Insufficient nvidia.com/gpu");
    expect(cond(last, "Ready")).toMatchObject({ status: "False", reason: "InsufficientGPU" });
    const events = await cluster().kubectl([
      "get",
      "events",
      "-n",
      "life",
      "--field-selector",
      "involvedObject.name=big",
      "-o",
      "json",
    ]);
    expect(JSON.parse(events.stdout).items.map((e: { reason: string }) => e.reason)).toContain("InsufficientGPU");
    await cluster().kubectl(["delete", "xp", "big", "-n", "life"]);
  });

  it("a worker template the API server refuses is reported as Degraded/ApplyFailed with the server's message", async () => {
    const k = admin();
    // Passes the CRD (which refuses requests above limits, but does not know which resources are extended ones),
    // but core/v1 refuses an extended resource's request without a limit.
    await k.create(
      XP("life"),
      pool("refused", "life", { worker: { gpusPerWorker: 0, resources: { requests: { "example.com/dongle": "1" } } } }),
    );
    let last: Obj | undefined;
    await waitUntil(
      async () => {
        last = await getPool(k, "life", "refused");
        return cond(last, "Degraded")?.reason === "ApplyFailed";
      },
      { timeoutMs: 30_000, what: `refused Degraded/ApplyFailed (${JSON.stringify(last?.status?.conditions)})` },
    );
    expect(cond(last, "Degraded")?.message).toMatch(
      /^StatefulSet refused: .*Limit must be set for non overcommitable resources/,
    );
    expect(cond(last, "Ready")).toMatchObject({ status: "False", reason: "ApplyFailed" });
    expect(last?.status?.observedGeneration).toBe(last?.metadata.generation);
    await cluster().kubectl(["delete", "xp", "refused", "-n", "life"]);
  });

  it("recreates a child deleted right after the operator wrote it (its own recent write does not mask the delete)", async () => {
    const k = admin();
    const svcPath = `${paths.services("life")}/fresh-workers`;
    await k.create(XP("life"), pool("fresh", "life", { replicas: 1 }));
    // Delete the Service the moment it exists: before a reconcile has seen it in the cache, while the operator's
    // record of its own write is all it has of it.
    let first: { metadata: { uid: string } } | undefined;
    await waitUntil(
      async () => {
        first = await k.get(svcPath);
        return first !== undefined;
      },
      { timeoutMs: 30_000, intervalMs: 5, what: "the pool's Service" },
    );
    await k.request("delete", "DELETE", svcPath);
    // within seconds, not at the 10-minute resync
    await waitUntil(
      async () => {
        const now = await k.get<{ metadata: { uid: string } }>(svcPath);
        return now !== undefined && now.metadata.uid !== first?.metadata.uid;
      },
      { timeoutMs: 20_000, what: "the Service recreated" },
    );
    await cluster().kubectl(["delete", "xp", "fresh", "-n", "life"]);
  });

  it("kubectl scale expertpool/NAME --replicas=N works (scale subresource), republishes the plan, and restarts no worker", async () => {
    const c = cluster();
    type Sts = Obj & { spec: { template: unknown }; status: { updateRevision?: string; currentRevision?: string } };
    const sts = async () => (await admin().get<Sts>("/apis/apps/v1/namespaces/life/statefulsets/a")) as Sts;
    const podUids = async () =>
      new Map(
        (await list("/api/v1/namespaces/life/pods", "switchyard.dev/pool=a")).map((p) => [
          p.metadata.name,
          p.metadata.uid,
        ]),
      );
    const before = await sts();
    const pods0 = await podUids();
    expect([...pods0.keys()].sort()).toEqual(["a-0", "a-1"]);
    // Up to 4 and down to 3: the pods that stay are the same pods (before, --cache-capacity followed replicas, so every
    // scale changed the pod template and rolled every worker), and the template is the one they were made from.
    // Ready and rolled out with plan `version` published (a scale-up publishes a transitional plan first, keeping
    // every expert on the workers that are Ready, then its target once the new workers are: scale-transition.test.ts).
    const settled = async (version: number) => {
      let p: Obj | undefined;
      await waitUntil(
        async () => {
          p = await waitReady(admin(), "life", "a");
          return (p.status?.placement as { version?: number } | undefined)?.version === version;
        },
        { timeoutMs: 60_000, what: `life/a at plan version ${version} (${JSON.stringify(p?.status?.placement)})` },
      );
      return p as Obj;
    };
    await c.kubectl(["scale", "-n", "life", "expertpool/a", "--replicas=4"]);
    let p = await settled(3);
    expect(p.status).toMatchObject({ replicas: 4, readyReplicas: 4, placement: { version: 3, workers: 4 } });
    const pods4 = await podUids();
    await c.kubectl(["scale", "-n", "life", "expertpool/a", "--replicas=3"]);
    p = await settled(4); // a scale-down waits for nothing
    expect(p.status).toMatchObject({ replicas: 3, readyReplicas: 3, placement: { version: 4, workers: 3 } });
    const pods3 = await podUids();
    for (const name of ["a-0", "a-1"])
      expect([pods4.get(name), pods3.get(name)]).toEqual([pods0.get(name), pods0.get(name)]);
    expect(pods3.get("a-2")).toBe(pods4.get("a-2"));
    const after = await sts();
    expect(after.spec.template).toEqual(before.spec.template);
    expect(after.status.updateRevision).toBe(before.status.updateRevision);
    expect(after.status.currentRevision).toBe(before.status.updateRevision);
    const scale = JSON.parse(
      (await c.kubectl(["get", "--raw", "/apis/switchyard.dev/v1alpha1/namespaces/life/expertpools/a/scale"])).stdout,
    );
    expect(scale.spec.replicas).toBe(3);
    expect(scale.status).toMatchObject({
      replicas: 3,
      selector: "app.kubernetes.io/component=expert-worker,switchyard.dev/pool=a",
    });
  });

  it("editing the spec rolls the workers and bumps observedGeneration", async () => {
    const k = admin();
    const before = await getPool(k, "life", "a");
    const oldPods = new Map(
      (await list("/api/v1/namespaces/life/pods", "switchyard.dev/pool=a")).map((p) => [
        p.metadata.name,
        p.metadata.uid,
      ]),
    );
    await cluster().kubectl([
      "patch",
      "-n",
      "life",
      "xp",
      "a",
      "--type=merge",
      "-p",
      '{"spec":{"worker":{"image":"switchyard/expert-worker:0.2.0"}}}',
    ]);
    const gen = (before?.metadata.generation ?? 0) + 1;
    await waitUntil(
      async () => {
        const p = await getPool(k, "life", "a");
        if (p?.status?.observedGeneration !== gen || cond(p, "Ready")?.status !== "True") return false;
        const pods = await list("/api/v1/namespaces/life/pods", "switchyard.dev/pool=a");
        return (
          pods.length === 3 &&
          pods.every(
            (x) =>
              x.metadata.uid !== oldPods.get(x.metadata.name) &&
              (x.spec as { containers: { image: string }[] }).containers[0].image === "switchyard/expert-worker:0.2.0",
          )
        );
      },
      { timeoutMs: 90_000, intervalMs: 500, what: "rolled workers at the new image and observedGeneration bumped" },
    );
  });

  /** Exactly one StatefulSet, Service and plan ConfigMap per pool, and `replicas` pods. */
  async function expectNoDuplicates(ns: string, names: string[], replicas: number) {
    for (const n of names) {
      const sel = `switchyard.dev/pool=${n}`;
      expect((await list(`/apis/apps/v1/namespaces/${ns}/statefulsets`, sel)).length, `${n} statefulsets`).toBe(1);
      expect((await list(`/api/v1/namespaces/${ns}/services`, sel)).length, `${n} services`).toBe(1);
      expect((await list(`/api/v1/namespaces/${ns}/configmaps`, sel)).length, `${n} configmaps`).toBe(1);
      expect((await list(`/api/v1/namespaces/${ns}/pods`, sel)).length, `${n} pods`).toBe(replicas);
    }
  }

  it("restarting the operator in the middle of reconciling converges without duplicates", async () => {
    const k = admin();
    const names = ["r1", "r2", "r3", "r4", "r5", "r6"];
    const writesBefore = op?.kube.writes() ?? 0;
    for (const n of names) await k.create(XP("restart"), pool(n, "restart", { replicas: 1 }));
    await waitUntil(() => (op?.kube.writes() ?? 0) - writesBefore >= 4, {
      timeoutMs: 20_000,
      intervalMs: 20,
      what: "first writes",
    });
    const t0 = Date.now();
    await op?.stop();
    const t1 = Date.now();
    op = startOperator(cluster());
    await op.start();
    const t2 = Date.now();
    for (const n of names) await waitReady(k, "restart", n);
    console.log(`[operator] restart: stop ${t1 - t0} ms, start ${t2 - t1} ms, all Ready after ${Date.now() - t2} ms`);
    await expectNoDuplicates("restart", names, 1);
  });

  it("restarting the API server in the middle of reconciling converges without duplicates", async () => {
    const k = admin();
    const names = ["s1", "s2", "s3", "s4"];
    for (const n of names) await k.create(XP("restart"), pool(n, "restart", { replicas: 1 }));
    await cluster().restartApiServer();
    for (const n of names) await waitReady(k, "restart", n, 120_000);
    await expectNoDuplicates("restart", names, 1);
  });

  // Runs after the restart tests on purpose: the garbage collector only learns a new kind at its next discovery
  // resync (~30 s after the CRD appeared), and by now that has happened.
  it("deleting a pool garbage-collects its children", async () => {
    const c = cluster();
    await c.kubectl(["delete", "xp", "a", "-n", "life"]);
    await waitUntil(
      async () => {
        const left = await Promise.all([
          list("/apis/apps/v1/namespaces/life/statefulsets", "switchyard.dev/pool=a"),
          list("/api/v1/namespaces/life/services", "switchyard.dev/pool=a"),
          list("/api/v1/namespaces/life/configmaps", "switchyard.dev/pool=a"),
        ]);
        return left.every((l) => l.length === 0);
      },
      { timeoutMs: 60_000, what: "StatefulSet, Service and plan ConfigMap of a garbage-collected" },
    );
    await waitUntil(
      async () => {
        const rc = await admin().get<Obj>("/api/v1/namespaces/default/configmaps/switchyard-router");
        return !routerConfigOf(rc).pools?.some((x: { name: string }) => x.name === "life/a");
      },
      { timeoutMs: 20_000, what: "life/a gone from the router config" },
    );
  });

  it("after convergence the operator makes zero writes in a 30-second quiet window", async () => {
    const m = op as Manager;
    await waitUntil(() => m.idle(), { timeoutMs: 30_000, what: "operator queues idle" });
    await sleep(2000);
    const rvs = async () => {
      const objs = [
        ...(await list(XP("restart"))),
        ...(await list("/apis/apps/v1/namespaces/restart/statefulsets")),
        ...(await list("/api/v1/namespaces/restart/services")),
        ...(await list("/api/v1/namespaces/restart/configmaps", "app.kubernetes.io/managed-by=switchyard-operator")),
        ...(await list("/api/v1/namespaces/default/configmaps", "app.kubernetes.io/managed-by=switchyard-operator")),
      ];
      return new Map(
        objs.map((o) => [`${o.metadata.namespace}/${o.metadata.name}/${o.metadata.uid}`, o.metadata.resourceVersion]),
      );
    };
    const before = await rvs();
    const writes0 = m.kube.writes();
    const total0 = m.kube.total();
    await sleep(30_000);
    const writes = m.kube.writes() - writes0;
    console.log(
      `[operator] quiet window: ${writes} writes, ${m.kube.total() - total0} requests in 30 s (${before.size} objects watched)`,
    );
    expect(writes).toBe(0);
    expect(await rvs()).toEqual(before);
  }, 60_000);

  it("with two operator replicas only the leader writes; the standby takes over when the leader stops", async () => {
    await op?.stop();
    op = undefined;
    const lease = {
      leaderElect: true,
      leaseNamespace: "default",
      leaseDurationMs: 4000,
      renewDeadlineMs: 3000,
      retryPeriodMs: 500,
      onLostLeadership: () => {},
    };
    const a = startOperator(cluster(), { ...lease, identity: "replica-a" });
    const b = startOperator(cluster(), { ...lease, identity: "replica-b" });
    const wa = countWrites(a);
    const wb = countWrites(b);
    await Promise.all([a.start(), b.start()]);
    await waitUntil(() => a.isLeader() || b.isLeader(), { timeoutMs: 20_000, what: "a leader" });
    const [leader, standby, wl, ws] = a.isLeader() ? [a, b, wa, wb] : [b, a, wb, wa];
    expect(standby.isLeader()).toBe(false);
    const k = admin();
    await k.create(XP("leader"), pool("l1", "leader", { replicas: 1 }));
    await waitReady(k, "leader", "l1");
    expect(wl()).toBeGreaterThan(0);
    expect(ws()).toBe(0);
    // the standby saw every event in its caches and queued none of them (its workqueue metrics stay at rest)
    expect(standby.idle()).toBe(true);
    await leader.stop(); // finishes reconciles in flight, then releases the Lease
    const leaderWrites = wl();
    await waitUntil(() => standby.isLeader(), { timeoutMs: 20_000, what: "standby to take over" });
    await cluster().kubectl(["scale", "-n", "leader", "expertpool/l1", "--replicas=2"]);
    const p = await waitReady(k, "leader", "l1");
    expect(p.status?.readyReplicas).toBe(2);
    expect(ws()).toBeGreaterThan(0);
    expect(wl()).toBe(leaderWrites);
    await standby.stop();
  }, 90_000);

  it("runs with only the verbs in operator/deploy/rbac.yaml (ServiceAccount token)", async () => {
    const c = cluster();
    await createNamespace(admin(), "switchyard-system");
    await createNamespace(admin(), "rbac");
    await c.kubectl(["apply", "-f", "operator/deploy/rbac.yaml"]);
    const token = (
      await c.kubectl(["create", "token", "switchyard-operator", "-n", "switchyard-system", "--duration=1h"])
    ).stdout.trim();
    const kc = new KubeConfig();
    kc.loadFromOptions({
      clusters: [{ name: "test", server: c.server, skipTLSVerify: true }],
      users: [{ name: "operator", token }],
      contexts: [{ name: "test", cluster: "test", user: "operator" }],
      currentContext: "test",
    });
    const m = startOperator(c, {
      kubeConfig: kc,
      leaderElect: true,
      leaseNamespace: "switchyard-system",
      routerConfigMap: { namespace: "switchyard-system", name: "switchyard-router" },
      onLostLeadership: () => {},
    });
    const codes: number[] = [];
    m.kube.onRequest((r) => codes.push(r.code));
    await m.start();
    try {
      const k = admin();
      await k.create(XP("rbac"), pool("p", "rbac", { replicas: 1 }));
      await k.create(RP("rbac"), {
        apiVersion: "switchyard.dev/v1alpha1",
        kind: "RoutingPolicy",
        metadata: { name: "p", namespace: "rbac" },
        spec: { poolRef: { name: "p" } },
      });
      await waitReady(k, "rbac", "p");
      await waitUntil(async () => cond(await k.get<Obj>(`${RP("rbac")}/p`), "Ready")?.status === "True", {
        timeoutMs: 20_000,
        what: "RoutingPolicy Ready under the operator's RBAC",
      });
      await waitUntil(
        async () =>
          (await k.get<Obj>("/api/v1/namespaces/switchyard-system/configmaps/switchyard-router"))?.data?.[
            "router.json"
          ]?.includes('"name":"rbac/p"') ?? false,
        { timeoutMs: 20_000, what: "router config written under the operator's RBAC" },
      );
      expect(codes.filter((x) => x === 403)).toEqual([]);
    } finally {
      await m.stop();
    }
  }, 90_000);

  it("watching one namespace with the router ConfigMap in another: quiet past RecentWrites' 30 s, an edit or a delete of it repaired at once", async () => {
    // The chart with watchNamespace set: --namespace watched, --router-configmap release/NAME.
    await op?.stop();
    op = undefined;
    const k = admin();
    for (const ns of ["watched", "release"]) await createNamespace(k, ns);
    const cmPath = `${paths.configMaps("release")}/switchyard-router`;
    const logs: string[] = [];
    const m = startOperator(cluster(), {
      namespace: "watched",
      routerConfigMap: { namespace: "release", name: "switchyard-router" },
      log: (line) => logs.push(line),
    });
    let cmWrites = 0;
    let lastCmWrite = 0;
    m.kube.onRequest((r) => {
      if (!WRITE_VERBS.has(r.verb) || r.path !== cmPath) return;
      cmWrites++;
      lastCmWrite = Date.now();
    });
    const routerPasses = async () =>
      (await m.metrics.reconcileTotal.get()).values
        .filter((v) => v.labels.controller === "routerconfig")
        .reduce((n, v) => n + v.value, 0);
    const served = async () =>
      routerConfigOf(await k.get<Obj>(cmPath)).pools?.some((x) => x.name === "watched/w" && x.plan) ?? false;
    await m.start();
    try {
      expect(logs.find((l) => l.startsWith("caches synced"))).toContain("router-configmap");
      await k.create(XP("watched"), pool("w", "watched", { replicas: 1 }));
      await waitReady(k, "watched", "w");
      await waitUntil(served, { timeoutMs: 20_000, what: "router config listing watched/w" });
      await waitUntil(() => m.idle(), { timeoutMs: 30_000, what: "operator queues idle" });

      // (a) Past the window in which the operator trusts its own last write over its cache, a router pass (a pool
      // event triggers one) compares against the cached ConfigMap: nothing to write.
      const waitMs = 31_000 - (Date.now() - lastCmWrite);
      if (waitMs > 0) await sleep(waitMs);
      const writes0 = cmWrites;
      const passes0 = await routerPasses();
      await cluster().kubectl(["annotate", "-n", "watched", "expertpool/w", "switchyard.dev/touched=1"]);
      await waitUntil(async () => (await routerPasses()) > passes0 && m.idle(), {
        timeoutMs: 20_000,
        what: "a router pass after the pool event",
      });
      expect(cmWrites).toBe(writes0);

      // (b) An edit by hand is undone by the ConfigMap's own event, not at the next pool event.
      await cluster().kubectl([
        "patch",
        "configmap/switchyard-router",
        "-n",
        "release",
        "--type=merge",
        "-p",
        JSON.stringify({ data: { [ROUTER_CONFIG_KEY]: "{}" } }),
      ]);
      await waitUntil(served, { timeoutMs: 10_000, what: "the edited router config repaired" });

      // (c) A delete too: recreated at once (the router pods mount it and wait in ContainerCreating without it).
      const uid = (await k.get<Obj>(cmPath))?.metadata.uid;
      await k.request("delete", "DELETE", cmPath);
      await waitUntil(async () => (await k.get<Obj>(cmPath))?.metadata.uid !== uid && (await served()), {
        timeoutMs: 10_000,
        what: "the deleted router config recreated",
      });
    } finally {
      await m.stop();
    }
  }, 120_000);
  /** A kubeconfig with the token of operator/deploy/rbac.yaml's ServiceAccount (which grants nothing on Secrets). */
  async function operatorServiceAccount(): Promise<KubeConfig> {
    const c = cluster();
    await ensureNamespace("switchyard-system");
    await c.kubectl(["apply", "-f", "operator/deploy/rbac.yaml"]);
    const token = (
      await c.kubectl(["create", "token", "switchyard-operator", "-n", "switchyard-system", "--duration=1h"])
    ).stdout.trim();
    const kc = new KubeConfig();
    kc.loadFromOptions({
      clusters: [{ name: "test", server: c.server, skipTLSVerify: true }],
      users: [{ name: "operator", token }],
      contexts: [{ name: "test", cluster: "test", user: "operator" }],
      currentContext: "test",
    });
    return kc;
  }

  async function ensureNamespace(name: string) {
    await createNamespace(admin(), name).catch((e: KubeError) => {
      if (e.code !== 409) throw e;
    });
  }

  const hubPool = (name: string, ns: string, tokenSecret: { name: string; key?: string }) =>
    pool(name, ns, { replicas: 1, model: { checkpoint: { uri: `hf://org/${name}`, tokenSecret } } });
  const b64 = (s: string) => Buffer.from(s).toString("base64");
  /** The RBAC rules the chart renders with operator.syncHubTokens (operator-hub-tokens-rbac.yaml), as Roles. */
  async function grantHubTokens(watched: string, release: string, routerSecret: string) {
    const k = admin();
    const rbac = (ns: string) => `/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}`;
    const subjects = [{ kind: "ServiceAccount", name: "switchyard-operator", namespace: "switchyard-system" }];
    const role = (ns: string, name: string, rule: Record<string, unknown>) =>
      Promise.all([
        k.create(`${rbac(ns)}/roles`, {
          apiVersion: "rbac.authorization.k8s.io/v1",
          kind: "Role",
          metadata: { name, namespace: ns },
          rules: [{ apiGroups: [""], resources: ["secrets"], ...rule }],
        }),
        k.create(`${rbac(ns)}/rolebindings`, {
          apiVersion: "rbac.authorization.k8s.io/v1",
          kind: "RoleBinding",
          metadata: { name, namespace: ns },
          roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name },
          subjects,
        }),
      ]);
    await role(watched, "operator-pool-secrets", { verbs: ["get"] });
    await role(release, "operator-router-hf-tokens", {
      resourceNames: [routerSecret],
      verbs: ["get", "create", "patch"],
    });
  }

  it("hub tokens: without --sync-hub-tokens the operator reads no Secret (none granted, no error) and names hfTokenFile", async () => {
    await op?.stop();
    op = undefined;
    const ns = "hubtok-off";
    await ensureNamespace(ns);
    const k = admin();
    await k.create(paths.secrets(ns), {
      apiVersion: "v1",
      kind: "Secret",
      metadata: { name: "hf", namespace: ns },
      data: { HF_TOKEN: b64("hf_off_secret") },
    });
    const m = startOperator(cluster(), {
      kubeConfig: await operatorServiceAccount(),
      routerConfigMap: { namespace: ns, name: "switchyard-router" },
    });
    const requests: { path: string; code: number }[] = [];
    m.kube.onRequest((r) => requests.push(r));
    await m.start();
    try {
      await k.create(XP(ns), hubPool("gated", ns, { name: "hf" }));
      await waitUntil(
        async () => {
          const rc = await k.get<Obj>(`${paths.configMaps(ns)}/switchyard-router`);
          const entry = routerConfigOf(rc).pools?.find((x) => x.name === "gated") as
            | { hfTokenFile?: string }
            | undefined;
          return entry?.hfTokenFile === `/etc/switchyard/hf-tokens/${ns}_gated`;
        },
        { timeoutMs: 60_000, what: "router config naming the pool's hfTokenFile" },
      );
      await waitUntil(() => m.idle(), { timeoutMs: 30_000, what: "operator queues idle" });
      expect(requests.filter((r) => r.path.includes("/secrets"))).toEqual([]);
      expect(requests.filter((r) => r.code === 403)).toEqual([]);
      expect(await k.get(`${paths.secrets(ns)}/switchyard-router-hf-tokens`)).toBeUndefined();
    } finally {
      await m.stop();
    }
  }, 120_000);

  it("hub tokens: with --sync-hub-tokens the router Secret gets the pool's token, loses it with the pool, and a missing Secret is a Warning", async () => {
    await op?.stop();
    op = undefined;
    const [ns, release, routerSecret] = ["hubtok", "hubtok-rel", "sy-router-hf-tokens"];
    for (const n of [ns, release]) await ensureNamespace(n);
    const k = admin();
    const token = b64("hf_sync_secret");
    await k.create(paths.secrets(ns), {
      apiVersion: "v1",
      kind: "Secret",
      metadata: { name: "hf", namespace: ns },
      data: { token },
    });
    // Exactly the chart's grant: get Secrets in the watched namespace, and only the router's Secret in the release one
    // (created through server-side apply: the API server checks create against its name, so resourceNames holds).
    await grantHubTokens(ns, release, routerSecret);
    const logs: string[] = [];
    const m = startOperator(cluster(), {
      kubeConfig: await operatorServiceAccount(),
      namespace: ns,
      routerConfigMap: { namespace: release, name: "switchyard-router" },
      syncHubTokens: true,
      routerHfTokensSecret: { namespace: release, name: routerSecret },
      log: (line) => logs.push(line),
    });
    const codes: number[] = [];
    const secretPath = `${paths.secrets(release)}/${routerSecret}`;
    let secretWrites = 0;
    m.kube.onRequest((r) => {
      codes.push(r.code);
      if (WRITE_VERBS.has(r.verb) && r.path === secretPath) secretWrites++;
    });
    const routerPasses = async () =>
      (await m.metrics.reconcileTotal.get()).values
        .filter((v) => v.labels.controller === "routerconfig")
        .reduce((n, v) => n + v.value, 0);
    /** A router pass (a pool event triggers one) that finds the Secret as wanted, on the real API server's managedFields. */
    const expectQuietPass = async () => {
      await waitUntil(() => m.idle(), { timeoutMs: 30_000, what: "operator queues idle" });
      const [writes0, passes0] = [secretWrites, await routerPasses()];
      await cluster().kubectl(["annotate", "--overwrite", "-n", ns, "expertpool/nosecret", `touched=${passes0}`]);
      await waitUntil(async () => (await routerPasses()) > passes0 && m.idle(), {
        timeoutMs: 20_000,
        what: "a router pass after the pool event",
      });
      expect(secretWrites).toBe(writes0);
    };
    const routerData = async () => (await k.get<Obj & { data?: Record<string, string> }>(secretPath))?.data ?? {};
    await m.start();
    try {
      await k.create(XP(ns), hubPool("gated", ns, { name: "hf", key: "token" }));
      await k.create(XP(ns), hubPool("nosecret", ns, { name: "absent" }));
      await waitUntil(async () => (await routerData())[`${ns}_gated`] === token, {
        timeoutMs: 60_000,
        what: "the router Secret holding the pool's token",
      });
      expect(Object.keys(await routerData())).toEqual([`${ns}_gated`]);
      await expectQuietPass();
      let events: { reason: string; type: string; message: string }[] = [];
      await waitUntil(
        async () => {
          const out = await cluster().kubectl([
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            "involvedObject.name=nosecret",
            "-o",
            "json",
          ]);
          events = JSON.parse(out.stdout).items;
          return events.some((e) => e.reason === "HubTokenMissing");
        },
        { timeoutMs: 20_000, what: "a HubTokenMissing event on the pool without its Secret" },
      );
      const warning = events.find((e) => e.reason === "HubTokenMissing");
      expect(warning?.type).toBe("Warning");
      expect(warning?.message).toContain("Secret absent not found");

      // The pool gone: its key goes at the router pass its delete triggers.
      await cluster().kubectl(["delete", "xp", "gated", "-n", ns]);
      await waitUntil(async () => !(`${ns}_gated` in (await routerData())), {
        timeoutMs: 30_000,
        what: "the deleted pool's key gone from the router Secret",
      });
      await expectQuietPass();
      await waitUntil(() => m.idle(), { timeoutMs: 30_000, what: "operator queues idle" });
      expect(codes.filter((c) => c === 403)).toEqual([]);
      // no value in what the operator logged or told
      const told = JSON.stringify(
        JSON.parse((await cluster().kubectl(["get", "events", "-n", ns, "-o", "json"])).stdout).items,
      );
      for (const text of [told, logs.join("\n")]) {
        expect(text).not.toContain(token);
        expect(text).not.toContain("hf_sync_secret");
      }
    } finally {
      await m.stop();
    }
  }, 150_000);
});
