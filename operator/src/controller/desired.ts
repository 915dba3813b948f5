// Desired children of an ExpertPool, computed from the pool alone (plus the previous plan, for stability).
// Pure: no I/O. The reconciler compares these with what it observes and applies only the difference.
import { createHash } from "node:crypto";
import type {
  V1ConfigMap,
  V1EnvVar,
  V1ObjectMeta,
  V1Service,
  V1StatefulSet,
  V1Toleration,
} from "@kubernetes/client-node";
import {
  DATA_PATH_NODE_FLAGS,
  loadWithSharedSlices,
  PlacementError,
  type PlacementPlan,
  type PlanStats,
  planPlacement,
  validatePlan,
} from "@switchyard/moe";
import type { ExpertPool, ExpertPoolSpec } from "../api/v1alpha1.js";
import {
  CHECKPOINT_MOUNT,
  childLabels,
  METRICS_POOL_ANNOTATION,
  MODEL_HASH_ANNOTATION,
  ownerRef,
  PLAN_KEY,
  PLAN_MOUNT,
  planConfigMapName,
  selectorLabels,
  serviceName,
  statefulSetName,
  WORKER_DATA_PORT,
  WORKER_GRPC_PORT,
  WORKER_METRICS_PORT,
  WORKER_READY_SERVICE,
  workerAddress,
  workerIds,
} from "./names.js";

export const GPU_RESOURCE = "nvidia.com/gpu";

/**
 * Slices of a routed expert's width the workers serve the shared expert as (expert ids experts .. experts+m-1 in
 * the plan; @switchyard/moe shared-slices.ts): 0 when it stays in the router or the model has none. The CRD's
 * fields stand in for a ModelSpec here (unset sharedIntermediateSize = sharedExperts × intermediateSize), so this
 * is spec.ts sharedSlices for an ExpertPool; the CRD's CEL rule keeps the width a multiple, checked again here.
 */
export function sharedSlicesOf(model: ExpertPoolSpec["model"], placement: ExpertPoolSpec["placement"]): number {
  if (placement.sharedExperts !== "Workers" || model.sharedExperts === 0) return 0;
  // Without sharedIntermediateSize the width is known only for DeepSeek-V3 (n_shared_experts × moe_intermediate_size).
  // A Qwen2-MoE pool without it (Qwen1.5-MoE-A2.7B: 5632, not 1408) keeps the shared expert in the router rather than
  // publish a plan of the wrong length, which the routers and workers would refuse; pools stored before the field
  // existed, where the API server now defaults placement.sharedExperts to Workers, keep their plan that way.
  const width =
    model.sharedIntermediateSize ??
    (model.architecture === "deepseek-v3" ? model.sharedExperts * model.intermediateSize : undefined);
  if (width === undefined) return 0;
  if (width % model.intermediateSize !== 0)
    throw new PlacementError(
      "model.sharedIntermediateSize",
      `${width} is not a multiple of model.intermediateSize ${model.intermediateSize}; set placement.sharedExperts to Router`,
    );
  return width / model.intermediateSize;
}

/**
 * Layers without routed experts, ascending: the first `model.firstDenseLayers` (DeepSeek first_k_dense_replace) and
 * `model.denseLayers` (Qwen mlp_only_layers, or the layers decoder_sparse_step skips). Their plan rows are empty and
 * they take no cache slots; `model.layers` counts them (num_hidden_layers), as the router and the workers do.
 */
export function denseLayersOf(model: ExpertPoolSpec["model"]): number[] {
  const dense = new Set<number>();
  for (let l = 0; l < Math.min(model.firstDenseLayers ?? 0, model.layers); l++) dense.add(l);
  for (const l of model.denseLayers ?? []) if (Number.isInteger(l) && l >= 0 && l < model.layers) dense.add(l);
  return [...dense].sort((a, b) => a - b);
}

