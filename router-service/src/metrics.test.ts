import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { MAX_HEAT_SERIES, REQUEST_LATENCY_BUCKETS, RouterMetrics } from "./metrics.js";

describe("RouterMetrics: the event loop's busy time", () => {
  it("grows by the time the loop was kept busy between two scrapes, unlabelled (one loop per process)", async () => {
    const m = new RouterMetrics();
    const busy = async () =>
      (await m.registry.getSingleMetric("switchyard_router_event_loop_busy_seconds_total")?.get())?.values[0]?.value ??
      -1;
    const before = await busy();
    const until = Date.now() + 80;
    while (Date.now() < until) {} // 80 ms of a busy loop
    const after = await busy();
    expect(before).toBeGreaterThanOrEqual(0);
    expect(after - before).toBeGreaterThanOrEqual(0.07);
    expect(await m.registry.metrics()).toMatch(/^switchyard_router_event_loop_busy_seconds_total [0-9.e-]+$/m);
  });
});

/** The exposition's lines that carry pool="<pool>". */
async function linesOf(m: RouterMetrics, pool: string): Promise<string[]> {
  return (await m.registry.metrics()).split("\n").filter((l) => l.includes(`pool="${pool}"`));
}

/** Heat for every (layer, expert) of `layers` x `experts`, flushed to the counter as a scrape does. */
function heatUp(m: RouterMetrics, pool: string, layers: number, experts: number): void {
  const p = m.forPool(pool);
  for (let l = 0; l < layers; l++) for (let e = 0; e < experts; e++) p.addHeat(l, experts, e, 1);
  p.flushHeat();
}

describe("RouterMetrics: expert heat", () => {
  it("keeps a layer's heat when the pool's model grows more experts (a config reload)", async () => {
    const m = new RouterMetrics();
    const p = m.forPool("g");
    p.addHeat(0, 4, 3, 1); // the first model: 4 experts
    p.addHeat(0, 8, 7, 2); // the next: 8
    p.flushHeat();
    const lines = await linesOf(m, "g");
    expect(lines).toContain('switchyard_router_expert_tokens_total{pool="g",layer="0",expert="7"} 2');
    expect(lines).toContain('switchyard_router_expert_tokens_total{pool="g",layer="0",expert="3"} 1');
  });

  it("bounds heat series per pool: a pool that fills its share leaves the next pool's heat labelled", async () => {
    const m = new RouterMetrics();
    const experts = 256;
    const layers = MAX_HEAT_SERIES / experts;
    heatUp(m, "a", layers, experts);
    heatUp(m, "b", layers, experts);
    heatUp(m, "c", 2, experts);
    const c = await linesOf(m, "c");
    expect(c.filter((l) => l.startsWith("switchyard_router_expert_tokens_total"))).toHaveLength(2 * experts);
    expect(c.some((l) => l.includes('expert="other"'))).toBe(false);
    // past its own bound a pool still folds
    heatUp(m, "a", layers + 1, experts);
    expect((await linesOf(m, "a")).some((l) => l.includes(`layer="${layers}",expert="other"`))).toBe(true);
  });

  it("forgetPool drops the pool's series (heat, per-pool and per-worker) and frees its heat bound", async () => {
    const m = new RouterMetrics();
    for (const pool of ["a", "b"]) {
      const p = m.forPool(pool);
      p.tokens.inc(3);
      p.requestDuration.observe(0.01);
      p.dropped.inc(1);
      const w = p.worker("w0");
      w.tokens.inc(2);
      w.dispatch.observe(0.001);
      w.errors.inc();
      w.outstanding.set(1);
      w.dataPath.set(1);
      m.loadSignalStale.set({ pool }, 0);
      m.loadSignalsEnabled.set({ pool }, 1);
      m.planVersion.set({ pool }, 2);
    }
    const experts = 256;
    const layers = MAX_HEAT_SERIES / experts;
    heatUp(m, "a", layers + 1, experts); // past its bound: layer `layers` folds into other
    heatUp(m, "b", 1, experts);
    const aBefore = await linesOf(m, "a");
    expect(aBefore.some((l) => l.startsWith("switchyard_router_expert_tokens_total"))).toBe(true);
    expect(aBefore.some((l) => l.startsWith("switchyard_router_worker_tokens_total"))).toBe(true);
    const bBefore = await linesOf(m, "b");

    const stale = m.forPool("a"); // as a flush still in flight holds it
    m.forgetPool("a");
    expect(await linesOf(m, "a")).toEqual([]);
    // what that flush counts after the pool is forgotten puts no series back
    stale.dropped.inc(1);
    stale.gateAheadTokens.inc(1);
    stale.worker("w0").errors.inc();
    stale.addHeat(0, experts, 1, 1);
    stale.flushHeat();
    expect(await linesOf(m, "a")).toEqual([]);
    expect(await linesOf(m, "b")).toEqual(bBefore); // other pools untouched

    // A pool of the same name later starts afresh: new children, and its heat bound free again.
    const a = m.forPool("a");
    a.tokens.inc(1);
    heatUp(m, "a", 1, 4);
    const after = await linesOf(m, "a");
    expect(after).toContain('switchyard_router_tokens_total{pool="a"} 1');
    expect(after).toContain('switchyard_router_expert_tokens_total{pool="a",layer="0",expert="3"} 1');
    expect(after.some((l) => l.includes('expert="other"'))).toBe(false);
  });

  it("forgetPool of an unknown pool does nothing", () => {
    const m = new RouterMetrics();
    expect(() => m.forgetPool("nope")).not.toThrow();
  });
});

