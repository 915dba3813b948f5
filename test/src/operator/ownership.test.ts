// On a real API server (etcd + kube-apiserver; no controllers needed):
//  - the operator never takes over an object of a child's name that it does not control: a team's ConfigMap
//    `<pool>-placement` keeps its data and gets no owner reference (so the garbage collector would never delete it
//    with the pool), no workers start, and the pool says why (Degraded/ChildConflict); once that object is gone, the
//    operator creates its own. It runs with the token of operator/deploy/rbac.yaml's ServiceAccount, so the verbs
//    this takes (create, then get on the 409) are checked against the RBAC shipped;
//  - a child it created (POST) is its own under server-side apply: the create (one request) files its fields under
//    the operator's Update entry, and before its first apply the operator moves them to its Apply entry, so a
//    setting later taken out of the spec leaves the StatefulSet;
//  - the schema's CEL bound on MoE layers × (experts + redundantExperts + shared slices), which keeps every
//    placement plan small enough for its ConfigMap and quick to make.
import { KubeConfig } from "@kubernetes/client-node";
import type { Manager } from "@switchyard/operator";
import { describeWithCluster } from "@switchyard/test/cluster/vitest";
import { afterAll, beforeAll, expect, it, vi } from "vitest";
import { waitUntil } from "../cluster/index.js";
import { adminClient, cond, createNamespace, getPool, type Obj, pool, startOperator } from "./helpers.js";

vi.setConfig({ testTimeout: 120_000 });

const NS = "own";
const XP = `/apis/switchyard.dev/v1alpha1/namespaces/${NS}/expertpools`;
const CM = (name: string) => `/api/v1/namespaces/${NS}/configmaps/${name}`;
const STS = (name: string) => `/apis/apps/v1/namespaces/${NS}/statefulsets/${name}`;

type ManagedObj = Obj & {
  metadata: Obj["metadata"] & { managedFields?: { manager: string; operation: string; subresource?: string }[] };
};

