// Make-before-break for placement plan changes, pure. The router sends an expert's tokens only to the workers the
// published plan names for it, and a worker serves only once it has loaded its share. So publishing a plan that
// moves an expert onto workers that are not Ready (new pods of a scale-up still scheduling or warming up, or never
// scheduling for want of GPUs) would leave that expert with nowhere to go, although a Ready worker held it a moment
// before. Instead, while that is so, a transitional plan is published:
//   - a worker of the spec that was in the published plan keeps exactly its copies there (its cache held them: the
//     published plan was valid for it), so every expert a Ready worker served is still served by it;
//   - a worker new to the plan gets its copies of the target plan, so it warms up (from the plan ConfigMap it
//     mounts) the experts it will serve;
//   - an expert whose every holder left the spec (a scale-down) gets its holders of the target.
// Once every expert served before has a Ready holder in the target (the new workers are Ready), the target is
// published. A scale-down, or any change onto Ready workers, publishes the target at once: nothing to wait for.
import { type PlacementPlan, sameAssignment } from "@switchyard/moe";

export type PlanStep =
  /** Publish `plan` (the target, its version following the published plan's). */
  | { kind: "final"; plan: PlacementPlan }
  | {
      kind: "transitional";
      /** The plan to publish now. */
      plan: PlacementPlan;
      /** The plan it moves to, numbered as it will be published (plan.version + 1). */
      target: PlacementPlan;
      /** Copies kept on workers of the published plan that the target does not give them. */
      kept: number;
      /** Workers not Ready whose copies in the target some expert served now needs, in plan order. */
      waitingFor: string[];
    };

/** Same layers, and the same number of experts (shared slices included) in each: the plans describe one model. */
export function sameShape(a: PlacementPlan, b: PlacementPlan): boolean {
  return (
    a.pool === b.pool &&
    a.replicas.length === b.replicas.length &&
    a.replicas.every((row, l) => row.length === b.replicas[l].length)
  );
}

const withVersion = (plan: PlacementPlan, version: number): PlacementPlan =>
  plan.version === version ? plan : { ...plan, version };

/** The version `next` is published under after `previous`: the same for the same assignment, else the next one. */
export function nextVersion(previous: PlacementPlan | undefined, next: PlacementPlan): number {
  if (!previous) return next.version;
  return sameAssignment(previous, next) ? previous.version : previous.version + 1;
}

/**
 * The workers whose readiness the move from `previous` to `target` waits for: for each (layer, expert) that a Ready
 * worker holds in `previous` and no Ready worker holds in `target`, its target holders that are not Ready. Empty:
 * the target serves every expert the published plan serves.
 */
export function awaitedWorkers(previous: PlacementPlan, target: PlacementPlan, ready: ReadonlySet<string>): string[] {
  const isReady = (plan: PlacementPlan) => plan.workers.map((w) => ready.has(w));
  const was = isReady(previous);
  const will = isReady(target);
  const awaited = new Set<number>();
  target.replicas.forEach((row, l) => {
    row.forEach((holders, e) => {
      if (holders.some((w) => will[w])) return;
      if (!(previous.replicas[l]?.[e] ?? []).some((w) => was[w])) return; // not served now either
      for (const w of holders) awaited.add(w);
    });
  });
  return [...awaited].sort((a, b) => a - b).map((w) => target.workers[w]);
}

/**
 * What to publish on the way from the published plan `previous` to `target` (the plan the spec asks for), given the
 * worker pods that are Ready. No published plan, another model shape, or nothing to wait for: the target. Else the
 * transitional plan (see the top of this file), whose workers are the target's (the spec's).
 */
export function planStep(
  previous: PlacementPlan | undefined,
  target: PlacementPlan,
  ready: ReadonlySet<string>,
): PlanStep {
  const final = (): PlanStep => ({ kind: "final", plan: withVersion(target, nextVersion(previous, target)) });
  if (!previous || !sameShape(previous, target) || sameAssignment(previous, target)) return final();
  const waitingFor = awaitedWorkers(previous, target, ready);
  if (waitingFor.length === 0) return final();

  const before = new Map(previous.workers.map((w, i) => [w, i]));
  // the previous holders of (l, e), as worker ids
  const held = (l: number, e: number) => new Set((previous.replicas[l][e] ?? []).map((i) => previous.workers[i]));
  let kept = 0;
  const replicas = target.replicas.map((row, l) =>
    row.map((goal, e) => {
      const had = held(l, e);
      const hs: number[] = [];
      target.workers.forEach((w, i) => {
        if (before.has(w) ? had.has(w) : goal.includes(i)) hs.push(i);
      });
      // every previous holder left the spec (a scale-down): the target's holders, or the expert would have none
      if (hs.length === 0) return [...goal];
      for (const i of hs) if (before.has(target.workers[i]) && !goal.includes(i)) kept++;
      return hs;
    }),
  );
  const transitional: PlacementPlan = { ...target, version: 0, replicas };
  // Nothing a transitional plan could add (the target already is what it would be): publish the target.
  if (sameAssignment(transitional, target)) return final();
  transitional.version = nextVersion(previous, transitional);
  return {
    kind: "transitional",
    plan: transitional,
    target: withVersion(target, transitional.version + 1),
    kept,
    waitingFor,
  };
}
