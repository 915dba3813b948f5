// Helpers for the operator integration tests: run the operator in-process against a test cluster, read objects
// through kubectl-free REST calls, build ExpertPool manifests.
import { gunzipSync } from "node:zlib";
import { Kube, Manager, type ManagerOptions, ROUTER_CONFIG_KEY } from "@switchyard/operator";
import type { TestCluster } from "../cluster/index.js";
import { waitUntil } from "../cluster/index.js";

export interface Obj {
  metadata: {
    name: string;
    namespace?: string;
    uid?: string;
    generation?: number;
    resourceVersion?: string;
    labels?: Record<string, string>;
    ownerReferences?: { uid: string; kind: string }[];
  };
  spec?: Record<string, unknown>;
  status?: Record<string, unknown> & {
    conditions?: { type: string; status: string; reason: string; message: string }[];
  };
  data?: Record<string, string>;
}

export function startOperator(cluster: TestCluster, o: Partial<ManagerOptions> = {}): Manager {
  const logs: string[] = [];
  const m = new Manager({
    kubeConfig: cluster.kubeConfig,
    log: (line) => {
      logs.push(line);
      if (process.env.SWITCHYARD_OPERATOR_LOG) console.log(`[operator] ${line}`);
    },
    defaultMetrics: false,
    routerDebounceMs: 300,
    ...o,
  });
  return m;
}

/** An admin REST client that is not the operator's (so the operator's counters see only its own requests). */
/** The parts of a router config entry (docs/CONTRACTS.md "Router config") the tests look at. */
export interface RouterConfigEntry {
  name: string;
  plan?: { version: number };
  endpoints: Record<string, string>;
  policy: { gating: { topK: number | null }; batching: { maxBatchTokens: number } };
}

/**
 * The router config document a ConfigMap holds, plain (router.json) or gzipped (router.json.gz behind a pointer);
 * {} when there is none, so a check of its pools fails rather than passing on a format it cannot read.
 */
export function routerConfigOf(
  cm: { data?: Record<string, string>; binaryData?: Record<string, string> } | undefined,
): { pools?: RouterConfigEntry[] } {
  const plain = JSON.parse(cm?.data?.[ROUTER_CONFIG_KEY] ?? "{}");
  if (!("gzipFile" in plain)) return plain;
  const gz = cm?.binaryData?.[plain.gzipFile];
  if (!gz) throw new Error(`router config: ${plain.gzipFile} is not in the ConfigMap's binaryData`);
  return JSON.parse(gunzipSync(Buffer.from(gz, "base64")).toString("utf8"));
}

export function adminClient(cluster: TestCluster): Kube {
  return new Kube(cluster.kubeConfig, "switchyard-test");
}

export function pool(name: string, ns: string, spec: Record<string, unknown> = {}): Record<string, unknown> {
  const { model, worker, ...rest } = spec as { model?: object; worker?: object };
  return {
    apiVersion: "switchyard.dev/v1alpha1",
    kind: "ExpertPool",
    metadata: { name, namespace: ns },
    spec: {
      model: {
        architecture: "mixtral",
        layers: 2,
        experts: 8,
        topK: 2,
        hiddenSize: 64,
        intermediateSize: 128,
        checkpoint: { hostPath: { path: "/models/tiny" } },
        ...model,
      },
      replicas: 2,
      worker: { gpusPerWorker: 1, ...worker },
      ...rest,
    },
  };
}

/** The ExpertPool and RoutingPolicy collections of a namespace. */
export const XP = (ns: string) => `/apis/switchyard.dev/v1alpha1/namespaces/${ns}/expertpools`;
export const RP = (ns: string) => `/apis/switchyard.dev/v1alpha1/namespaces/${ns}/routingpolicies`;

export const cond = (o: Obj | undefined, type: string) => o?.status?.conditions?.find((c) => c.type === type);

export async function getPool(kube: Kube, ns: string, name: string): Promise<Obj | undefined> {
  return kube.get<Obj>(`/apis/switchyard.dev/v1alpha1/namespaces/${ns}/expertpools/${name}`);
}

export async function waitReady(kube: Kube, ns: string, name: string, timeoutMs = 60_000): Promise<Obj> {
  let last: Obj | undefined;
  const t0 = Date.now();
  let said = t0;
  await waitUntil(
    async () => {
      last = await getPool(kube, ns, name);
      if (Date.now() - said > 10_000) {
        said = Date.now();
        const r = cond(last, "Ready");
        console.log(
          `[operator] ${ns}/${name} not Ready after ${Math.round((said - t0) / 1000)} s: ${r?.reason}: ${r?.message}`,
        );
      }
      // Ready is "can serve" and holds through rollouts and scales: rolled out is Progressing=False.
      const r = cond(last, "Ready");
      return (
        r?.status === "True" &&
        cond(last, "Progressing")?.status === "False" &&
        last?.status?.observedGeneration === last?.metadata.generation
      );
    },
    {
      timeoutMs,
      intervalMs: 250,
      what: `ExpertPool ${ns}/${name} Ready and rolled out (last conditions: ${JSON.stringify(last?.status?.conditions)})`,
    },
  );
  return last as Obj;
}

export async function createNamespace(kube: Kube, name: string): Promise<void> {
  await kube.create("/api/v1/namespaces", { apiVersion: "v1", kind: "Namespace", metadata: { name } });
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
