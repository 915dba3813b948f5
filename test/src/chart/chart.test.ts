// The Helm chart rendered by the real helm binary: lint, golden files for the default and three other values files,
// and the invariants every render must keep (hardened pods, least-privilege RBAC, labels, selectors that select).
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseOptions } from "@switchyard/operator";
import { beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import {
  CHART,
  canonical,
  exec,
  findTool,
  type K8sObject,
  NAMESPACE,
  parseDocs,
  RELEASE,
  REPO,
  templateArgs,
  VALUES_FILES,
} from "./helm.js";

const helm = findTool("helm", "SWITCHYARD_HELM");
if (!helm)
  console.warn("chart tests SKIPPED: no helm binary (run scripts/ci/build-test-assets.sh or set SWITCHYARD_HELM)");
// biome-ignore lint/suspicious/noExplicitAny: rendered manifests are untyped YAML; the assertions check their shape.
type Untyped = any;
const GOLDEN = join(REPO, "test/src/chart/golden");
const UPDATE = process.env.UPDATE_GOLDEN === "1";

type Pod = {
  metadata: { labels: Record<string, string> };
  spec: {
    securityContext: Record<string, unknown>;
    containers: Array<{
      name: string;
      image: string;
      imagePullPolicy?: string;
      command?: string[];
      args?: string[];
      env?: Array<{ name: string }>;
      ports?: Array<{ name: string; containerPort: number }>;
      securityContext: Record<string, unknown> & { capabilities?: { drop?: string[] } };
      resources?: { requests?: Record<string, string> };
      livenessProbe?: unknown;
      readinessProbe?: unknown;
      volumeMounts?: Array<{ name: string; mountPath: string; readOnly?: boolean }>;
    }>;
    serviceAccountName: string;
    automountServiceAccountToken?: boolean;
    restartPolicy?: string;
    volumes?: unknown[];
    imagePullSecrets?: Array<{ name: string }>;
  };
};

const matches = (selector: Record<string, string>, labels: Record<string, string> = {}) =>
  Object.entries(selector).every(([k, v]) => labels[k] === v);

/** Every pod a render holds: the Deployments' templates (serving) and bare Pods (the `helm test` hook, which exits). */
const podsOf = (objs: K8sObject[]) => [
  ...objs
    .filter((o) => o.kind === "Deployment")
    .map((d) => ({ where: d.metadata.name, pod: (d.spec as { template: Pod }).template, serving: true })),
  ...objs
    .filter((o) => o.kind === "Pod")
    .map((p) => ({ where: p.metadata.name, pod: p as unknown as Pod, serving: false })),
];

const smokePodOf = (objs: K8sObject[]) =>
  objs.find((o) => o.kind === "Pod" && o.metadata.name.endsWith("-router-smoke")) as (K8sObject & Pod) | undefined;

type Ingress = { ports: Array<{ port: number }>; from?: Array<Record<string, Untyped>> };
/** Whether a NetworkPolicy ingress rule lets in a pod of the policy's own namespace with these labels. */
const admits = (rule: Ingress, labels: Record<string, string>) =>
  rule.from === undefined ||
  rule.from.some(
    (peer) => peer.podSelector && !peer.namespaceSelector && matches(peer.podSelector.matchLabels, labels),
  );

describe.skipIf(!helm)("helm chart charts/switchyard", () => {
  const rendered = new Map<string, K8sObject[]>();

  beforeAll(async () => {
    // Render all values files concurrently: each helm run is a separate process and mostly waits on startup.
    await Promise.all(
      Object.entries(VALUES_FILES).map(async ([name, file]) => {
        const r = await exec(helm!, templateArgs(file));
        if (r.code !== 0) throw new Error(`helm template (${name}) failed: ${r.stderr}`);
        rendered.set(name, parseDocs(r.stdout));
      }),
    );
  });

  it.each(Object.entries(VALUES_FILES))("helm lint --strict passes with %s values", async (_name, file) => {
    const r = await exec(helm!, ["lint", "--strict", CHART, ...(file ? ["-f", file] : [])]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain("0 chart(s) failed");
  });

  it.each(Object.keys(VALUES_FILES))("helm template with %s values matches its golden file", (name) => {
    const text = canonical(rendered.get(name)!);
    const file = join(GOLDEN, `${name}.yaml`);
    if (UPDATE) writeFileSync(file, text);
    expect(text, `golden ${file} is stale: run UPDATE_GOLDEN=1 npx vitest run test/src/chart`).toBe(
      readFileSync(file, "utf8"),
    );
  });

  it("renders what the default install needs", () => {
    const kinds = rendered.get("default")!.map((o) => `${o.kind}/${o.metadata.name}`);
    for (const want of [
      "Deployment/sy-switchyard-operator",
      "Deployment/sy-switchyard-router",
      "Service/sy-switchyard-router",
      "Service/sy-switchyard-operator-metrics",
      "ServiceAccount/sy-switchyard-operator",
      "ServiceAccount/sy-switchyard-router",
      "ClusterRole/sy-switchyard-operator",
      "ClusterRoleBinding/sy-switchyard-operator",
      "Role/sy-switchyard-operator-leader-election",
      "PodDisruptionBudget/sy-switchyard-operator",
      "PodDisruptionBudget/sy-switchyard-router",
      "NetworkPolicy/sy-switchyard-router",
      "NetworkPolicy/sy-switchyard-operator",
      "NetworkPolicy/sy-switchyard-workers",
      "ConfigMap/sy-switchyard-dashboard-switchyard-experts",
    ]) {
      expect(kinds).toContain(want);
    }
    // Monitoring objects need the Prometheus Operator CRDs: off by default so a bare cluster installs cleanly.
    expect(kinds.filter((k) => /Monitor|PrometheusRule/.test(k))).toEqual([]);
  });

  it.each(Object.keys(VALUES_FILES))("every pod is hardened (%s values)", (name) => {
    const pods = podsOf(rendered.get(name)!);
    expect(pods.filter((p) => p.serving).length).toBeGreaterThan(0);
    expect(pods.filter((p) => !p.serving).length, "the helm test Pod is checked too").toBe(1);
    for (const { pod, serving, ...p } of pods) {
      const where = `${name}: ${p.where}`;
      expect(pod.spec.securityContext, where).toMatchObject({
        runAsNonRoot: true,
        seccompProfile: { type: "RuntimeDefault" },
      });
      expect(pod.spec.securityContext.runAsUser, where).toBeGreaterThan(0);
      for (const c of pod.spec.containers) {
        expect(c.securityContext, `${where}/${c.name}`).toMatchObject({
          allowPrivilegeEscalation: false,
          readOnlyRootFilesystem: true,
          runAsNonRoot: true,
          seccompProfile: { type: "RuntimeDefault" },
        });
        expect(c.securityContext.capabilities?.drop, `${where}/${c.name}`).toEqual(["ALL"]);
        expect(c.resources?.requests?.memory, `${where}/${c.name} memory request`).toBeTruthy();
        // A test Pod runs to completion: probes would only restart or unready what is about to exit.
        if (serving) expect(c.livenessProbe && c.readinessProbe, `${where}/${c.name} probes`).toBeTruthy();
        expect(c.image, `${where}/${c.name} image`).toMatch(/^[^:@\s]+(:[\w.-]+|@sha256:[a-f0-9]{64})$/);
      }
    }
  });

  it.each(Object.keys(VALUES_FILES))("labels and selectors hold together (%s values)", (name) => {
    const objs = rendered.get(name)!;
    const pods = objs
      .filter((o) => o.kind === "Deployment")
      .map((d) => (d.spec as { template: Pod }).template.metadata.labels);
    for (const o of objs) {
      expect(o.metadata.labels?.["app.kubernetes.io/instance"], `${o.kind}/${o.metadata.name}`).toBe(RELEASE);
      expect(o.metadata.labels?.["app.kubernetes.io/managed-by"], `${o.kind}/${o.metadata.name}`).toBe("Helm");
      expect(o.metadata.labels?.["helm.sh/chart"], `${o.kind}/${o.metadata.name}`).toMatch(/^switchyard-\d/);
      const spec = o.spec as Untyped;
      // Every selector of a chart-owned workload selects exactly the pods it is meant for.
      if (o.kind === "Deployment") expect(matches(spec.selector.matchLabels, spec.template.metadata.labels)).toBe(true);
      if (o.kind === "Service" || o.kind === "PodDisruptionBudget") {
        const sel = o.kind === "Service" ? spec.selector : spec.selector.matchLabels;
        expect(
          pods.filter((l) => matches(sel, l)),
          `${o.kind}/${o.metadata.name}`,
        ).toHaveLength(1);
      }
    }
    // Deployment selectors must not use the mutable labels (version, chart), or upgrades would fail.
    for (const d of objs.filter((o) => o.kind === "Deployment")) {
      const keys = Object.keys((d.spec as Untyped).selector.matchLabels);
      expect(keys.sort()).toEqual([
        "app.kubernetes.io/component",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/name",
      ]);
    }
  });

  it("runs the operator with leader election, a Lease-only Role and the contract's command line", () => {
    const objs = rendered.get("default")!;
    const op = objs.find((o) => o.kind === "Deployment" && o.metadata.name.endsWith("-operator"))!;
    const c = (op.spec as { template: Pod }).template.spec.containers[0];
    expect(c.args).toEqual([
      "--metrics-port=8080",
      "--health-port=8081",
      "--leader-elect",
      `--lease-namespace=${NAMESPACE}`,
      "--lease-name=sy-switchyard-operator",
      `--router-configmap=${NAMESPACE}/sy-switchyard-router`,
      `--owner-deployment=${NAMESPACE}/sy-switchyard-operator`,
    ]);
    expect(c.env?.map((e) => e.name)).toContain("POD_NAMESPACE");
    // operator.logLevel reaches the operator: its command line and env parse to that level
    const env = Object.fromEntries(
      (c.env as Array<{ name: string; value?: string }>).flatMap((e) =>
        e.value !== undefined ? [[e.name, e.value]] : [],
      ),
    );
    expect(env.SWITCHYARD_LOG_LEVEL).toBe("info");
    expect(parseOptions(c.args!, env)).toMatchObject({ logLevel: "info" });
    expect(parseOptions(c.args!, { ...env, SWITCHYARD_LOG_LEVEL: "debug" })).toMatchObject({ logLevel: "debug" });
    expect(c.ports?.map((p) => p.name)).toEqual(["metrics", "health"]);
    const lease = objs.find((o) => o.kind === "Role" && o.metadata.name.endsWith("leader-election")) as Untyped;
    expect(lease.metadata.namespace).toBe(NAMESPACE);
    expect(lease.rules).toEqual([
      { apiGroups: ["coordination.k8s.io"], resources: ["leases"], verbs: ["create"] },
      {
        apiGroups: ["coordination.k8s.io"],
        resources: ["leases"],
        resourceNames: ["sy-switchyard-operator"],
        verbs: ["get", "update"],
      },
    ]);
    const router = objs.find((o) => o.kind === "Deployment" && o.metadata.name.endsWith("-router"))!;
    const rc = (router.spec as { template: Pod }).template.spec;
    expect(rc.containers[0].args).toEqual([
      "--config=/etc/switchyard/router/router.json",
      "--port=50051",
      "--metrics-port=9400",
      "--data-port=50052",
      "--checkpoint-cache=/var/cache/switchyard",
    ]);
    // the cache is a volume of its own: the root filesystem is read-only
    expect(rc.containers[0].volumeMounts).toContainEqual({
      name: "checkpoint-cache",
      mountPath: "/var/cache/switchyard",
    });
    expect(rc.containers[0].ports?.map((p) => p.name)).toEqual(["grpc", "data", "metrics"]);
    expect(rc.automountServiceAccountToken).toBe(false);
  });

  it.each(Object.keys(VALUES_FILES))("RBAC is least privilege (%s values)", (name) => {
    const roles = rendered.get(name)!.filter((o) => o.kind === "Role" || o.kind === "ClusterRole") as Untyped[];
    expect(roles.length).toBeGreaterThan(0);
    for (const role of roles) {
      for (const rule of role.rules) {
        const where = `${role.kind}/${role.metadata.name} ${JSON.stringify(rule)}`;
        expect(rule.verbs, where).not.toContain("*");
        expect(rule.resources, where).not.toContain("*");
        expect(rule.apiGroups, where).not.toContain("*");
        expect(rule.resources, where).not.toContain("secrets");
        expect(rule.verbs, where).not.toContain("escalate");
        expect(rule.verbs, where).not.toContain("impersonate");
        if (
          rule.resources.some(
            (r: string) => r.startsWith("switchyard.dev") || ["expertpools", "routingpolicies"].includes(r),
          )
        )
          expect(rule.verbs, where).not.toContain("delete");
      }
    }
  });

  it("watchNamespace turns the operator's ClusterRole into a Role in that namespace", () => {
    const objs = rendered.get("namespaced")!;
    expect(objs.filter((o) => o.kind.startsWith("Cluster"))).toEqual([]);
    const role = objs.find((o) => o.kind === "Role" && o.metadata.name === "tenant-a-operator")!;
    expect(role.metadata.namespace).toBe("tenant-a");
    const op = objs.find((o) => o.kind === "Deployment" && o.metadata.name === "tenant-a-operator")!;
    const args = (op.spec as { template: Pod }).template.spec.containers[0].args;
    expect(args).toContain("--namespace=tenant-a");
    expect(args).toContain(`--router-configmap=${NAMESPACE}/tenant-a-router-config`);
    // Watching tenant-a, writing the router config in the release namespace: a Role there allows just that.
    const home = objs.find(
      (o) => o.kind === "Role" && o.metadata.name === "tenant-a-operator-leader-election",
    ) as Untyped;
    expect(home.metadata.namespace).toBe(NAMESPACE);
    expect(home.rules.at(-1)).toEqual({
      apiGroups: [""],
      resources: ["configmaps"],
      verbs: ["list", "watch", "create", "patch"],
    });
    expect(objs.filter((o) => o.kind === "NetworkPolicy" || o.kind === "ConfigMap")).toEqual([]);
    // One router replica: no PDB for it (it would block every drain).
    expect(objs.filter((o) => o.kind === "PodDisruptionBudget").map((o) => o.metadata.name)).toEqual([
      "tenant-a-operator",
    ]);
  });

  it("monitoring objects carry kube-prometheus-stack's release label and select real ports", () => {
    const objs = rendered.get("monitoring")!;
    const mon = objs.filter((o) => ["ServiceMonitor", "PodMonitor", "PrometheusRule"].includes(o.kind));
    expect(mon.map((o) => o.kind).sort()).toEqual(["PodMonitor", "PrometheusRule", "ServiceMonitor", "ServiceMonitor"]);
    for (const o of mon) {
      expect(o.metadata.labels?.release, `${o.kind}/${o.metadata.name}`).toBe("kube-prometheus-stack");
      expect(o.metadata.labels?.team).toBe("ml-platform");
      expect(o.metadata.namespace).toBe("monitoring");
    }
    const services = objs.filter((o) => o.kind === "Service") as Untyped[];
    for (const sm of mon.filter((o) => o.kind === "ServiceMonitor") as Untyped[]) {
      expect(sm.spec.namespaceSelector.matchNames).toEqual([NAMESPACE]);
      const svc = services.filter((s) => matches(sm.spec.selector.matchLabels, s.metadata.labels));
      expect(svc, sm.metadata.name).toHaveLength(1);
      // ServiceMonitors refer to Service ports by name.
      expect(svc[0].spec.ports.map((p: { name: string }) => p.name)).toContain(sm.spec.endpoints[0].port);
    }
    const rule = mon.find((o) => o.kind === "PrometheusRule") as Untyped;
    const alerts = rule.spec.groups[0].rules.map((r: { alert: string }) => r.alert);
    expect(alerts).not.toContain("SwitchyardCacheHitRatioLow"); // disabled in that values file
    expect(alerts).toContain("SwitchyardRouterLoadSignalsStale"); // extraRules
    const latency = rule.spec.groups[0].rules.find((r: { alert: string }) => r.alert === "SwitchyardRouterLatencyHigh");
    expect(latency.expr).toContain("histogram_quantile(0.95,");
    expect(latency.annotations.summary).toContain("Router p95 latency");
  });

  it.each(["default", "production"])("dashboards ship as ConfigMaps for the Grafana sidecar (%s values)", (name) => {
    const files = readdirSync(join(CHART, "dashboards")).filter((f) => f.endsWith(".json"));
    const cms = rendered.get(name)!.filter((o) => o.kind === "ConfigMap" && o.metadata.labels?.grafana_dashboard);
    expect(cms).toHaveLength(files.length);
    for (const cm of cms as Untyped[]) {
      expect(cm.metadata.labels.grafana_dashboard).toBe("1");
      expect(cm.metadata.annotations.grafana_folder).toBe("Switchyard");
      const [[file, json]] = Object.entries(cm.data as Record<string, string>);
      // Byte-for-byte the file in the repo: Grafana's own {{legend}} and ${variables} are not templated by helm.
      expect(json).toBe(readFileSync(join(CHART, "dashboards", file), "utf8"));
      expect(json.length).toBeLessThan(1024 * 1024);
    }
  });

  it("router.autoscaling: a HorizontalPodAutoscaler on the router's CPU owns the replicas (production values)", async () => {
    const objs = rendered.get("production")! as Untyped[];
    const deploy = objs.find((o) => o.kind === "Deployment" && o.metadata.name.endsWith("-router"));
    const hpa = objs.find((o) => o.kind === "HorizontalPodAutoscaler");
    expect(deploy.spec.replicas).toBeUndefined(); // left to the HPA, or every helm upgrade would reset it
    expect(hpa.apiVersion).toBe("autoscaling/v2");
    expect(hpa.spec.scaleTargetRef).toEqual({ apiVersion: "apps/v1", kind: "Deployment", name: deploy.metadata.name });
    expect(hpa.spec).toMatchObject({ minReplicas: 4, maxReplicas: 16 });
    expect(hpa.spec.metrics).toEqual([
      { type: "Resource", resource: { name: "cpu", target: { type: "Utilization", averageUtilization: 70 } } },
    ]);
    expect(rendered.get("default")!.some((o) => o.kind === "HorizontalPodAutoscaler")).toBe(false);
    // the router PDB follows minReplicas, not router.replicas, under the HPA
    const routerPdb = async (set: string[]) => {
      const r = await exec(helm!, templateArgs(null, ["--set", "router.autoscaling.enabled=true", ...set]));
      expect(r.code, r.stderr).toBe(0);
      return parseDocs(r.stdout).some((o) => o.kind === "PodDisruptionBudget" && o.metadata.name.endsWith("-router"));
    };
    expect(await routerPdb(["--set", "router.autoscaling.minReplicas=1", "--set", "router.replicas=2"])).toBe(false);
    expect(await routerPdb(["--set", "router.autoscaling.minReplicas=2", "--set", "router.replicas=1"])).toBe(true);
    const bad = await exec(
      helm!,
      templateArgs(null, ["--set", "router.autoscaling.enabled=true", "--set", "router.autoscaling.minReplicas=9"]),
    );
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain("router.autoscaling: minReplicas (9) is above maxReplicas (8)");
  });

  it("a headless Service lists the router pods for per-call gRPC balancing, and router.service.headless=false drops it", async () => {
    const objs = rendered.get("default")! as Untyped[];
    const deploy = objs.find((o) => o.kind === "Deployment" && o.metadata.name.endsWith("-router"));
    const headless = objs.find((o) => o.kind === "Service" && o.metadata.name.endsWith("-router-headless"));
    expect(headless?.spec.clusterIP).toBe("None");
    expect(matches(headless.spec.selector, deploy.spec.template.metadata.labels)).toBe(true);
    expect(headless.spec.ports.map((p: { name: string }) => p.name)).toEqual(["grpc", "data"]);
    const r = await exec(helm!, templateArgs(null, ["--set", "router.service.headless=false"]));
    expect(r.code, r.stderr).toBe(0);
    expect(
      parseDocs(r.stdout)
        .filter((o) => o.kind === "Service")
        .map((o) => o.metadata.name),
    ).not.toContain(headless.metadata.name);
  });

  it("router.dataPort=0 turns the engines' data path off: no flag value, port, Service port or policy port", async () => {
    const r = await exec(
      helm!,
      templateArgs(null, ["--set", "router.dataPort=0", "--set", "networkPolicy.enabled=true"]),
    );
    expect(r.code, r.stderr).toBe(0);
    const objs = parseDocs(r.stdout) as Untyped[];
    const deploy = objs.find((o) => o.kind === "Deployment" && o.metadata.name.endsWith("-router"));
    const c = deploy.spec.template.spec.containers[0];
    expect(c.args).toContain("--data-port=-1");
    expect(c.ports.map((p: { name: string }) => p.name)).toEqual(["grpc", "metrics"]);
    for (const svc of objs.filter((o) => o.kind === "Service" && o.metadata.name.includes("-router")))
      expect(svc.spec.ports.map((p: { name: string }) => p.name)).not.toContain("data");
    const np = objs.find((o) => o.kind === "NetworkPolicy" && o.metadata.name.endsWith("-router"));
    expect(JSON.stringify(np.spec.ingress)).not.toContain("50052");
  });

  it("image references in the default values point at the repository's Dockerfiles", () => {
    const values = parse(readFileSync(join(CHART, "values.yaml"), "utf8"));
    const titles = readdirSync(join(REPO, "docker"))
      .filter((f) => f.endsWith(".Dockerfile"))
      .map(
        (f) => /org\.opencontainers\.image\.title="([^"]+)"/.exec(readFileSync(join(REPO, "docker", f), "utf8"))?.[1],
      );
    for (const repo of [
      values.operator.image.repository,
      values.router.image.repository,
      values.workers.image.repository,
    ]) {
      expect(titles, repo).toContain(repo.split("/").pop());
    }
  });

  it("helm install --dry-run renders NOTES.txt with the next steps and the release-label warning", async () => {
    const plain = await exec(helm!, ["install", RELEASE, CHART, "-n", NAMESPACE, "--dry-run=client"]);
    expect(plain.code, plain.stderr).toBe(0);
    expect(plain.stdout).toContain("kubectl apply -f expertpool.yaml");
    // the manifests it names have complete examples in the repository (Chart.yaml home), checked against the CRDs
    expect(plain.stdout).toContain("https://github.com/switchyard-dev/switchyard/tree/main/examples");
    expect(plain.stdout).toContain("leader election on");
    expect(plain.stdout).toContain("serviceMonitor.enabled=true");
    expect(plain.stdout).toMatch(/engines' TCP data path: \S+-router\.\S+\.svc:50052/);
    expect(plain.stdout).toMatch(/port-forward svc\/\S+-router 50051 50052/);
    expect(plain.stdout).toContain(`helm test ${RELEASE} -n ${NAMESPACE}`);
    const noRelease = await exec(helm!, [
      ...["install", RELEASE, CHART, "-n", NAMESPACE, "--dry-run=client"],
      ...["--set", "serviceMonitor.enabled=true"],
    ]);
    expect(noRelease.code, noRelease.stderr).toBe(0);
    expect(noRelease.stdout).toContain("WARNING: monitors and rules are rendered without a `release` label");
    // a PrometheusRule alone is ignored by kube-prometheus-stack the same way
    const onlyRules = await exec(helm!, [
      ...["install", RELEASE, CHART, "-n", NAMESPACE, "--dry-run=client"],
      ...["--set", "prometheusRule.enabled=true"],
    ]);
    expect(onlyRules.code, onlyRules.stderr).toBe(0);
    expect(onlyRules.stdout).toContain("WARNING: monitors and rules are rendered without a `release` label");
    expect(plain.stdout).not.toContain("WARNING");
    // the worker image a minimal ExpertPool gets (the CRD default) is the CUDA one, and NOTES says so
    expect(plain.stdout).toContain("switchyard-worker:0.1.0-cuda (CUDA; the default, as gpusPerWorker defaults to 1)");
    const noTests = await exec(helm!, [
      ...["install", RELEASE, CHART, "-n", NAMESPACE, "--dry-run=client"],
      ...["--set", "tests.enabled=false"],
    ]);
    expect(noTests.code, noTests.stderr).toBe(0);
    expect(noTests.stdout.split("\nNOTES:\n")[1]).not.toContain("helm test");
  });

  describe("helm test hook (templates/tests/router-smoke.yaml)", () => {
    const template = async (...set: string[]) => {
      const r = await exec(helm!, templateArgs(null, set));
      expect(r.code, r.stderr).toBe(0);
      return parseDocs(r.stdout);
    };

    it("is a test-hook Pod running the router image's smoke check against the router Service", () => {
      const objs = rendered.get("default")!;
      const pod = smokePodOf(objs)!;
      expect(pod?.metadata.name).toBe("sy-switchyard-router-smoke");
      expect(pod.metadata.namespace).toBe(NAMESPACE);
      expect(pod.metadata.annotations).toEqual({
        "helm.sh/hook": "test",
        "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded",
      });
      expect(pod.spec.restartPolicy).toBe("Never");
      expect(pod.spec.automountServiceAccountToken).toBe(false);
      expect(pod.spec.volumes).toBeUndefined();
      const c = pod.spec.containers[0];
      expect(pod.spec.containers).toHaveLength(1);
      expect(c.command).toEqual(["node", "router-service/dist/smoke/main.js"]);
      expect(c.args).toEqual([
        ...["--router", "sy-switchyard-router:50051"],
        ...["--http", "http://sy-switchyard-router:9400"],
        ...["--data-port", "50052"],
        ...["--tokens", "4"],
        ...["--timeout-ms", "20000"],
      ]);
      // The ports it is sent to are the router Service's.
      const svc = objs.find((o) => o.kind === "Service" && o.metadata.name === "sy-switchyard-router") as Untyped;
      expect(svc.spec.ports.map((p: { name: string; port: number }) => `${p.name}:${p.port}`)).toEqual([
        "grpc:50051",
        "data:50052",
        "metrics:9400",
      ]);
    });

    it.each(Object.keys(VALUES_FILES))(
      "runs the router Deployment's image, pull policy and pull secrets, and nothing selects it (%s values)",
      (name) => {
        const objs = rendered.get(name)!;
        const pod = smokePodOf(objs)!;
        const router = objs.find((o) => o.kind === "Deployment" && o.metadata.name.endsWith("-router"))!;
        const tpl = (router.spec as { template: Pod }).template;
        expect(pod.spec.containers[0].image).toBe(tpl.spec.containers[0].image);
        expect(pod.spec.containers[0].imagePullPolicy).toBe(tpl.spec.containers[0].imagePullPolicy);
        expect(pod.spec.imagePullSecrets).toEqual(tpl.spec.imagePullSecrets);
        expect(pod.metadata.labels["app.kubernetes.io/component"]).toBe("router-smoke");
        // Not a router: no Service would send it traffic, no PDB would count it, no policy would take it as its target.
        for (const o of objs as Untyped[]) {
          const selector =
            o.kind === "Service"
              ? o.spec.selector
              : o.kind === "PodDisruptionBudget" || o.kind === "NetworkPolicy"
                ? (o.spec.selector ?? o.spec.podSelector).matchLabels
                : undefined;
          if (selector) expect(matches(selector, pod.metadata.labels), `${o.kind}/${o.metadata.name}`).toBe(false);
        }
      },
    );

    it("takes its ports, pools, tokens and timeout from the values; router.dataPort=0 drops --data-port", async () => {
      const pod = smokePodOf(
        await template(
          ...["--set", "router.dataPort=0", "--set", "router.grpcPort=7000", "--set", "router.metricsPort=7001"],
          ...["--set", "tests.pools={default/tiny,team-b/big}", "--set", "tests.tokens=16"],
          // A values file's numbers reach the template as floats: a million must not print as 1e+06.
          ...["--set-json", "tests.timeoutMs=1000000"],
        ),
      )!;
      expect(pod.spec.containers[0].args).toEqual([
        ...["--router", "sy-switchyard-router:7000"],
        ...["--http", "http://sy-switchyard-router:7001"],
        ...["--pool", "default/tiny", "--pool", "team-b/big"],
        ...["--tokens", "16"],
        ...["--timeout-ms", "1000000"],
      ]);
    });

    it.each([["tests.enabled=false"], ["router.enabled=false"]])("is not rendered with %s", async (set) => {
      const objs = await template("--set", set);
      expect(objs.length).toBeGreaterThan(0);
      expect(objs.filter((o) => o.kind === "Pod")).toEqual([]);
    });

    it("restricted routerClientsFrom/metricsFrom admit it on the router's gRPC, data and metrics ports", async () => {
      const restricted = [
        ...["--set-json", 'networkPolicy.routerClientsFrom=[{"namespaceSelector":{"matchLabels":{"engines":"yes"}}}]'],
        ...["--set-json", 'networkPolicy.metricsFrom=[{"namespaceSelector":{"matchLabels":{"prom":"yes"}}}]'],
      ];
      const policies = (objs: K8sObject[]) =>
        objs.filter((o) => o.kind === "NetworkPolicy") as Array<K8sObject & { spec: { ingress: Ingress[] } }>;
      const routerPolicy = (objs: K8sObject[]) => policies(objs).find((o) => o.metadata.name.endsWith("-router"))!;
      const labels = smokePodOf(rendered.get("default")!)!.metadata.labels;
      const admitted = (policy: { spec: { ingress: Ingress[] } }) =>
        policy.spec.ingress
          .filter((r) => admits(r, labels))
          .flatMap((r) => r.ports.map((p) => p.port))
          .sort((a, b) => a - b);

      // Default: empty lists, so rules without `from` that admit anyone, the smoke Pod included.
      expect(admitted(routerPolicy(rendered.get("default")!))).toEqual([9400, 50051, 50052]);

      const objs = await template(...restricted);
      const policy = routerPolicy(objs);
      expect(admitted(policy)).toEqual([9400, 50051, 50052]);
      // The configured peers stay, first and as given.
      expect(policy.spec.ingress.map((r) => r.from?.[0])).toEqual([
        { namespaceSelector: { matchLabels: { engines: "yes" } } },
        { namespaceSelector: { matchLabels: { prom: "yes" } } },
      ]);
      // Only the router's policy: the smoke Pod never talks to the operator or the workers.
      for (const other of policies(objs).filter((o) => o !== policy))
        expect(admitted(other), other.metadata.name).toEqual([]);

      const without = routerPolicy(await template(...restricted, "--set", "tests.enabled=false"));
      expect(admitted(without)).toEqual([]);
      expect(without.spec.ingress.map((r) => r.from?.length)).toEqual([1, 1]);
    });
  });
});
