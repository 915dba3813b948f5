// ExpertPool status, rebuilt from observation on every pass (never from what the operator remembers doing), and the
// events its condition changes call for.
import type { V1Pod, V1StatefulSet } from "@kubernetes/client-node";
import type { PlacementPlan, PlanStats } from "@switchyard/moe";
import type { ExpertPool, ExpertPoolStatus } from "../api/v1alpha1.js";
import { type ConditionInput, findCondition, mergeConditions, type Transition } from "./conditions.js";
import { planConfigMapName, selectorString, workerAddress } from "./names.js";

export interface PoolObservation {
  pool: ExpertPool;
  statefulSet: V1StatefulSet | undefined;
  pods: V1Pod[];
  /** The plan as published (or about to be), or why none could be made. */
  plan:
    | {
        plan: PlacementPlan;
        stats: PlanStats;
        moved: number;
        /** status.placement.rebalance (rebalance.ts rebalanceStatus) while spec.placement.rebalance is on. */
        rebalance?: NonNullable<ExpertPoolStatus["placement"]>["rebalance"];
      }
    | { error: string };
  /**
   * false: the plan's ConfigMap was refused this pass, so status keeps describing the plan still published (default
   * true).
   */
  planPublished?: boolean;
  /** Children the API server refused to take this pass ("Kind name: its message"). */
  refused?: string[];
  /** Children left alone because an object the pool does not control holds their name (one message each). */
  conflicts?: string[];
  /**
   * The plan the workers and the router hold when this pass's is not published (it failed, or its ConfigMap was
   * refused): the plan last published, if any. Ready judges by it whether the pool serves.
   */
  publishedPlan?: PlacementPlan;
  /**
   * Events of the pool's StatefulSet (any; podCreateFailure picks the Warning FailedCreate ones): the StatefulSet
   * controller's only word on pods the API server refused (admission: Pod Security, ResourceQuota, a missing
   * PriorityClass, LimitRange, webhooks). StatefulSets have no ReplicaFailure condition to read it from.
   */
  statefulSetEvents?: readonly EventLike[];
  now: string;
}

/** What podCreateFailure reads of a core/v1 Event, as the API server sends it (timestamps are strings). */
export interface EventLike {
  type?: string;
  reason?: string;
  message?: string;
  involvedObject?: { kind?: string; name?: string; uid?: string };
  eventTime?: string | Date | null;
  lastTimestamp?: string | Date | null;
  firstTimestamp?: string | Date | null;
  series?: { lastObservedTime?: string | Date | null } | null;
  metadata?: { creationTimestamp?: string | Date };
}

/** An event the reconciler emits on the pool. */
export interface PoolEvent {
  type: "Normal" | "Warning";
  reason: string;
  message: string;
}

export interface PoolStatusResult {
  status: ExpertPoolStatus;
  transitions: Transition[];
  /** What to tell about this pass's transitions (poolEvents). */
  events: PoolEvent[];
}

interface Problem {
  reason: string;
  message: string;
}

/** Why pods are not running: scheduling failures first (the common GPU case), then container failures. */
export function podProblems(pods: V1Pod[]): { unschedulable?: Problem; failing?: Problem } {
  let unschedulable: Problem | undefined;
  let failing: Problem | undefined;
  for (const pod of pods) {
    const name = pod.metadata?.name ?? "?";
    const sched = pod.status?.conditions?.find((c) => c.type === "PodScheduled");
    if (!unschedulable && sched?.status === "False" && sched.reason === "Unschedulable") {
      const msg = sched.message ?? "";
      unschedulable = {
        reason: /nvidia\.com\/gpu/.test(msg) ? "InsufficientGPU" : "Unschedulable",
        message: `pod ${name} cannot be scheduled: ${msg}`,
      };
    }
    for (const cs of pod.status?.containerStatuses ?? []) {
      const waiting = cs.state?.waiting?.reason;
      if (
        !failing &&
        waiting &&
        ["CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError"].includes(waiting)
      ) {
        failing = { reason: "WorkerFailing", message: `pod ${name} container ${cs.name}: ${waiting}` };
      }
      // Between back-offs a crash-looping container runs (not ready) until it dies again: still failing, or
      // Degraded would flap (and warn) on every restart.
      const last = cs.lastState?.terminated;
      if (!failing && last && !cs.ready && (cs.restartCount ?? 0) > 0) {
        failing = {
          reason: "WorkerFailing",
          message: `pod ${name} container ${cs.name}: not ready since it restarted after exit code ${last.exitCode}${last.reason ? ` (${last.reason})` : ""}`,
        };
      }
    }
    if (!failing && pod.status?.phase === "Failed") {
      failing = { reason: "WorkerFailing", message: `pod ${name} failed: ${pod.status.reason ?? "unknown"}` };
    }
  }
  return { unschedulable, failing };
}

