// ExpertPool status, rebuilt from observation on every pass (never from what the operator remembers doing).
import type { V1Pod, V1StatefulSet } from "@kubernetes/client-node";
import type { PlacementPlan, PlanStats } from "@switchyard/moe";
import type { ExpertPool, ExpertPoolStatus } from "../api/v1alpha1.js";
import { type ConditionInput, mergeConditions, type Transition } from "./conditions.js";
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
  now: string;
}

export interface PoolStatusResult {
  status: ExpertPoolStatus;
  transitions: Transition[];
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
  const ready = s?.readyReplicas ?? 0;
  const updated = stsCurrent
    ? s?.updateRevision && s.updateRevision === s.currentRevision
      ? (s.replicas ?? 0)
      : (s?.updatedReplicas ?? 0)
    : 0;
  const rolledOut = stsCurrent && updated >= desired && replicas === desired && ready >= desired;

  const problems = podProblems(o.pods);
  const planError = "error" in o.plan ? o.plan.error : undefined;

  let progressing: ConditionInput;
  let degraded: ConditionInput;
  let readyCond: ConditionInput;

  if (planError) {
    degraded = { type: "Degraded", status: "True", reason: "PlacementFailed", message: planError };
  } else if (o.refused?.length) {
    degraded = { type: "Degraded", status: "True", reason: "ApplyFailed", message: o.refused.join("; ") };
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

  if (degraded.status === "True") {
    readyCond = { type: "Ready", status: "False", reason: degraded.reason, message: degraded.message };
  } else if (rolledOut) {
    readyCond = {
      type: "Ready",
      status: "True",
      reason: desired === 0 ? "ScaledToZero" : "WorkersReady",
      message: desired === 0 ? "pool is scaled to zero" : `${ready}/${desired} workers ready; placement plan published`,
    };
  } else {
    readyCond = { type: "Ready", status: "False", reason: progressing.reason, message: progressing.message };
  }

  const { conditions, transitions } = mergeConditions(
    pool.status?.conditions,
    [readyCond, progressing, degraded],
    generation,
    o.now,
  );

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
      // Read off the plan itself: layers longer than the routed experts list the shared slices.
      sharedSlices: Math.max(0, (plan.replicas[0]?.length ?? 0) - pool.spec.model.experts),
      replicatedExperts: stats.replicatedExperts,
      // Rounded: a status field that wobbles in the last digit would be a write per pass.
      loadImbalance: Math.round(stats.maxImbalance * 1000) / 1000,
      movedExperts: moved,
      ...(rebalance ? { rebalance } : {}),
    };
    status.endpoints = plan.workers.map((w) => ({ worker: w, address: workerAddress(name, ns, w) }));
  } else if (pool.status?.placement) {
    // keep describing the plan still published, and the workers it lists
    status.placement = pool.status.placement;
    if (pool.status.endpoints) status.endpoints = pool.status.endpoints;
  }
  return { status, transitions };
}
