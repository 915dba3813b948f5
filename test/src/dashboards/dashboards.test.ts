// Static checks of the shipped Grafana dashboards: the committed JSON is what model.ts generates, uids are stable,
// every panel and query goes through the datasource variable, panels do not overlap, every query is valid PromQL
// (checked by the real promtool) and reads only the metrics and labels the code exports: the registries of
// RouterMetrics, WorkerMetrics and the operator's metrics, instantiated here, are the reference.
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KubeConfig } from "@kubernetes/client-node";
import { WorkerMetrics } from "@switchyard/expert-worker";
import { Manager } from "@switchyard/operator";
import { RouterMetrics } from "@switchyard/router-service";
import type { Registry } from "prom-client";
import { beforeAll, describe, expect, it } from "vitest";
import { parse, stringify } from "yaml";
import { exec, findTool, REPO } from "../chart/helm.js";
import { CUDA_ONLY_METRICS, DASHBOARDS, DS, renderDashboards } from "./model.js";
import {
  allQueries,
  analyzeQuery,
  legendLabels,
  type MetricCatalog,
  type MetricInfo,
  type PanelQuery,
  type QueryAnalysis,
  substituteVariables,
} from "./queries.js";

const DIR = join(REPO, "charts/switchyard/dashboards");
const load = (file: string) => JSON.parse(readFileSync(join(DIR, file), "utf8"));
const promtool = findTool("promtool", "SWITCHYARD_PROMTOOL");

type Component = "router" | "worker" | "operator";

/** Labels the chart's PodMonitor or ServiceMonitor sets on its targets by relabeling (component, ...). */
const relabeled = (monitor: "podmonitor.yaml" | "servicemonitor.yaml") =>
  [...readFileSync(join(REPO, "charts/switchyard/templates", monitor), "utf8").matchAll(/targetLabel:\s*(\w+)/g)].map(
    (m) => m[1],
  );
/**
 * Labels a scrape adds to every series besides the exporter's own: job and instance (Prometheus), namespace, pod,
 * container, service and endpoint (the Prometheus Operator's targets), and the chart's relabelings: the PodMonitor's
 * for the workers, the ServiceMonitors' for the router and the operator.
 */
const SCRAPE_LABELS = ["job", "instance", "namespace", "pod", "container", "service", "endpoint"];
const TARGET_LABELS: Record<Component, string[]> = {
  worker: [...new Set([...SCRAPE_LABELS, ...relabeled("podmonitor.yaml")])],
  router: [...new Set([...SCRAPE_LABELS, ...relabeled("servicemonitor.yaml")])],
  operator: [...new Set([...SCRAPE_LABELS, ...relabeled("servicemonitor.yaml")])],
};

/** Every metric one registry exports, with its declared labels, the registry's default labels and the scrape's. */
async function registryCatalog(registry: Registry, component: Component): Promise<Map<string, MetricInfo>> {
  const declared = new Map(
    registry.getMetricsAsArray().map((m) => [m.name, (m as unknown as { labelNames?: string[] }).labelNames ?? []]),
  );
  const json = await registry.getMetricsAsJSON();
  // A registry's default labels (the worker's pool and worker) show only on exported values: every label there that
  // the metric does not declare, and that is not a histogram's le or a summary's quantile.
  const defaults = new Set<string>();
  for (const m of json)
    for (const v of m.values)
      for (const l of Object.keys(v.labels))
        if (l !== "le" && l !== "quantile" && !declared.get(m.name)?.includes(l)) defaults.add(l);
  return new Map(
    json.map((m) => [
      m.name,
      {
        type: String(m.type) as MetricInfo["type"],
        labels: new Set([...(declared.get(m.name) ?? []), ...defaults, ...TARGET_LABELS[component]]),
        help: m.help,
      },
    ]),
  );
}

