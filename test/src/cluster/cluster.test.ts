// Smoke test of the real test cluster: etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { AppsV1Api, CoreV1Api, type V1Pod } from "@kubernetes/client-node";
import { expect, it } from "vitest";
import { GPU_RESOURCE } from "./config.js";
import { waitUntil } from "./util.js";
import { describeWithCluster } from "./vitest.js";

const NODES = 2;
const GPUS = 4;

function gpuStatefulSet(name: string, replicas: number, gpus: number) {
  return {
    apiVersion: "apps/v1",
    kind: "StatefulSet",
    metadata: { name, namespace: "default" },
    spec: {
      replicas,
      serviceName: name,
      podManagementPolicy: "Parallel",
      selector: { matchLabels: { app: name } },
      template: {
        metadata: { labels: { app: name } },
        spec: {
          // kwok never runs containers; the image is never pulled.
          containers: [
            {
              name: "worker",
              image: "example.invalid/worker:1",
              resources: { limits: { [GPU_RESOURCE]: String(gpus) } },
            },
          ],
        },
      },
    },
  };
}

describeWithCluster(
  "test cluster (real control plane, kwok GPU nodes)",
  { nodes: NODES, gpusPerNode: GPUS, auditLog: true },
  (cluster) => {
    const core = () => cluster().kubeConfig.makeApiClient(CoreV1Api);
    const apps = () => cluster().kubeConfig.makeApiClient(AppsV1Api);
    const pods = async (app: string): Promise<V1Pod[]> =>
      (await core().listNamespacedPod({ namespace: "default", labelSelector: `app=${app}` })).items;
    const apply = (obj: unknown) => cluster().kubectl(["apply", "-f", "-"], { input: JSON.stringify(obj) });

    it("starts with Ready fake GPU nodes whose nvidia.com/gpu capacity survives kwok", async () => {
      const nodes = (await core().listNode()).items;
      expect(nodes).toHaveLength(NODES);
      for (const n of nodes) {
        expect(n.status?.conditions?.find((c) => c.type === "Ready")?.status).toBe("True");
        expect(n.status?.allocatable?.[GPU_RESOURCE]).toBe(String(GPUS));
        expect(n.status?.capacity?.[GPU_RESOURCE]).toBe(String(GPUS));
        expect(n.spec?.taints ?? []).toEqual([]);
      }
      console.info("[test-cluster] start-up timings (ms):", cluster().timings);
    }, 120_000);

    it("runs GPU StatefulSet pods on kwok nodes and leaves an oversized one Pending", async () => {
      await apply(gpuStatefulSet("fits", 2, 2));
      await apply(gpuStatefulSet("too-big", 1, GPUS + 1));
      await waitUntil(
        async () => {
          const ps = await pods("fits");
          return (
            ps.length === 2 &&
            ps.every(
              (p) =>
                p.status?.phase === "Running" &&
                p.status.conditions?.some((c) => c.type === "Ready" && c.status === "True"),
            )
          );
        },
        { what: "2 'fits' pods Running and Ready", timeoutMs: 60_000 },
      );
      for (const p of await pods("fits")) expect(p.spec?.nodeName).toMatch(/^gpu-node-\d+$/);
      await waitUntil(
        async () => {
          const [p] = await pods("too-big");
          const cond = p?.status?.conditions?.find((c) => c.type === "PodScheduled");
          return cond?.status === "False" && cond.reason === "Unschedulable";
        },
        { what: "'too-big' pod marked Unschedulable", timeoutMs: 60_000 },
      );
      const [big] = await pods("too-big");
      expect(big.status?.phase).toBe("Pending");
      expect(big.spec?.nodeName).toBeUndefined();
      expect(big.status?.conditions?.find((c) => c.type === "PodScheduled")?.message).toContain(
        `Insufficient ${GPU_RESOURCE}`,
      );
      // the StatefulSet controller reports it
      const sts = await apps().readNamespacedStatefulSet({ name: "fits", namespace: "default" });
      await waitUntil(
        async () =>
          (await apps().readNamespacedStatefulSet({ name: "fits", namespace: "default" })).status?.readyReplicas === 2,
        {
          what: "StatefulSet 'fits' readyReplicas=2",
          timeoutMs: 30_000,
        },
      );
      expect(sts.metadata?.name).toBe("fits");
    }, 120_000);

    it("garbage-collects children through ownerReferences", async () => {
      const owner = await core().createNamespacedConfigMap({
        namespace: "default",
        body: { metadata: { name: "owner" }, data: { a: "1" } },
      });
      await core().createNamespacedConfigMap({
        namespace: "default",
        body: {
          metadata: {
            name: "child",
            ownerReferences: [{ apiVersion: "v1", kind: "ConfigMap", name: "owner", uid: owner.metadata!.uid! }],
          },
        },
      });
      await core().deleteNamespacedConfigMap({ name: "owner", namespace: "default" });
      await waitUntil(
        async () =>
          !(await core().listNamespacedConfigMap({ namespace: "default" })).items.some(
            (c) => c.metadata?.name === "child",
          ),
        { what: "child ConfigMap collected", timeoutMs: 30_000 },
      );
      // and a StatefulSet's pods go with it
      await cluster().kubectl(["delete", "statefulset", "too-big", "--wait=false"]);
      await waitUntil(async () => (await pods("too-big")).length === 0, {
        what: "'too-big' pods collected",
        timeoutMs: 30_000,
      });
    }, 120_000);

    it("survives an API server restart: data kept, controllers and kwok carry on", async () => {
      const before = (await apps().readNamespacedStatefulSet({ name: "fits", namespace: "default" })).metadata?.uid;
      const t = Date.now();
      await cluster().restartApiServer();
      console.info(`[test-cluster] kube-apiserver restart took ${((Date.now() - t) / 1000).toFixed(1)} s`);
      expect((await apps().readNamespacedStatefulSet({ name: "fits", namespace: "default" })).metadata?.uid).toBe(
        before,
      );
      // controllers reconnect: a scale-up after the restart gets scheduled and run by kwok
      await cluster().kubectl(["scale", "statefulset/fits", "--replicas=3"]);
      await waitUntil(async () => (await pods("fits")).filter((p) => p.status?.phase === "Running").length === 3, {
        what: "3 'fits' pods Running after restart",
        timeoutMs: 90_000,
      });
      expect(cluster().crashed()).toEqual([]);
    }, 120_000);

    it("kubectl and helm work against the cluster", async () => {
      const v = JSON.parse((await cluster().kubectl(["version", "-o", "json"])).stdout);
      expect(v.serverVersion.gitVersion).toMatch(/^v1\.\d+\.\d+/);
      expect(v.clientVersion.gitVersion).toMatch(/^v1\.\d+\.\d+/);
      expect((await cluster().helm(["version", "--short"])).stdout).toMatch(/^v\d+\.\d+\.\d+/);
      // a minimal chart round trip: install creates the object, uninstall removes it
      const chart = join(cluster().dir, "smoke-chart");
      mkdirSync(join(chart, "templates"), { recursive: true });
      writeFileSync(join(chart, "Chart.yaml"), "apiVersion: v2\nname: smoke\nversion: 0.1.0\n");
      writeFileSync(
        join(chart, "templates", "cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\ndata:\n  v: {{ .Values.v | quote }}\n",
      );
      await cluster().helm(["install", "smoke", chart, "--set", "v=42", "--wait", "--timeout", "60s"]);
      const cm = await core().readNamespacedConfigMap({ name: "smoke-cm", namespace: "default" });
      expect(cm.data?.v).toBe("42");
      await cluster().helm(["uninstall", "smoke", "--wait"]);
      const left = (await core().listNamespacedConfigMap({ namespace: "default" })).items.map((c) => c.metadata?.name);
      expect(left).not.toContain("smoke-cm");
    }, 120_000);

    it("gives ServiceAccount identities only their RBAC and attributes their writes in the audit log", async () => {
      const kubeconfig = await cluster().serviceAccountKubeconfig("default", "limited");
      const as = (args: string[]) => cluster().kubectl([`--kubeconfig=${kubeconfig}`, ...args], { check: false });
      const denied = await as(["get", "configmaps"]);
      expect(denied.code).not.toBe(0);
      expect(denied.stderr).toContain("forbidden");
      await cluster().kubectl(["create", "role", "cm-writer", "--verb=get,list,create", "--resource=configmaps"]);
      await cluster().kubectl([
        "create",
        "rolebinding",
        "cm-writer",
        "--role=cm-writer",
        "--serviceaccount=default:limited",
      ]);
      await waitUntil(async () => (await as(["get", "configmaps"])).code === 0, {
        what: "RBAC grant",
        timeoutMs: 10_000,
      });
      expect((await as(["create", "configmap", "sa-made", "--from-literal=a=1"])).code).toBe(0);
      expect((await as(["delete", "configmap", "sa-made"])).stderr).toContain("forbidden");
      const mine = cluster()
        .auditEvents()
        .filter((e) => e.user.username === "system:serviceaccount:default:limited");
      expect(mine.map((e) => [e.verb, e.objectRef?.resource, e.objectRef?.name, e.responseStatus?.code])).toEqual([
        ["create", "configmaps", "sa-made", 201],
        ["delete", "configmaps", "sa-made", 403],
      ]);
    }, 120_000);
  },
);
