import { describe, expect, it } from "vitest";
import { analyzeQuery, legendLabels, type MetricCatalog, metricNamesIn, substituteVariables } from "./queries.js";

describe("PromQL helpers", () => {
  it("finds metric names, not functions, labels or keywords", () => {
    const expr =
      'histogram_quantile(0.99, sum by (pool, le) (rate(a_bucket{pool=~"$pool", code!="OK"}[5m]))) / on (pool) group_left b or vector(0) * c_total';
    expect([...metricNamesIn(expr)].sort()).toEqual(["a_bucket", "b", "c_total"]);
  });

  it("substitutes Grafana variables", () => {
    expect(substituteVariables('rate(x{pool=~"$pool"}[$__rate_interval])', { rateInterval: "30s" })).toBe(
      'rate(x{pool=~".*"}[30s])',
    );
    expect(
      substituteVariables('x{switchyard_release=~"$release", pool=~"$pool"}', { release: "ns/sy", pool: "p" }),
    ).toBe('x{switchyard_release=~"ns/sy", pool=~"p"}');
    expect(substituteVariables('x{switchyard_release=~"$release"}')).toBe('x{switchyard_release=~".*"}');
  });

  it("reads the labels of a legend format", () => {
    expect(legendLabels("{{pool}} / {{ worker }} p99")).toEqual(["pool", "worker"]);
    expect(legendLabels("__auto")).toEqual([]);
    expect(legendLabels(undefined)).toEqual([]);
  });
});

describe("analyzeQuery", () => {
  const catalog: MetricCatalog = new Map([
    ["req_total", { type: "counter", labels: new Set(["pool", "code", "job"]) }],
    ["tokens_total", { type: "counter", labels: new Set(["pool", "worker", "job"]) }],
    ["depth", { type: "gauge", labels: new Set(["pool", "worker", "job"]) }],
    ["info", { type: "gauge", labels: new Set(["pool", "worker", "backend", "job"]) }],
    ["latency_seconds", { type: "histogram", labels: new Set(["pool", "job"]) }],
  ]);
  const problems = (expr: string) => analyzeQuery(expr, catalog).problems;

  it("accepts what the catalog has, the way it has it", () => {
    for (const expr of [
      'histogram_quantile(0.99, sum by (pool, le) (rate(latency_seconds_bucket{pool=~"$pool"}[$__rate_interval])))',
      "sum by (pool) (rate(latency_seconds_sum[5m])) / sum by (pool) (rate(latency_seconds_count[5m]))",
      '1 - (sum by (pool) (rate(req_total{code="OK"}[5m])) or sum by (pool) (rate(req_total[5m])) * 0) / sum by (pool) (rate(req_total[5m]))',
      "max by (pool) (sum by (pool, worker) (rate(tokens_total[5m]))) / avg by (pool) (sum by (pool, worker) (rate(tokens_total[5m])))",
      "depth * on (pool, worker) group_left (backend) info",
      "sum(rate(tokens_total[5m])) by (pool) > bool 0",
      "topk(5, sum without (job) (rate(tokens_total[5m] offset 1m)))",
      "vector(1048576)",
      'label_replace(depth, "w", "$1", "worker", "(.*)")',
      "max_over_time(depth[10m:1m])",
      "-depth",
    ])
      expect(problems(expr), expr).toEqual([]);
  });

  it("reports metrics the code does not export, and histogram suffixes on anything but a histogram", () => {
    expect(problems("rate(nope_total[5m])")).toEqual(["nope_total: no such metric in the code's registries"]);
    expect(problems("rate(tokens_total_sum[5m])")).toEqual([
      "tokens_total_sum: tokens_total is a counter, not a histogram",
    ]);
    expect(problems("rate(depth_count[5m])")).toEqual(["depth_count: depth is a gauge, not a histogram"]);
    expect(problems("rate(latency_seconds[5m])")).toEqual([
      "latency_seconds is a histogram: read its _bucket, _sum or _count",
    ]);
    expect(problems("rate(latency_seconds_total[5m])")).toEqual([
      "latency_seconds_total: no such metric in the code's registries",
    ]);
  });

  it("reports labels the series do not carry: matchers, by, without, on, group_left", () => {
    expect(problems('rate(req_total{pol=~"a"}[5m])')).toEqual([
      'req_total{...} matcher: the series have no label "pol" (they have {code, job, pool})',
    ]);
    expect(problems("sum by (pool, worker) (rate(req_total[5m]))")).toEqual([
      'sum by (...): the series have no label "worker" (they have {code, job, pool})',
    ]);
    expect(problems("sum without (wrker) (depth)")).toEqual([
      'sum without (...): the series have no label "wrker" (they have {job, pool, worker})',
    ]);
    // a label the inner aggregation dropped is gone for the outer one
    expect(problems("max by (pool, worker) (sum by (pool) (depth))")).toEqual([
      'max by (...): the series have no label "worker" (they have {pool})',
    ]);
    expect(problems("depth * on (pool, backend) info")).toEqual([
      '* on (...), left side: the series have no label "backend" (they have {job, pool, worker})',
    ]);
    expect(problems("info * on (pool, worker) group_left (code) depth")).toEqual([
      'group_left(...): the series have no label "code" (they have {job, pool, worker})',
    ]);
  });

  it("reports rate() of a gauge, a quantile without le, and vector matches that match nothing", () => {
    expect(problems("rate(depth[5m])")).toEqual(["rate(depth): depth is not a counter"]);
    expect(problems("histogram_quantile(0.9, sum by (pool) (rate(latency_seconds_bucket[5m])))")).toEqual([
      'histogram_quantile(): its series have no "le" label (they have {pool})',
    ]);
    expect(problems("sum by (pool, worker) (rate(tokens_total[5m])) / sum by (pool) (rate(req_total[5m]))")).toEqual([
      "/ between series with different labels, {pool, worker} and {pool}, without on/ignoring: it matches nothing",
    ]);
  });

  it("reports what it cannot parse or does not know", () => {
    expect(problems("sum by (pool (depth)")[0]).toMatch(/^does not parse/);
    expect(problems("holt_winters(depth[5m], 0.5, 0.5)")[0]).toMatch(/not a function this checker knows/);
    expect(problems("rate(depth)")[0]).toMatch(/must be a range vector/);
  });

  it("follows the labels to the result, selectors and aggregations", () => {
    const a = analyzeQuery(
      'sum by (pool, worker, code) (rate(req_total{pool=~"$pool", code!="OK"}[5m])) or sum by (pool, worker) (rate(tokens_total[5m])) * 0',
      catalog,
    );
    expect(a.problems).toEqual(['sum by (...): the series have no label "worker" (they have {code, job, pool})']);
    expect([...(a.labels ?? [])].sort()).toEqual(["code", "pool", "worker"]);
    expect(a.selectors.map((s) => [s.name, s.matchers.map((m) => `${m.label}${m.op}${m.value}`)])).toEqual([
      ["req_total", ["pool=~$pool", "code!=OK"]],
      ["tokens_total", []],
    ]);
    expect(a.aggregations.map((g) => [g.op, [...(g.output ?? [])]])).toEqual([
      ["sum", ["pool", "worker", "code"]],
      ["sum", ["pool", "worker"]],
    ]);
    expect(analyzeQuery("sum(depth) / 2", catalog).labels).toEqual(new Set());
    expect(analyzeQuery("scalar(sum(depth))", catalog).labels).toBeUndefined();
    expect(analyzeQuery("rate(nope_total[5m])", catalog).labels).toBeNull();
  });
});
