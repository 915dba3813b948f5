// The chart's PrometheusRule, rendered by helm, checked and unit-tested by the real promtool:
// `promtool check rules` on the rendered groups, `promtool test rules` with alerts.promtool.yaml.
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse, stringify } from "yaml";
import { CHART, exec, findTool, parseDocs, REPO, templateArgs, VALUES_FILES } from "./helm.js";

const helm = findTool("helm", "SWITCHYARD_HELM");
const promtool = findTool("promtool", "SWITCHYARD_PROMTOOL");
if (!helm || !promtool)
  console.warn(
    `alert rule tests SKIPPED: missing ${helm ? "" : "helm "}${promtool ? "" : "promtool (Debian package prometheus)"}`,
  );

const TESTS = join(REPO, "test/src/chart/alerts.promtool.yaml");
const ALERTS = [
  "SwitchyardWorkerDown",
  "SwitchyardRouterDown",
  "SwitchyardOperatorDown",
  "SwitchyardWorkerNotReady",
  "SwitchyardExpertLoadImbalanceHigh",
  "SwitchyardCacheHitRatioLow",
  "SwitchyardGpuCacheHitRatioLow",
  "SwitchyardRouterErrorRateHigh",
  "SwitchyardRouterUnknownPoolRequests",
  "SwitchyardRouterLatencyHigh",
  "SwitchyardRouterSaturated",
  "SwitchyardWorkerGpuSaturated",
  "SwitchyardWorkerDataPathUnused",
  "SwitchyardOperatorReconcileErrors",
  "SwitchyardRouterConfigFull",
  "SwitchyardPoolNotReady",
];

