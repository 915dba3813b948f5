// Load-driven replanning (spec.placement.rebalance), pure. Every interval the reconciler asks Prometheus for the
// pool's expert heat (heat.ts) and hands it here: the planner makes a candidate under that heat, and the candidate
// replaces the published plan only when it is clearly better under the SAME heat. Moving an expert copy means a
// worker loads weights, so a plan that is only a little better (noise in the window) is not worth publishing.
import { PlacementError, type PlacementPlan, planStats } from "@switchyard/moe";
import type { ExpertPool, ExpertPoolStatus } from "../api/v1alpha1.js";
import {
  cacheCapacity,
  denseLayersOf,
  desiredPlan,
  type PlanOutcome,
  planConfigMap,
  planLoad,
  sharedSlicesOf,
} from "./desired.js";
import { workerIds } from "./names.js";

export interface RebalanceSettings {
  prometheusUrl: string;
  window: string;
  intervalMs: number;
  timeoutMs: number;
  minImprovement: number;
}

export type RebalanceStatus = NonNullable<NonNullable<ExpertPoolStatus["placement"]>["rebalance"]>;

/** The pool's rebalance settings, or undefined while it is off (no prometheusUrl). */
export function rebalanceSettings(pool: ExpertPool): RebalanceSettings | undefined {
  const r = pool.spec.placement.rebalance;
  if (!r?.prometheusUrl) return undefined;
  return {
    prometheusUrl: r.prometheusUrl,
    window: r.window,
    intervalMs: r.intervalSeconds * 1000,
    timeoutMs: r.timeoutSeconds * 1000,
    minImprovement: r.minImprovement,
  };
}

// ---------- what the reconciler remembers between passes ----------

/** The last heat query of one pool. Kept in memory: an ordinary pass (a spec edit) reuses it instead of replanning uniform. */
export interface HeatObservation {
  /** heatKey() when asked: a different key means this answer no longer applies. */
  key: string;
  /** Clock (ms) of the last attempt, answered or not. */
  attemptedAtMs: number;
  /** The last heat Prometheus gave, [layer][expert]; undefined: none yet, or no traffic in the window. */
  load: number[][] | undefined;
  /** RFC 3339 time of the last answer. */
  answeredAt?: string;
  /** Why the last attempt failed; cleared by an answer. */
  error?: string;
}

/**
 * What a heat answer depends on: where it came from, over which window, and the matrix shape it was read into,
 * shared-expert slice columns included (parseHeat reads experts + slices): heat of another width would make planLoad
 * refuse the pool until the next interval.
 */
export function heatKey(pool: ExpertPool, s: RebalanceSettings): string {
  const { layers, experts } = pool.spec.model;
  let slices: number | string;
  try {
    slices = sharedSlicesOf(pool.spec.model, pool.spec.placement);
  } catch (e) {
    // A width the CEL rule should have refused: the plan fails on it with its own message; the key must not throw.
    if (!(e instanceof PlacementError)) throw e;
    slices = e.message;
  }
  return JSON.stringify([s.prometheusUrl, s.window, pool.metadata.name, layers, experts, slices]);
}

/** Milliseconds until the next query is due (<= 0: ask now). */
export function msUntilQuery(
  obs: HeatObservation | undefined,
  key: string,
  s: RebalanceSettings,
  nowMs: number,
): number {
  if (!obs || obs.key !== key) return 0;
  return obs.attemptedAtMs + s.intervalMs - nowMs;
}

/** The memory after an attempt: an answer replaces the heat; a failure keeps the last heat (same key) and says why. */
export function observe(
  prev: HeatObservation | undefined,
  key: string,
  nowMs: number,
  now: string,
  result: { load: number[][] | undefined } | { error: string },
): HeatObservation {
  if ("error" in result) {
    const same = prev?.key === key ? prev : undefined;
    return { key, attemptedAtMs: nowMs, load: same?.load, answeredAt: same?.answeredAt, error: result.error };
  }
  return { key, attemptedAtMs: nowMs, load: result.load, answeredAt: now };
}

// ---------- the decision ----------

/**
 * Whether `plan` is still a valid plan for the pool's current spec: same workers, layers, experts (with the shared
 * slices), copies per layer, one worker per copy, within the cache, and the layout the strategy asks for. Only then
 * may it be kept for want of a better one; after a spec change (scale, model, redundant slots) it must be replaced.
 */