/** Milliseconds since the epoch of an API timestamp (a string off the wire, or a Date); NaN when absent. */
function ms(t: string | Date | null | undefined): number {
  return t ? new Date(t).getTime() : Number.NaN;
}

/** When an event last happened: its series' last sighting, else lastTimestamp, eventTime, firstTimestamp, creation. */
function lastSeen(e: EventLike): number {
  for (const t of [
    e.series?.lastObservedTime,
    e.lastTimestamp,
    e.eventTime,
    e.firstTimestamp,
    e.metadata?.creationTimestamp,
  ]) {
    const v = ms(t);
    if (!Number.isNaN(v)) return v;
  }
  return Number.NaN;
}

/**
 * Why the StatefulSet cannot create its pods: while it has fewer pods than its spec asks for, the newest Warning
 * FailedCreate event of it (this StatefulSet's uid, where the event names one), with the API server's refusal in
 * its message. An event older than the newest pod, or than `since` (the last flip of the pool's Progressing: a
 * refusal from before the last finished rollout, e.g. before a scale to zero), is history: a pod was made, or
 * the pool settled, after it. Events live an hour (the API server's default TTL) and repeat at the StatefulSet
 * controller's retries, so a refusal that lasts keeps a recent one.
 */
export function podCreateFailure(
  sts: V1StatefulSet | undefined,
  events: readonly EventLike[],
  pods: readonly V1Pod[],
  since?: string,
): Problem | undefined {
  if (!sts) return undefined;
  if ((sts.status?.replicas ?? 0) >= (sts.spec?.replicas ?? 1)) return undefined;
  let after = ms(since);
  if (Number.isNaN(after)) after = Number.NEGATIVE_INFINITY;
  for (const p of pods) {
    const c = ms(p.metadata?.creationTimestamp);
    if (c > after) after = c;
  }
  const uid = sts.metadata?.uid;
  let newest: EventLike | undefined;
  let newestAt = Number.NEGATIVE_INFINITY;
  for (const e of events) {
    if (e.type !== "Warning" || e.reason !== "FailedCreate") continue;
    const o = e.involvedObject;
    if (o?.kind !== "StatefulSet" || o.name !== sts.metadata?.name) continue;
    if (uid && o.uid && o.uid !== uid) continue;
    const at = lastSeen(e);
    if (Number.isNaN(at) || at < after || at <= newestAt) continue;
    newest = e;
    newestAt = at;
  }
  if (!newest) return undefined;
  return {
    reason: "PodCreateFailed",
    message: newest.message ?? `StatefulSet ${sts.metadata?.name} failed to create a pod`,
  };
}