/** Layers with routed experts: the ones the plan places copies in and the cache holds. */
export function moeLayerCount(model: ExpertPoolSpec["model"]): number {
  return model.layers - denseLayersOf(model).length;
}

/**
 * The heat as the planner takes it, rows of experts + slices. A layer whose slice columns all counted tokens (the
 * router counts the tokens it sends them, as expert ids experts + j) is used as it is; a layer without them, or with
 * a slice column at 0 (a stale series: every token goes through the slices, so 0 means the count stopped, not that
 * they idle), gets its slices estimated from its routed heat (loadWithSharedSlices: each sees every token). Without
 * slices, rows are the routed experts (a slice column from before the pool moved the shared expert to the router is
 * dropped).
 */
export function planLoad(
  model: ExpertPoolSpec["model"],
  placement: ExpertPoolSpec["placement"],
  load: number[][] | undefined,
): number[][] | undefined {
  const { layers, experts, topK } = model;
  const slices = sharedSlicesOf(model, placement);
  load?.forEach((row, l) => {
    if (row.length === experts || (slices > 0 && row.length === experts + slices)) return;
    if (slices === 0 && row.length > experts) return; // slice columns from before the shared expert moved back
    throw new PlacementError(
      `load[${l}]`,
      slices > 0
        ? `has ${row.length} entries, want ${experts} or ${experts + slices}`
        : `has ${row.length} experts, want ${experts}`,
    );
  });
  if (slices === 0) return load?.map((row) => (row.length > experts ? row.slice(0, experts) : row));
  const estimate = loadWithSharedSlices(
    load?.map((row) => row.slice(0, experts)),
    layers,
    experts,
    slices,
    topK,
  );
  if (load?.length !== layers) return estimate;
  return estimate.map((row, l) => {
    const measured = load[l];
    const counted = measured.length === experts + slices && measured.slice(experts).every((x) => x > 0);
    return counted ? measured : row;
  });
}

/** Metadata of an object the pool owns: its namespace, the pool's labels, an owner reference to it. */
function childMetadata(pool: ExpertPool, name: string): V1ObjectMeta {
  return {
    name,
    namespace: pool.metadata.namespace,
    labels: childLabels(pool.metadata.name),
    ownerReferences: [ownerRef(pool)],
  };
}

/**
 * Slots a worker's share of the plan may take: cache.residentExperts, else the largest share of every copy the
 * planner lays out (rounded up). Judges plans only (rebalance.ts planFitsPool): it is not passed to the workers when
 * residentExperts is unset, since it depends on spec.replicas and the pod template must not (a `kubectl scale` would
 * roll every worker); each worker sizes its cache from its own share of the plan instead (workerArgs).
 */
export function cacheCapacity(pool: ExpertPool): number {
  const { spec } = pool;
  if (spec.cache.residentExperts !== undefined) return spec.cache.residentExperts;
  // The shared slices are placed like experts, so each worker's share includes them.
  const experts = spec.model.experts + sharedSlicesOf(spec.model, spec.placement);
  const replicas = Math.max(1, spec.replicas);
  const redundant = spec.placement.redundantExperts;
  if (spec.placement.strategy === "contiguous") {
    // Expert e on worker e mod replicas: the first workers get ceil(experts / replicas) a layer, not the mean; a
    // redundant copy adds at most one to a worker (which copies go where follows the load, so bound it).
    return Math.max(1, moeLayerCount(spec.model) * Math.min(experts, Math.ceil(experts / replicas) + redundant));
  }
  // Dense layers hold no copies: counting them would size every worker's cache for experts it never gets.
  const slots = moeLayerCount(spec.model) * (experts + redundant);
  return Math.max(1, Math.ceil(slots / replicas));
}

/**
 * Short hash of what of spec.model reaches the worker pods: the checkpoint source, each field named and its default
 * written out. The workers read the model's shape from the checkpoint's config.json, not from the spec: hiddenSize
 * and dtype reach no one, and layers, experts and the rest only the plan, which running workers reload. Naming the
 * fields also keeps a field a later CRD revision adds under spec.model (the API server writes its default into every
 * stored pool) from rolling the workers of every pool.
 */