export function planFitsPool(plan: PlacementPlan, pool: ExpertPool): boolean {
  const { spec } = pool;
  const name = pool.metadata.name;
  const workers = workerIds(name, spec.replicas);
  const W = workers.length;
  if (plan.pool !== name || plan.workers.length !== W || plan.workers.some((w, i) => w !== workers[i])) return false;
  let slices: number;
  try {
    slices = sharedSlicesOf(spec.model, spec.placement);
  } catch {
    return false;
  }
  const experts = spec.model.experts + slices;
  // planPlacement clamps the redundant slots the same way: no expert gets more copies than there are workers.
  const copies = W === 0 ? 0 : experts + Math.min(spec.placement.redundantExperts, experts * (W - 1));
  if (plan.replicas.length !== spec.model.layers) return false;
  const dense = new Set(denseLayersOf(spec.model));
  const slots = new Array<number>(W).fill(0);
  for (const [l, layer] of plan.replicas.entries()) {
    // a dense layer's row is empty; copies there (a plan from before model.denseLayers was set) take cache for nothing
    if (dense.has(l)) {
      if (layer.length !== 0) return false;
      continue;
    }
    if (layer.length !== experts) return false;
    let n = 0;
    for (let e = 0; e < layer.length; e++) {
      const hs = layer[e];
      if (W > 0 && hs.length === 0) return false;
      if (new Set(hs).size !== hs.length || hs.some((h) => !Number.isInteger(h) || h < 0 || h >= W)) return false;
      if (spec.placement.strategy === "contiguous") {
        // expert e on workers e, e+1, ... (mod W), as packContiguous lays them out
        const want = hs.map((_, k) => (e + k) % W).sort((a, b) => a - b);
        if (want.some((h, i) => h !== hs[i])) return false;
      }
      for (const h of hs) slots[h]++;
      n += hs.length;
    }
    if (n !== copies) return false;
  }
  if (!spec.cache.hostTier.enabled && slots.some((s) => s > cacheCapacity(pool))) return false;
  return true;
}

/**
 * The figure plans are compared by: per layer, the busiest worker's expected load over the mean (copies split an
 * expert's tokens evenly), averaged over layers. Averaged, not the worst layer: layers run one after another, so a
 * forward pass waits for every layer's busiest worker, and an improvement in any layer counts.
 */
export function expectedImbalance(plan: PlacementPlan, load: number[][]): number {
  return planStats(plan, load).meanImbalance;
}

export interface ReplanJudgement {
  replan: boolean;
  /** expectedImbalance of the published plan and of the candidate, under the same load. */
  before: number;
  after: number;
  /** (before − after) / before. */
  improvement: number;
}

/**
 * Replan iff the candidate's expected imbalance under `load` is lower than the current plan's under the same load
 * by at least `minImprovement`, relative. `load` must cover every expert the plans list (shared slices included).
 */
export function judgeReplan(
  current: PlacementPlan,
  candidate: PlacementPlan,
  load: number[][],
  minImprovement: number,
): ReplanJudgement {
  const before = expectedImbalance(current, load);
  const after = expectedImbalance(candidate, load);
  const improvement = before > 0 ? (before - after) / before : 0;
  // A strictly positive gain as well: with minImprovement 0, an equally good plan still moves nothing.
  return { replan: improvement >= minImprovement && before - after > 1e-9, before, after, improvement };
}

export type RebalanceDecision =
  /** No plan yet, or the published one no longer fits the spec: the candidate is published whatever the heat. */
  | { kind: "new"; imbalance?: number }
  /** No heat to judge by (no answer yet, or no traffic): the published plan stays. */
  | { kind: "no-heat" }
  /**
   * A make-before-break transition is in progress (plan-transition.ts): the plan it moves to stays whatever the
   * heat, so no copy is moved onto workers still warming up; heat is judged again once it is published.
   */
  | { kind: "held" }
  /** The candidate is the published plan. */
  | { kind: "current"; imbalance: number }
  | ({ kind: "kept" } & ReplanJudgement)
  | ({ kind: "replanned" } & ReplanJudgement);

export interface RebalancedPlan {
  outcome: PlanOutcome;
  decision: RebalanceDecision;
}

/**
 * The plan to publish for a pool with rebalance on, given the published plan and the routed experts' heat
 * ([layer][expert], or undefined when there is none). The candidate comes from desiredPlan under the heat, which
 * appends the shared expert's slices itself; they are appended here too, to judge both plans under the same load.
 * The planner packs every layer fresh and keeps a published layer only while it is within minImprovement of that
 * (desiredPlan's keepTolerance), so the candidate is never stuck near the published plan: before, a candidate grown
 * from the published plan stayed at 1.19 max/mean after a heat shift where a fresh plan got 1.00. And a candidate
 * planned again under the same heat is itself ("current"), so one heat publishes one version.
 * Keeping the published plan keeps its version and its bytes, so nothing is rewritten and no worker reloads.
 */
