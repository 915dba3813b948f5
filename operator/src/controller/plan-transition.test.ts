import { type PlacementPlan, planPlacement, validatePlan } from "@switchyard/moe";
import { describe, expect, it } from "vitest";
import { awaitedWorkers, planStep } from "./plan-transition.js";

const ids = (n: number) => Array.from({ length: n }, (_, i) => `p-${i}`);
const plan = (version: number, workers: number, replicas: number[][][]): PlacementPlan => ({
  version,
  pool: "p",
  workers: ids(workers),
  replicas,
});
/** Expert e of each layer on worker e mod w (one copy each). */
const spread = (version: number, workers: number, experts = 8, layers = 1) =>
  plan(
    version,
    workers,
    Array.from({ length: layers }, () => Array.from({ length: experts }, (_, e) => [e % workers])),
  );
const ready = (...n: number[]) => new Set(n.map((i) => `p-${i}`));

/** (layer, expert) slots some ready worker holds. */
function served(p: PlacementPlan, r: ReadonlySet<string>): string[] {
  const out: string[] = [];
  p.replicas.forEach((row, l) => {
    row.forEach((hs, e) => {
      if (hs.some((w) => r.has(p.workers[w]))) out.push(`${l}/${e}`);
    });
  });
  return out;
}

/** Expert ids each worker holds in layer 0. */
const shares = (p: PlacementPlan) =>
  Object.fromEntries(p.workers.map((w, i) => [w, p.replicas[0].flatMap((hs, e) => (hs.includes(i) ? [e] : []))]));

