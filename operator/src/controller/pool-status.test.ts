import type { V1Pod, V1StatefulSet } from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import type { ExpertPool, ExpertPoolStatus } from "../api/v1alpha1.js";
import { desiredPlan } from "./desired.js";
import { testPool } from "./fixtures.js";
import { buildPoolStatus } from "./pool-status.js";

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

  it("a pod that cannot get GPUs: Progressing InsufficientGPU with the scheduler's message", () => {
    const pool = testPool();
    const { status } = buildPoolStatus({
      pool,
      statefulSet: sts(2, 1),
      pods: [pendingGpuPod],
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
    const { status } = buildPoolStatus({ pool, statefulSet: sts(2, 2), pods: [], plan: planOf(pool), now });
    expect(cond(status, "Ready")).toMatchObject({ status: "True", reason: "WorkersReady" });
    expect(cond(status, "Progressing")).toMatchObject({ status: "False", reason: "RolloutComplete" });
    expect(status).toMatchObject({ replicas: 2, readyReplicas: 2, updatedReplicas: 2, observedGeneration: 1 });
  });

  it("a StatefulSet whose controller has not seen the latest spec is not complete", () => {
    const pool = testPool();
    const { status } = buildPoolStatus({
      pool,
      statefulSet: sts(2, 2, { gen: 2, observed: 1 }),
      pods: [],
      plan: planOf(pool),
      now,
    });
    expect(cond(status, "Ready")).toMatchObject({ status: "False" });
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

  it("scaled to zero is Ready", () => {
    const pool = testPool({ replicas: 0 });
    const { status } = buildPoolStatus({ pool, statefulSet: sts(0, 0), pods: [], plan: planOf(pool), now });
    expect(cond(status, "Ready")).toMatchObject({ status: "True", reason: "ScaledToZero" });
  });
});
