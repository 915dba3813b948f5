// Renders of value combinations the golden files do not cover, checked against the rules the API server (and the
// Prometheus Operator) apply to what they are given: object and volume names, label maps, the operator's RBAC when
// leader election is off, scrape timeouts.
import { parseOptions, WORKER_DATA_PORT, WORKER_GRPC_PORT, WORKER_METRICS_PORT } from "@switchyard/operator";
import { describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import { CHART, exec, findTool, grants, type K8sObject, NAMESPACE, parseDocs } from "./helm.js";

const helm = findTool("helm", "SWITCHYARD_HELM");
// biome-ignore lint/suspicious/noExplicitAny: rendered manifests are untyped YAML; the assertions check their shape.
type Untyped = any;

async function render(release: string, set: string[]): Promise<K8sObject[]> {
  const r = await exec(helm!, ["template", release, CHART, "--namespace", NAMESPACE, ...set]);
  expect(r.code, r.stderr).toBe(0);
  return parseDocs(r.stdout);
}

// apimachinery's validation: RFC 1123 subdomain (most names), RFC 1123 label (volume names), RFC 1035 label (Service
// names), label values.
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_1035_LABEL = /^[a-z]([-a-z0-9]*[a-z0-9])?$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;

/** The pod spec of a Deployment or a bare Pod. */
const podSpecOf = (o: Untyped) => (o.kind === "Deployment" ? o.spec.template.spec : o.kind === "Pod" ? o.spec : null);

describe.skipIf(!helm)("chart renders for values the golden files do not cover", () => {
  it.each([
    // no "switchyard": fullname gets the suffix, 63 characters
    ["a 53-character release name (Helm's longest)", "ml-platform-inference-moe-serving-production-euw1-a", []],
    // values.schema.json allows as much (it once stopped at 40)
    ["a 63-character fullnameOverride (the schema's longest)", "sy", ["--set", `fullnameOverride=${"f".repeat(63)}`]],
  ])("%s renders names the API server accepts", async (_, release, extra) => {
    expect(release.length).toBeLessThanOrEqual(53);
    const objs = (await render(release, [
      ...extra,
      ...["--set", "serviceMonitor.enabled=true", "--set", "podMonitor.enabled=true"],
      ...["--set", "prometheusRule.enabled=true", "--set", "router.autoscaling.enabled=true"],
      ...["--set", "router.checkpointClaims[0].claimName=deepseek-v3.weights"],
      ...["--set", `router.checkpointClaims[1].claimName=${"q".repeat(70)}`],
    ])) as Untyped[];
    for (const o of objs) {
      const { name } = o.metadata;
      const where = `${o.kind}/${name}`;
      expect(name.length, where).toBeLessThanOrEqual(253);
      expect(name, where).toMatch(DNS_SUBDOMAIN);
      // Services: a DNS label, at most 63 characters (it becomes one in <svc>.<ns>.svc).
      if (o.kind === "Service") {
        expect(name.length, `${where}: Service names are at most 63 characters`).toBeLessThanOrEqual(63);
        expect(name, where).toMatch(DNS_1035_LABEL);
      }
      for (const labels of [o.metadata.labels, o.spec?.template?.metadata?.labels])
        for (const [k, v] of Object.entries((labels ?? {}) as Record<string, string>)) {
          expect(v.length, `${where} label ${k}`).toBeLessThanOrEqual(63);
          expect(v, `${where} label ${k}`).toMatch(LABEL_VALUE);
        }
      const pod = podSpecOf(o);
      if (!pod) continue;
      const volumes = (pod.volumes ?? []).map((v: { name: string }) => v.name);
      expect(new Set(volumes).size, `${where} volume names are unique`).toBe(volumes.length);
      for (const v of volumes) {
        expect(v.length, `${where} volume ${v}`).toBeLessThanOrEqual(63);
        expect(v, `${where} volume ${v}`).toMatch(DNS_LABEL);
      }
      for (const c of pod.containers)
        for (const m of c.volumeMounts ?? []) expect(volumes, `${where}/${c.name} mount ${m.name}`).toContain(m.name);
    }
    // What refers to the router Service by name still does.
    const svc = objs.find((o) => o.kind === "Service" && o.metadata.labels["app.kubernetes.io/component"] === "router");
    const smoke = objs.find((o) => o.kind === "Pod");
    expect(smoke.spec.containers[0].args).toContain(`${svc.metadata.name}:50051`);
    // Each claim is still mounted where the operator's router config points: /checkpoints/<claimName>.
    const router = objs.find(
      (o) => o.kind === "Deployment" && o.metadata.labels["app.kubernetes.io/component"] === "router",
    );
    const mounts = router.spec.template.spec.containers[0].volumeMounts.map((m: { mountPath: string }) => m.mountPath);
    expect(mounts).toContain("/checkpoints/deepseek-v3.weights");
    expect(mounts).toContain(`/checkpoints/${"q".repeat(70)}`);
  });

  it("leader election off, watching another namespace: the operator may still write the router config", async () => {
    const objs = (await render("sy", [
      ...["--set", "operator.leaderElection.enabled=false", "--set", "operator.watchNamespace=tenant-a"],
    ])) as Untyped[];
    const sa = "sy-switchyard-operator";
    // The rules the operator's ServiceAccount holds in the release namespace, where the router's ConfigMap lives.
    const bound = objs.filter(
      (b) =>
        (b.kind === "RoleBinding" && b.metadata.namespace === NAMESPACE) || b.kind === "ClusterRoleBinding" || false,
    );
    const rules = bound
      .filter((b) =>
        b.subjects.some((s: { name: string; namespace: string }) => s.name === sa && s.namespace === NAMESPACE),
      )
      .flatMap((b) => {
        const role = objs.find(
          (r) =>
            r.kind === b.roleRef.kind &&
            r.metadata.name === b.roleRef.name &&
            (r.kind === "ClusterRole" || r.metadata.namespace === b.metadata.namespace),
        );
        return role?.rules ?? [];
      });
    const have = grants(rules);
    // Server-side apply of the ConfigMap: create + patch (docs/CONTRACTS.md; the operator's RouterConfigReconciler).
    expect(have).toContain("core/configmaps create");
    expect(have).toContain("core/configmaps patch");
    // And still no Lease rights: it does not elect.
    expect(have.filter((g) => g.includes("leases"))).toEqual([]);
  });

  it("operator.replicas > 1 needs leader election: refused naming both values; one replica without it rolls out with no surge", async () => {
    const bad = await exec(helm!, [
      ...["template", "sy", CHART, "--namespace", NAMESPACE],
      ...["--set", "operator.replicas=2", "--set", "operator.leaderElection.enabled=false"],
    ]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain("operator.replicas is 2 but operator.leaderElection.enabled is false");
    // not an operator this release runs: nothing to refuse
    const off = await exec(helm!, [
      ...["template", "sy", CHART, "--namespace", NAMESPACE, "--set", "operator.enabled=false"],
      ...["--set", "operator.replicas=2", "--set", "operator.leaderElection.enabled=false"],
      ...["--set", "router.configMapName=other-switchyard-router"],
    ]);
    expect(off.code, off.stderr).toBe(0);
    const operator = (objs: Untyped[]) =>
      objs.find((o) => o.kind === "Deployment" && o.metadata.labels["app.kubernetes.io/component"] === "operator");
    const elected = operator(await render("sy", ["--set", "operator.replicas=3"]));
    expect(elected.spec.replicas).toBe(3);
    expect(elected.spec.strategy).toBeUndefined(); // RollingUpdate: the Lease keeps one writer
    const single = operator(await render("sy", ["--set", "operator.leaderElection.enabled=false"]));
    expect(single.spec.replicas).toBe(1);
    // never two writers during a rollout either; no surge rather than Recreate, which helm's three-way merge cannot
    // switch to or from (the live rollingUpdate block stays beside type Recreate, and the API server refuses that)
    expect(single.spec.strategy).toEqual({ type: "RollingUpdate", rollingUpdate: { maxSurge: 0, maxUnavailable: 1 } });
  });

  it("the PodMonitor drops Pending worker pods (a checkpoint download in the init container), not Running ones", async () => {
    const objs = (await render("sy", ["--set", "podMonitor.enabled=true"])) as Untyped[];
    const pm = objs.find((o) => o.kind === "PodMonitor");
    const relabelings = pm.spec.podMetricsEndpoints[0].relabelings as Untyped[];
    // Prometheus relabel semantics: the regex is anchored on both ends, the source labels joined by ";".
    const dropped = (phase: string) =>
      relabelings.some(
        (r) =>
          r.action === "drop" &&
          r.sourceLabels?.join(";") === "__meta_kubernetes_pod_phase" &&
          new RegExp(`^(?:${r.regex})$`).test(phase),
      );
    expect(dropped("Pending")).toBe(true);
    // Running pods stay, and so do Unknown ones (a node that stopped reporting: its worker is down, say so)
    expect(dropped("Running")).toBe(false);
    expect(dropped("Unknown")).toBe(false);
  });

  it("the PodMonitor drops the workers' per-expert counter unless podMonitor.workerExpertSeries keeps it", async () => {
    const drops = async (set: string[]) => {
      const objs = (await render("sy", ["--set", "podMonitor.enabled=true", ...set])) as Untyped[];
      const ep = objs.find((o) => o.kind === "PodMonitor").spec.podMetricsEndpoints[0];
      return ((ep.metricRelabelings ?? []) as Untyped[])
        .filter((r) => r.action === "drop" && r.sourceLabels?.join(";") === "__name__")
        .map((r) => r.regex);
    };
    // (the live dashboards test runs these relabelings in a real Prometheus against real workers)
    expect(await drops([])).toEqual(["switchyard_worker_expert_tokens_total"]);
    expect(await drops(["--set", "podMonitor.workerExpertSeries=true"])).toEqual([]);
  });

  it("the operator gets the release's pull secrets and common labels for worker pods, without its own label keys", async () => {
    const objs = (await render("sy", [
      ...["--set", "imagePullSecrets[0].name=regcred", "--set", "imagePullSecrets[1].name=mirror"],
      ...["--set", "commonLabels.team=ml", "--set", "commonLabels.cost-center=cc-7"],
      // keys the operator sets itself (it refuses to start with them): left out, not passed
      ...["--set", "commonLabels.app\\.kubernetes\\.io/name=x", "--set", "commonLabels.switchyard\\.dev/pool=y"],
    ])) as Untyped[];
    const op = objs.find(
      (o) => o.kind === "Deployment" && o.metadata.labels["app.kubernetes.io/component"] === "operator",
    );
    const args = op.spec.template.spec.containers[0].args as string[];
    // the operator's own parser reads them (a flag it did not know would be an error here)
    const parsed = parseOptions(args, {});
    if (parsed === "help") throw new Error("help");
    expect(parsed.workerDefaults).toEqual({
      imagePullSecrets: ["regcred", "mirror"],
      podLabels: { team: "ml", "cost-center": "cc-7" },
    });
  });

  it("the workers' NetworkPolicy admits the ports the operator gives worker pods (operator/src/controller/names.ts)", async () => {
    const objs = (await render("sy", [])) as Untyped[];
    const np = objs.find((o) => o.kind === "NetworkPolicy" && o.metadata.name.endsWith("-workers"));
    const ports = np.spec.ingress.flatMap((r: { ports: Array<{ port: number }> }) => r.ports.map((p) => p.port));
    expect(ports.sort()).toEqual([WORKER_GRPC_PORT, WORKER_DATA_PORT, WORKER_METRICS_PORT].sort());
    // the router's ingress rule gets gRPC and the data path, nothing else
    expect(np.spec.ingress[0].ports.map((p: { port: number }) => p.port)).toEqual([WORKER_GRPC_PORT, WORKER_DATA_PORT]);
  });

  it("a scrape interval shorter than scrapeTimeout: no monitor asks for a timeout longer than its interval", async () => {
    // Prometheus refuses scrape configs whose scrape_timeout exceeds scrape_interval, and the Prometheus Operator
    // drops such monitors; the default scrapeTimeout (10s) must not break `--set monitoring.interval=5s`.
    const ms = (d: string) =>
      [...d.matchAll(/(\d+)(ms|s|m|h|d|w|y)/g)].reduce(
        (sum, [, n, u]) =>
          sum +
          Number(n) * { ms: 1, s: 1e3, m: 60e3, h: 3600e3, d: 86400e3, w: 7 * 86400e3, y: 365 * 86400e3 }[u as "ms"],
        0,
      );
    for (const [interval, timeout, want] of [
      ["5s", "10s", "5s"],
      ["1m30s", "2m", "1m30s"],
      ["30s", "10s", "10s"],
      ["500ms", "1s", "500ms"],
    ]) {
      const objs = (await render("sy", [
        ...["--set", "serviceMonitor.enabled=true", "--set", "podMonitor.enabled=true"],
        ...["--set", `monitoring.interval=${interval}`, "--set", `monitoring.scrapeTimeout=${timeout}`],
      ])) as Untyped[];
      const endpoints = objs
        .filter((o) => o.kind === "ServiceMonitor" || o.kind === "PodMonitor")
        .flatMap((o) => o.spec.endpoints ?? o.spec.podMetricsEndpoints);
      expect(endpoints).toHaveLength(3);
      for (const e of endpoints) {
        expect(e.interval).toBe(interval);
        expect(ms(e.scrapeTimeout), `${interval}/${timeout}`).toBe(ms(want));
      }
    }
  });

  it("labels given twice (commonLabels and podLabels or monitoring.additionalLabels) render once, the narrower value", async () => {
    const r = await exec(helm!, [
      ...["template", "sy", CHART, "--namespace", NAMESPACE],
      ...["--set", "commonLabels.team=ml", "--set", "router.podLabels.team=router-team"],
      ...["--set", "operator.podLabels.team=operator-team"],
      ...["--set", "serviceMonitor.enabled=true", "--set", "monitoring.additionalLabels.team=observability"],
      ...["--set", "monitoring.prometheusRelease=kps", "--set", "monitoring.additionalLabels.release=kps"],
    ]);
    expect(r.code, r.stderr).toBe(0);
    // A map with a key twice is not YAML (kustomize post-renderers and strict parsers refuse it).
    const dup = parseAllDocuments(r.stdout).flatMap((d) => d.errors.map((e) => e.message.split("\n")[0]));
    expect(dup).toEqual([]);
    const objs = parseDocs(r.stdout) as Untyped[];
    const deploy = (c: string) =>
      objs.find((o) => o.kind === "Deployment" && o.metadata.labels["app.kubernetes.io/component"] === c);
    expect(deploy("router").metadata.labels.team).toBe("ml");
    expect(deploy("router").spec.template.metadata.labels.team).toBe("router-team");
    expect(deploy("operator").spec.template.metadata.labels.team).toBe("operator-team");
    for (const sm of objs.filter((o) => o.kind === "ServiceMonitor")) {
      expect(sm.metadata.labels.team).toBe("observability");
      expect(sm.metadata.labels.release).toBe("kps");
    }
  });
  it("serviceAccount.create=false needs serviceAccount.name: never the namespace's default ServiceAccount", async () => {
    for (const component of ["operator", "router"]) {
      const bad = await exec(helm!, [
        ...["template", "sy", CHART, "--namespace", NAMESPACE, "--set", `${component}.serviceAccount.create=false`],
      ]);
      expect(bad.code, component).not.toBe(0);
      expect(bad.stderr).toContain(
        `${component}.serviceAccount.create is false but ${component}.serviceAccount.name is empty`,
      );
    }
    // a named existing ServiceAccount: the pods and every binding of the operator's RBAC use it, none is rendered
    const objs = (await render("sy", [
      ...["--set", "operator.serviceAccount.create=false", "--set", "operator.serviceAccount.name=ops"],
      ...["--set", "router.serviceAccount.create=false", "--set", "router.serviceAccount.name=rt"],
      "--set",
      "operator.syncHubTokens=true",
    ])) as Untyped[];
    expect(objs.filter((o) => o.kind === "ServiceAccount")).toEqual([]);
    const subjects = objs
      .filter((o) => o.kind === "RoleBinding" || o.kind === "ClusterRoleBinding")
      .flatMap((b) => b.subjects.map((s: { name: string }) => s.name));
    expect(subjects.length).toBeGreaterThanOrEqual(4);
    expect(new Set(subjects)).toEqual(new Set(["ops"]));
    const deploy = (c: string) =>
      objs.find((o) => o.kind === "Deployment" && o.metadata.labels["app.kubernetes.io/component"] === c);
    expect(deploy("operator").spec.template.spec.serviceAccountName).toBe("ops");
    expect(deploy("router").spec.template.spec.serviceAccountName).toBe("rt");
    // a component that is off needs no ServiceAccount
    const routerOff = await exec(helm!, [
      ...["template", "sy", CHART, "--namespace", NAMESPACE, "--set", "router.enabled=false"],
      ...["--set", "router.serviceAccount.create=false"],
    ]);
    expect(routerOff.code, routerOff.stderr).toBe(0);
  });

  it("operator.enabled=false: the router needs another release's router ConfigMap; no PodMonitor, no workers' policy", async () => {
    const bad = await exec(helm!, [
      ...["template", "extra", CHART, "--namespace", NAMESPACE, "--set", "operator.enabled=false"],
    ]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain("router.enabled is true but operator.enabled is false");
    expect(bad.stderr).toContain("router.configMapName");
    // more routers beside the release that runs the operator, on its router config
    const extra = (await render("extra", [
      ...["--set", "operator.enabled=false", "--set", "router.configMapName=sy-switchyard-router"],
      ...["--set", "podMonitor.enabled=true", "--set", "serviceMonitor.enabled=true"],
    ])) as Untyped[];
    const router = extra.find((o) => o.kind === "Deployment");
    expect(router.metadata.labels["app.kubernetes.io/component"]).toBe("router");
    const config = router.spec.template.spec.volumes.find((v: { name: string }) => v.name === "config");
    expect(config.configMap.name).toBe("sy-switchyard-router");
    // the workers are the operator's release's: scraped and fenced there, not a second time here
    expect(extra.filter((o) => o.kind === "PodMonitor")).toEqual([]);
    expect(extra.filter((o) => o.kind === "NetworkPolicy").map((o) => o.metadata.name)).toEqual([
      "extra-switchyard-router",
    ]);
    expect(extra.filter((o) => o.kind === "ServiceMonitor").map((o) => o.metadata.name)).toEqual([
      "extra-switchyard-router",
    ]);
    // and the operator's release's workers' NetworkPolicy lets these routers (as its own) reach the batch ports
    const main = (await render("sy", ["--set", "podMonitor.enabled=true"])) as Untyped[];
    expect(main.filter((o) => o.kind === "PodMonitor")).toHaveLength(1);
    const workersPolicy = main.find((o) => o.kind === "NetworkPolicy" && o.metadata.name === "sy-switchyard-workers");
    const batchPeers = workersPolicy.spec.ingress[0].from;
    const admitted = (labels: Record<string, string>) =>
      batchPeers.some(
        (p: Untyped) =>
          !p.namespaceSelector && Object.entries(p.podSelector.matchLabels).every(([k, v]) => labels[k] === v),
      );
    const routerPods = (objs: Untyped[]) =>
      objs.filter((o) => o.kind === "Deployment" && o.metadata.labels["app.kubernetes.io/component"] === "router");
    expect(admitted(routerPods(main)[0].spec.template.metadata.labels)).toBe(true);
    expect(admitted(router.spec.template.metadata.labels)).toBe(true);
    // not the operator, not the smoke Pod
    const operator = main.find(
      (o) => o.kind === "Deployment" && o.metadata.labels["app.kubernetes.io/component"] === "operator",
    );
    expect(admitted(operator.spec.template.metadata.labels)).toBe(false);
    expect(admitted(main.find((o) => o.kind === "Pod").metadata.labels)).toBe(false);
    // neither operator nor router: renders (dashboards only)
    const bare = await exec(helm!, [
      ...["template", "extra", CHART, "--namespace", NAMESPACE],
      ...["--set", "operator.enabled=false", "--set", "router.enabled=false"],
    ]);
    expect(bare.code, bare.stderr).toBe(0);
  });

  it("router.pdb.minAvailable that keeps every router replica up is refused (no drain could evict one)", async () => {
    const pdb = async (set: string[]) => {
      const r = await exec(helm!, ["template", "sy", CHART, "--namespace", NAMESPACE, ...set]);
      if (r.code !== 0) return { refused: r.stderr };
      const o = parseDocs(r.stdout).find(
        (x) => x.kind === "PodDisruptionBudget" && x.metadata.name.endsWith("-router"),
      ) as Untyped;
      return { minAvailable: o?.spec.minAvailable };
    };
    for (const set of [
      ["--set", "router.pdb.minAvailable=2"], // 2 replicas by default
      ["--set", "router.replicas=3", "--set", "router.pdb.minAvailable=4"],
      ["--set-string", "router.pdb.minAvailable=100%"],
      ["--set-string", "router.pdb.minAvailable=60%"], // rounded up: 2 of 2
      // under the HPA, counted at minReplicas
      ["--set", "router.autoscaling.enabled=true", "--set", "router.autoscaling.minReplicas=3"],
    ].map((s) => (s.includes("router.autoscaling.enabled=true") ? [...s, "--set", "router.pdb.minAvailable=3"] : s))) {
      const got = await pdb(set);
      expect(got.refused, set.join(" ")).toContain("router.pdb.minAvailable");
      expect(got.refused, set.join(" ")).toContain("every node drain would block");
    }
    expect(await pdb([])).toEqual({ minAvailable: 1 });
    expect(await pdb(["--set", "router.replicas=3", "--set", "router.pdb.minAvailable=2"])).toEqual({
      minAvailable: 2,
    });
    expect(await pdb(["--set-string", "router.pdb.minAvailable=50%"])).toEqual({ minAvailable: "50%" });
    expect(
      await pdb([
        "--set",
        "router.autoscaling.enabled=true",
        "--set",
        "router.autoscaling.minReplicas=3",
        "--set",
        "router.pdb.minAvailable=2",
      ]),
    ).toEqual({ minAvailable: 2 });
    // one replica: no PDB at all, whatever minAvailable says
    expect(await pdb(["--set", "router.replicas=1"])).toEqual({ minAvailable: undefined });
  });

  it("operator.extraEnv replaces the chart's variable of the same name instead of rendering it twice", async () => {
    const env = async (set: string[]) => {
      const objs = (await render("sy", set)) as Untyped[];
      const d = objs.find(
        (o) => o.kind === "Deployment" && o.metadata.labels["app.kubernetes.io/component"] === "operator",
      );
      return d.spec.template.spec.containers[0].env as Array<{ name: string; value?: string }>;
    };
    const names = (e: Array<{ name: string }>) => e.map((v) => v.name);
    expect(names(await env([]))).toEqual(["POD_NAMESPACE", "POD_NAME", "SWITCHYARD_LOG_LEVEL"]);
    const got = await env([
      ...["--set", "operator.extraEnv[0].name=SWITCHYARD_LOG_LEVEL", "--set", "operator.extraEnv[0].value=debug"],
      ...[
        "--set",
        "operator.extraEnv[1].name=NODE_OPTIONS",
        "--set",
        "operator.extraEnv[1].value=--max-old-space-size=400",
      ],
    ]);
    expect(names(got)).toEqual(["POD_NAMESPACE", "POD_NAME", "SWITCHYARD_LOG_LEVEL", "NODE_OPTIONS"]);
    expect(got.find((v) => v.name === "SWITCHYARD_LOG_LEVEL")?.value).toBe("debug");
    expect((await env(["--set", "operator.logLevel=warn"])).find((v) => v.name === "SWITCHYARD_LOG_LEVEL")?.value).toBe(
      "warn",
    );
  });
});