export function modelHash(pool: ExpertPool): string {
  const c = pool.spec.model.checkpoint;
  const source = {
    pvc: c.pvc && { claimName: c.pvc.claimName, subPath: c.pvc.subPath ?? "" },
    hostPath: c.hostPath && { path: c.hostPath.path },
    uri: c.uri,
    downloadSize: c.downloadSize === undefined ? undefined : String(c.downloadSize),
    endpoint: c.endpoint,
    tokenSecret: c.tokenSecret && { name: c.tokenSecret.name, key: c.tokenSecret.key ?? "HF_TOKEN" },
  };
  return createHash("sha256").update(JSON.stringify(source)).digest("hex").slice(0, 16);
}

function checkpointVolume(pool: ExpertPool) {
  const c = pool.spec.model.checkpoint;
  if (c.pvc) return { name: "checkpoint", persistentVolumeClaim: { claimName: c.pvc.claimName, readOnly: true } };
  if (c.hostPath) return { name: "checkpoint", hostPath: { path: c.hostPath.path, type: "Directory" } };
  // uri: the init container downloads into it; downloadSize bounds it (the node evicts a pod past its limit)
  return { name: "checkpoint", emptyDir: c.downloadSize !== undefined ? { sizeLimit: String(c.downloadSize) } : {} };
}

/**
 * The cache flags (expert-worker README "Cache tiers"), none of which depends on spec.replicas. --cache-capacity
 * (the GPU slots; a CPU worker's one tier) only with cache.residentExperts: unset, the worker sizes its cache from
 * its share of the plan, and re-sizes it when a scale changes the share. --host-cache-capacity (the host tier behind
 * the GPU slots) only with cache.hostTier.enabled and its capacity: unset, the worker's host tier holds its whole
 * share. With the host tier off the planner keeps every share within residentExperts, so host = GPU = residentExperts.
 */
function cacheArgs(pool: ExpertPool): string[] {
  const { residentExperts, hostTier } = pool.spec.cache;
  const args: string[] = [];
  if (residentExperts !== undefined) args.push("--cache-capacity", String(residentExperts));
  if (hostTier.enabled && hostTier.capacity !== undefined)
    args.push("--host-cache-capacity", String(hostTier.capacity));
  return args;
}

/**
 * The worker command line of docs/CONTRACTS.md, after `node` and the data-path V8 flags (DATA_PATH_NODE_FLAGS).
 * The worker id comes from the pod name (downward API). metricsPool: the name the router serves the pool under
 * (routing.ts routerPoolName), the `pool` label of the worker's metrics, so that dashboards and the router's load
 * queries find a pool's router and worker series under one name.
 */
export function workerArgs(pool: ExpertPool, metricsPool = pool.metadata.name): string[] {
  const { spec } = pool;
  const args = [
    ...DATA_PATH_NODE_FLAGS,
    "expert-worker/dist/main.js",
    "--checkpoint",
    CHECKPOINT_MOUNT,
    "--pool",
    pool.metadata.name,
    // Only where the names differ: a pool in the router's namespace keeps the command line (and pods) it had.
    ...(metricsPool !== pool.metadata.name ? ["--metrics-pool", metricsPool] : []),
    "--port",
    String(WORKER_GRPC_PORT),
    "--metrics-port",
    String(WORKER_METRICS_PORT),
    "--data-port",
    String(WORKER_DATA_PORT),
    "--plan",
    `${PLAN_MOUNT}/${PLAN_KEY}`,
    ...cacheArgs(pool),
    "--backend",
    spec.worker.backend,
    "--queue-capacity",
    String(spec.worker.queueCapacity),
  ];
  // Only when off: the default leaves the pods' command line (and so their template) as it was before the field.
  if (spec.worker.warmUp === false) args.push("--warm", "false");
  return args;
}