describe.skipIf(!helm || !promtool)("PrometheusRule alerts", () => {
  let dir: string;
  let groups: Array<{ name: string; rules: Array<{ alert?: string; expr: string }> }>;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "switchyard-rules-"));
    const r = await exec(helm!, [
      ...["template", "sy", CHART, "--set", "prometheusRule.enabled=true"],
      ...["--show-only", "templates/prometheusrule.yaml"],
    ]);
    if (r.code !== 0) throw new Error(r.stderr);
    const [rule] = parseDocs(r.stdout);
    groups = (rule.spec as { groups: typeof groups }).groups;
    writeFileSync(join(dir, "switchyard.rules.yaml"), stringify({ groups }));
    copyFileSync(TESTS, join(dir, "alerts.promtool.yaml"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("renders exactly the documented alerts", () => {
    expect(groups.flatMap((g) => g.rules.map((r) => r.alert))).toEqual(ALERTS);
  });

  it("every rendered alert can be switched off by name in prometheusRule.disabled, and the schema knows no other", async () => {
    const rendered = groups.flatMap((g) => g.rules.flatMap((r) => (r.alert ? [r.alert] : [])));
    const schema = JSON.parse(readFileSync(join(CHART, "values.schema.json"), "utf8"));
    const allowed: string[] = schema.properties.prometheusRule.properties.disabled.items.enum;
    expect([...allowed].sort()).toEqual([...rendered].sort());
    // and helm takes all of them (the schema's enum) and leaves every one out
    const r = await exec(helm!, [
      ...["template", "sy", CHART, "--set", "prometheusRule.enabled=true"],
      ...["--set-json", `prometheusRule.disabled=${JSON.stringify(rendered)}`],
      ...["--show-only", "templates/prometheusrule.yaml"],
    ]);
    expect(r.code, r.stderr).toBe(0);
    const [rule] = parseDocs(r.stdout);
    const left = (rule.spec as { groups: typeof groups }).groups.flatMap((g) => g.rules ?? []);
    expect(left).toEqual([]);
  });

  it("every selector of every alert matches only this release's targets, by the label the chart's monitors add", async () => {
    const args = ["template", "prod", CHART, "--namespace", "llm"];
    const r = await exec(helm!, [...args, "--set", "prometheusRule.enabled=true"]);
    expect(r.code, r.stderr).toBe(0);
    const rules = (
      parseDocs(r.stdout).find((d) => d.kind === "PrometheusRule")!.spec as { groups: typeof groups }
    ).groups.flatMap((g) => g.rules);
    const release = 'switchyard_release="llm/prod"';
    // every metric the rules read (up, the three components' own, controller-runtime's), each with its matchers
    const selector = /\b(up|switchyard_(?:router|worker|operator)_[a-z_]+|controller_runtime_[a-z_]+)\b(\{[^}]*\})?/g;
    for (const rule of rules) {
      const found = [...rule.expr.matchAll(selector)];
      expect(found.length, rule.alert).toBeGreaterThan(0);
      for (const [sel, , matchers] of found) expect(matchers ?? "", `${rule.alert}: ${sel}`).toContain(release);
    }
    // and the monitors put exactly that label on every target they scrape
    const m = await exec(helm!, [...args, "--set", "serviceMonitor.enabled=true", "--set", "podMonitor.enabled=true"]);
    expect(m.code, m.stderr).toBe(0);
    const monitors = parseDocs(m.stdout).filter((d) => d.kind === "ServiceMonitor" || d.kind === "PodMonitor");
    expect(monitors.map((d) => d.kind).sort()).toEqual(["PodMonitor", "ServiceMonitor", "ServiceMonitor"]);
    for (const mon of monitors) {
      const spec = mon.spec as Record<string, Array<{ relabelings: Array<Record<string, unknown>> }>>;
      for (const ep of spec.endpoints ?? spec.podMetricsEndpoints)
        expect(ep.relabelings).toContainEqual({ targetLabel: "switchyard_release", replacement: "llm/prod" });
    }
  });

  it("the down alerts come with their component: no router (or operator) run, no alert that it is missing", async () => {
    for (const [component, alert] of [
      ["router", "SwitchyardRouterDown"],
      ["operator", "SwitchyardOperatorDown"],
    ]) {
      const r = await exec(helm!, [
        ...["template", "sy", CHART, "--set", "prometheusRule.enabled=true", "--set", `${component}.enabled=false`],
        // a router without an operator of its own reads another release's router config
        ...["--set", "router.configMapName=other-switchyard-router"],
        ...["--show-only", "templates/prometheusrule.yaml"],
      ]);
      expect(r.code, r.stderr).toBe(0);
      const [rule] = parseDocs(r.stdout);
      const names = (rule.spec as { groups: typeof groups }).groups.flatMap((g) => g.rules.map((x) => x.alert));
      expect(names).toEqual(ALERTS.filter((a) => a !== alert));
    }
  });

  it("routerLatency.seconds stays below the router's top latency bucket (30 s), where histogram_quantile stops", async () => {
    const render = (seconds: number) =>
      exec(helm!, [
        ...["template", "sy", CHART, "--set", "prometheusRule.enabled=true"],
        ...["--set", `prometheusRule.routerLatency.seconds=${seconds}`, "--show-only", "templates/prometheusrule.yaml"],
      ]);
    expect((await render(20)).code).toBe(0);
    const refused = await render(30);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain("routerLatency");
  });

  it("promtool check rules accepts the rendered rules", async () => {
    const r = await exec(promtool!, ["check", "rules", join(dir, "switchyard.rules.yaml")]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain(`SUCCESS: ${ALERTS.length} rules found`);
  });

  it("startupGrace 0 turns the worker-down grace off (a zero range or offset is a rule Prometheus refuses)", async () => {
    for (const grace of ["0s", "0m"]) {
      const r = await exec(helm!, [
        ...["template", "sy", CHART, "--set", "prometheusRule.enabled=true"],
        ...["--set", `prometheusRule.workerDown.startupGrace=${grace}`],
        ...["--show-only", "templates/prometheusrule.yaml"],
      ]);
      expect(r.code, r.stderr).toBe(0);
      const [rule] = parseDocs(r.stdout);
      const g = (rule.spec as { groups: typeof groups }).groups;
      const down = g.flatMap((x) => x.rules).find((x) => x.alert === "SwitchyardWorkerDown");
      expect(down?.expr.trim()).toBe('up{component="worker", switchyard_release="default/sy"} == 0');
      const file = join(dir, `no-grace-${grace}.rules.yaml`);
      writeFileSync(file, stringify({ groups: g }));
      const check = await exec(promtool!, ["check", "rules", file]);
      expect(check.code, check.stdout + check.stderr).toBe(0);
    }
  });

  it("every alert has a promtool case where it fires and one where it stays quiet", () => {
    const tests = parse(readFileSync(TESTS, "utf8")).tests as Array<{
      alert_rule_test: Array<{ alertname: string; exp_alerts: unknown[] }>;
    }>;
    for (const alert of ALERTS) {
      const cases = tests.flatMap((t) => t.alert_rule_test).filter((c) => c.alertname === alert);
      expect(
        cases.some((c) => c.exp_alerts.length > 0),
        `${alert} fires somewhere`,
      ).toBe(true);
      expect(
        cases.some((c) => c.exp_alerts.length === 0),
        `${alert} stays quiet somewhere`,
      ).toBe(true);
    }
  });

  it("promtool test rules passes", async () => {
    const r = await exec(promtool!, ["test", "rules", join(dir, "alerts.promtool.yaml")]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain("SUCCESS");
  });

  it("the monitoring example's load-signal rule: stale signals of this release, not a pool whose signals are off (promtool)", async () => {
    const r = await exec(
      helm!,
      templateArgs(VALUES_FILES.monitoring, ["--show-only", "templates/prometheusrule.yaml"]),
    );
    expect(r.code, r.stderr).toBe(0);
    const [rule] = parseDocs(r.stdout);
    const stale = (rule.spec as { groups: typeof groups }).groups
      .flatMap((g) => g.rules)
      .filter((x) => x.alert === "SwitchyardRouterLoadSignalsStale");
    expect(stale).toHaveLength(1);
    writeFileSync(join(dir, "example.rules.yaml"), stringify({ groups: [{ name: "example", rules: stale }] }));
    const labels = (release: string, pool: string) =>
      `{switchyard_release="${release}", namespace="switchyard-system", pool="${pool}", pod="sy-switchyard-router-a"}`;
    // the stale gauge's samples, and the enabled gauge's (0: the pool's policy names no Prometheus)
    const series = (release: string, pool: string, values: string, enabled = 1) => [
      { series: `switchyard_router_load_signal_stale${labels(release, pool)}`, values },
      { series: `switchyard_router_load_signals_enabled${labels(release, pool)}`, values: `${enabled}x60` },
    ];
    const tests = {
      rule_files: ["example.rules.yaml"],
      tests: [
        {
          interval: "1m",
          input_series: [
            // signals off (the default): 1 from the start, nothing to alert on
            ...series("switchyard-system/sy", "off", "1x60", 0),
            // signals on, fresh for 10 minutes, then stale
            ...series("switchyard-system/sy", "on", "0x10 1x50"),
            // on, but stale from the start (a wrong URL): alerts too
            ...series("switchyard-system/sy", "never", "1x60"),
            // fresh all along here; another release's pool of that name went stale
            ...series("switchyard-system/sy", "fine", "0x60"),
            ...series("other/sy", "fine", "0x10 1x50"),
          ],
          alert_rule_test: [
            {
              eval_time: "15m",
              alertname: "SwitchyardRouterLoadSignalsStale",
              exp_alerts: [{ exp_labels: { severity: "info", namespace: "switchyard-system", pool: "never" } }],
            },
            {
              eval_time: "30m",
              alertname: "SwitchyardRouterLoadSignalsStale",
              exp_alerts: [
                { exp_labels: { severity: "info", namespace: "switchyard-system", pool: "never" } },
                { exp_labels: { severity: "info", namespace: "switchyard-system", pool: "on" } },
              ],
            },
          ],
        },
      ],
    };
    writeFileSync(join(dir, "example.promtool.yaml"), stringify(tests));
    const t = await exec(promtool!, ["test", "rules", join(dir, "example.promtool.yaml")]);
    expect(t.code, t.stdout + t.stderr).toBe(0);
  });

  it("promtool test rules fails when a threshold moves (the tests can fail)", async () => {
    const r = await exec(helm!, [
      ...["template", "sy", CHART, "--set", "prometheusRule.enabled=true"],
      ...["--set-json", "prometheusRule.expertLoadImbalance.ratio=2.5", "--show-only", "templates/prometheusrule.yaml"],
    ]);
    const [rule] = parseDocs(r.stdout);
    writeFileSync(join(dir, "switchyard.rules.yaml"), stringify({ groups: (rule.spec as { groups: unknown }).groups }));
    const t = await exec(promtool!, ["test", "rules", join(dir, "alerts.promtool.yaml")]);
    expect(t.code).not.toBe(0);
    expect(t.stdout + t.stderr).toContain("SwitchyardExpertLoadImbalanceHigh");
    writeFileSync(join(dir, "switchyard.rules.yaml"), stringify({ groups }));
  });
});