describe("RouterMetrics: series a rate() can start from", () => {
  it("a worker's dispatch errors are exported at 0 as soon as the router has children for it", async () => {
    const m = new RouterMetrics();
    m.forPool("a").worker("a-0");
    expect(await linesOf(m, "a")).toContain('switchyard_router_dispatch_errors_total{pool="a",worker="a-0"} 0');
  });
});

describe("RouterMetrics: request latency buckets", () => {
  it("reach past every SwitchyardRouterLatencyHigh threshold the chart accepts (a quantile in +Inf reads as the top bucket)", async () => {
    const schema = JSON.parse(
      readFileSync(new URL("../../charts/switchyard/values.schema.json", import.meta.url), "utf8"),
    );
    const seconds = schema.properties.prometheusRule.properties.routerLatency.properties.seconds;
    expect(seconds.exclusiveMaximum).toBeGreaterThan(5);
    expect(Math.max(...REQUEST_LATENCY_BUCKETS)).toBeGreaterThanOrEqual(seconds.exclusiveMaximum);
    // and the router's histogram is exported with them: a 20 s request lands in le="30", not le="10"
    const m = new RouterMetrics();
    m.forPool("a").requestDuration.observe(20);
    const lines = await linesOf(m, "a");
    expect(lines).toContain('switchyard_router_request_duration_seconds_bucket{le="10",pool="a"} 0');
    expect(lines).toContain('switchyard_router_request_duration_seconds_bucket{le="30",pool="a"} 1');
  });
});

describe("RouterMetrics.collectProcessMetrics", () => {
  it("adds Node's process metrics once (main.ts); a plain instance (tests, local mode) has none", async () => {
    const plain = new RouterMetrics();
    expect(await plain.registry.metrics()).not.toMatch(/^process_resident_memory_bytes /m);
    const m = new RouterMetrics();
    m.collectProcessMetrics();
    m.collectProcessMetrics(); // a second call would register every series twice and throw
    const text = await m.registry.metrics();
    expect(text).toMatch(/^process_resident_memory_bytes \d/m);
    expect(text).toMatch(/^nodejs_heap_size_used_bytes \d/m);
  });
});