/**
 * Cluster-wide defaults for worker pods, from the operator's command line (options.ts: --worker-image-pull-secret,
 * --worker-pod-label), so that a chart can give every pool's workers its pull secrets and common labels.
 */
export interface WorkerPodDefaults {
  /** Secrets (each in the pool's namespace) for pools that set no worker.imagePullSecrets. */
  imagePullSecrets?: string[];
  /** Labels under every pool's worker.podLabels (a pool's own value wins). */
  podLabels?: Record<string, string>;
}

/**
 * The worker pods' identity and pull credentials. Workers never call the Kubernetes API, so a pool that names no
 * ServiceAccount runs as the namespace's default one with no token mounted: that account may hold more than its
 * name suggests (a chart installed with operator.serviceAccount.create=false binds the operator's RBAC to it), and
 * a worker runs a user-chosen image that downloads from arbitrary URLs. A pool that names one chose an identity on
 * purpose (workload identity for a private bucket, a registry credential on the account): the pod then leaves
 * automountServiceAccountToken unset, so the account's own setting decides, as it would for any pod of it.
 */
function podIdentity(worker: ExpertPoolSpec["worker"], defaults: WorkerPodDefaults) {
  // An empty list is the pool saying "none", not "unset": it overrides the operator's default.
  const secrets = worker.imagePullSecrets?.map((s) => s.name) ?? defaults.imagePullSecrets ?? [];
  return {
    ...(worker.serviceAccountName
      ? { serviceAccountName: worker.serviceAccountName }
      : { automountServiceAccountToken: false }),
    ...(secrets.length ? { imagePullSecrets: secrets.map((name) => ({ name })) } : {}),
  };
}

/**
 * metricsPool: see workerArgs (the pool's name where the router serves it under that). defaults: the operator's
 * --worker-* flags (WorkerPodDefaults).
 */
