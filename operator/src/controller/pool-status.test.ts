import type { V1Pod, V1StatefulSet } from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import type { ExpertPool, ExpertPoolStatus } from "../api/v1alpha1.js";
import { desiredPlan } from "./desired.js";
import { testPool } from "./fixtures.js";
import {
  buildPoolStatus,
  deletingStatus,
  type EventLike,
  podCreateFailure,
  poolEvents,
  unservedExperts,
} from "./pool-status.js";

function planOf(pool: ExpertPool) {
  const r = desiredPlan(pool, undefined);
  if (!r.ok) throw new Error(r.message);
  return { plan: r.plan, stats: r.stats, moved: 0 };
}

function sts(
  replicas: number,
  ready: number,
  opts: { gen?: number; observed?: number; updated?: number } = {},
): V1StatefulSet {
  return {
    metadata: { name: "mix", generation: opts.gen ?? 1 },
    spec: { replicas, selector: {}, serviceName: "", template: {} },
    status: {
      replicas,
      readyReplicas: ready,
      updatedReplicas: opts.updated ?? replicas,
      observedGeneration: opts.observed ?? opts.gen ?? 1,
      currentRevision: opts.updated !== undefined ? "a" : "b",
      updateRevision: "b",
    },
  };
}

const pendingGpuPod: V1Pod = {
  metadata: { name: "mix-1" },
  status: {
    phase: "Pending",
    conditions: [
      {
        type: "PodScheduled",
        status: "False",
        reason: "Unschedulable",
        message: "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
      },
    ],
  },
};

const cond = (s: ExpertPoolStatus, t: string) => s.conditions?.find((c) => c.type === t);

/** Worker pods of pool "mix" by name, Ready or not. */
const workerPod = (name: string, ready = true, created = "2026-01-01T00:00:01Z"): V1Pod =>
  ({
    metadata: { name, creationTimestamp: created },
    status: { phase: "Running", conditions: [{ type: "Ready", status: ready ? "True" : "False" }] },
  }) as unknown as V1Pod;
const readyPods = (n: number) => Array.from({ length: n }, (_, i) => workerPod(`mix-${i}`));

