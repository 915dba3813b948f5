import { describe, expect, it } from "vitest";
import {
  LATENCY_HALF_LIFE_MS,
  type LatencyAverage,
  latencyWeight,
  NO_LATENCY,
  withFailure,
  withSample,
  withTimeout,
} from "./latency-average.js";

const H = LATENCY_HALF_LIFE_MS;

describe("a worker's latency average", () => {
  it("counts half as much every half-life it goes unsampled", () => {
    expect(latencyWeight(0)).toBe(1);
    expect(latencyWeight(H)).toBeCloseTo(0.5, 12);
    expect(latencyWeight(4 * H)).toBeCloseTo(1 / 16, 12);
    expect(latencyWeight(-5)).toBe(1); // a clock read before the sample's: fresh
  });

  it("takes its first sample as it is, then blends at 0.2 a sample while fresh", () => {
    const a = withSample(NO_LATENCY, 3, 100);
    expect(a).toEqual({ ms: 3, at: 100 });
    expect(withSample(a, 4, 100).ms).toBeCloseTo(3.2, 12);
  });

  it("lets the sample after a long silence replace a stale average (the one batch a faded penalty lets through corrects it)", () => {
    const stale: LatencyAverage = { ms: 5, at: 0 }; // one slow sample, then no traffic
    const next = withSample(stale, 0.1, 8 * H);
    expect(next.ms).toBeLessThan(0.2); // without the fade: 0.8 * 5 + 0.2 * 0.1 = 4.02
    expect(next.at).toBe(8 * H);
  });

  it("counts one slow answer as at most twice the average, so a pause that stalls every worker moves it by 20%", () => {
    const a: LatencyAverage = { ms: 2, at: 0 };
    expect(withSample(a, 80, 0).ms).toBeLessThanOrEqual(2 * 1.2 + 1e-9);
    // a worker that is really slower climbs 20% a sample: 10 samples take it past 6x
    let b = a;
    for (let i = 0; i < 10; i++) b = withSample(b, 80, 1 + i);
    expect(b.ms).toBeGreaterThan(6 * 2 * 0.99);
  });

  it("takes a timeout's wait as it is: a worker that stops answering looks slow at once", () => {
    expect(withTimeout({ ms: 2, at: 0 }, 1000, 1).ms).toBeGreaterThan(200);
    expect(withTimeout(NO_LATENCY, 1000, 1).ms).toBe(1000);
  });

  it("doubles on a failure from the average it was set to (not what it faded to), up to the cap, and counts it fresh", () => {
    expect(withFailure(NO_LATENCY, 7, 10_000)).toEqual({ ms: 2, at: 7 }); // from at least 1 ms
    expect(withFailure({ ms: 40, at: 0 }, 10 * H, 10_000)).toEqual({ ms: 80, at: 10 * H });
    expect(withFailure({ ms: 8000, at: 0 }, 1, 10_000).ms).toBe(10_000);
  });
});
