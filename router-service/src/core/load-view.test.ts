import { describe, expect, it } from "vitest";
import type { SignalSnapshot } from "../signals/prometheus.js";
import { latencyMs, outstandingRows } from "./load-view.js";

const snap = (depth: [string, number][], lat: [string, number][]): SignalSnapshot => ({
  queueDepth: new Map(depth),
  latencyMs: new Map(lat),
  at: 0,
});

describe("the replica choice's view of a worker", () => {
  it("counts the larger of the worker's rows (all routers) and this router's own, never both", () => {
    const s = snap([["w0", 300]], []);
    expect(outstandingRows(s, "w0", 100)).toBe(300); // other routers' rows wait there too
    expect(outstandingRows(s, "w0", 500)).toBe(500); // ours on the wire, not yet counted by the worker
    expect(outstandingRows(s, "w1", 40)).toBe(40); // no sample: our own count
    expect(outstandingRows(null, "w0", 40)).toBe(40); // stale: our own count
  });

  it("compares one measure: Prometheus' run time while fresh (unknown for an idle worker), else round trips", () => {
    const s = snap([], [["w0", 2]]);
    expect(latencyMs(s, true, "w0", 9)).toBe(2);
    // idle (no rate sample): unknown, not its 9 ms round trip against w0's 2 ms run time
    expect(latencyMs(s, true, "w1", 9)).toBe(0);
    expect(latencyMs(s, false, "w1", 9)).toBe(9); // no latency query configured
    expect(latencyMs(null, true, "w1", 9)).toBe(9); // stale
  });

  it("a worker whose batches fail keeps its failure penalty under Prometheus (it records no run time to read)", () => {
    const s = snap([], [["w1", 2]]);
    expect(latencyMs(s, true, "w0", 640, true)).toBe(640); // no sample, failing: not 0, the fastest
    expect(latencyMs(s, true, "w1", 1, true)).toBe(2); // the larger of the two
    expect(latencyMs(s, true, "w0", 640, false)).toBe(0); // answered its last batch: Prometheus' measure
  });
});