/** The names of the pool's pods that serve: Ready, and not on their way out. */
export function readyWorkers(pods: readonly V1Pod[]): Set<string> {
  const out = new Set<string>();
  for (const p of pods) {
    if (p.metadata?.deletionTimestamp || !p.metadata?.name) continue;
    if (p.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True")) out.add(p.metadata.name);
  }
  return out;
}

/**
 * The planned (layer, expert) slots, shared-expert slices included, that no ready worker holds: the router has
 * nowhere to send their tokens. `planned` counts the slots the plan places (dense layers' empty rows have none).
 */
export function unservedExperts(
  plan: PlacementPlan,
  ready: ReadonlySet<string>,
): { unserved: number; planned: number; example?: string } {
  let unserved = 0;
  let planned = 0;
  let example: string | undefined;
  plan.replicas.forEach((row, layer) => {
    row.forEach((holders, expert) => {
      if (holders.length === 0) return;
      planned++;
      if (holders.some((w) => ready.has(plan.workers[w] ?? ""))) return;
      unserved++;
      example ??= `layer ${layer} expert ${expert} on ${holders.map((w) => plan.workers[w]).join(", ")}`;
    });
  });
  return { unserved, planned, example };
}

/**
 * The shared expert's slices a plan places, read off the plan itself (what the workers and the router hold): a MoE
 * layer's row lists the routed experts, then the slices. Dense layers' rows are empty (DeepSeek-V3's first three),
 * so the first non-empty row tells.
 */
export function sharedSlicesOfPlan(plan: PlacementPlan, experts: number): number {
  const row = plan.replicas.find((r) => r.length > 0);
  return Math.max(0, (row?.length ?? 0) - experts);
}

/** Progressing reasons that a pool's own failure causes, not the routine course of a rollout. */
const FAILING_PROGRESS = new Set(["InsufficientGPU", "Unschedulable"]);

/**
 * The events for one pass's condition transitions, one per type and reason. Routine steps are Normal: each change
 * of Progressing (CreatingWorkers, ScalingUp, RollingUpdate, RolloutComplete, ...) and Ready going True. Warnings
 * are for failures: Degraded turning True (or to another reason), pods the scheduler cannot place, and Ready going
 * False other than in a rollout or scale the pool is making (`rollingOut`) or a deletion: a worker lost at rest, or
 * anything while Degraded. A Ready that only changes reason tells nothing (its status did not move).
 */
export function poolEvents(transitions: readonly Transition[], ctx: { rollingOut: boolean; degraded: boolean }) {
  const out: PoolEvent[] = [];
  const told = new Set<string>();
  const tell = (type: PoolEvent["type"], reason: string, message: string) => {
    const k = `${type}\0${reason}`;
    if (told.has(k)) return;
    told.add(k);
    out.push({ type, reason, message });
  };
  for (const t of transitions) {
    if (t.type === "Degraded" && t.to === "True") tell("Warning", t.reason, t.message);
  }
  for (const t of transitions) {
    if (t.type === "Ready" && t.from !== undefined && t.from !== t.to) {
      if (t.to === "True") tell("Normal", "Ready", t.message);
      else {
        const routine = !ctx.degraded && !FAILING_PROGRESS.has(t.reason) && (ctx.rollingOut || t.reason === "Deleting");
        tell(routine ? "Normal" : "Warning", t.reason, t.message);
      }
    } else if (t.type === "Progressing") {
      if (t.to === "True" && FAILING_PROGRESS.has(t.reason)) tell("Warning", t.reason, t.message);
      else if (t.from !== undefined) tell("Normal", t.reason, t.message);
    }
  }
  return out;
}

/**
 * The status of a pool being deleted that still exists (a finalizer holds it: foreground deletion waiting for the
 * workers, or another controller's): Ready False and Progressing True, reason Deleting, naming what it waits for.
 * The router config already leaves it out (routing.ts whyNotServed); the rest of the status stays as last written.
 */
export function deletingStatus(pool: ExpertPool, now: string): PoolStatusResult {
  const prev = pool.status ?? {};
  const finalizers = (pool.metadata as { finalizers?: string[] }).finalizers ?? [];
  const message = `ExpertPool is being deleted${finalizers.length ? ` (waiting for finalizers: ${finalizers.join(", ")})` : ""}; the router no longer serves it`;
  const was = findCondition(prev.conditions, "Degraded");
  const degraded: ConditionInput = was
    ? { type: "Degraded", status: was.status as ConditionInput["status"], reason: was.reason, message: was.message }
    : { type: "Degraded", status: "False", reason: "AsExpected", message: "no problem observed" };
  const { conditions, transitions } = mergeConditions(
    prev.conditions,
    [
      { type: "Ready", status: "False", reason: "Deleting", message },
      { type: "Progressing", status: "True", reason: "Deleting", message },
      degraded,
    ],
    pool.metadata.generation ?? 0,
    now,
  );
  const status: ExpertPoolStatus = { ...prev, observedGeneration: pool.metadata.generation ?? 0, conditions };
  return { status, transitions, events: poolEvents(transitions, { rollingOut: true, degraded: false }) };
}

export function buildPoolStatus(o: PoolObservation): PoolStatusResult {
  const { pool, statefulSet: sts } = o;
  const generation = pool.metadata.generation ?? 0;
  const desired = pool.spec.replicas;
  const name = pool.metadata.name;
  const ns = pool.metadata.namespace ?? "default";
  const s = sts?.status;
  // A StatefulSet status describes its spec only once the StatefulSet controller has observed that generation.
  const stsCurrent = !!sts && (s?.observedGeneration ?? 0) >= (sts.metadata?.generation ?? 1);
  const replicas = s?.replicas ?? 0;
  // Ready workers are counted from the pods' Ready conditions, the one source for every count this status gives
  // (readyReplicas, Progressing's and Ready's messages, RolloutComplete): Ready judges per pod which experts have a
  // worker, and the StatefulSet's readyReplicas trails the pods (its controller counts them on its own pass), so
  // two sources would put "2/2 workers ready" beside "0/2 workers ready" in one status.
  const readyPods = readyWorkers(o.pods);
  const ready = readyPods.size;
  const updated = stsCurrent
    ? s?.updateRevision && s.updateRevision === s.currentRevision
      ? (s.replicas ?? 0)
      : (s?.updatedReplicas ?? 0)
    : 0;
  const rolledOut = stsCurrent && updated >= desired && replicas === desired && ready >= desired;

  const problems = podProblems(o.pods);
  const planError = "error" in o.plan ? o.plan.error : undefined;
  const previousProgressing = findCondition(pool.status?.conditions, "Progressing");
  const createFailure = podCreateFailure(
    sts,
    o.statefulSetEvents ?? [],
    o.pods,
    previousProgressing?.lastTransitionTime,
  );

  let progressing: ConditionInput;
  let degraded: ConditionInput;
  let readyCond: ConditionInput;

  if (planError) {
    degraded = { type: "Degraded", status: "True", reason: "PlacementFailed", message: planError };
  } else if (o.conflicts?.length) {
    degraded = { type: "Degraded", status: "True", reason: "ChildConflict", message: o.conflicts.join("; ") };
  } else if (o.refused?.length) {
    degraded = { type: "Degraded", status: "True", reason: "ApplyFailed", message: o.refused.join("; ") };
  } else if (createFailure) {
    degraded = { type: "Degraded", status: "True", ...createFailure };
  } else if (problems.failing) {
    degraded = { type: "Degraded", status: "True", ...problems.failing };
  } else {
    degraded = { type: "Degraded", status: "False", reason: "AsExpected", message: "no problem observed" };
  }

  if (rolledOut) {
    progressing = {
      type: "Progressing",
      status: "False",
      reason: "RolloutComplete",
      message: `${ready}/${desired} workers ready at the current revision`,
    };
  } else if (!sts && o.refused?.some((r) => r.startsWith("StatefulSet "))) {
    // The API server refused the StatefulSet itself: nothing is being created, and nothing will be until the pool
    // (or what refused it: a webhook, a quota) changes. "Progressing True, CreatingWorkers" would say otherwise.
    progressing = {
      type: "Progressing",
      status: "False",
      reason: "WorkersNotCreated",
      message: "the API server refused the worker StatefulSet (Degraded ApplyFailed says why)",
    };
  } else if (!sts && planError) {
    // No plan, no StatefulSet (pool-controller.ts applies it only with a published plan): nothing is being created
    // until the spec changes. "Progressing True, CreatingWorkers" would wait forever.
    progressing = {
      type: "Progressing",
      status: "False",
      reason: "PlanFailed",
      message: `no worker StatefulSet is created without a placement plan, and none could be made: ${planError}`,
    };
  } else if (!sts) {
    progressing = {
      type: "Progressing",
      status: "True",
      reason: "CreatingWorkers",
      message: "worker StatefulSet is being created",
    };
  } else if (problems.unschedulable) {
    progressing = { type: "Progressing", status: "True", ...problems.unschedulable };
  } else if (stsCurrent && updated < desired && replicas >= desired) {
    progressing = {
      type: "Progressing",
      status: "True",
      reason: "RollingUpdate",
      message: `${updated}/${desired} workers updated to the current revision`,
    };
  } else {
    progressing = {
      type: "Progressing",
      status: "True",
      reason: replicas < desired ? "ScalingUp" : replicas > desired ? "ScalingDown" : "WaitingForReady",
      message: `${ready}/${desired} workers ready`,
    };
  }

  // Ready is "the pool can serve" (a Deployment's Available), not "fully rolled out" (that is Progressing=False):
  // every (layer, expert) the published plan places has at least one ready worker holding it, so the router has
  // somewhere to send every token. Judged per expert rather than by readyReplicas >= replicas - maxUnavailable
  // because the plan says exactly which worker holds what: with redundant copies a pool keeps serving through a
  // rolling update or a lost worker, and without them one worker down leaves its experts with nowhere to go, which
  // no replica count can tell. A Degraded pool that still serves (a refused template, a failed replan: the last
  // plan and workers stay) stays Ready; Degraded says what is wrong. A pool whose children's names another object
  // holds is never Ready: its pods and endpoints may not be its own.
  const servingPlan =
    planError || o.planPublished === false ? o.publishedPlan : (o.plan as { plan: PlacementPlan }).plan;
  const coverage = servingPlan ? unservedExperts(servingPlan, readyPods) : undefined;
  const serving = !!coverage && coverage.unserved === 0 && !o.conflicts?.length;
  if (serving && desired === 0) {
    readyCond = { type: "Ready", status: "True", reason: "ScaledToZero", message: "pool is scaled to zero" };
  } else if (serving && rolledOut) {
    readyCond = {
      type: "Ready",
      status: "True",
      reason: "WorkersReady",
      message: `${ready}/${desired} workers ready; placement plan published`,
    };
  } else if (serving) {
    readyCond = {
      type: "Ready",
      status: "True",
      reason: "ExpertsServed",
      message: `every planned expert has a ready worker (${ready}/${desired} workers ready); ${progressing.type} ${progressing.reason}: ${progressing.message}`,
    };
  } else if (degraded.status === "True") {
    readyCond = { type: "Ready", status: "False", reason: degraded.reason, message: degraded.message };
  } else {
    const why = coverage
      ? `${coverage.unserved} of ${coverage.planned} planned experts have no ready worker (${coverage.example})`
      : "no placement plan is published";
    // A rollout or scale under way says why; at rest, the experts left without a worker are the news.
    const underWay = progressing.status === "True";
    readyCond = underWay
      ? { type: "Ready", status: "False", reason: progressing.reason, message: `${progressing.message}; ${why}` }
      : { type: "Ready", status: "False", reason: "ExpertsUnavailable", message: why };
  }

  const { conditions, transitions } = mergeConditions(
    pool.status?.conditions,
    [readyCond, progressing, degraded],
    generation,
    o.now,
  );
  // A rollout or scale the pool is making: the StatefulSet is missing, behind its spec, short of or past its
  // replicas, or between two revisions (the last updated pod still warming up counts: its revision is not current
  // until it is ready).
  const rollingOut =
    !rolledOut &&
    (!sts || !stsCurrent || replicas !== desired || (!!s?.updateRevision && s.updateRevision !== s.currentRevision));
  const events = poolEvents(transitions, { rollingOut, degraded: degraded.status === "True" });

  const status: ExpertPoolStatus = {
    observedGeneration: generation,
    replicas,
    readyReplicas: ready,
    updatedReplicas: updated,
    selector: selectorString(name),
    conditions,
  };
  if (!("error" in o.plan) && o.planPublished !== false) {
    const { plan, stats, moved, rebalance } = o.plan;
    status.placement = {
      version: plan.version,
      configMap: planConfigMapName(name),
      workers: plan.workers.length,
      slotsPerWorker: stats.slotsPerWorker,
      sharedSlices: sharedSlicesOfPlan(plan, pool.spec.model.experts),
      replicatedExperts: stats.replicatedExperts,
      // Rounded: a status field that wobbles in the last digit would be a write per pass.
      loadImbalance: Math.round(stats.maxImbalance * 1000) / 1000,
      // A first plan (version 1: none was published before it) moved nothing; the planner counts its every copy as
      // new, which is no replan's cost.
      movedExperts: plan.version <= 1 ? 0 : moved,
      ...(rebalance ? { rebalance } : {}),
    };
    status.endpoints = plan.workers.map((w) => ({ worker: w, address: workerAddress(name, ns, w) }));
  } else if (pool.status?.placement) {
    // keep describing the plan still published, and the workers it lists
    status.placement = pool.status.placement;
    if (pool.status.endpoints) status.endpoints = pool.status.endpoints;
  }
  return { status, transitions, events };
}
