import { describe, expect, it } from "vitest";
import { contractMetricNames, metricNamesIn, substituteVariables } from "./queries.js";

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
  });

  it("reads metric names from the contracts table, with histogram series", () => {
    const names = contractMetricNames("- `switchyard_router_queue_wait_seconds` (histogram), `workqueue_depth{name}`");
    expect(names).toContain("switchyard_router_queue_wait_seconds_bucket");
    expect(names).toContain("workqueue_depth");
    expect(names).not.toContain("name");
  });
});
