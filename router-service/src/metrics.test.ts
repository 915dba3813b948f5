import { describe, expect, it } from "vitest";
import { RouterMetrics } from "./metrics.js";

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
