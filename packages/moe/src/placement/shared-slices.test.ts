import { describe, expect, it } from "vitest";
import { PlacementError, validatePlan } from "./plan.js";
import { planPlacement } from "./planner.js";
import { loadWithSharedSlices, placedSharedSlices } from "./shared-slices.js";

describe("the shared expert's slices in a plan", () => {
  it("loads each slice with every token: the routed load over top-k", () => {
    expect(loadWithSharedSlices(undefined, 1, 4, 2, 2)).toEqual([[1, 1, 1, 1, 2, 2]]);
    expect(loadWithSharedSlices([[10, 0, 6, 4]], 1, 4, 1, 2)).toEqual([[10, 0, 6, 4, 10]]);
    expect(() => loadWithSharedSlices([[1, 2]], 1, 4, 1, 2)).toThrow(/load\[0\]: has 2 experts, want 4/);
    expect(() => loadWithSharedSlices(undefined, 1, 4, 1, 0)).toThrow(/topK: must be an integer >= 1/);
  });

  it("spreads the heavy slices over the workers when the planner gets their load", () => {
    // 8 experts top-2 and 4 slices on 4 workers: a slice is 4x a routed expert's load
    const E = 8;
    const { plan, stats } = planPlacement({
      pool: "p",
      layers: 2,
      experts: E + 4,
      workers: ["a", "b", "c", "d"],
      load: loadWithSharedSlices(undefined, 2, E, 4, 2),
    });
    for (const layer of plan.replicas) {
      const slicesPerWorker = [0, 0, 0, 0];
      for (let j = 0; j < 4; j++) for (const w of layer[E + j]) slicesPerWorker[w]++;
      expect(slicesPerWorker).toEqual([1, 1, 1, 1]);
    }
    expect(stats.maxImbalance).toBeLessThanOrEqual(1.0001);
    expect(placedSharedSlices(plan, E, 4)).toBe(4);
    expect(validatePlan(plan, { layers: 2, experts: E, sharedSlices: 4 })).toBe(plan);
  });

  it("tells a plan without slices from one with them, and rejects anything else naming the layer", () => {
    const routedOnly = planPlacement({ pool: "p", layers: 2, experts: 4, workers: ["a"] }).plan;
    expect(placedSharedSlices(routedOnly, 4, 2)).toBe(0);
    expect(validatePlan(routedOnly, { layers: 2, experts: 4, sharedSlices: 2 })).toBe(routedOnly);
    const five = planPlacement({ pool: "p", layers: 2, experts: 5, workers: ["a"] }).plan;
    expect(() => placedSharedSlices(five, 4, 2)).toThrow(PlacementError);
    expect(() => placedSharedSlices(five, 4, 2)).toThrow(
      /plan.replicas\[0\]: has 5 entries; the model has 4 experts \(6 with/,
    );
    expect(() => validatePlan(five, { layers: 2, experts: 4, sharedSlices: 2 })).toThrow(
      /plan.replicas\[0\]: has 5 experts, the model has 4 \(6 with its 2 shared slices\)/,
    );
    const mixed = { ...routedOnly, replicas: [routedOnly.replicas[0], [...routedOnly.replicas[1], [0], [0]]] };
    expect(() => placedSharedSlices(mixed, 4, 2)).toThrow(/plan.replicas\[1\]: places the shared slices where other/);
  });
});
