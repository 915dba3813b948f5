// Make-before-break plan transitions against a real control plane (etcd, kube-apiserver, kube-controller-manager,
// scheduler, kwok): a scale-up never makes a serving pool serve less. The reviewed defect: a pool Ready at 2 workers,
// `kubectl scale --replicas=12` on a cluster with no GPU for the new pods, and the operator published at once a plan
// packing experts onto the 10 workers that never ran, leaving them with no worker at all.
import type { PlacementPlan } from "@switchyard/moe";
import type { Manager } from "@switchyard/operator";
import { describeWithCluster } from "@switchyard/test/cluster/vitest";
import { afterAll, beforeAll, expect, it, vi } from "vitest";
import { waitUntil } from "../cluster/index.js";
import {
  adminClient,
  cond,
  createNamespace,
  getPool,
  type Obj,
  pool,
  sleep,
  startOperator,
  waitReady,
  XP,
} from "./helpers.js";

vi.setConfig({ testTimeout: 180_000 });

interface Ev {
  reason: string;
  message: string;
  involvedObject: { kind: string; name: string };
}

// One node of 2 GPUs: the pool's first two workers fill it, the workers a scale adds stay Pending.
describeWithCluster("plan transitions on a real cluster", { nodes: 1, gpusPerNode: 2 }, (cluster) => {
  let op: Manager | undefined;
  const admin = () => adminClient(cluster());
  const planCm = async () => admin().get<Obj>("/api/v1/namespaces/scl/configmaps/scl-placement");
  const planOf = (cm: Obj | undefined, key = "plan.json") =>
    cm?.data?.[key] ? (JSON.parse(cm.data[key]) as PlacementPlan) : undefined;
  const readyPods = async () =>
    new Set(
      (
        await admin().list<Obj & { status?: { conditions?: { type: string; status: string }[] } }>(
          "/api/v1/namespaces/scl/pods",
          { labelSelector: "switchyard.dev/pool=scl" },
        )
      ).items
        .filter((p) => p.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True"))
        .map((p) => p.metadata.name),
    );
  /** (layer, expert) slots no worker in `ready` holds. */
  const unserved = (plan: PlacementPlan, ready: ReadonlySet<string>) =>
    plan.replicas.flatMap((row, l) =>
      row.flatMap((hs, e) => (hs.some((w) => ready.has(plan.workers[w])) ? [] : [`layer ${l} expert ${e}`])),
    );

  beforeAll(async () => {
    const c = cluster();
    await c.kubectl(["apply", "-f", "crds/"]);
    await c.kubectl(["wait", "--for=condition=Established", "crd/expertpools.switchyard.dev"]);
    await createNamespace(admin(), "scl");
    op = startOperator(c);
    await op.start();
  }, 60_000);

  afterAll(async () => {
    await op?.stop();
  });

  it("a scale-up whose new pods cannot run keeps every expert on a Ready worker; the target follows once they are Ready", async () => {
    const k = admin();
    await k.create(XP("scl"), pool("scl", "scl", { model: { layers: 1, experts: 8 }, replicas: 2 }));
    await waitReady(k, "scl", "scl");
    const v1 = planOf(await planCm());
    expect(v1).toMatchObject({ version: 1, workers: ["scl-0", "scl-1"] });
    expect(await readyPods()).toEqual(new Set(["scl-0", "scl-1"]));

    await cluster().kubectl(["scale", "-n", "scl", "xp", "scl", "--replicas=12"]);
    let last: Obj | undefined;
    await waitUntil(
      async () => {
        last = await getPool(k, "scl", "scl");
        return cond(last, "Progressing")?.reason === "InsufficientGPU" && planOf(await planCm())?.version === 2;
      },
      {
        timeoutMs: 60_000,
        what: `scl Progressing/InsufficientGPU with plan version 2 (${JSON.stringify(last?.status)})`,
      },
    );
    // The new pods never run: however long it waits, the published plan serves every expert from scl-0 and scl-1.
    await sleep(5000);
    const cm = await planCm();
    const transitional = planOf(cm) as PlacementPlan;
    const target = planOf(cm, "target-plan.json") as PlacementPlan;
    const ready = await readyPods();
    expect(ready).toEqual(new Set(["scl-0", "scl-1"]));
    expect(transitional.version).toBe(2);
    expect(transitional.workers).toHaveLength(12);
    expect(unserved(transitional, ready)).toEqual([]);
    // the two ready workers keep exactly their copies of version 1; the new ones get theirs of the target
    const share = (p: PlacementPlan, w: string) =>
      p.replicas.flatMap((row, l) => row.flatMap((hs, e) => (hs.includes(p.workers.indexOf(w)) ? [`${l}/${e}`] : [])));
    const v1plan = v1 as PlacementPlan;
    for (const w of ["scl-0", "scl-1"]) expect(share(transitional, w)).toEqual(share(v1plan, w));
    for (const w of transitional.workers.slice(2)) expect(share(transitional, w)).toEqual(share(target, w));
    expect(target).toMatchObject({ version: 3, workers: transitional.workers });
    // before the fix: the target itself was published, with experts on workers that never ran
    expect(unserved(target, ready).length).toBeGreaterThan(0);
    const p = await getPool(k, "scl", "scl");
    expect(cond(p, "Ready")).toMatchObject({ status: "True", reason: "ExpertsServed" });
    expect(p?.status?.placement).toMatchObject({ version: 2, workers: 12 });
    const events = (await k.list<Ev>("/api/v1/namespaces/scl/events")).items.filter(
      (e) => e.involvedObject.kind === "ExpertPool" && e.involvedObject.name === "scl",
    );
    expect(events.find((e) => e.reason === "PlanTransition")?.message).toMatch(
      /^placement plan version 2: transitional, keeping \d+ copies on ready workers until \d+ new workers are Ready \(scl-\d+/,
    );

    // GPUs arrive: the new workers run, and the target is published as it was announced.
    await cluster().createGpuNodes(2, 8, { prefix: "more-gpu" });
    await waitUntil(async () => planOf(await planCm())?.version === 3, {
      timeoutMs: 90_000,
      what: "plan version 3 (the target) once the new workers are Ready",
    });
    const done = await planCm();
    expect(planOf(done)).toEqual(target);
    expect(done?.data?.["target-plan.json"]).toBeUndefined();
    const now = await readyPods();
    for (const w of target.workers.filter((w) => share(target, w).length > 0)) expect(now.has(w), w).toBe(true);
    expect(unserved(target, now)).toEqual([]);
    const rolled = await waitReady(k, "scl", "scl", 90_000);
    expect(rolled.status?.placement).toMatchObject({ version: 3, workers: 12 });
  });
});
