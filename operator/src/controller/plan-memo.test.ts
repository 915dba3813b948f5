import type { PlacementPlan } from "@switchyard/moe";
import { describe, expect, it } from "vitest";
import type { ExpertPool } from "../api/v1alpha1.js";
import type { PlanOutcome } from "./desired.js";
import { PlanMemo } from "./plan-memo.js";

const plan = (version: number, holder: number): PlacementPlan => ({
  version,
  pool: "p",
  workers: ["p-0", "p-1"],
  replicas: [[[holder], [1 - holder]]],
});
const outcome = (p: PlacementPlan): PlanOutcome => ({ ok: true, plan: p, stats: {} as never, configMap: {} });
const pool = (replicas: number, uid = "u1"): ExpertPool =>
  ({ metadata: { name: "p", namespace: "ns", uid }, spec: { replicas } }) as unknown as ExpertPool;

describe("PlanMemo", () => {
  it("answers from memory only when the spec is the same and the published plan is the one it gave", () => {
    const memo = new PlanMemo();
    let runs = 0;
    const planner = (p: PlacementPlan) => () => {
      runs++;
      return outcome(p);
    };
    const v1 = plan(1, 0);
    memo.plan(pool(2), undefined, planner(v1)); // first pass: nothing published yet
    expect(runs).toBe(1);
    expect(memo.plan(pool(2), structuredClone(v1), planner(v1))).toMatchObject({ plan: v1 });
    expect(runs).toBe(1); // the published plan is its own answer, the spec unchanged: no planning
    memo.plan(pool(3), structuredClone(v1), planner(plan(2, 1))); // the spec changed
    expect(runs).toBe(2);
    memo.plan(pool(3), plan(1, 1), planner(plan(2, 1))); // a published plan it did not give (edited by hand)
    expect(runs).toBe(3);
    memo.plan(pool(3, "u2"), plan(2, 1), planner(plan(2, 1))); // a pool of the same name made anew
    expect(runs).toBe(4);
    memo.plan(pool(3, "u2"), undefined, planner(plan(2, 1))); // its ConfigMap gone
    expect(runs).toBe(5);
  });

  it("remembers a failure for the same spec and published plan: a failing pass's retries do not plan again", () => {
    const memo = new PlanMemo();
    let runs = 0;
    const refuse = () => {
      runs++;
      return { ok: false, message: "no room" } as PlanOutcome;
    };
    memo.plan(pool(2), undefined, refuse);
    expect(memo.plan(pool(2), undefined, refuse)).toEqual({ ok: false, message: "no room" });
    expect(runs).toBe(1);
    memo.plan(pool(2), plan(1, 0), refuse); // another published plan: planned again
    expect(runs).toBe(2);
    memo.plan(pool(2), structuredClone(plan(1, 0)), refuse); // the same one, read anew
    expect(runs).toBe(2);
    memo.plan(pool(3), plan(1, 0), refuse); // the spec changed
    expect(runs).toBe(3);
  });

  it("remembers a plan that was not published (its ConfigMap refused): the retry plans nothing", () => {
    const memo = new PlanMemo();
    let runs = 0;
    const planner = (p: PlacementPlan) => () => {
      runs++;
      return outcome(p);
    };
    const v1 = plan(1, 0);
    memo.plan(pool(2), v1, planner(v1));
    const v2 = plan(2, 1);
    expect(memo.plan(pool(3), structuredClone(v1), planner(v2))).toMatchObject({ plan: v2 }); // scaled: v2
    expect(memo.plan(pool(3), structuredClone(v1), planner(v2))).toMatchObject({ plan: v2 }); // v1 still published
    expect(runs).toBe(2);
    expect(memo.plan(pool(3), structuredClone(v2), planner(v2))).toMatchObject({ plan: v2 }); // v2 published
    expect(runs).toBe(2);
  });
});