export function desiredStatefulSet(
  pool: ExpertPool,
  metricsPool = pool.metadata.name,
  defaults: WorkerPodDefaults = {},
): V1StatefulSet {
  const { spec } = pool;
  const name = pool.metadata.name;
  const gpus = spec.worker.gpusPerWorker;
  const requests: Record<string, string> = {};
  const limits: Record<string, string> = {};
  for (const [k, v] of Object.entries(spec.worker.resources?.requests ?? {})) requests[k] = String(v);
  for (const [k, v] of Object.entries(spec.worker.resources?.limits ?? {})) limits[k] = String(v);
  if (gpus > 0) {
    // Extended resources must have requests == limits; setting both says so explicitly.
    requests[GPU_RESOURCE] = String(gpus);
    limits[GPU_RESOURCE] = String(gpus);
  }
  const tolerations: V1Toleration[] = (spec.worker.tolerations ?? []).map((t) => ({ ...t }));
  if (gpus > 0 && !tolerations.some((t) => t.key === GPU_RESOURCE)) {
    // GPU node pools are commonly tainted nvidia.com/gpu:NoSchedule (GKE, the NVIDIA operator).
    tolerations.push({ key: GPU_RESOURCE, operator: "Exists", effect: "NoSchedule" });
  }
  const ckpt = spec.model.checkpoint;
  const resources: Record<string, Record<string, string>> = {};
  if (Object.keys(requests).length) resources.requests = requests;
  if (Object.keys(limits).length) resources.limits = limits;
  const grpcProbe = { grpc: { port: WORKER_GRPC_PORT } };
  const env: V1EnvVar[] = [{ name: "SWITCHYARD_WORKER_ID", valueFrom: { fieldRef: { fieldPath: "metadata.name" } } }];
  // A worker over several GPUs (expert-worker/src/backend/multi-device.ts) keeps two runs in flight per device, each
  // waiting for its GPU on one of libuv's threads (4 by default): two more per GPU, and two left for the expert
  // uploads and checkpoint reads those runs overlap.
  if (gpus > 1) env.push({ name: "UV_THREADPOOL_SIZE", value: String(2 * gpus + 2) });
  const containerSecurity = { allowPrivilegeEscalation: false, capabilities: { drop: ["ALL"] } };
  return {
    apiVersion: "apps/v1",
    kind: "StatefulSet",
    metadata: childMetadata(pool, statefulSetName(name)),
    spec: {
      replicas: spec.replicas,
      serviceName: serviceName(name),
      // Workers are independent (no ordinal start-up order); Parallel brings a pool up in one step.
      podManagementPolicy: "Parallel",
      updateStrategy: { type: "RollingUpdate" },
      selector: { matchLabels: selectorLabels(name) },
      template: {
        metadata: {
          // The operator's own labels last: they select and own the pods (the CRD refuses those keys in
          // podLabels, and the options parser in --worker-pod-label; this keeps them even for a pool it did not).
          labels: { ...defaults.podLabels, ...spec.worker.podLabels, ...childLabels(name) },
          annotations: {
            ...spec.worker.podAnnotations,
            [MODEL_HASH_ANNOTATION]: modelHash(pool),
            ...(metricsPool !== name ? { [METRICS_POOL_ANNOTATION]: metricsPool } : {}),
          },
        },
        spec: {
          ...podIdentity(spec.worker, defaults),
          enableServiceLinks: false,
          terminationGracePeriodSeconds: 30,
          // Pod Security Standards "restricted", as the chart's router and operator: the worker images run as
          // 10001 (docker/worker*.Dockerfile). No fsGroup: it would re-own a checkpoint volume of hundreds of GB at
          // every mount.
          securityContext: {
            runAsNonRoot: true,
            runAsUser: 10001,
            runAsGroup: 10001,
            seccompProfile: { type: "RuntimeDefault" },
          },
          ...(spec.worker.priorityClassName ? { priorityClassName: spec.worker.priorityClassName } : {}),
          ...(spec.worker.nodeSelector && Object.keys(spec.worker.nodeSelector).length
            ? { nodeSelector: { ...spec.worker.nodeSelector } }
            : {}),
          ...(tolerations.length ? { tolerations } : {}),
          topologySpreadConstraints: [
            {
              maxSkew: 1,
              topologyKey: "kubernetes.io/hostname",
              whenUnsatisfiable: "ScheduleAnyway",
              labelSelector: { matchLabels: selectorLabels(name) },
            },
          ],
          ...(ckpt.uri ? { initContainers: [fetchCheckpointContainer(pool, containerSecurity)] } : {}),
          containers: [
            {
              name: "worker",
              image: spec.worker.image,
              imagePullPolicy: spec.worker.imagePullPolicy,
              securityContext: containerSecurity,
              command: ["node"],
              args: workerArgs(pool, metricsPool),
              env,
              ports: [
                { name: "grpc", containerPort: WORKER_GRPC_PORT, protocol: "TCP" },
                { name: "data", containerPort: WORKER_DATA_PORT, protocol: "TCP" },
                { name: "metrics", containerPort: WORKER_METRICS_PORT, protocol: "TCP" },
              ],
              // The worker serves grpc.health.v1 on its gRPC port: "" is SERVING once it listens (liveness, start-up);
              // its service's own name once its served experts are loaded (readiness: the headless Service publishes
              // the pod's DNS name only then, so the router reaches no worker that would load on the first batch).
              readinessProbe: {
                grpc: { port: WORKER_GRPC_PORT, service: WORKER_READY_SERVICE },
                periodSeconds: 5,
                failureThreshold: 3,
              },
              livenessProbe: { ...grpcProbe, periodSeconds: 10, failureThreshold: 6 },
              // Opening a checkpoint can take a while; liveness waits for the first success.
              startupProbe: { ...grpcProbe, periodSeconds: 10, failureThreshold: 90 },
              ...(Object.keys(resources).length ? { resources } : {}),
              volumeMounts: [
                {
                  name: "checkpoint",
                  mountPath: CHECKPOINT_MOUNT,
                  readOnly: true,
                  ...(ckpt.pvc?.subPath ? { subPath: ckpt.pvc.subPath } : {}),
                },
                { name: "plan", mountPath: PLAN_MOUNT, readOnly: true },
              ],
            },
          ],
          volumes: [checkpointVolume(pool), { name: "plan", configMap: { name: planConfigMapName(name) } }],
        },
      },
    },
  } as V1StatefulSet;
}

