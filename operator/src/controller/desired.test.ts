import { describe, expect, it } from "vitest";
import {
  cacheCapacity,
  desiredPlan,
  desiredService,
  desiredStatefulSet,
  modelHash,
  planFromConfigMap,
} from "./desired.js";
import { testPool } from "./fixtures.js";

describe("desiredStatefulSet", () => {
  const pool = testPool({ replicas: 3, worker: { gpusPerWorker: 2, nodeSelector: { gpu: "h200" } } });
  const sts = desiredStatefulSet(pool);
  const pod = sts.spec!.template.spec!;
  const c = pod.containers[0];

  it("requests GPUs, tolerates GPU taints and spreads over nodes", () => {
    expect(c.resources?.limits?.["nvidia.com/gpu"]).toBe("2");
    expect(c.resources?.requests?.["nvidia.com/gpu"]).toBe("2");
    expect(pod.tolerations).toContainEqual({ key: "nvidia.com/gpu", operator: "Exists", effect: "NoSchedule" });
    expect(pod.nodeSelector).toEqual({ gpu: "h200" });
    expect(pod.topologySpreadConstraints?.[0].topologyKey).toBe("kubernetes.io/hostname");
  });

  it("runs the worker command line of CONTRACTS.md with gRPC health probes", () => {
    expect(c.command).toEqual(["node"]);
    expect(c.args).toEqual([
      "--initial-heap-size=256",
      "expert-worker/dist/main.js",
      "--checkpoint",
      "/checkpoint",
      "--pool",
      "mix",
      "--port",
      "50061",
      "--metrics-port",
      "9401",
      "--data-port",
      "50062",
      "--plan",
      "/etc/switchyard/plan/plan.json",
      "--cache-capacity",
      "11", // 4 layers x 8 experts over 3 workers, rounded up
      "--backend",
      "auto",
      "--queue-capacity",
      "65536",
    ]);
    expect(c.env?.[0]).toEqual({
      name: "SWITCHYARD_WORKER_ID",
      valueFrom: { fieldRef: { fieldPath: "metadata.name" } },
    });
    expect(c.readinessProbe?.grpc?.port).toBe(50061);
    expect(c.startupProbe?.grpc?.port).toBe(50061);
  });

  it("is owned by the pool, selects by pool label, and serves through the headless service", () => {
    expect(sts.metadata?.ownerReferences).toEqual([
      {
        apiVersion: "switchyard.dev/v1alpha1",
        kind: "ExpertPool",
        name: "mix",
        uid: "uid-mix",
        controller: true,
        blockOwnerDeletion: true,
      },
    ]);
    expect(sts.spec?.selector.matchLabels).toEqual({
      "app.kubernetes.io/component": "expert-worker",
      "switchyard.dev/pool": "mix",
    });
    expect(sts.spec?.serviceName).toBe("mix-workers");
    expect(sts.spec?.replicas).toBe(3);
    const svc = desiredService(pool);
    expect(svc.spec?.clusterIP).toBe("None");
    expect(svc.metadata?.name).toBe("mix-workers");
  });

  it("mounts each checkpoint source", () => {
    const onlyPvc = testPool();
    onlyPvc.spec.model.checkpoint = { pvc: { claimName: "w", subPath: "m" } };
    const v = desiredStatefulSet(onlyPvc).spec!.template.spec!;
    expect(v.volumes?.[0]).toEqual({ name: "checkpoint", persistentVolumeClaim: { claimName: "w", readOnly: true } });
    expect(v.containers[0].volumeMounts?.[0]).toMatchObject({ mountPath: "/checkpoint", subPath: "m", readOnly: true });
    const uri = testPool();
    uri.spec.model.checkpoint = { uri: "hf://org/model" };
    const u = desiredStatefulSet(uri).spec!.template.spec!;
    expect(u.volumes?.[0]).toEqual({ name: "checkpoint", emptyDir: {} });
    expect(u.containers[0].env).toContainEqual({ name: "SWITCHYARD_CHECKPOINT_URI", value: "hf://org/model" });
  });

  it("CPU workers request no GPU and get no GPU toleration", () => {
    const cpu = desiredStatefulSet(testPool({ worker: { gpusPerWorker: 0 } })).spec!.template.spec!;
    expect(cpu.containers[0].resources).toBeUndefined();
    expect(cpu.tolerations).toBeUndefined();
  });

  it("a model edit changes the pod template (rolls workers); a replica change does not", () => {
    const a = testPool();
    const b = testPool({ model: { hiddenSize: 128 } });
    expect(modelHash(a)).not.toBe(modelHash(b));
    const t = (p: ReturnType<typeof testPool>) => JSON.stringify(desiredStatefulSet(p).spec?.template);
    expect(t(a)).not.toBe(t(b));
    expect(t(testPool({ replicas: 2, cache: { residentExperts: 40 } }))).toBe(
      t(testPool({ replicas: 4, cache: { residentExperts: 40 } })),
    );
  });

  it("cache capacity defaults to the worker's share of every copy", () => {
    expect(cacheCapacity(testPool({ replicas: 2, placement: { redundantExperts: 2 } }))).toBe(20);
    expect(cacheCapacity(testPool({ cache: { residentExperts: 7, hostTier: { enabled: true } } }))).toBe(7);
  });
});

describe("desiredPlan", () => {
  it("publishes a valid plan with endpoints, stable on replan", () => {
    const pool = testPool({ replicas: 2 });
    const first = desiredPlan(pool, undefined);
    if (!first.ok) throw new Error(first.message);
    expect(first.plan.workers).toEqual(["mix-0", "mix-1"]);
    expect(first.plan.endpoints?.["mix-1"]).toBe("mix-1.mix-workers.ns.svc:50061");
    const back = planFromConfigMap(first.configMap);
    expect(back).toEqual(first.plan);
    const again = desiredPlan(pool, back);
    if (!again.ok) throw new Error(again.message);
    expect(again.plan.version).toBe(first.plan.version);
    expect(again.configMap.data).toEqual(first.configMap.data);
    const scaled = desiredPlan(testPool({ replicas: 3 }), back);
    expect(scaled.ok && scaled.plan.version).toBe(first.plan.version + 1);
  });

  it("reports a plan that cannot fit the cache instead of throwing", () => {
    const pool = testPool({ replicas: 2, cache: { residentExperts: 3 } });
    const r = desiredPlan(pool, undefined);
    expect(r.ok).toBe(false);
    expect(!r.ok && r.message).toMatch(/^capacityPerWorker: 3 slots per worker cannot hold/);
  });

  it("ignores an unreadable plan ConfigMap", () => {
    expect(planFromConfigMap({ data: { "plan.json": "{nope" } })).toBeUndefined();
    expect(planFromConfigMap(undefined)).toBeUndefined();
  });
});