/** The metrics of the router, a worker and the operator, each from a fresh instance of its metrics class. */
async function codeCatalogs(): Promise<Record<Component, Map<string, MetricInfo>>> {
  // The operator's metrics belong to its Manager, which connects to nothing until start().
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromOptions({
    clusters: [{ name: "none", server: "https://127.0.0.1:1" }],
    users: [{ name: "none" }],
    contexts: [{ name: "none", cluster: "none", user: "none" }],
    currentContext: "none",
  });
  const operator = new Manager({ kubeConfig, log: () => {} });
  return {
    router: await registryCatalog(new RouterMetrics().registry, "router"),
    worker: await registryCatalog(new WorkerMetrics({ pool: "p", worker: "w" }).registry, "worker"),
    operator: await registryCatalog(operator.metrics.registry, "operator"),
  };
}

type PanelJson = {
  type: string;
  title: string;
  description: string;
  fieldConfig: { defaults: { unit?: string }; overrides: unknown[] };
  targets: Array<{ refId: string; expr: string; legendFormat?: string; instant?: boolean }>;
};
const dashboards = DASHBOARDS.map((d) => load(d.file));
const panelsOf = (d: { panels: PanelJson[] }) => d.panels.filter((p) => p.type !== "row");
const allPanels = dashboards.flatMap((d) => panelsOf(d).map((p) => ({ dashboard: d.title as string, ...p })));