/**
 * checkpoint.uri: an init container of the worker image downloads the checkpoint into the pod's checkpoint volume
 * (an emptyDir) before the worker starts (packages/moe/src/fetch-main.ts). An init container, not the worker itself:
 * probes do not run during it, so a download of hundreds of GB is not cut short by the start-up probe. A restarted
 * container finds the finished files and skips them. checkpoint.tokenSecret and checkpoint.endpoint reach it as
 * HF_TOKEN and HF_ENDPOINT (a Hub mirror).
 */
function fetchCheckpointContainer(pool: ExpertPool, securityContext: object) {
  const { worker } = pool.spec;
  const { tokenSecret: token, downloadSize: size, endpoint } = pool.spec.model.checkpoint;
  // The fetcher reads both from its environment (packages/moe/src/fetch/uri.ts); the token first, as it was before
  // checkpoint.endpoint existed, so that a token-only pool keeps its pod template (and its workers) as they are.
  const env: V1EnvVar[] = [];
  if (token)
    env.push({ name: "HF_TOKEN", valueFrom: { secretKeyRef: { name: token.name, key: token.key ?? "HF_TOKEN" } } });
  if (endpoint) env.push({ name: "HF_ENDPOINT", value: endpoint });
  return {
    name: "fetch-checkpoint",
    image: worker.image,
    imagePullPolicy: worker.imagePullPolicy,
    securityContext,
    command: ["node"],
    args: [
      "packages/moe/dist/fetch-main.js",
      "--uri",
      pool.spec.model.checkpoint.uri as string,
      "--dir",
      CHECKPOINT_MOUNT,
    ],
    volumeMounts: [{ name: "checkpoint", mountPath: CHECKPOINT_MOUNT }],
    // the scheduler then picks a node with the disk for it (an emptyDir lives on the node's ephemeral storage)
    ...(size !== undefined ? { resources: { requests: { "ephemeral-storage": String(size) } } } : {}),
    ...(env.length ? { env } : {}),
  };
}

export function desiredService(pool: ExpertPool): V1Service {
  const name = pool.metadata.name;
  return {
    apiVersion: "v1",
    kind: "Service",
    metadata: childMetadata(pool, serviceName(name)),
    spec: {
      // Headless: the router dials each worker by its stable pod DNS name, never a load-balanced VIP.
      clusterIP: "None",
      selector: selectorLabels(name),
      ports: [
        { name: "grpc", port: WORKER_GRPC_PORT, targetPort: WORKER_GRPC_PORT, protocol: "TCP" },
        { name: "data", port: WORKER_DATA_PORT, targetPort: WORKER_DATA_PORT, protocol: "TCP" },
        { name: "metrics", port: WORKER_METRICS_PORT, targetPort: WORKER_METRICS_PORT, protocol: "TCP" },
      ],
    },
  } as V1Service;
}

/** Reads the plan a ConfigMap holds; undefined when absent or unreadable (a fresh plan is made instead). */
export function planFromConfigMap(cm: V1ConfigMap | undefined, key = PLAN_KEY): PlacementPlan | undefined {
  const text = cm?.data?.[key];
  if (!text) return undefined;
  try {
    return validatePlan(JSON.parse(text));
  } catch {
    return undefined;
  }
}

/**
 * Key of the plan ConfigMap that, during a make-before-break transition (plan-transition.ts), holds the plan it moves
 * to: kept there, not in memory, so that every pass (after a restart or a leader change too) moves to the same plan
 * while the new workers warm up. Absent at rest. The routers and workers read only plan.json.
 */
