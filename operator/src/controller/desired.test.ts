import { placedSharedSlices, validatePlan } from "@switchyard/moe";
import { describe, expect, it } from "vitest";
import {
  cacheCapacity,
  denseLayersOf,
  desiredPlan,
  desiredService,
  desiredStatefulSet,
  modelHash,
  planFromConfigMap,
  planLoad,
  sharedSlicesOf,
  workerArgs,
} from "./desired.js";
import { testPool } from "./fixtures.js";

/** Qwen2-MoE-shaped: 8 routed experts of width 16 and a shared expert of width 64, i.e. 4 slices. */
const qwen = (extra: Parameters<typeof testPool>[0] = {}) =>
  testPool({
    ...extra,
    model: {
      architecture: "qwen2-moe",
      topK: 2,
      intermediateSize: 16,
      sharedExperts: 1,
      sharedIntermediateSize: 64,
      ...extra.model,
    },
  });

describe("desiredStatefulSet of a pool the router serves as namespace/name", () => {
  it("labels the workers' metrics with that name: the flag, and the annotation the PodMonitor copies onto `up`", () => {
    const sts = desiredStatefulSet(testPool({}), "team-a/mix");
    const args = sts.spec!.template.spec!.containers[0].args!;
    expect(args.slice(args.indexOf("--pool"), args.indexOf("--pool") + 4)).toEqual([
      "--pool",
      "mix",
      "--metrics-pool",
      "team-a/mix",
    ]);
    expect(sts.spec!.template.metadata!.annotations).toMatchObject({ "switchyard.dev/metrics-pool": "team-a/mix" });
  });
});

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

  it("meets the restricted Pod Security Standard (non-root, no privilege escalation, no capabilities, seccomp)", () => {
    expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, seccompProfile: { type: "RuntimeDefault" } });
    expect(c.securityContext).toEqual({ allowPrivilegeEscalation: false, capabilities: { drop: ["ALL"] } });
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
      // no cache flags: cache.residentExperts unset, each worker sizes its cache from its share of the plan
      "--backend",
      "auto",
      "--queue-capacity",
      "64", // worker.queueCapacity's default: the worker's own (batches waiting behind the running ones)
    ]);
    expect(c.env?.[0]).toEqual({
      name: "SWITCHYARD_WORKER_ID",
      valueFrom: { fieldRef: { fieldPath: "metadata.name" } },
    });
    expect(c.args).not.toContain("--warm"); // warm-up on (the default) leaves the command line as it was
    const cold = desiredStatefulSet(testPool({ worker: { warmUp: false } })).spec!.template.spec!.containers[0];
    expect(cold.args?.slice(-2)).toEqual(["--warm", "false"]);
    // the pods of a pool in the router's namespace carry no metrics-pool (its workers label metrics by --pool)
    expect(c.args).not.toContain("--metrics-pool");
    expect(sts.spec!.template.metadata!.annotations).not.toHaveProperty("switchyard.dev/metrics-pool");
    expect(c.readinessProbe?.grpc).toEqual({ port: 50061, service: "switchyard.v1.ExpertWorker" });
    // Liveness and start-up ask "": the process is up, whether or not its experts are loaded yet.
    expect(c.livenessProbe?.grpc).toEqual({ port: 50061 });
    expect(c.startupProbe?.grpc).toEqual({ port: 50061 });
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

  it("mounts no API token: workers never call the Kubernetes API, and the namespace's default account may hold RBAC", () => {
    expect(pod.automountServiceAccountToken).toBe(false);
    expect(pod.serviceAccountName).toBeUndefined();
    expect(pod.imagePullSecrets).toBeUndefined();
  });

  it("worker.serviceAccountName: the pods run as it, and its own automountServiceAccountToken decides", () => {
    const sa = desiredStatefulSet(testPool({ worker: { serviceAccountName: "moe-workers" } })).spec!.template.spec!;
    expect(sa.serviceAccountName).toBe("moe-workers");
    expect(sa).not.toHaveProperty("automountServiceAccountToken");
  });

  it("worker.imagePullSecrets, else the operator's default; an empty list means none", () => {
    const defaults = { imagePullSecrets: ["regcred"] };
    const secrets = (p: ReturnType<typeof testPool>) =>
      desiredStatefulSet(p, p.metadata.name, defaults).spec!.template.spec!.imagePullSecrets;
    expect(secrets(testPool({}))).toEqual([{ name: "regcred" }]);
    expect(secrets(testPool({ worker: { imagePullSecrets: [{ name: "team-a" }, { name: "mirror" }] } }))).toEqual([
      { name: "team-a" },
      { name: "mirror" },
    ]);
    expect(secrets(testPool({ worker: { imagePullSecrets: [] } }))).toBeUndefined();
    // the init container pulls the same image: the secrets are the pod's, so it gets them too
    const uri = testPool();
    uri.spec.model.checkpoint = { uri: "hf://org/m" };
    const spec = desiredStatefulSet(uri, "mix", defaults).spec!.template.spec!;
    expect(spec.initContainers?.[0].image).toBe(spec.containers[0].image);
    expect(spec.imagePullSecrets).toEqual([{ name: "regcred" }]);
  });

  it("worker.podLabels and podAnnotations reach the pods over the operator's defaults, never over its own labels", () => {
    const p = testPool({
      worker: {
        podLabels: { "cost-center": "team-a", tier: "gpu", "app.kubernetes.io/component": "mine" },
        podAnnotations: { "sidecar.istio.io/inject": "false", "switchyard.dev/model-hash": "mine" },
      },
    });
    const meta = desiredStatefulSet(p, "mix", { podLabels: { "cost-center": "inference", team: "ml" } }).spec!.template
      .metadata!;
    expect(meta.labels).toEqual({
      "cost-center": "team-a", // the pool's own value over the operator's default
      team: "ml",
      tier: "gpu",
      // the CRD refuses the operator's keys in podLabels; were one stored anyway, the operator's value stays
      "app.kubernetes.io/component": "expert-worker",
      "app.kubernetes.io/name": "switchyard",
      "app.kubernetes.io/instance": "mix",
      "app.kubernetes.io/managed-by": "switchyard-operator",
      "switchyard.dev/pool": "mix",
    });
    expect(meta.annotations).toEqual({ "sidecar.istio.io/inject": "false", "switchyard.dev/model-hash": modelHash(p) });
  });

  it("a pool without the new fields and an operator without defaults keep the template's labels and annotations", () => {
    const meta = sts.spec!.template.metadata!;
    expect(Object.keys(meta.labels!).sort()).toEqual([
      "app.kubernetes.io/component",
      "app.kubernetes.io/instance",
      "app.kubernetes.io/managed-by",
      "app.kubernetes.io/name",
      "switchyard.dev/pool",
    ]);
    expect(Object.keys(meta.annotations!)).toEqual(["switchyard.dev/model-hash"]);
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
    // downloaded by an init container of the worker image into that volume, before the worker (and its probes) start
    expect(u.initContainers).toHaveLength(1);
    expect(u.initContainers?.[0]).toMatchObject({
      name: "fetch-checkpoint",
      image: u.containers[0].image,
      command: ["node"],
      args: ["packages/moe/dist/fetch-main.js", "--uri", "hf://org/model", "--dir", "/checkpoint"],
      volumeMounts: [{ name: "checkpoint", mountPath: "/checkpoint" }],
      securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ["ALL"] } },
    });
    expect(v.initContainers).toBeUndefined();
    expect(u.initContainers?.[0].env).toBeUndefined();
    expect(u.initContainers?.[0].resources).toBeUndefined();
    // the disk the download needs: requested by the init container, the emptyDir's limit
    uri.spec.model.checkpoint = { uri: "hf://org/model", downloadSize: "100Gi" };
    const sized = desiredStatefulSet(uri).spec!.template.spec!;
    expect(sized.initContainers?.[0].resources).toEqual({ requests: { "ephemeral-storage": "100Gi" } });
    expect(sized.volumes?.[0]).toEqual({ name: "checkpoint", emptyDir: { sizeLimit: "100Gi" } });
    // a gated Hub repository: the token from the pool's Secret, as HF_TOKEN
    uri.spec.model.checkpoint = { uri: "hf://org/model", tokenSecret: { name: "hf" } };
    expect(desiredStatefulSet(uri).spec!.template.spec!.initContainers?.[0].env).toEqual([
      { name: "HF_TOKEN", valueFrom: { secretKeyRef: { name: "hf", key: "HF_TOKEN" } } },
    ]);
  });

  it("checkpoint.endpoint reaches the fetch-checkpoint init container as HF_ENDPOINT (a Hub mirror)", () => {
    const uri = testPool();
    uri.spec.model.checkpoint = { uri: "hf://org/model", endpoint: "https://hf-mirror.example.com/" };
    const init = desiredStatefulSet(uri).spec!.template.spec!.initContainers?.[0];
    expect(init?.env).toEqual([{ name: "HF_ENDPOINT", value: "https://hf-mirror.example.com/" }]);
    // with a token too: both, the token first (as before the field), so token-only pools keep their template
    uri.spec.model.checkpoint = {
      uri: "hf://org/model",
      tokenSecret: { name: "hf", key: "t" },
      endpoint: "http://m:8080",
    };
    expect(desiredStatefulSet(uri).spec!.template.spec!.initContainers?.[0].env).toEqual([
      { name: "HF_TOKEN", valueFrom: { secretKeyRef: { name: "hf", key: "t" } } },
      { name: "HF_ENDPOINT", value: "http://m:8080" },
    ]);
    // only the init container downloads: the worker itself gets no HF_ENDPOINT
    expect(desiredStatefulSet(uri).spec!.template.spec!.containers[0].env?.map((e) => e.name)).toEqual([
      "SWITCHYARD_WORKER_ID",
    ]);
  });

  it("a worker over several GPUs gets libuv threads for two runs in flight per GPU, and two more", () => {
    expect(c.env).toContainEqual({ name: "UV_THREADPOOL_SIZE", value: "6" }); // gpusPerWorker 2
    const eight = desiredStatefulSet(testPool({ worker: { gpusPerWorker: 8 } })).spec!.template.spec!.containers[0];
    expect(eight.env).toContainEqual({ name: "UV_THREADPOOL_SIZE", value: "18" });
    const one = desiredStatefulSet(testPool({ worker: { gpusPerWorker: 1 } })).spec!.template.spec!.containers[0];
    expect(one.env?.map((e) => e.name)).toEqual(["SWITCHYARD_WORKER_ID"]);
  });

  it("CPU workers request no GPU and get no GPU toleration", () => {
    const cpu = desiredStatefulSet(testPool({ worker: { gpusPerWorker: 0 } })).spec!.template.spec!;
    expect(cpu.containers[0].resources).toBeUndefined();
    expect(cpu.tolerations).toBeUndefined();
  });

  const template = (p: ReturnType<typeof testPool>) => JSON.stringify(desiredStatefulSet(p).spec?.template);

  it("a replica change leaves the pod template as it is, byte for byte: a scale adds or removes pods, rolls none", () => {
    const specs: Parameters<typeof testPool>[0][] = [
      {}, // cache.residentExperts unset: before, --cache-capacity was the share, 16, 11 and 8 for 2, 3 and 4 replicas
      { placement: { strategy: "contiguous", redundantExperts: 1 } },
      { placement: { redundantExperts: 2 }, cache: { hostTier: { enabled: true } } },
      { cache: { residentExperts: 40 } },
      { cache: { residentExperts: 4, hostTier: { enabled: true, capacity: 32 } } },
    ];
    for (const spec of specs) {
      const [two, three, four] = [2, 3, 4].map((replicas) => template(testPool({ ...spec, replicas })));
      expect(three).toBe(two);
      expect(four).toBe(two);
    }
    const [two, four] = [2, 4].map((replicas) => template(qwen({ replicas }))); // shared-expert slices
    expect(four).toBe(two);
  });

  it("rolls the workers for what reaches them (the checkpoint source), not for model fields only the plan or no one reads", () => {
    const a = testPool();
    const t = template(a);
    // read by neither the workers nor the router (the workers read d and the dtype from the checkpoint)
    expect(template(testPool({ model: { hiddenSize: 128 } }))).toBe(t);
    expect(template(testPool({ model: { dtype: "float32" } }))).toBe(t);
    // the shape reaches running workers through the plan, which they reload
    expect(template(testPool({ model: { topK: 4, intermediateSize: 256, sharedExperts: 1 } }))).toBe(t);
    // a field a later CRD revision adds with a default: the API server writes it into every stored pool
    const upgraded = testPool();
    (upgraded.spec.model as Record<string, unknown>).someNewField = "its-default";
    (upgraded.spec.model.checkpoint as Record<string, unknown>).someNewField = "its-default";
    expect(modelHash(upgraded)).toBe(modelHash(a));
    expect(template(upgraded)).toBe(t);
    // the defaults written out: a key left unset hashes as the key it defaults to
    const token = (key?: string) => {
      const p = testPool();
      p.spec.model.checkpoint = { uri: "hf://org/m", tokenSecret: key ? { name: "hf", key } : { name: "hf" } };
      return p;
    };
    expect(modelHash(token())).toBe(modelHash(token("HF_TOKEN")));
    expect(modelHash(token())).not.toBe(modelHash(token("other")));
    // the checkpoint source does roll them
    const other = testPool({ model: { checkpoint: { hostPath: { path: "/models/other" } } } });
    expect(modelHash(other)).not.toBe(modelHash(a));
    expect(template(other)).not.toBe(t);
    const pvc = (subPath?: string) => {
      const p = testPool();
      p.spec.model.checkpoint = { pvc: { claimName: "w", ...(subPath ? { subPath } : {}) } };
      return modelHash(p);
    };
    expect(pvc("m")).not.toBe(pvc());
  });

  it("cache flags: --cache-capacity is cache.residentExperts; --host-cache-capacity the host tier's capacity when on", () => {
    const cacheFlags = (cache: NonNullable<Parameters<typeof testPool>[0]>["cache"]) =>
      workerArgs(testPool({ cache })).filter(
        (_, i, a) => /cache-capacity$/.test(a[i]) || /cache-capacity$/.test(a[i - 1] ?? ""),
      );
    expect(cacheFlags({})).toEqual([]);
    expect(cacheFlags({ residentExperts: 16 })).toEqual(["--cache-capacity", "16"]);
    // the host tier off: its capacity is not used (host = GPU = residentExperts)
    expect(cacheFlags({ residentExperts: 16, hostTier: { enabled: false, capacity: 64 } })).toEqual([
      "--cache-capacity",
      "16",
    ]);
    // on without a capacity: the worker's host tier holds its whole share (the worker's default)
    expect(cacheFlags({ residentExperts: 16, hostTier: { enabled: true } })).toEqual(["--cache-capacity", "16"]);
    expect(cacheFlags({ residentExperts: 16, hostTier: { enabled: true, capacity: 64 } })).toEqual([
      "--cache-capacity",
      "16",
      "--host-cache-capacity",
      "64",
    ]);
    expect(cacheFlags({ hostTier: { enabled: true, capacity: 64 } })).toEqual(["--host-cache-capacity", "64"]);
  });

  it("cache capacity defaults to the worker's share of every copy", () => {
    expect(cacheCapacity(testPool({ replicas: 2, placement: { redundantExperts: 2 } }))).toBe(20);
    expect(cacheCapacity(testPool({ cache: { residentExperts: 7, hostTier: { enabled: true } } }))).toBe(7);
  });

  it("default cache capacity holds the largest share of a contiguous layout, not the mean", () => {
    for (const redundantExperts of [0, 2]) {
      const pool = testPool({ replicas: 3, placement: { strategy: "contiguous", redundantExperts } });
      const r = desiredPlan(pool, undefined);
      if (!r.ok) throw new Error(r.message);
      expect(cacheCapacity(pool)).toBeGreaterThanOrEqual(Math.max(...r.stats.slotsPerWorker));
    }
    // Without redundant copies the share does not depend on load: exactly the largest one (3 experts × 4 layers).
    expect(cacheCapacity(testPool({ replicas: 3, placement: { strategy: "contiguous" } }))).toBe(12);
  });
});

