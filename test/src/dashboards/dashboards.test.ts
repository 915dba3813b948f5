// Static checks of the shipped Grafana dashboards: the committed JSON is what model.ts generates, uids are stable,
// every panel and query goes through the datasource variable, panels do not overlap, every query is valid PromQL
// (checked by the real promtool) and uses only metric names from docs/CONTRACTS.md.
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { exec, findTool, REPO } from "../chart/helm.js";
import { DASHBOARDS, DS, renderDashboards } from "./model.js";
import { allQueries, contractMetricNames, metricNamesIn, substituteVariables } from "./queries.js";

const DIR = join(REPO, "charts/switchyard/dashboards");
const load = (file: string) => JSON.parse(readFileSync(join(DIR, file), "utf8"));
const promtool = findTool("promtool", "SWITCHYARD_PROMTOOL");

describe("Grafana dashboards", () => {
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
    const titles = DASHBOARDS.flatMap((d) => load(d.file).panels.map((p: { title: string }) => p.title)).join("\n");
    for (const want of [
      /heat map.*layer x expert/i,
      /max \/ mean worker load/i,
      /cache hit ratio per worker/i,
      /tokens per expert call/i,
      /latency p50 \/ p90 \/ p99/i,
      /queue wait/i,
      /dropped/i,
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

  it("query only metrics named in docs/CONTRACTS.md", () => {
    const known = contractMetricNames(readFileSync(join(REPO, "docs/CONTRACTS.md"), "utf8"));
    expect(known.size).toBeGreaterThan(30);
    for (const q of allQueries(DASHBOARDS.map((d) => load(d.file)))) {
      for (const m of metricNamesIn(q.expr)) expect(known, `${q.dashboard} / ${q.panel}: ${m}`).toContain(m);
    }
  });

  it.skipIf(!promtool)("every query is valid PromQL (promtool check rules on them as recording rules)", async () => {
    const queries = allQueries(DASHBOARDS.map((d) => load(d.file)));
    const rules = queries.map((q, i) => ({
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
    "ExpertPools by condition counts each pool once with a standby operator replica (promtool)",
    async () => {
      // Every operator replica, the standby too, counts the pools of its informer cache: the same gauge twice.
      const panel = load("switchyard-operator.json").panels.find(
        (p: { title: string }) => p.title === "ExpertPools by condition",
      );
      const series = (pod: string) => [
        { series: `switchyard_operator_pools{condition="True",pod="${pod}"}`, values: "3x5" },
        { series: `switchyard_operator_pools{condition="False",pod="${pod}"}`, values: "1x5" },
      ];
      const tests = {
        tests: [
          {
            interval: "1m",
            input_series: [...series("sy-switchyard-operator-a"), ...series("sy-switchyard-operator-b")],
            promql_expr_test: [
              {
                expr: substituteVariables(panel.targets[0].expr),
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
