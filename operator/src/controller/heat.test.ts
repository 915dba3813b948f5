import { describe, expect, it } from "vitest";
import { HEAT_METRIC, heatQuery, parseHeat, promRegexLiteral, promString } from "./heat.js";

const vector = (result: unknown[]) => ({ status: "success", data: { resultType: "vector", result } });
const sample = (layer: string, expert: string, value: string) => ({
  metric: { layer, expert },
  value: [1767225600.123, value],
});

describe("heatQuery", () => {
  it("sums the router's counter increase by layer and expert for one pool over the window", () => {
    expect(HEAT_METRIC).toBe("switchyard_router_expert_tokens_total");
    expect(heatQuery("mix", "10m")).toBe(
      'sum by (layer, expert) (increase(switchyard_router_expert_tokens_total{pool="mix"}[10m]))',
    );
  });

  it("keeps to the routers of its own namespace, or to series without one: another install's same-named pool stays out", () => {
    expect(heatQuery("mix", "10m", "prod")).toBe(
      'sum by (layer, expert) (increase(switchyard_router_expert_tokens_total{pool="mix", namespace=~"prod|"}[10m]))',
    );
    expect(heatQuery("team-a/mix", "5m", "switchyard")).toContain('{pool="team-a/mix", namespace=~"switchyard|"}[5m]');
    // a regular expression of just the name, whatever it holds
    expect(promRegexLiteral("a.b")).toBe("a\\\\.b");
    expect(heatQuery("mix", "1m", 'x"|.*')).toContain('namespace=~"x\\"\\\\|\\\\.\\\\*|"');
  });

  it("escapes the pool name as a PromQL string literal", () => {
    expect(promString('a"b\\c\nd')).toBe('a\\"b\\\\c\\nd');
    expect(heatQuery('x"}[1m]) or vector(1', "5m")).toContain('{pool="x\\"}[1m]) or vector(1"}[5m]');
  });
});

describe("parseHeat", () => {
  const shape = { layers: 2, experts: 4 };

  it("reads an instant vector into [layer][expert], missing series as 0", () => {
    const got = parseHeat(vector([sample("0", "0", "900"), sample("0", "3", "12.5"), sample("1", "2", "40")]), shape);
    expect(got.load).toEqual([
      [900, 0, 0, 12.5],
      [0, 0, 40, 0],
    ]);
    expect(got.total).toBe(952.5);
    expect(got.ignored).toBe(0);
  });

  it('leaves out expert="other", out-of-range and malformed series, NaN, Inf and negative values', () => {
    const got = parseHeat(
      vector([
        sample("0", "1", "10"),
        sample("0", "other", "1e6"), // the router's overflow bucket: no expert to give it to
        sample("2", "0", "5"), // layer out of range
        sample("0", "4", "5"), // expert out of range
        sample("0", "01", "5"),
        sample("-1", "0", "5"),
        sample("0", "2", "NaN"),
        sample("0", "2", "+Inf"),
        sample("0", "2", "-3"),
        sample("0", "2", "not a number"),
        { metric: { layer: "1" }, value: [0, "5"] },
        { value: [0, "5"] },
        null,
      ]),
      shape,
    );
    expect(got.load).toEqual([
      [0, 10, 0, 0],
      [0, 0, 0, 0],
    ]);
    expect(got.ignored).toBe(12);
    expect(got.folded).toBe(1e6); // counted apart: the reconciler will not judge a plan on the rest
  });

  it("adds series that land on the same (layer, expert)", () => {
    expect(parseHeat(vector([sample("1", "1", "3"), sample("1", "1", "4")]), shape).load?.[1][1]).toBe(7);
  });

  it("is undefined when there is no traffic at all (the plan stays uniform)", () => {
    expect(parseHeat(vector([]), shape)).toEqual({ load: undefined, total: 0, ignored: 0, folded: 0 });
    expect(parseHeat(vector([sample("0", "0", "0"), sample("0", "other", "7")]), shape).load).toBeUndefined();
  });

  it("throws with Prometheus's own error text, or when the answer is not an instant vector", () => {
    expect(() =>
      parseHeat({ status: "error", errorType: "bad_data", error: 'parse error: unexpected "}"' }, shape),
    ).toThrow('prometheus: bad_data: parse error: unexpected "}"');
    expect(() => parseHeat({ status: "success", data: { resultType: "matrix", result: [] } }, shape)).toThrow(
      "expected an instant vector, got matrix",
    );
    expect(() => parseHeat("<html>", shape)).toThrow("not a JSON object");
    expect(() => parseHeat(null, shape)).toThrow();
  });
});

describe("parseHeat with the shared expert's slices", () => {
  const shape = { layers: 1, experts: 4, slices: 2 };

  it("keeps the slices' columns when the router reported them (the tokens they actually got)", () => {
    const got = parseHeat(vector([sample("0", "1", "30"), sample("0", "4", "100"), sample("0", "5", "100")]), shape);
    expect(got.load).toEqual([[0, 30, 0, 0, 100, 100]]);
  });

  it("gives the routed columns only when no slice series counted a token: a stale one (0, NaN) is no heat", () => {
    // Before: the mere presence of a slice series kept the columns, and the shared expert's slices, which see every
    // token, were planned as idle.
    const stale = [sample("0", "1", "30"), sample("0", "4", "0"), sample("0", "5", "NaN")];
    expect(parseHeat(vector(stale), shape).load).toEqual([[0, 30, 0, 0]]);
  });

  it("gives the routed columns only when no slice series came (desired.ts planLoad estimates them)", () => {
    expect(parseHeat(vector([sample("0", "1", "30")]), shape).load).toEqual([[0, 30, 0, 0]]);
    expect(parseHeat(vector([sample("0", "6", "5")]), shape).ignored).toBe(1); // past the slices
  });
});
