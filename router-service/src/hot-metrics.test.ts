import { Counter, Histogram, Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { HotCounter, HotHistogram } from "./hot-metrics.js";

describe("hot metrics", () => {
  it("expose exactly what prom-client's Histogram and Counter expose for the same observations", async () => {
    const buckets = [0.001, 0.01, 0.1, 1];
    const hot = new Registry();
    const ref = new Registry();
    const hh = new HotHistogram({ name: "x_seconds", help: "x.", labelNames: ["pool"], buckets }, hot);
    const rh = new Histogram({ name: "x_seconds", help: "x.", labelNames: ["pool"], buckets, registers: [ref] });
    const hc = new HotCounter({ name: "y_total", help: "y.", labelNames: ["pool", "code"] }, hot);
    const rc = new Counter({ name: "y_total", help: "y.", labelNames: ["pool", "code"], registers: [ref] });
    const values = [0, 0.0005, 0.001, 0.0011, 0.05, 0.1, 0.5, 1, 3, 1e9];
    for (const pool of ["a", "b"]) {
      const h = hh.labels({ pool });
      const r = rh.labels({ pool });
      for (const v of values) {
        h.observe(pool === "a" ? v : v * 2);
        r.observe(pool === "a" ? v : v * 2);
      }
      hc.labels({ pool, code: "OK" }).inc(3);
      rc.labels({ pool, code: "OK" }).inc(3);
    }
    hc.inc({ pool: "a", code: "UNAVAILABLE" }, 2);
    rc.inc({ pool: "a", code: "UNAVAILABLE" }, 2);
    expect(await hot.metrics()).toBe(await ref.metrics());
    hot.resetMetrics();
    ref.resetMetrics();
    expect(await hot.metrics()).toBe(await ref.metrics());
  });

  it("reuses one child per label set and refuses missing labels and negative increments", () => {
    const r = new Registry();
    const c = new HotCounter({ name: "z_total", help: "z.", labelNames: ["pool"] }, r);
    expect(c.labels({ pool: "a" })).toBe(c.labels({ pool: "a" }));
    expect(() => c.labels({})).toThrow(/label pool/);
    expect(() => c.labels({ pool: "a" }).inc(-1)).toThrow(/>= 0/);
    expect(() => new HotCounter({ name: "z_total", help: "z.", labelNames: [] }, r)).toThrow(/already/);
  });
});