export function rebalancedPlan(
  pool: ExpertPool,
  previous: PlacementPlan | undefined,
  heat: number[][] | undefined,
  minImprovement: number,
  opts: { hold?: boolean } = {},
): RebalancedPlan {
  // `previous` is then the plan a transition moves to: kept while it still fits the spec, without planning at all.
  if (opts.hold && previous && planFitsPool(previous, pool)) {
    const load = heatLoad(pool, heat);
    return {
      outcome: {
        ok: true,
        plan: previous,
        stats: planStats(previous, load, previous),
        configMap: planConfigMap(pool, previous),
      },
      decision: { kind: "held" },
    };
  }
  const candidate = desiredPlan(pool, previous, heat);
  if (!candidate.ok) return { outcome: candidate, decision: { kind: "new" } };
  const load = heat && planLoad(pool.spec.model, pool.spec.placement, heat);
  if (!previous || !planFitsPool(previous, pool)) {
    return {
      outcome: candidate,
      decision: { kind: "new", imbalance: load ? expectedImbalance(candidate.plan, load) : undefined },
    };
  }
  const keep = (): PlanOutcome => ({
    ok: true,
    plan: previous,
    stats: planStats(previous, load, previous),
    configMap: planConfigMap(pool, previous),
  });
  if (!load) return { outcome: keep(), decision: { kind: "no-heat" } };
  if (candidate.plan.version === previous.version) {
    return { outcome: candidate, decision: { kind: "current", imbalance: expectedImbalance(previous, load) } };
  }
  const j = judgeReplan(previous, candidate.plan, load, minImprovement);
  return j.replan
    ? { outcome: candidate, decision: { kind: "replanned", ...j } }
    : { outcome: keep(), decision: { kind: "kept", ...j } };
}

/** The heat as plans are judged under it (planLoad), or undefined where there is none or it does not fit the model. */
export function heatLoad(pool: ExpertPool, heat: number[][] | undefined): number[][] | undefined {
  if (!heat || heat.length !== pool.spec.model.layers) return undefined;
  try {
    return planLoad(pool.spec.model, pool.spec.placement, heat);
  } catch (e) {
    if (e instanceof PlacementError) return undefined;
    throw e;
  }
}

// ---------- status ----------

const round3 = (x: number) => Math.round(x * 1000) / 1000;
const pct = (x: number) => `${(x * 100).toFixed(1)}%`;

/**
 * status.placement.rebalance for one pass: what the published plan was judged under, and why it is what it is.
 * Built from the decision and the memory only, so an unchanged world rebuilds the same object (no status write).
 */
export function rebalanceStatus(
  obs: HeatObservation | undefined,
  decision: RebalanceDecision,
  plan: PlacementPlan,
  s: RebalanceSettings,
): RebalanceStatus {
  const fromPrometheus = obs?.load !== undefined;
  const status: RebalanceStatus = { loadSource: fromPrometheus ? "prometheus" : "uniform" };
  if (obs?.answeredAt) status.lastQueryTime = obs.answeredAt;
  const v = `plan version ${plan.version}`;
  // Said of the state, not of this pass's action: the pass after a replan (or after the first plan) finds the same
  // plan and must rebuild the same status. The event PlanRebalanced tells of the change itself.
  let says: string;
  switch (decision.kind) {
    case "new":
    case "current":
    case "replanned": {
      const imbalance =
        decision.kind === "new"
          ? decision.imbalance
          : decision.kind === "current"
            ? decision.imbalance
            : decision.after;
      if (imbalance === undefined) {
        says = `${v} stays until there is heat to judge it by`;
      } else {
        says = `${v} is the planner's choice for the observed heat`;
        status.observedImbalance = round3(imbalance);
      }
      break;
    }
    case "no-heat":
      says = `${v} stays until there is heat to judge it by`;
      break;
    case "held":
      says = `${v} is part of a placement transition: heat is judged again once the workers it waits for are Ready`;
      break;
    case "kept":
      says =
        decision.improvement > 0
          ? `${v} kept: a replan would lower imbalance ${decision.before.toFixed(3)} to ${decision.after.toFixed(3)}, ${pct(decision.improvement)}, below minImprovement ${pct(s.minImprovement)}`
          : `${v} kept: a replan would not lower imbalance ${decision.before.toFixed(3)} (it would be ${decision.after.toFixed(3)})`;
      status.observedImbalance = round3(decision.before);
      break;
  }
  let why = "";
  if (obs?.error) {
    why = obs.load
      ? `heat query failed (${obs.error}); using the heat from ${obs.answeredAt}. `
      : `heat query failed (${obs.error}). `;
  } else if (obs && !obs.load) {
    why = `no expert traffic for this pool in the last ${s.window}. `;
  } else if (!obs) {
    why = "heat not queried yet. ";
  }
  status.message = `${why}${says}`.slice(0, 1024);
  return status;
}