describeWithCluster(
  "operator and objects it does not control, on a real API server",
  { withKwok: false, withControllerManager: false, withScheduler: false },
  (cluster) => {
    let op: Manager | undefined;
    const admin = () => adminClient(cluster());

    beforeAll(async () => {
      const c = cluster();
      await c.kubectl(["apply", "-f", "crds/"]);
      await c.kubectl([
        "wait",
        "--for=condition=Established",
        "crd/expertpools.switchyard.dev",
        "crd/routingpolicies.switchyard.dev",
      ]);
      for (const ns of [NS, "switchyard-system"]) await createNamespace(admin(), ns);
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
      op = startOperator(c, {
        kubeConfig: kc,
        routerConfigMap: { namespace: "switchyard-system", name: "switchyard-router" },
      });
      await op.start();
    }, 90_000);

    afterAll(async () => {
      await op?.stop();
    });

    it("leaves a same-named ConfigMap it does not own as it is and reports ChildConflict; creates its own once it is gone", async () => {
      const k = admin();
      const forbidden: string[] = [];
      op?.kube.onRequest((r) => {
        if (r.code === 403) forbidden.push(`${r.verb} ${r.path}`);
      });
      const theirs = {
        apiVersion: "v1",
        kind: "ConfigMap",
        metadata: { name: "llama-placement", namespace: NS },
        data: { notes: "the team's own" },
      };
      await k.create(`/api/v1/namespaces/${NS}/configmaps`, theirs);
      const created = await k.create<Obj>(
        XP,
        pool("llama", NS, { worker: { priorityClassName: "system-node-critical" } }),
      );

      let p: Obj | undefined;
      await waitUntil(
        async () => {
          p = await getPool(k, NS, "llama");
          return cond(p, "Degraded")?.reason === "ChildConflict";
        },
        { timeoutMs: 30_000, what: `Degraded ChildConflict on ${NS}/llama (last: ${JSON.stringify(p?.status)})` },
      );
      expect(cond(p, "Degraded")).toMatchObject({ status: "True" });
      expect(cond(p, "Degraded")?.message).toContain(
        "ConfigMap llama-placement exists and is not owned by this ExpertPool",
      );
      expect(cond(p, "Ready")).toMatchObject({ status: "False", reason: "ChildConflict" });
      // A few retries later it is still theirs, untouched: their data only, no owner (the collector leaves it).
      await new Promise((r) => setTimeout(r, 2000));
      const cm = await k.get<Obj>(CM("llama-placement"));
      expect(cm?.data).toEqual(theirs.data);
      expect(cm?.metadata.ownerReferences).toBeUndefined();
      expect(cm?.metadata.labels).toBeUndefined();
      expect(await k.get(STS("llama"))).toBeUndefined(); // no workers without a plan of the pool's own
      const svc = await k.get<Obj>(`/api/v1/namespaces/${NS}/services/llama-workers`);
      expect(svc?.metadata.ownerReferences?.[0]?.uid).toBe(created.metadata.uid);

      // Their ConfigMap deleted: the retry creates the pool's own, and the workers follow.
      await cluster().kubectl(["delete", "configmap", "-n", NS, "llama-placement"]);
      let ours: ManagedObj | undefined;
      await waitUntil(
        async () => {
          ours = await k.get<ManagedObj>(CM("llama-placement"));
          return !!ours?.data?.["plan.json"];
        },
        { timeoutMs: 90_000, intervalMs: 250, what: "the pool's own plan ConfigMap" },
      );
      expect(ours?.data?.notes).toBeUndefined();
      expect(ours?.metadata.ownerReferences?.[0]).toMatchObject({ uid: created.metadata.uid, controller: true });
      await waitUntil(
        async () => {
          p = await getPool(k, NS, "llama");
          return cond(p, "Degraded")?.status === "False" && !!(await k.get(STS("llama")));
        },
        { timeoutMs: 30_000, what: `Degraded=False and a StatefulSet for ${NS}/llama` },
      );

      // Created by POST, nothing more: the API server filed the fields under the operator's Update entry ...
      type Sts = ManagedObj & { spec: { template: { spec: { priorityClassName?: string } } } };
      const sts = await k.get<Sts>(STS("llama"));
      const entries = (o: ManagedObj | undefined) =>
        (o?.metadata.managedFields ?? [])
          .filter((m) => m.manager === "switchyard-operator" && !m.subresource)
          .map((m) => m.operation);
      expect(entries(sts)).toEqual(["Update"]);
      expect(entries(ours)).toEqual(["Update"]);
      expect(sts?.spec.template.spec.priorityClassName).toBe("system-node-critical");
      // ... which the operator moves to its Apply entry before its first apply, so a setting taken out of the spec
      // leaves the StatefulSet (a field the create's Update entry still co-owned would stay).
      await cluster().kubectl([
        "patch",
        "-n",
        NS,
        "expertpool/llama",
        "--type=json",
        "-p",
        JSON.stringify([{ op: "remove", path: "/spec/worker/priorityClassName" }]),
      ]);
      await waitUntil(
        async () => {
          const s = await k.get<{ spec: { template: { spec: { priorityClassName?: string } } } }>(STS("llama"));
          return s?.spec.template.spec.priorityClassName === undefined;
        },
        { timeoutMs: 30_000, what: "priorityClassName gone from the StatefulSet after its removal from the spec" },
      );
      expect(entries(await k.get<Sts>(STS("llama")))).toEqual(["Apply"]);
      expect(forbidden).toEqual([]); // create, get (on the 409) and patch are all in operator/deploy/rbac.yaml
    });

    it("refuses a pool whose MoE layers x (experts + redundantExperts + shared slices) passes 32768 (CEL), naming the fields", async () => {
      const c = cluster();
      const create = (name: string, spec: Record<string, unknown>) =>
        c.kubectl(["create", "-f", "-"], { input: JSON.stringify(pool(name, "default", spec)), check: false });
      // DeepSeek-V3: 61 layers, the first 3 dense, 256 routed experts + 1 shared expert slice on the workers.
      const ds = (redundantExperts: number) => ({
        model: {
          architecture: "deepseek-v3",
          layers: 61,
          firstDenseLayers: 3,
          experts: 256,
          topK: 8,
          sharedExperts: 1,
        },
        replicas: 64,
        placement: { redundantExperts },
      });
      const fits = await create("ds-fits", ds(307)); // 58 x (256 + 307 + 1) = 32712
      expect(fits.stderr).toBe("");
      expect(fits.code).toBe(0);
      const over = await create("ds-over", ds(309)); // 58 x (256 + 309 + 1) = 32828
      expect(over.code).not.toBe(0);
      expect(over.stderr).toContain(
        "MoE layers (model.layers less firstDenseLayers and denseLayers) * (model.experts + placement.redundantExperts + shared slices) must be <= 32768",
      );
      // At the bound exactly: accepted; one layer more: refused.
      const edge = await create("edge", { model: { layers: 64, experts: 512 } });
      expect(edge.code).toBe(0);
      const past = await create("past", { model: { layers: 65, experts: 512 } });
      expect(past.code).not.toBe(0);
      expect(past.stderr).toContain("must be <= 32768 expert copies");
      const left = await c.kubectl(["get", "expertpools", "-n", "default", "-o", "name"]);
      expect(left.stdout.trim().split("\n").sort()).toEqual([
        "expertpool.switchyard.dev/ds-fits",
        "expertpool.switchyard.dev/edge",
      ]);
      await c.kubectl(["delete", "xp", "-n", "default", "ds-fits", "edge"]);
    });
  },
);