describe("buildPoolStatus", () => {
  const now = "2026-01-01T00:00:10Z";

  it("no StatefulSet yet: Progressing CreatingWorkers, not Ready, selector and plan published", () => {
    const pool = testPool();
    const { status, transitions } = buildPoolStatus({
      pool,
      statefulSet: undefined,
      pods: [],
      plan: planOf(pool),
      now,
    });
    expect(cond(status, "Ready")).toMatchObject({ status: "False", reason: "CreatingWorkers", observedGeneration: 1 });
    expect(cond(status, "Progressing")).toMatchObject({ status: "True", reason: "CreatingWorkers" });
    expect(cond(status, "Degraded")).toMatchObject({ status: "False" });
    expect(status.selector).toBe("app.kubernetes.io/component=expert-worker,switchyard.dev/pool=mix");
    expect(status.placement).toMatchObject({
      version: 1,
      configMap: "mix-placement",
      workers: 2,
      slotsPerWorker: [16, 16],
      sharedSlices: 0,
    });
    expect(status.endpoints?.[0]).toEqual({ worker: "mix-0", address: "mix-0.mix-workers.ns.svc:50061" });
    expect(transitions.map((t) => t.type)).toEqual(["Ready", "Progressing", "Degraded"]);
  });

  it("counts the shared expert's slices the plan places on the workers, honestly per copy", () => {
    const model = {
      architecture: "qwen2-moe" as const,
      intermediateSize: 16,
      sharedExperts: 1,
      sharedIntermediateSize: 64,
    };
    const onWorkers = testPool({ model });
    const w = buildPoolStatus({ pool: onWorkers, statefulSet: undefined, pods: [], plan: planOf(onWorkers), now });
    expect(w.status.placement).toMatchObject({ sharedSlices: 4, slotsPerWorker: [24, 24] }); // 4 layers × (8 + 4)
    const inRouter = testPool({ model, placement: { sharedExperts: "Router" } });
    const r = buildPoolStatus({ pool: inRouter, statefulSet: undefined, pods: [], plan: planOf(inRouter), now });
    expect(r.status.placement).toMatchObject({ sharedSlices: 0, slotsPerWorker: [16, 16] });
  });

  it("sharedSlices counts the slices of a plan whose first layers are dense (DeepSeek-V3: rows [], [], [], 257...)", () => {
    const model = { architecture: "deepseek-v3" as const, sharedExperts: 1 };
    for (const dense of [{ firstDenseLayers: 3 }, { denseLayers: [0] }]) {
      const pool = testPool({ model: { ...model, ...dense }, cache: {} });
      const planned = planOf(pool);
      expect(planned.plan.replicas[0]).toEqual([]);
      const { status } = buildPoolStatus({ pool, statefulSet: undefined, pods: [], plan: planned, now });
      expect(status.placement?.sharedSlices).toBe(1);
    }
  });

  it("a first plan (version 1) moved nothing; a replan reports its moved copies", () => {
    const pool = testPool();
    const first = { ...planOf(pool), moved: 32 }; // the planner counts every copy of a first plan as new
    expect(first.plan.version).toBe(1);
    expect(
      buildPoolStatus({ pool, statefulSet: undefined, pods: [], plan: first, now }).status.placement,
    ).toMatchObject({ version: 1, movedExperts: 0 });
    const later = { ...first, plan: { ...first.plan, version: 2 }, moved: 5 };
    expect(
      buildPoolStatus({ pool, statefulSet: undefined, pods: [], plan: later, now }).status.placement,
    ).toMatchObject({ version: 2, movedExperts: 5 });
  });

  it("ready workers are counted from the pods, the same in readyReplicas, Ready and Progressing", () => {
    const pool = testPool();
    // The StatefulSet's status trails the pods: 0 ready by it, both Ready by their conditions.
    const lagging = sts(2, 0, { gen: 2, observed: 1 });
    const { status } = buildPoolStatus({ pool, statefulSet: lagging, pods: readyPods(2), plan: planOf(pool), now });
    expect(status.readyReplicas).toBe(2);
    expect(cond(status, "Ready")).toMatchObject({ status: "True", reason: "ExpertsServed" });
    expect(cond(status, "Ready")?.message).toContain("(2/2 workers ready)");
    expect(cond(status, "Progressing")).toMatchObject({ status: "True", message: "2/2 workers ready" });
    for (const c of status.conditions ?? []) expect(c.message).not.toMatch(/\b[01]\/2 workers ready/);
  });

  it("no StatefulSet because no plan could be made: Progressing False PlanFailed, not CreatingWorkers forever", () => {
    const pool = testPool();
    const { status } = buildPoolStatus({
      pool,
      statefulSet: undefined,
      pods: [],
      plan: { error: "cache.residentExperts: worker mix-0 is planned 9 copies, more than its 8 slots" },
      now,
    });
    expect(cond(status, "Progressing")).toMatchObject({ status: "False", reason: "PlanFailed" });
    expect(cond(status, "Progressing")?.message).toContain("worker mix-0 is planned 9 copies");
    expect(cond(status, "Degraded")).toMatchObject({ status: "True", reason: "PlacementFailed" });
    expect(cond(status, "Ready")).toMatchObject({ status: "False", reason: "PlacementFailed" });
  });

  it("a pod that cannot get GPUs: Progressing InsufficientGPU with the scheduler's message", () => {
    const pool = testPool();
    const { status } = buildPoolStatus({
      pool,
      statefulSet: sts(2, 1),
      pods: [workerPod("mix-0"), pendingGpuPod],
      plan: planOf(pool),
      now,
    });
    expect(cond(status, "Progressing")).toMatchObject({ status: "True", reason: "InsufficientGPU" });
    expect(cond(status, "Progressing")?.message).toContain("Insufficient nvidia.com/gpu");
    expect(cond(status, "Ready")).toMatchObject({ status: "False", reason: "InsufficientGPU" });
    expect(status.readyReplicas).toBe(1);
  });

  it("all workers ready at the current revision: Ready, not Progressing", () => {
    const pool = testPool();
    const { status } = buildPoolStatus({ pool, statefulSet: sts(2, 2), pods: readyPods(2), plan: planOf(pool), now });
    expect(cond(status, "Ready")).toMatchObject({ status: "True", reason: "WorkersReady" });
    expect(cond(status, "Progressing")).toMatchObject({ status: "False", reason: "RolloutComplete" });
    expect(status).toMatchObject({ replicas: 2, readyReplicas: 2, updatedReplicas: 2, observedGeneration: 1 });
  });

  it("a StatefulSet whose controller has not seen the latest spec is not rolled out, though its workers serve", () => {
    const pool = testPool();
    const { status } = buildPoolStatus({
      pool,
      statefulSet: sts(2, 2, { gen: 2, observed: 1 }),
      pods: readyPods(2),
      plan: planOf(pool),
      now,
    });
    expect(cond(status, "Progressing")).toMatchObject({ status: "True" });
    expect(cond(status, "Ready")).toMatchObject({ status: "True", reason: "ExpertsServed" });
  });

  it("rolling update in progress", () => {
    const pool = testPool();
    const { status } = buildPoolStatus({
      pool,
      statefulSet: sts(2, 2, { updated: 1 }),
      pods: [],
      plan: planOf(pool),
      now,
    });
    expect(cond(status, "Progressing")).toMatchObject({ status: "True", reason: "RollingUpdate" });
  });

  it("crash-looping worker or a failed plan: Degraded", () => {
    const pool = testPool();
    const crashing: V1Pod = {
      metadata: { name: "mix-0" },
      status: { containerStatuses: [{ name: "worker", state: { waiting: { reason: "CrashLoopBackOff" } } } as never] },
    };
    const a = buildPoolStatus({ pool, statefulSet: sts(2, 1), pods: [crashing], plan: planOf(pool), now }).status;
    expect(cond(a, "Degraded")).toMatchObject({ status: "True", reason: "WorkerFailing" });
    const b = buildPoolStatus({
      pool,
      statefulSet: sts(2, 2),
      pods: [],
      plan: { error: "capacityPerWorker: no" },
      now,
    }).status;
    expect(cond(b, "Degraded")).toMatchObject({
      status: "True",
      reason: "PlacementFailed",
      message: "capacityPerWorker: no",
    });
    expect(cond(b, "Ready")).toMatchObject({ status: "False", reason: "PlacementFailed" });
  });

  it("a crash-looping worker stays Degraded between its restarts, not only while it waits in back-off", () => {
    const pool = testPool();
    const worker = (state: object, ready: boolean) =>
      ({
        metadata: { name: "mix-0" },
        status: {
          phase: "Running",
          containerStatuses: [
            {
              name: "worker",
              ready,
              restartCount: 4,
              state,
              lastState: { terminated: { exitCode: 1, reason: "Error" } },
            } as never,
          ],
        },
      }) as V1Pod;
    const waiting = worker({ waiting: { reason: "CrashLoopBackOff" } }, false);
    const restarted = worker({ running: { startedAt: "2026-01-01T00:00:05Z" } }, false);
    const first = buildPoolStatus({ pool, statefulSet: sts(2, 1), pods: [waiting], plan: planOf(pool), now });
    expect(cond(first.status, "Degraded")).toMatchObject({ status: "True", reason: "WorkerFailing" });
    pool.status = first.status;
    const next = buildPoolStatus({ pool, statefulSet: sts(2, 1), pods: [restarted], plan: planOf(pool), now });
    expect(cond(next.status, "Degraded")).toMatchObject({ status: "True", reason: "WorkerFailing" });
    expect(cond(next.status, "Degraded")?.message).toContain("exit code 1 (Error)");
    expect(next.transitions.filter((t) => t.type === "Degraded")).toEqual([]); // no new Warning event per restart
    // Ready again after a restart: the old crash is history, not a failure.
    const healed = worker({ running: { startedAt: "2026-01-01T00:00:05Z" } }, true);
    const ok = buildPoolStatus({ pool, statefulSet: sts(2, 2), pods: [healed], plan: planOf(pool), now }).status;
    expect(cond(ok, "Degraded")).toMatchObject({ status: "False" });
  });

  it("rebuilding from the same observation gives an identical status (no write) and no transitions", () => {
    const pool = testPool();
    const first = buildPoolStatus({ pool, statefulSet: sts(2, 2), pods: [], plan: planOf(pool), now }).status;
    pool.status = first;
    const later = buildPoolStatus({
      pool,
      statefulSet: sts(2, 2),
      pods: [],
      plan: planOf(pool),
      now: "2026-01-01T01:00:00Z",
    });
    expect(later.status).toEqual(first);
    expect(later.transitions).toEqual([]);
  });

  it("a rolling update or a scale that leaves every planned expert a ready worker stays Ready; Progressing carries it, in Normal events", () => {
    const pool = testPool();
    const before = buildPoolStatus({ pool, statefulSet: sts(2, 2), pods: readyPods(2), plan: planOf(pool), now });
    expect(cond(before.status, "Ready")).toMatchObject({ status: "True", reason: "WorkersReady" });
    pool.status = before.status;
    // mix-1 restarted on the new revision and is ready again; mix-0 is next.
    const mid = buildPoolStatus({
      pool,
      statefulSet: sts(2, 2, { updated: 1 }),
      pods: readyPods(2),
      plan: planOf(pool),
      now,
    });
    expect(cond(mid.status, "Ready")).toMatchObject({ status: "True", reason: "ExpertsServed" });
    expect(cond(mid.status, "Ready")?.message).toMatch(
      /^every planned expert has a ready worker \(2\/2 workers ready\); Progressing RollingUpdate/,
    );
    expect(cond(mid.status, "Ready")?.lastTransitionTime).toBe(cond(before.status, "Ready")?.lastTransitionTime);
    expect(cond(mid.status, "Progressing")).toMatchObject({ status: "True", reason: "RollingUpdate" });
    expect(mid.events).toEqual([
      { type: "Normal", reason: "RollingUpdate", message: "1/2 workers updated to the current revision" },
    ]);
    // With every expert on both workers, one worker down (restarting) still serves all of them.
    const redundant = planOf(pool);
    redundant.plan.replicas = redundant.plan.replicas.map((row) => row.map(() => [0, 1]));
    const oneDown = buildPoolStatus({
      pool,
      statefulSet: sts(2, 1, { updated: 1 }),
      pods: [workerPod("mix-0"), workerPod("mix-1", false)],
      plan: redundant,
      now,
    });
    expect(cond(oneDown.status, "Ready")).toMatchObject({ status: "True", reason: "ExpertsServed" });
    expect(oneDown.events.map((e) => e.type)).not.toContain("Warning");
    // A scale up: the workers there serve the plan they hold; the new one is not ready yet.
    const big = testPool({ replicas: 3 });
    big.status = before.status;
    const plan3 = planOf(big);
    plan3.plan.replicas = plan3.plan.replicas.map((row) => row.map((_, e) => [e % 2]));
    const scaling = buildPoolStatus({ pool: big, statefulSet: sts(2, 2), pods: readyPods(2), plan: plan3, now });
    expect(cond(scaling.status, "Ready")).toMatchObject({ status: "True" });
    expect(cond(scaling.status, "Progressing")).toMatchObject({ status: "True", reason: "ScalingUp" });
  });

  it("Ready is False while a planned expert has no ready worker: Normal in a rollout, a Warning for a worker lost at rest", () => {
    const pool = testPool();
    pool.status = buildPoolStatus({ pool, statefulSet: sts(2, 2), pods: readyPods(2), plan: planOf(pool), now }).status;
    const down = [workerPod("mix-0"), workerPod("mix-1", false)];
    // mix-1 is restarting in a rollout and its experts have no other copy: not served, but nothing failed.
    const rolling = buildPoolStatus({
      pool,
      statefulSet: sts(2, 1, { updated: 1 }),
      pods: down,
      plan: planOf(pool),
      now,
    });
    expect(cond(rolling.status, "Ready")).toMatchObject({ status: "False", reason: "RollingUpdate" });
    expect(cond(rolling.status, "Ready")?.message).toMatch(
      /; 16 of 32 planned experts have no ready worker \(layer 0 expert \d+ on mix-1\)$/,
    );
    expect(rolling.events).toContainEqual(expect.objectContaining({ type: "Normal", reason: "RollingUpdate" }));
    expect(rolling.events.map((e) => e.type)).not.toContain("Warning");
    // The same at rest (no rollout, no scale): a worker was lost.
    const lost = buildPoolStatus({ pool, statefulSet: sts(2, 1), pods: down, plan: planOf(pool), now });
    expect(cond(lost.status, "Ready")).toMatchObject({ status: "False", reason: "WaitingForReady" });
    expect(lost.events).toContainEqual(expect.objectContaining({ type: "Warning", reason: "WaitingForReady" }));
  });

  it("a StatefulSet the API server refused to create: Progressing False (nothing is being created), not CreatingWorkers", () => {
    const pool = testPool();
    const refusedSts = buildPoolStatus({
      pool,
      statefulSet: undefined,
      pods: [],
      plan: planOf(pool),
      refused: ["StatefulSet mix: spec.template.spec.containers[0].resources.requests: Invalid value"],
      now,
    });
    expect(cond(refusedSts.status, "Progressing")).toMatchObject({ status: "False", reason: "WorkersNotCreated" });
    expect(cond(refusedSts.status, "Degraded")).toMatchObject({ status: "True", reason: "ApplyFailed" });
    // another child refused (the plan's ConfigMap) while the StatefulSet is still to come: still creating
    const cmOnly = buildPoolStatus({
      pool,
      statefulSet: undefined,
      pods: [],
      plan: planOf(pool),
      refused: ["ConfigMap mix-plan: too large"],
      now,
    });
    expect(cond(cmOnly.status, "Progressing")).toMatchObject({ status: "True", reason: "CreatingWorkers" });
  });

  it("a Degraded pool that still serves is Ready (Degraded says what is wrong); one that does not takes Degraded's reason", () => {
    const pool = testPool();
    pool.status = buildPoolStatus({ pool, statefulSet: sts(2, 2), pods: readyPods(2), plan: planOf(pool), now }).status;
    const refused = buildPoolStatus({
      pool,
      statefulSet: sts(2, 2),
      pods: readyPods(2),
      plan: planOf(pool),
      refused: ["StatefulSet mix: admission webhook said no"],
      now,
    });
    expect(cond(refused.status, "Ready")).toMatchObject({ status: "True" });
    expect(cond(refused.status, "Degraded")).toMatchObject({ status: "True", reason: "ApplyFailed" });
    expect(refused.events).toEqual([
      { type: "Warning", reason: "ApplyFailed", message: "StatefulSet mix: admission webhook said no" },
    ]);
    // A replan that fails keeps the published plan, which the workers serve.
    const failed = buildPoolStatus({
      pool,
      statefulSet: sts(2, 2),
      pods: readyPods(2),
      plan: { error: "capacityPerWorker: no" },
      publishedPlan: planOf(pool).plan,
      now,
    });
    expect(cond(failed.status, "Ready")).toMatchObject({ status: "True" });
    expect(cond(failed.status, "Degraded")).toMatchObject({ status: "True", reason: "PlacementFailed" });
  });

  it("pods the API server refuses (admission): Degraded PodCreateFailed with its message, from the StatefulSet's FailedCreate event", () => {
    const pool = testPool();
    const refusing: V1StatefulSet = {
      ...sts(2, 0),
      metadata: { name: "mix", uid: "sts-uid", generation: 1 },
      status: { replicas: 0, readyReplicas: 0, observedGeneration: 1, currentRevision: "b", updateRevision: "b" },
    };
    const msg =
      'create Pod mix-0 in StatefulSet mix failed error: pods "mix-0" is forbidden: violates PodSecurity "baseline:latest": hostPath volumes (volume "checkpoint")';
    const ev = (over: Partial<EventLike> = {}): EventLike => ({
      type: "Warning",
      reason: "FailedCreate",
      message: msg,
      involvedObject: { kind: "StatefulSet", name: "mix", uid: "sts-uid" },
      lastTimestamp: "2026-01-01T00:00:05Z",
      ...over,
    });
    const older = ev({ message: "older refusal", lastTimestamp: "2026-01-01T00:00:03Z" });
    const first = buildPoolStatus({
      pool,
      statefulSet: refusing,
      pods: [],
      plan: planOf(pool),
      statefulSetEvents: [older, ev(), ev({ reason: "SuccessfulCreate", type: "Normal" })],
      now,
    });
    expect(cond(first.status, "Degraded")).toMatchObject({ status: "True", reason: "PodCreateFailed", message: msg });
    expect(cond(first.status, "Ready")).toMatchObject({ status: "False", reason: "PodCreateFailed", message: msg });
    expect(cond(first.status, "Progressing")).toMatchObject({ status: "True", reason: "ScalingUp" });
    expect(first.events).toEqual([{ type: "Warning", reason: "PodCreateFailed", message: msg }]);
    // Not while the StatefulSet has its pods, nor from another StatefulSet of that name, nor older than a pod made
    // since, nor older than the pool's last Progressing flip (a refusal before the last settled rollout).
    expect(podCreateFailure({ ...refusing, status: { replicas: 2 } }, [ev()], [])).toBeUndefined();
    expect(
      podCreateFailure(refusing, [ev({ involvedObject: { kind: "StatefulSet", name: "mix", uid: "x" } })], []),
    ).toBeUndefined();
    expect(podCreateFailure(refusing, [ev()], [workerPod("mix-0", false, "2026-01-01T00:00:06Z")])).toBeUndefined();
    expect(podCreateFailure(refusing, [ev()], [], "2026-01-01T00:00:09Z")).toBeUndefined();
    expect(podCreateFailure(refusing, [ev()], [workerPod("mix-0", false, "2026-01-01T00:00:05Z")])).toMatchObject({
      reason: "PodCreateFailed",
    });
    // An events.k8s.io event seen through core/v1: its series' last sighting, no lastTimestamp.
    expect(
      podCreateFailure(
        refusing,
        [
          older,
          ev({
            lastTimestamp: null,
            eventTime: "2026-01-01T00:00:01Z",
            series: { lastObservedTime: "2026-01-01T00:00:08Z" },
            message: "series",
          }),
        ],
        [],
      )?.message,
    ).toBe("series");
  });

  it("unservedExperts counts planned slots without a ready holder; dense layers' empty rows have none", () => {
    const plan = { version: 1, pool: "p", workers: ["p-0", "p-1"], replicas: [[], [[0], [1], [0, 1]]] };
    expect(unservedExperts(plan, new Set(["p-0", "p-1"]))).toEqual({ unserved: 0, planned: 3, example: undefined });
    expect(unservedExperts(plan, new Set(["p-0"]))).toEqual({
      unserved: 1,
      planned: 3,
      example: "layer 1 expert 1 on p-1",
    });
  });

  it("poolEvents: Ready changing only its reason says nothing; one event per type and reason", () => {
    const t = (type: string, from: "True" | "False" | undefined, to: "True" | "False", reason: string) => ({
      type,
      from,
      to,
      reason,
      message: reason,
    });
    expect(poolEvents([t("Ready", "True", "True", "ExpertsServed")], { rollingOut: true, degraded: false })).toEqual(
      [],
    );
    expect(
      poolEvents([t("Degraded", "False", "True", "WorkerFailing"), t("Ready", "True", "False", "WorkerFailing")], {
        rollingOut: true,
        degraded: true,
      }),
    ).toEqual([{ type: "Warning", reason: "WorkerFailing", message: "WorkerFailing" }]);
  });

  it("a pool being deleted (a finalizer holds it): Ready False Deleting, told as Normal", () => {
    const pool = testPool();
    pool.status = buildPoolStatus({ pool, statefulSet: sts(2, 2), pods: readyPods(2), plan: planOf(pool), now }).status;
    (pool.metadata as { finalizers?: string[] }).finalizers = ["foregroundDeletion"];
    const { status, events } = deletingStatus(pool, "2026-01-01T00:01:00Z");
    expect(cond(status, "Ready")).toMatchObject({
      status: "False",
      reason: "Deleting",
      message:
        "ExpertPool is being deleted (waiting for finalizers: foregroundDeletion); the router no longer serves it",
    });
    expect(cond(status, "Progressing")).toMatchObject({ status: "True", reason: "Deleting" });
    expect(cond(status, "Degraded")).toMatchObject({ status: "False", reason: "AsExpected" });
    expect(status.placement).toEqual(pool.status.placement);
    expect(events.map((e) => `${e.type} ${e.reason}`)).toEqual(["Normal Deleting"]);
    pool.status = status;
    expect(deletingStatus(pool, "2026-01-01T00:02:00Z").status).toEqual(status);
  });

  it("scaled to zero is Ready", () => {
    const pool = testPool({ replicas: 0 });
    const { status } = buildPoolStatus({ pool, statefulSet: sts(0, 0), pods: [], plan: planOf(pool), now });
    expect(cond(status, "Ready")).toMatchObject({ status: "True", reason: "ScaledToZero" });
  });
});