export const TARGET_PLAN_KEY = "target-plan.json";

/** The plan a transition in progress moves to, as its ConfigMap holds it; undefined when none (or unreadable). */
export function targetPlanFromConfigMap(cm: V1ConfigMap | undefined): PlacementPlan | undefined {
  return planFromConfigMap(cm, TARGET_PLAN_KEY);
}

/**
 * The ConfigMap `<pool>-placement` publishing a plan (key plan.json), owned by the pool; with `target`, a transitional
 * plan and the plan it moves to (TARGET_PLAN_KEY).
 */
export function planConfigMap(pool: ExpertPool, plan: PlacementPlan, target?: PlacementPlan): V1ConfigMap {
  const name = pool.metadata.name;
  return {
    apiVersion: "v1",
    kind: "ConfigMap",
    metadata: childMetadata(pool, planConfigMapName(name)),
    data: { [PLAN_KEY]: JSON.stringify(plan), ...(target ? { [TARGET_PLAN_KEY]: JSON.stringify(target) } : {}) },
  };
}

export type PlanOutcome =
  | { ok: true; plan: PlacementPlan; stats: PlanStats; configMap: V1ConfigMap }
  | { ok: false; message: string };

/**
 * The placement plan for a pool. `load` is the routed experts' heat per [layer][expert] (`model.experts` entries a
 * row), or undefined for uniform routing. When the workers serve the shared expert, its slices are appended to
 * every layer as expert ids `experts + j` with the load of every token (loadWithSharedSlices), so balanced packing
 * spreads them over workers like any heavy expert; the router sees the longer layers and sends every token to them.
 */
export function desiredPlan(pool: ExpertPool, previous: PlacementPlan | undefined, load?: number[][]): PlanOutcome {
  const { spec } = pool;
  const name = pool.metadata.name;
  const ns = pool.metadata.namespace ?? "default";
  const workers = workerIds(name, spec.replicas);
  try {
    const { layers, experts } = spec.model;
    const slices = sharedSlicesOf(spec.model, spec.placement);
    // loadWithSharedSlices would read a missing layer as uniform; a short or long heat matrix is an error instead.
    if (load && load.length !== layers) throw new PlacementError("load", `has ${load.length} layers, want ${layers}`);
    const { plan, stats } = planPlacement({
      pool: name,
      layers,
      experts: experts + slices,
      workers,
      redundantExperts: spec.placement.redundantExperts,
      capacityPerWorker: spec.cache.residentExperts,
      capacityIsSoft: spec.cache.hostTier.enabled,
      strategy: spec.placement.strategy,
      denseLayers: denseLayersOf(spec.model),
      // planLoad; the planner checks each row's length (PlacementError naming load[l]).
      load: planLoad(spec.model, spec.placement, load),
      previous,
      // With rebalance on, a layer keeps its copies while within minImprovement of a fresh packing's balance, the
      // same slack the published plan is judged with (rebalance.ts): no more balance is left on the table than the
      // user said is not worth moving weights for. Off, the planner's default (10%).
      keepTolerance: spec.placement.rebalance?.prometheusUrl ? spec.placement.rebalance.minImprovement : undefined,
      endpoints: Object.fromEntries(workers.map((w) => [w, workerAddress(name, ns, w)])),
    });
    return { ok: true, plan, stats, configMap: planConfigMap(pool, plan) };
  } catch (e) {
    if (e instanceof PlacementError) {
      // The planner's cache limit is this spec's cache.residentExperts: say so in the pool's own terms.
      if (e.field === "capacityPerWorker" && e.message.includes("is planned"))
        return {
          ok: false,
          message: `cache.residentExperts: ${e.message.slice("capacityPerWorker: ".length)}; raise cache.residentExperts or enable cache.hostTier`,
        };
      return { ok: false, message: e.message };
    }
    throw e;
  }
}