describe("Grafana dashboards", () => {
  let byComponent: Record<Component, Map<string, MetricInfo>>;
  let catalog: MetricCatalog;
  const analyses = new Map<string, QueryAnalysis>();
  /** The analysis of one query (cached: the panel checks below ask for the same queries). */
  const analyze = (expr: string) => {
    let a = analyses.get(expr);
    if (!a) {
      a = analyzeQuery(expr, catalog);
      analyses.set(expr, a);
    }
    return a;
  };
  /** A query's metrics by base name (a histogram's without _bucket/_sum/_count). */
  const baseNames = (expr: string) =>
    new Set(
      analyze(expr).selectors.map((s) => (catalog.has(s.name) ? s.name : s.name.replace(/_(bucket|sum|count)$/, ""))),
    );
  const panelMetrics = (p: PanelJson) => new Set(p.targets.flatMap((t) => [...baseNames(t.expr)]));

  beforeAll(async () => {
    byComponent = await codeCatalogs();
    const merged = new Map<string, MetricInfo>();
    for (const [component, metrics] of Object.entries(byComponent))
      for (const [name, info] of metrics) {
        if (merged.has(name) && !name.startsWith("nodejs_") && !name.startsWith("process_"))
          throw new Error(`${name} is exported by the ${component} and another component`);
        merged.set(name, info);
      }
    // Prometheus' own series per target, with every target's labels.
    merged.set("up", { type: "gauge", labels: new Set(Object.values(TARGET_LABELS).flat()) });
    catalog = merged;
  });

  it("committed JSON equals the generated dashboards (run npm run gen:dashboards)", () => {
    const generated = renderDashboards();
    expect(
      readdirSync(DIR)
        .filter((f) => f.endsWith(".json"))
        .sort(),
    ).toEqual([...generated.keys()].sort());
    for (const [file, text] of generated) expect(readFileSync(join(DIR, file), "utf8"), file).toBe(text);
  });

  it("have stable, unique uids", () => {
    // Changing a uid breaks every bookmark and link to the dashboard: this list changes only on purpose.
    expect(DASHBOARDS.map((d) => load(d.file).uid)).toEqual([
      "switchyard-experts",
      "switchyard-router",
      "switchyard-operator",
    ]);
  });

  it.each(DASHBOARDS.map((d) => d.file))(
    "%s: datasource variable on every panel and query, unique ids, no overlap",
    (file) => {
      const d = load(file);
      const ds = d.templating.list.find((v: { name: string }) => v.name === "datasource");
      expect(ds).toMatchObject({ type: "datasource", query: "prometheus" });
      const ids = new Set<number>();
      const cells = new Set<string>();
      for (const p of d.panels) {
        expect(ids.has(p.id), `duplicate panel id ${p.id}`).toBe(false);
        ids.add(p.id);
        const { x, y, w, h } = p.gridPos;
        expect(x + w, `${p.title} fits the 24-column grid`).toBeLessThanOrEqual(24);
        for (let i = x; i < x + w; i++)
          for (let j = y; j < y + h; j++) {
            expect(cells.has(`${i},${j}`), `${p.title} overlaps another panel`).toBe(false);
            cells.add(`${i},${j}`);
          }
        if (p.type === "row") continue;
        expect(p.datasource, p.title).toEqual(DS);
        expect(p.description, `${p.title} explains itself`).toBeTruthy();
        expect(p.targets.length, p.title).toBeGreaterThan(0);
        for (const t of p.targets) expect(t.datasource, `${p.title}/${t.refId}`).toEqual(DS);
      }
    },
  );

  it("cover what operators of an MoE deployment look for", () => {
    const titles = allPanels.map((p) => p.title).join("\n");
    for (const want of [
      /heat map.*layer x expert/i,
      /max \/ mean worker load/i,
      /host cache hit ratio per worker/i,
      /GPU cache hit ratio per worker/i,
      /GPU resident experts \/ slots/i,
      /host to GPU upload bytes\/s/i,
      /GPU evictions\/s/i,
      /tokens per expert call/i,
      /latency p50 \/ p90 \/ p99/i,
      /queue wait/i,
      /dropped/i,
      /worker RPC errors\/s by method and code/i,
      /worker backend \(cpu \/ cuda\)/i,
      /router outstanding \/ worker queued/i,
      /reconciles/i,
      /work queue depth/i,
    ])
      expect(titles).toMatch(want);
    const heat = load("switchyard-experts.json").panels.find((p: { title: string }) => /heat map/.test(p.title));
    expect(heat.transformations[0]).toMatchObject({
      id: "groupingToMatrix",
      options: { rowField: "layer", columnField: "expert" },
    });
  });

  it("the catalog holds every component's metrics, as exported", () => {
    for (const labels of Object.values(TARGET_LABELS)) expect(labels).toContain("component");
    expect(byComponent.router.get("switchyard_router_expert_tokens_total")?.labels).toContain("layer");
    // the worker's pool and worker are default labels of its registry
    expect(byComponent.worker.get("switchyard_worker_requests_total")?.labels).toEqual(
      new Set(["method", "code", "pool", "worker", ...TARGET_LABELS.worker]),
    );
    expect(byComponent.worker.get("switchyard_worker_run_duration_seconds")?.type).toBe("histogram");
    expect(byComponent.operator.get("controller_runtime_reconcile_total")?.labels).toContain("result");
  });

  it("every query reads only metrics and labels the code exports; _bucket/_sum/_count only on histograms", () => {
    const bad: string[] = [];
    for (const q of allQueries(dashboards))
      for (const problem of analyze(q.expr).problems) bad.push(`${q.dashboard} / ${q.panel} / ${q.refId}: ${problem}`);
    expect(bad).toEqual([]);
  });

  it("every legend names labels its query's series carry", () => {
    const bad: string[] = [];
    for (const q of allQueries(dashboards)) {
      const labels = analyze(q.expr).labels;
      for (const l of legendLabels(q.legendFormat))
        if (!labels?.has(l))
          bad.push(`${q.dashboard} / ${q.panel} / ${q.refId}: {{${l}}} (series carry ${[...(labels ?? [])]})`);
    }
    expect(bad).toEqual([]);
  });

  it("the query check fails a misnamed metric or label, and a histogram suffix on a counter", () => {
    // Each query with one of its metric names broken: the check must say so, for every query of every panel.
    const queries = allQueries(dashboards);
    for (const q of queries)
      for (const name of analyze(q.expr).selectors.map((s) => s.name)) {
        const broken = q.expr.replaceAll(new RegExp(`\\b${name}\\b`, "g"), `${name}x`);
        expect(analyzeQuery(broken, catalog).problems, `${q.panel}: ${broken}`).toContain(
          `${name}x: no such metric in the code's registries`,
        );
      }
    // and with each `by` label broken
    let labelsBroken = 0;
    for (const q of queries)
      for (const m of q.expr.matchAll(/\bby \(([^)]*)\)/g))
        for (const label of m[1].split(",").map((l) => l.trim())) {
          const broken = q.expr.replace(m[0], m[0].replace(new RegExp(`\\b${label}\\b`), `${label}x`));
          expect(analyzeQuery(broken, catalog).problems.join("\n"), `${q.panel}: ${broken}`).toContain(
            `no label "${label}x"`,
          );
          labelsBroken++;
        }
    expect(labelsBroken).toBeGreaterThan(50);
    for (const [expr, problem] of [
      ["rate(switchyard_worker_tokens_total_sum[5m])", "switchyard_worker_tokens_total is a counter, not a histogram"],
      ["sum by (pool, worker) (rate(switchyard_router_expert_tokens_total[5m]))", 'no label "worker"'],
      ['rate(switchyard_router_tokens_total{worker="w"}[5m])', 'no label "worker"'],
      ["rate(switchyard_worker_queued_rows[5m])", "switchyard_worker_queued_rows is not a counter"],
      ["sum by (pool) (rate(switchyard_worker_run_duration_seconds[5m]))", "is a histogram"],
    ])
      expect(analyzeQuery(expr, catalog).problems.join("\n"), expr).toContain(problem);
  });

  it("every metric the router, workers and operator export is on a dashboard, or listed here with why not", () => {
    const NOT_SHOWN: Record<string, string> = {
      switchyard_worker_gpu_max_run_rows:
        "a setting sized once when the CUDA context starts (logged then): it changes with no traffic and explains no panel; operators read it with the worker's other configuration",
      switchyard_worker_expert_tokens_total:
        "the heat panels read the router's heat (switchyard_router_expert_tokens_total); a per-worker copy would double the dashboards' heaviest query, and the chart's PodMonitor drops it by default",
      switchyard_worker_ready:
        "the readiness probe's answer: Kubernetes shows it as the pod's Ready; the warm-up panel shows its progress",
      workqueue_work_duration_seconds:
        "the same time as controller_runtime_reconcile_time_seconds (one reconcile per work item), shown as Reconcile duration",
      switchyard_operator_pool_ready: "per-pool readiness, for the alerts; ExpertPools by condition counts it",
      switchyard_operator_router_config_left_out:
        "the pools the router config had no room for, for the alerts; ExpertPools in the router config counts them",
    };
    const shown = new Set(allQueries(dashboards).flatMap((q) => [...baseNames(q.expr)]));
    // Node's process metrics (the operator's prom-client defaults) are for generic Node dashboards.
    const exported = Object.values(byComponent).flatMap((c) =>
      [...c.keys()].filter((n) => !n.startsWith("nodejs_") && !n.startsWith("process_")),
    );
    const missing = exported.filter((n) => !shown.has(n) && !(n in NOT_SHOWN));
    expect(missing, "exported but on no dashboard: add a panel, or the metric to NOT_SHOWN with the reason").toEqual(
      [],
    );
    // and NOT_SHOWN lists nothing that is gone or shown after all
    for (const n of Object.keys(NOT_SHOWN)) {
      expect(exported, n).toContain(n);
      expect(shown.has(n), `${n} is shown: drop it from NOT_SHOWN`).toBe(false);
    }
  });

  it("CUDA_ONLY_METRICS are worker series, the GPU tier's among them", () => {
    for (const m of CUDA_ONLY_METRICS) expect([...byComponent.worker.keys()], m).toContain(m);
    const gpuTier = [...byComponent.worker.keys()].filter((n) => n.startsWith("switchyard_worker_gpu_cache_"));
    expect(gpuTier.length).toBe(6);
    for (const m of gpuTier) expect(CUDA_ONLY_METRICS, m).toContain(m);
  });

  it("cache panels say which tier they show: host (checkpoint to host memory) or GPU (host to device)", () => {
    for (const p of allPanels) {
      const metrics = [...panelMetrics(p)];
      const host = metrics.some((m) => m.startsWith("switchyard_worker_cache_"));
      const gpu = metrics.some((m) => m.startsWith("switchyard_worker_gpu_cache_"));
      expect(host && gpu, `${p.title} mixes the tiers`).toBe(false);
      if (host) {
        expect(p.title, p.title).toMatch(/\bhost\b/i);
        expect(p.title, p.title).not.toMatch(/GPU/);
      }
      if (gpu) expect(p.title, p.title).toMatch(/\bGPU\b/);
    }
    const hostRatio = allPanels.find((p) => p.title === "Host cache hit ratio per worker")!;
    // what a host cache miss is, from the code: a load from the checkpoint
    expect(catalog.get("switchyard_worker_cache_misses_total")?.help).toMatch(/checkpoint/);
    expect(hostRatio.description).toMatch(/miss loads the expert from the checkpoint/);
  });

  it("heat panels never add pools together: one pool, or pool in the aggregation", () => {
    for (const d of dashboards) {
      const v = d.templating.list.find((x: { name: string }) => x.name === "pool");
      const onePool = !!v && !v.multi && !v.includeAll;
      for (const p of panelsOf(d))
        for (const t of p.targets) {
          const a = analyze(t.expr);
          for (const g of a.aggregations)
            if (g.input?.has("pool") && !g.output?.has("pool"))
              expect(onePool, `${d.title} / ${p.title}: ${g.op} drops pool, and $pool may hold several`).toBe(true);
          // every series with a pool label goes through the pool variable
          if (v)
            for (const s of a.selectors)
              if (analyzeQuery(s.name, catalog).labels?.has("pool"))
                expect(
                  s.matchers.some((m) => m.label === "pool" && m.value === "$pool"),
                  `${d.title} / ${p.title}: ${s.name} without the $pool matcher`,
                ).toBe(true);
        }
    }
    const experts = load("switchyard-experts.json").templating.list.find((x: { name: string }) => x.name === "pool");
    expect(experts).toMatchObject({ multi: false, includeAll: false });
    expect(experts.allValue).toBeUndefined();
  });

  it("every series is the selected release's; the operator's by its component too (controller-runtime names are shared)", () => {
    const bad: string[] = [];
    for (const d of dashboards) {
      const v = d.templating.list.find((x: { name: string }) => x.name === "release");
      expect(v, d.title).toMatchObject({ type: "query", multi: false, includeAll: false });
      expect(v.definition, d.title).toMatch(/^label_values\(.+, switchyard_release\)$/);
      const operator = d.uid === "switchyard-operator";
      if (operator) expect(v.definition).toContain('component="operator"');
      for (const p of panelsOf(d))
        for (const t of p.targets)
          for (const sel of analyze(t.expr).selectors) {
            const has = (label: string, op: string, value: string) =>
              sel.matchers.some((m) => m.label === label && m.op === op && m.value === value);
            if (!has("switchyard_release", "=~", "$release"))
              bad.push(`${d.title} / ${p.title}: ${sel.name} without switchyard_release=~"$release"`);
            if (operator && !has("component", "=", "operator"))
              bad.push(`${d.title} / ${p.title}: ${sel.name} without component="operator"`);
          }
      // the pool picker lists the pools of the selected release only
      const pool = d.templating.list.find((x: { name: string }) => x.name === "pool");
      if (pool) expect(pool.definition, d.title).toContain('{switchyard_release=~"$release"}');
    }
    expect(bad).toEqual([]);
  });

  it("the pool pickers list every pool a router serves, idle or warming, and no removed one", async () => {
    // switchyard_router_placement_plan_version: set when a pool loads, before any traffic, and removed with it
    const pickers = dashboards.flatMap((d) => d.templating.list.filter((x: { name: string }) => x.name === "pool"));
    expect(pickers.length).toBe(2);
    for (const v of pickers)
      expect(v.definition).toBe(
        'label_values(switchyard_router_placement_plan_version{switchyard_release=~"$release"}, pool)',
      );
    const m = new RouterMetrics();
    m.planVersion.set({ pool: "idle" }, 1);
    m.forPool("gone");
    m.planVersion.set({ pool: "gone" }, 3);
    m.forgetPool("gone");
    const text = await m.registry.getSingleMetricAsString("switchyard_router_placement_plan_version");
    expect([...text.matchAll(/pool="([^"]+)"/g)].map((x) => x[1])).toEqual(["idle"]);
  });

  it("per router replica panels name the pod (the ServiceMonitor's label), not the scrape address", () => {
    const bad = allQueries(dashboards).filter((q) => legendLabels(q.legendFormat).includes("instance"));
    expect(bad.map((q) => `${q.dashboard} / ${q.panel}`)).toEqual([]);
  });

  it("the RoutingPolicy and ExpertPool fields panel texts name are fields of the CRDs", () => {
    type Schema = { properties?: Record<string, Schema> };
    const crd = (file: string) =>
      (
        parse(readFileSync(join(REPO, "crds", file), "utf8")) as {
          spec: { versions: Array<{ schema: { openAPIV3Schema: Schema } }> };
        }
      ).spec.versions[0].schema.openAPIV3Schema;
    const schemas: Record<string, Schema> = {
      RoutingPolicy: crd("switchyard.dev_routingpolicies.yaml"),
      ExpertPool: crd("switchyard.dev_expertpools.yaml"),
    };
    let named = 0;
    for (const p of allPanels)
      for (const m of p.description.matchAll(/\b(RoutingPolicy|ExpertPool) ((?:spec|status)(?:\.\w+)+)/g)) {
        let node: Schema | undefined = schemas[m[1]];
        for (const key of m[2].split(".")) node = node?.properties?.[key];
        expect(node, `${p.title}: ${m[1]} ${m[2]}`).toBeDefined();
        named++;
      }
    expect(named).toBeGreaterThan(0);
    // the router's own config path is no user's setting
    for (const p of allPanels) expect(p.description, p.title).not.toMatch(/\brouting\.batching\b/);
  });

  it("a panel's queries share one unit: bytes are never on a count or seconds axis", () => {
    // The unit family of a query: what its metrics count. Each of bytes and seconds panels has only queries of it
    // (or no metric at all, a constant); a bytes panel has a bytes unit.
    const family = (q: { expr: string }) => {
      const names = [...baseNames(q.expr)];
      if (names.length === 0) return "constant";
      const kinds = new Set(names.map((n) => (/_bytes(_total)?$/.test(n) ? "bytes" : "other")));
      return kinds.size === 1 ? [...kinds][0] : "mixed";
    };
    const BYTE_UNITS = ["bytes", "decbytes", "Bps", "binBps", "KBs", "MBs", "GBs"];
    for (const p of allPanels) {
      const families = new Set(p.targets.map(family));
      families.delete("constant");
      expect(families.has("mixed"), `${p.title}: a query mixes bytes and other metrics`).toBe(false);
      expect(families.size, `${p.title}: bytes and counts in one panel`).toBeLessThanOrEqual(1);
      if (families.has("bytes")) expect(BYTE_UNITS, p.title).toContain(p.fieldConfig.defaults.unit);
      expect(p.fieldConfig.overrides, `${p.title}: one unit per panel, no per-series unit overrides`).toEqual([]);
    }
  });

  it("panel texts say what the metric measures (from the code)", () => {
    const reading = (metric: string) => allPanels.filter((p) => panelMetrics(p).has(metric));
    // The worker's run duration runs from arrival to result: queue wait and expert loads included.
    expect(catalog.get("switchyard_worker_run_duration_seconds")?.help).toMatch(/arrival.*queue wait, expert loads/);
    for (const p of reading("switchyard_worker_run_duration_seconds"))
      if (panelMetrics(p).size === 1) {
        expect(p.title, p.title).toMatch(/arrival to result/);
        expect(p.description, p.title).toMatch(/queue wait, expert loads/);
      }
    // Load signals read 1 while stale or off (off: the default, no Prometheus URL): a panel must not call off stale.
    expect(catalog.get("switchyard_router_load_signal_stale")?.help).toMatch(/stale or off/);
    const signals = reading("switchyard_router_load_signal_stale");
    expect(signals.length).toBeGreaterThan(0);
    for (const p of signals) {
      expect(p.title, p.title).toMatch(/stale or off/);
      expect(p.description, p.title).toMatch(/stale or off/);
    }
    // The queue depth counts batches waiting or running.
    expect(catalog.get("switchyard_worker_queue_depth")?.help).toMatch(/waiting or running/);
    for (const p of reading("switchyard_worker_queue_depth"))
      expect(p.description, p.title).toMatch(/waiting or running/);
    // The reconcile results: exactly those the controller counts.
    const controller = readFileSync(join(REPO, "operator/src/runtime/controller.ts"), "utf8");
    const results = new Set([...controller.matchAll(/result: "([a-z_]+)"/g)].map((m) => m[1]));
    expect(results.size).toBeGreaterThan(1);
    const byResult = reading("controller_runtime_reconcile_total").filter((p) =>
      p.targets.some((t) => /by \([^)]*\bresult\b/.test(t.expr)),
    );
    expect(byResult.length).toBeGreaterThan(0);
    for (const p of byResult)
      for (const r of ["success", "error", "requeue", "requeue_after"])
        expect(new RegExp(`\\b${r}\\b`).test(p.description), `${p.title} on result ${r}`).toBe(results.has(r));
  });

  it.skipIf(!promtool)("every query is valid PromQL (promtool check rules on them as recording rules)", async () => {
    const queries = allQueries(dashboards);
    const rules = queries.map((q: PanelQuery, i: number) => ({
      record: `switchyard:dashboard_query_${i}`,
      expr: substituteVariables(q.expr),
    }));
    const dir = mkdtempSync(join(tmpdir(), "switchyard-dash-"));
    try {
      writeFileSync(join(dir, "queries.yaml"), stringify({ groups: [{ name: "dashboards", rules }] }));
      const r = await exec(promtool!, ["check", "rules", join(dir, "queries.yaml")]);
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(r.stdout).toContain(`SUCCESS: ${rules.length} rules found`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it.skipIf(!promtool)(
    "ExpertPools by condition counts each pool once with a standby operator replica, and only the release's (promtool)",
    async () => {
      // Every operator replica, the standby too, counts the pools of its informer cache: the same gauge twice.
      const panel = load("switchyard-operator.json").panels.find(
        (p: { title: string }) => p.title === "ExpertPools by condition",
      );
      const series = (pod: string, release = "default/sy", counts = ["3x5", "1x5"]) => [
        {
          series: `switchyard_operator_pools{component="operator",switchyard_release="${release}",condition="True",pod="${pod}"}`,
          values: counts[0],
        },
        {
          series: `switchyard_operator_pools{component="operator",switchyard_release="${release}",condition="False",pod="${pod}"}`,
          values: counts[1],
        },
      ];
      const tests = {
        tests: [
          {
            interval: "1m",
            input_series: [
              ...series("sy-switchyard-operator-a"),
              ...series("sy-switchyard-operator-b"),
              // another install's operator, sharing the Prometheus: not in this release's counts
              ...series("staging-switchyard-operator-a", "staging/sy", ["9x5", "7x5"]),
            ],
            promql_expr_test: [
              {
                expr: substituteVariables(panel.targets[0].expr, { release: "default/sy" }),
                eval_time: "2m",
                exp_samples: [
                  { labels: '{condition="False"}', value: 1 },
                  { labels: '{condition="True"}', value: 3 },
                ],
              },
            ],
          },
        ],
      };
      const dir = mkdtempSync(join(tmpdir(), "switchyard-dash-"));
      try {
        writeFileSync(join(dir, "pools.test.yaml"), stringify(tests));
        const r = await exec(promtool!, ["test", "rules", join(dir, "pools.test.yaml")]);
        expect(r.code, r.stdout + r.stderr).toBe(0);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});
