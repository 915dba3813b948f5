// Names and labels of everything the operator creates for a pool. Kept in one place because the router, the
// chart and the tests all address these objects by name.
import type { ExpertPool } from "../api/v1alpha1.js";

export const FIELD_MANAGER = "switchyard-operator";
export const STATUS_FIELD_MANAGER = "switchyard-operator-status";
export const POOL_LABEL = "switchyard.dev/pool";
export const COMPONENT_LABEL = "app.kubernetes.io/component";
export const MANAGED_BY_LABEL = "app.kubernetes.io/managed-by";
export const MANAGED_BY = "switchyard-operator";
export const WORKER_COMPONENT = "expert-worker";
export const WORKER_GRPC_PORT = 50061;
/** grpc.health.v1 service the worker reports SERVING once its experts are loaded (expert-worker/src/worker.ts). */
export const WORKER_READY_SERVICE = "switchyard.v1.ExpertWorker";
/** The worker's TCP data path (batches beside the gRPC stream; packages/protocol/src/data-path.ts). */
export const WORKER_DATA_PORT = 50062;
export const WORKER_METRICS_PORT = 9401;
export const PLAN_KEY = "plan.json";
export const PLAN_MOUNT = "/etc/switchyard/plan";
export const CHECKPOINT_MOUNT = "/checkpoint";
export const MODEL_HASH_ANNOTATION = "switchyard.dev/model-hash";
/**
 * On worker pods of a pool the router serves under another name (namespace/name, routing.ts routerPoolName): that
 * name, which the worker puts in its metrics' `pool` label (--metrics-pool). The chart's PodMonitor copies it onto
 * the scrape's own series (`up`), which a label could not carry ("/" is not allowed in label values).
 */
export const METRICS_POOL_ANNOTATION = "switchyard.dev/metrics-pool";

export const statefulSetName = (pool: string) => pool;
export const serviceName = (pool: string) => `${pool}-workers`;
export const planConfigMapName = (pool: string) => `${pool}-placement`;
export const workerIds = (pool: string, replicas: number) =>
  Array.from({ length: replicas }, (_, i) => `${statefulSetName(pool)}-${i}`);
export const workerAddress = (pool: string, namespace: string, id: string) =>
  `${id}.${serviceName(pool)}.${namespace}.svc:${WORKER_GRPC_PORT}`;

export function selectorLabels(pool: string): Record<string, string> {
  return { [COMPONENT_LABEL]: WORKER_COMPONENT, [POOL_LABEL]: pool };
}

/** The serialized selector the scale subresource and HPA read from status.selector. */
export function selectorString(pool: string): string {
  return Object.entries(selectorLabels(pool))
    .map(([k, v]) => `${k}=${v}`)
    .join(",");
}

export function childLabels(pool: string): Record<string, string> {
  return {
    "app.kubernetes.io/name": "switchyard",
    "app.kubernetes.io/instance": pool,
    [MANAGED_BY_LABEL]: MANAGED_BY,
    ...selectorLabels(pool),
  };
}

/**
 * Label and annotation keys a pool's worker.podLabels / podAnnotations (and the operator's --worker-pod-label) may
 * not set on worker pods: the labels childLabels puts there (component and pool are the StatefulSet's selector,
 * which the API server requires the template to match; component and managed-by are what the operator's pod
 * informer and the chart's PodMonitor and worker NetworkPolicy select workers by; name and instance say which
 * pool and app a pod is), and anything under the operator's own prefix, so that a key it adds later cannot collide
 * with one a stored pool already uses. The operator's labels would win anyway (desired.ts puts them last); refusing
 * them up front says so instead of silently dropping the user's value.
 */
export const RESERVED_POD_LABEL_KEYS = Object.keys(childLabels("p")).filter((k) => !k.startsWith("switchyard.dev/"));
export const RESERVED_KEY_PREFIX = "switchyard.dev/";

/** Whether a pod label or annotation key is the operator's own (RESERVED_POD_LABEL_KEYS, RESERVED_KEY_PREFIX). */
export function isReservedPodKey(key: string, annotation = false): boolean {
  return key.startsWith(RESERVED_KEY_PREFIX) || (!annotation && RESERVED_POD_LABEL_KEYS.includes(key));
}

export function ownerRef(pool: ExpertPool) {
  return {
    apiVersion: pool.apiVersion,
    kind: pool.kind,
    name: pool.metadata.name,
    uid: pool.metadata.uid ?? "",
    controller: true,
    blockOwnerDeletion: true,
  };
}