describe("dense layers (model.firstDenseLayers, model.denseLayers)", () => {
  // DeepSeek-V3-shaped: num_hidden_layers counts the first_k_dense_replace dense layers. Before, `layers` said "MoE
  // layers": set to 58 the plan had 58 rows and the router and the workers (num_hidden_layers 61) refused it; set to
  // 61 the 3 dense layers got copies that took cache slots (--cache-capacity) and counted in the imbalance.
  const ds = (model: Record<string, unknown>) =>
    testPool({ replicas: 4, placement: { redundantExperts: 4 }, model: { layers: 6, ...model } });

  it("gives them empty rows, no cache slots, and leaves them out of the imbalance", () => {
    const pool = ds({ firstDenseLayers: 2, denseLayers: [1, 4] });
    expect(denseLayersOf(pool.spec.model)).toEqual([0, 1, 4]);
    const r = desiredPlan(pool, undefined);
    if (!r.ok) throw new Error(r.message);
    expect(r.plan.replicas).toHaveLength(6);
    for (const l of [0, 1, 4]) expect(r.plan.replicas[l]).toEqual([]);
    for (const l of [2, 3, 5]) expect(r.plan.replicas[l]).toHaveLength(8);
    // 3 MoE layers × (8 + 4) copies over 4 workers
    expect(r.stats.slotsPerWorker).toEqual([9, 9, 9, 9]);
    expect(cacheCapacity(pool)).toBe(9);
    expect(cacheCapacity(ds({}))).toBe(18);
    expect(r.stats.maxImbalance).toBe(1);
    // and planning again changes nothing
    const again = desiredPlan(pool, r.plan);
    expect(again.ok && again.plan.version).toBe(r.plan.version);
  });

  it("a pool that names its dense layers replaces a plan with copies there", () => {
    const before = desiredPlan(ds({}), undefined);
    if (!before.ok) throw new Error(before.message);
    const after = desiredPlan(ds({ firstDenseLayers: 1 }), before.plan);
    expect(after.ok && after.plan.version).toBe(before.plan.version + 1);
    expect(after.ok && after.plan.replicas[0]).toEqual([]);
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

  it("reports a contiguous layout that puts more copies on a worker than its cache holds", () => {
    // 4 layers x 8 experts on 3 workers: 11 slots each hold the 32 copies on average, but expert e mod 3 gives
    // workers 0 and 1 three experts a layer (12 in all).
    const pool = testPool({ replicas: 3, cache: { residentExperts: 11 }, placement: { strategy: "contiguous" } });
    const r = desiredPlan(pool, undefined);
    expect(r.ok).toBe(false);
    expect(!r.ok && r.message).toMatch(/^cache\.residentExperts: .*mix-0.* 12 /);
    // Room for the largest share: published.
    expect(desiredPlan(testPool({ ...pool.spec, cache: { residentExperts: 12 } }), undefined).ok).toBe(true);
    // A host tier holds the rest: the cache size is soft.
    const soft = testPool({ ...pool.spec, cache: { residentExperts: 11, hostTier: { enabled: true } } });
    expect(desiredPlan(soft, undefined).ok).toBe(true);
  });

  it("ignores an unreadable plan ConfigMap", () => {
    expect(planFromConfigMap({ data: { "plan.json": "{nope" } })).toBeUndefined();
    expect(planFromConfigMap(undefined)).toBeUndefined();
  });
});

describe("the shared expert's slices", () => {
  const slicesOf = (p: ReturnType<typeof testPool>) => sharedSlicesOf(p.spec.model, p.spec.placement);

  it("sharedSlicesOf: shared width over routed width on Workers (the default), 0 on Router or without one", () => {
    expect(qwen().spec.placement.sharedExperts).toBe("Workers");
    expect(slicesOf(qwen())).toBe(4);
    expect(slicesOf(qwen({ placement: { sharedExperts: "Router" } }))).toBe(0);
    // DeepSeek-V3-shaped: no sharedIntermediateSize means sharedExperts × intermediateSize.
    expect(slicesOf(testPool({ model: { architecture: "deepseek-v3", sharedExperts: 1 } }))).toBe(1);
    expect(slicesOf(testPool({ model: { architecture: "deepseek-v3", sharedExperts: 2 } }))).toBe(2);
    expect(slicesOf(testPool())).toBe(0);
    // Qwen2-MoE without its width (a pool stored before the field existed): the router keeps it, no plan change
    const old = qwen();
    delete (old.spec.model as { sharedIntermediateSize?: number }).sharedIntermediateSize;
    expect(slicesOf(old)).toBe(0);
    expect(
      desiredPlan(old, undefined).ok &&
        (desiredPlan(old, undefined) as { plan: { replicas: number[][][] } }).plan.replicas[0].length,
    ).toBe(old.spec.model.experts);
    expect(slicesOf(qwen({ model: { sharedExperts: 0 } }))).toBe(0);
    expect(() => slicesOf(qwen({ model: { sharedIntermediateSize: 40 } }))).toThrow(
      /^model\.sharedIntermediateSize: 40 is not a multiple of model\.intermediateSize 16/,
    );
  });

  it("Workers: every layer lists experts + slices, the slices spread over the workers", () => {
    const pool = qwen({ replicas: 4 });
    const r = desiredPlan(pool, undefined);
    if (!r.ok) throw new Error(r.message);
    expect(r.plan.replicas).toHaveLength(4);
    for (const layer of r.plan.replicas) {
      expect(layer).toHaveLength(12);
      // Each slice carries every token (4 expert-loads here), so balanced packing gives each its own worker.
      const slices = layer.slice(8);
      expect(slices.every((h) => h.length === 1)).toBe(true);
      expect(new Set(slices.flat()).size).toBe(4);
    }
    expect(placedSharedSlices(r.plan, 8, 4)).toBe(4);
    expect(() => validatePlan(r.plan, { layers: 4, experts: 8, sharedSlices: 4 })).not.toThrow();
    expect(r.stats.slotsPerWorker).toEqual([12, 12, 12, 12]); // 4 layers × 12 ids over 4 workers
    const back = planFromConfigMap(r.configMap);
    expect(back).toEqual(r.plan);
    const again = desiredPlan(pool, back);
    expect(again.ok && again.plan.version).toBe(r.plan.version);
  });

  it("Router: the plan lists the routed experts only; switching to Workers bumps the version", () => {
    const router = desiredPlan(qwen({ placement: { sharedExperts: "Router" } }), undefined);
    if (!router.ok) throw new Error(router.message);
    for (const layer of router.plan.replicas) expect(layer).toHaveLength(8);
    expect(placedSharedSlices(router.plan, 8, 4)).toBe(0);
    const workers = desiredPlan(qwen(), router.plan);
    if (!workers.ok) throw new Error(workers.message);
    expect(workers.plan.version).toBe(router.plan.version + 1);
    expect(workers.plan.replicas[0]).toHaveLength(12);
  });

  it("DeepSeek-shaped sharedExperts 1 without a width: one slice", () => {
    const r = desiredPlan(testPool({ model: { architecture: "deepseek-v3", sharedExperts: 1 } }), undefined);
    if (!r.ok) throw new Error(r.message);
    for (const layer of r.plan.replicas) expect(layer).toHaveLength(9);
  });

  it("takes the routed experts' heat (rows of model.experts entries) and loads the slices with every token", () => {
    const heat = Array.from({ length: 4 }, () => [40, 0, 0, 0, 0, 0, 0, 0]); // 20 tokens a layer at topK 2
    const r = desiredPlan(qwen({ replicas: 2, placement: { redundantExperts: 1 } }), undefined, heat);
    if (!r.ok) throw new Error(r.message);
    // The one redundant copy goes to the hot expert 0 (40 > each slice's 20), not to a slice.
    for (const layer of r.plan.replicas) {
      expect(layer[0]).toHaveLength(2);
      expect(layer.slice(8).every((h) => h.length === 1)).toBe(true);
    }
    // heat that came with the slices' own series is used as it is
    const withSlices = heat.map((row) => [...row, 20, 20, 20, 20]);
    expect(desiredPlan(qwen(), undefined, withSlices).ok).toBe(true);
    const bad = desiredPlan(
      qwen(),
      undefined,
      heat.map((row) => [...row, 20]),
    );
    expect(!bad.ok && bad.message).toBe("load[0]: has 9 entries, want 8 or 12");
    const short = desiredPlan(qwen(), undefined, heat.slice(1));
    expect(!short.ok && short.message).toBe("load: has 3 layers, want 4");
  });

  it("the slices count against the cache: default capacity includes them, a too small one is reported", () => {
    expect(cacheCapacity(qwen({ replicas: 3 }))).toBe(16); // 4 layers × (8 + 4) over 3 workers
    expect(cacheCapacity(qwen({ replicas: 3, placement: { sharedExperts: "Router" } }))).toBe(11);
    const r = desiredPlan(qwen({ replicas: 2, cache: { residentExperts: 16 } }), undefined);
    expect(!r.ok && r.message).toMatch(/^capacityPerWorker: 16 slots per worker cannot hold 4 layers × 12 copies/);
    expect(desiredPlan(qwen({ replicas: 2, cache: { residentExperts: 24 } }), undefined).ok).toBe(true);
  });

  it("a width that does not divide is a PlacementFailed message, not a throw", () => {
    const r = desiredPlan(qwen({ model: { sharedIntermediateSize: 40 } }), undefined);
    expect(!r.ok && r.message).toMatch(/^model\.sharedIntermediateSize: 40 is not a multiple/);
  });
});

describe("planLoad: the heat as the planner takes it", () => {
  // Qwen2-MoE-shaped: 8 experts top-4 (the fixture's), a shared expert of 2 slices
  const pool = testPool({
    model: { architecture: "qwen2-moe", layers: 1, sharedExperts: 1, sharedIntermediateSize: 0 },
  });
  const m = { ...pool.spec.model, sharedIntermediateSize: 2 * pool.spec.model.intermediateSize };
  const place = pool.spec.placement;

  it("uses the slices' own heat when it came with them, else estimates it from the routed heat", () => {
    const E = m.experts;
    const routed = [Array.from({ length: E }, (_, e) => (e === 0 ? 40 : 8))];
    const tokens = routed[0].reduce((a, b) => a + b, 0) / m.topK;
    expect(planLoad(m, place, routed)).toEqual([[...routed[0], tokens, tokens]]);
    const measured = [[...routed[0], 5, 5]]; // e.g. routed_only traffic never reached the slices
    expect(planLoad(m, place, measured)).toEqual(measured);
    expect(planLoad(m, place, undefined)?.[0]).toHaveLength(E + 2);
  });

  it("estimates a layer's slices whose columns counted nothing (a stale series), per layer", () => {
    // Before: a slice column at 0 was taken as measured, and the slices, which see every token, planned as idle.
    const E = m.experts;
    const two = { ...m, layers: 2 };
    const routed = Array.from({ length: E }, () => 8);
    const tokens = (8 * E) / m.topK;
    const heat = [
      [...routed, 0, 0],
      [...routed, 50, 50],
    ];
    expect(planLoad(two, place, heat)).toEqual([
      [...routed, tokens, tokens],
      [...routed, 50, 50],
    ]);
    expect(planLoad(two, place, [[...routed, 0, 50], heat[1]])?.[0]).toEqual([...routed, tokens, tokens]);
  });

  it("drops slice columns when the shared expert is in the router", () => {
    const E = m.experts;
    const measured = [[...new Array(E).fill(1), 9, 9]];
    expect(planLoad(m, { ...place, sharedExperts: "Router" }, measured)).toEqual([new Array(E).fill(1)]);
  });
});