describe("planStep", () => {
  it("the reviewed defect: 2 ready workers scaled to 12 whose new pods are not Ready keep every expert", () => {
    const v1 = spread(1, 2); // [[0],[1],[0],[1],...]
    const target = { ...spread(2, 12), version: 2 }; // expert e on worker e
    const step = planStep(v1, target, ready(0, 1));
    expect(step.kind).toBe("transitional");
    if (step.kind !== "transitional") return;
    validatePlan(step.plan);
    // The ready workers keep exactly their copies; the new ones get theirs of the target, to warm up.
    expect(shares(step.plan)).toEqual({
      ...shares(target),
      "p-0": [0, 2, 4, 6],
      "p-1": [1, 3, 5, 7],
    });
    expect(served(step.plan, ready(0, 1))).toEqual(served(v1, ready(0, 1)));
    expect(step.plan.version).toBe(2);
    expect(step.plan.workers).toEqual(target.workers);
    expect(step.target).toEqual({ ...target, version: 3 });
    // copies the target moves away from p-0 and p-1, kept for now: 2, 4, 6 and 3, 5, 7
    expect(step.kept).toBe(6);
    // workers 8-11 hold nothing in the target: the transition does not wait for them
    expect(step.waitingFor).toEqual(["p-2", "p-3", "p-4", "p-5", "p-6", "p-7"]);
  });

  it("publishes the target once every worker it needs is Ready, numbered after the transitional plan", () => {
    const v1 = spread(1, 2);
    const target = spread(2, 12);
    const first = planStep(v1, target, ready(0, 1));
    if (first.kind !== "transitional") throw new Error("want a transition");
    // some of the new workers Ready: still waiting for the others; the transitional plan does not change
    const some = planStep(first.plan, first.target, ready(0, 1, 2, 3, 4));
    expect(some).toMatchObject({ kind: "transitional", plan: first.plan, waitingFor: ["p-5", "p-6", "p-7"] });
    if (some.kind !== "transitional") return;
    expect(some.target).toEqual(first.target);
    const done = planStep(first.plan, first.target, ready(0, 1, 2, 3, 4, 5, 6, 7));
    expect(done).toEqual({ kind: "final", plan: first.target });
    expect(done.plan.version).toBe(3);
  });

  it("a first plan is published as it is: nothing to keep", () => {
    const target = spread(1, 4);
    expect(planStep(undefined, target, ready())).toEqual({ kind: "final", plan: target });
  });

  it("an unchanged plan keeps its version (a stored target renumbered as the published plan's)", () => {
    const v3 = spread(3, 4);
    expect(planStep(v3, spread(7, 4), ready(0, 1, 2, 3))).toEqual({ kind: "final", plan: v3 });
  });

  it("scale-down publishes the target at once: the remaining workers are Ready", () => {
    const v4 = spread(4, 4);
    const target = spread(5, 2);
    expect(planStep(v4, target, ready(0, 1, 2, 3))).toEqual({ kind: "final", plan: target });
    // the removed workers' pods already gone: nothing to wait for either
    expect(planStep(v4, target, ready(0, 1))).toEqual({ kind: "final", plan: target });
  });

  it("scale-down onto a worker that is not Ready: the removed workers' experts get the target's holders", () => {
    const v4 = spread(4, 4); // 0,4 on p-0; 1,5 on p-1; 2,6 on p-2; 3,7 on p-3
    const target = plan(5, 2, [[[0], [1], [0], [1], [1], [0], [0], [1]]]); // 4 and 5 change sides
    const step = planStep(v4, target, ready(0, 2, 3)); // p-1 warming (restarted), p-2 and p-3 leaving
    expect(step.kind).toBe("transitional");
    if (step.kind !== "transitional") return;
    validatePlan(step.plan);
    // p-0 keeps 0 and 4, p-1 keeps 1 and 5; 2, 6 and 3, 7 had only leaving holders: the target's
    expect(shares(step.plan)).toEqual({ "p-0": [0, 2, 4, 6], "p-1": [1, 3, 5, 7] });
    expect(step.plan).toMatchObject({ version: 5, workers: ["p-0", "p-1"] });
    expect(step.waitingFor).toEqual(["p-1"]); // for expert 4
  });

  it("a transitional plan that would be the target is the target", () => {
    const v4 = spread(4, 4);
    const target = plan(5, 2, [[[0], [1], [0], [1], [0], [1], [0], [1]]]);
    // p-1 not Ready: experts 3 and 7 lose their ready holder, but p-0 and p-1 keep theirs, so nothing is left to keep
    expect(planStep(v4, target, ready(0, 2, 3))).toEqual({ kind: "final", plan: target });
  });

  it("a scale-up during a transition: every worker of the published plan keeps its copies, the newest get the new target's", () => {
    const v1 = spread(1, 2);
    const t4 = spread(2, 4);
    const first = planStep(v1, t4, ready(0, 1));
    if (first.kind !== "transitional") throw new Error("want a transition");
    // scaled again to 8 before p-2 and p-3 are Ready
    const t8 = spread(9, 8);
    const second = planStep(first.plan, t8, ready(0, 1));
    expect(second.kind).toBe("transitional");
    if (second.kind !== "transitional") return;
    validatePlan(second.plan);
    expect(shares(second.plan)).toEqual({
      ...shares(t8),
      "p-0": [0, 2, 4, 6],
      "p-1": [1, 3, 5, 7],
      "p-2": [2, 6], // warming up its copies of the first target
      "p-3": [3, 7],
    });
    expect(second.plan.version).toBe(3);
    expect(second.target.version).toBe(4);
    // waiting for the workers the new target puts experts on that no ready worker would hold
    expect(second.waitingFor).toEqual(["p-2", "p-3", "p-4", "p-5", "p-6", "p-7"]);
    // scaled back to 2 before any new worker is Ready: the published plan's copies on p-0 and p-1 serve
    const back = planStep(second.plan, spread(9, 2), ready(0, 1));
    expect(back).toEqual({ kind: "final", plan: { ...spread(4, 2) } });
  });

  it("a rebalance onto a worker that is not Ready waits; one among Ready workers does not", () => {
    const v2 = spread(2, 2);
    const swapped = plan(3, 2, [[[1], [0], [1], [0], [1], [0], [1], [0]]]);
    expect(planStep(v2, swapped, ready(0, 1))).toEqual({ kind: "final", plan: swapped });
    // p-1 down (a crash): experts 1,3,5,7 were unserved anyway; 0,2,4,6 would move onto it
    const step = planStep(v2, swapped, ready(0));
    expect(step).toMatchObject({ kind: "transitional", waitingFor: ["p-1"] });
    // nothing to publish meanwhile: the transitional plan is the published one
    expect(step.plan).toEqual(v2);
  });

  it("another model shape is published at once (the published plan does not describe it)", () => {
    const target = spread(2, 4, 10);
    expect(planStep(spread(1, 2), target, ready(0, 1))).toEqual({ kind: "final", plan: target });
  });

  it("keeps every served expert served under planner output with redundant copies, dense layers and many workers", () => {
    const input = { pool: "p", layers: 4, experts: 16, redundantExperts: 4, denseLayers: [0] };
    const v1 = planPlacement({ ...input, workers: ids(3) }).plan;
    const target = planPlacement({ ...input, workers: ids(7), previous: v1 }).plan;
    const r = ready(0, 1, 2);
    const step = planStep(v1, target, r);
    expect(step.kind).toBe("transitional");
    if (step.kind !== "transitional") return;
    validatePlan(step.plan, { layers: 4, experts: 16, isMoeLayer: (l) => l > 0 });
    expect(step.plan.replicas[0]).toEqual([]);
    expect(served(step.plan, r)).toEqual(served(v1, r));
    // the old workers' shares are exactly as before: their caches still fit
    const count = (p: PlacementPlan, w: string) =>
      p.replicas.flat().filter((hs) => hs.includes(p.workers.indexOf(w))).length;
    for (const w of ids(3)) expect(count(step.plan, w)).toBe(count(v1, w));
    for (const w of ids(7).slice(3)) expect(count(step.plan, w)).toBe(count(target, w));
    expect(planStep(step.plan, step.target, ready(0, 1, 2, 3, 4, 5, 6))).toEqual({ kind: "final", plan: step.target });
  });
});

describe("awaitedWorkers", () => {
  it("names only the not-Ready holders of experts a Ready worker serves now and none would after", () => {
    const v1 = spread(1, 2);
    expect(awaitedWorkers(v1, spread(2, 4), ready(0, 1))).toEqual(["p-2", "p-3"]);
    expect(awaitedWorkers(v1, spread(2, 4), ready(0, 1, 2, 3))).toEqual([]);
    // nothing served now: nothing to lose
    expect(awaitedWorkers(v1, spread(2, 4), ready())).toEqual([]);
  });
});
