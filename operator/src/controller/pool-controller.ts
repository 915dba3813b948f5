// ExpertPool reconciler: the thin I/O shell around desired.ts and pool-status.ts. Level-triggered: every pass
// re-reads the pool and its children from the informer caches, applies whatever differs (server-side apply,
// one field manager; a missing child is created, and an object of its name that the pool does not control is left
// alone: ChildConflict), and rebuilds status from what it observes. Nothing is remembered between passes except
// the objects our own writes returned (RecentWrites), used only while the cache has not caught up, the last plan
// (PlanMemo), which children need their field ownership settled before an apply (a create's), and, for pools with
// placement.rebalance on, the last expert heat Prometheus reported (rebalance.ts: a pass between two queries judges
// the plan under that heat, not under uniform load), which also schedules the pool's next pass. Heat queries run
// beside the passes, never inside one; an answer queues the pool. A plan change that needs workers not yet Ready is
// made before it breaks (plan-transition.ts): the plan it moves to is kept in the plan ConfigMap, not in memory.
import { isDeepStrictEqual } from "node:util";
import type { V1ConfigMap, V1Pod, V1Service, V1StatefulSet } from "@kubernetes/client-node";
import { type PlacementPlan, planStats, sameAssignment } from "@switchyard/moe";
import { clean } from "../api/schema.js";
import type { ExpertPool, ExpertPoolStatus } from "../api/v1alpha1.js";
import type { Result } from "../runtime/controller.js";
import type { EventRecorder } from "../runtime/events.js";
import type { Informer } from "../runtime/informer.js";
import {
  applyOwnership,
  type Kube,
  KubeError,
  type KubeObject,
  type ManagedFieldsEntry,
  type OwnerReference,
  paths,
} from "../runtime/kube.js";
import { type FetchLike, promInstantQuery } from "../runtime/prometheus.js";
import type { RecentWrites } from "../runtime/recent.js";
import { needsApply, stampApplied } from "./compare.js";
import {
  desiredPlan,
  desiredService,
  desiredStatefulSet,
  type PlanOutcome,
  planConfigMap,
  planFromConfigMap,
  sharedSlicesOf,
  targetPlanFromConfigMap,
  type WorkerPodDefaults,
} from "./desired.js";
import { heatQuery, parseHeat } from "./heat.js";
import {
  FIELD_MANAGER,
  POOL_LABEL,
  planConfigMapName,
  STATUS_FIELD_MANAGER,
  serviceName,
  statefulSetName,
} from "./names.js";
import { PlanMemo } from "./plan-memo.js";
import { type PlanStep, planStep } from "./plan-transition.js";
import {
  buildPoolStatus,
  deletingStatus,
  type EventLike,
  type PoolObservation,
  type PoolStatusResult,
  readyWorkers,
} from "./pool-status.js";
import {
  type HeatObservation,
  heatKey,
  heatLoad,
  msUntilQuery,
  observe,
  planFitsPool,
  type RebalanceDecision,
  type RebalanceSettings,
  type RebalanceStatus,
  rebalancedPlan,
  rebalanceSettings,
  rebalanceStatus,
} from "./rebalance.js";
import { CONFIG_MAP_MAX_BYTES } from "./router-config-fit.js";
import { routerPoolName } from "./routing.js";

export const MOVED_ANNOTATION = "switchyard.dev/moved-experts";

export interface PoolCaches {
  pools: Informer<ExpertPool>;
  statefulSets: Informer<V1StatefulSet>;
  services: Informer<V1Service>;
  configMaps: Informer<V1ConfigMap>;
  pods: Informer<V1Pod>;
  /** Warning FailedCreate events of StatefulSets (pods refused at admission: status Degraded/PodCreateFailed). */
  events?: Informer<EventLike & { metadata?: { name?: string; namespace?: string } }>;
}

export interface PoolControllerDeps {
  kube: Kube;
  /** The router's namespace: it serves (and labels the heat of) pools elsewhere as "namespace/name". */
  routerNamespace: string;
  /** The operator's --worker-* flags: pull secrets and labels every pool's worker pods get (desired.ts). */
  workerDefaults?: WorkerPodDefaults;
  caches: PoolCaches;
  recent: RecentWrites;
  events: EventRecorder;
  log: (m: string) => void;
  now?: () => string;
  /** Milliseconds clock for the rebalance schedule (default Date.now). */
  clock?: () => number;
  /** HTTP client for Prometheus heat queries (default: global fetch). */
  fetch?: FetchLike;
  /**
   * Queues a pass of a pool (the controller's work queue): a heat answer that came between passes. Without it, a
   * pass made while a query is out comes back after that query's timeout instead.
   */
  enqueue?: (key: string) => void;
}

export function splitKey(key: string): [string, string] {
  const i = key.indexOf("/");
  return [key.slice(0, i), key.slice(i + 1)];
}

export class PoolReconciler {
  /** Last heat query per pool key, for pools with rebalance on. */
  private readonly heat = new Map<string, HeatObservation>();
  /** The heat query out for a pool key (its heatKey), if any: at most one at a time. */
  private readonly heatQueries = new Map<string, { key: string }>();
  /** Each pool's last plan without rebalance: a pass with the same spec and its own plan published plans nothing. */
  private readonly plans = new PlanMemo();
  /**
   * Children (by path) whose managedFields this process has seen without an Update entry of ours, with their uid:
   * an apply to them needs no settling first (settleBefore). A child created since, or found after a restart, is
   * not in it.
   */
  private readonly settled = new Map<string, string>();

  constructor(private readonly d: PoolControllerDeps) {}

  private nowString(): string {
    return this.d.now?.() ?? new Date().toISOString().replace(/\.\d+Z$/, "Z");
  }

  /**
   * The pool's heat for this pass, never waited for: the last answer Prometheus gave for these settings (undefined:
   * none yet, or only for other settings). When the next query is due and none is out, one is sent; its answer is
   * stored and queues the pool (deps.enqueue), whose next pass judges the plan under it. So a slow or silent
   * Prometheus (timeoutSeconds up to 300) holds no reconcile worker, and a new pool gets its children at once.
   */
  private heatFor(key: string, pool: ExpertPool, s: RebalanceSettings): HeatObservation | undefined {
    const clock = this.d.clock ?? Date.now;
    const hk = heatKey(pool, s);
    const prev = this.heat.get(key);
    if (msUntilQuery(prev, hk, s, clock()) <= 0 && this.heatQueries.get(key)?.key !== hk)
      this.queryHeat(key, pool, s, hk);
    return prev?.key === hk ? prev : undefined;
  }

  /** Sends one heat query for the pool, in the background; its answer is stored unless the pool was forgotten meanwhile. */
  private queryHeat(key: string, pool: ExpertPool, s: RebalanceSettings, hk: string): void {
    const token = { key: hk };
    this.heatQueries.set(key, token);
    void this.askHeat(pool, s).then((result) => {
      if (this.heatQueries.get(key) !== token) return; // the pool is gone, rebalance off, or other settings asked
      this.heatQueries.delete(key);
      const clock = this.d.clock ?? Date.now;
      const prev = this.heat.get(key);
      const obs = observe(prev, hk, clock(), this.nowString(), result);
      this.heat.set(key, obs);
      // The same failure with other figures (the folded counts grow each interval) is not a new one.
      const kind = (e: string | undefined) => e?.replace(/\d+(\.\d+)?/g, "#");
      if (obs.error && kind(obs.error) !== kind(prev?.error)) {
        // Once per new failure, not every interval; status.placement.rebalance.message says it meanwhile.
        this.d.log(`expertpool ${key}: heat query failed: ${obs.error}`);
        void this.d.events.emit(
          this.involved(pool),
          "Warning",
          "HeatQueryFailed",
          `heat query to ${s.prometheusUrl} failed: ${obs.error}; the placement plan stays as it is`,
        );
      }
      // An answer (or a failure) is news for status and perhaps the plan: a pass now, not at the next due time.
      this.d.enqueue?.(key);
    });
  }

  /** One heat query's answer, or why there is none. Never throws. */
  private async askHeat(
    pool: ExpertPool,
    s: RebalanceSettings,
  ): Promise<{ load: number[][] | undefined } | { error: string }> {
    try {
      const body = await promInstantQuery(
        s.prometheusUrl,
        heatQuery(routerPoolName(pool, this.d.routerNamespace), s.window, this.d.routerNamespace),
        {
          timeoutMs: s.timeoutMs,
          fetch: this.d.fetch,
        },
      );
      const h = parseHeat(body, { ...pool.spec.model, slices: sharedSlicesOf(pool.spec.model, pool.spec.placement) });
      // Heat the router could not label by expert: judging a plan on the rest would misread whole layers as idle.
      return h.folded > 0
        ? {
            error: `heat incomplete: the router folded ${Math.round(h.folded)} of ${Math.round(h.total + h.folded)} assignments into expert="other" (its series cap); the plan stays`,
          }
        : { load: h.load };
    } catch (e) {
      return { error: (e as Error).message };
    }
  }

  /** Drops what the pool's heat left in memory; an answer still out is then not stored. */
  private forgetHeat(key: string): void {
    this.heat.delete(key);
    this.heatQueries.delete(key);
  }

  /**
   * Writes a child where it differs from `desired`, and only a child this pool controls. The caches hold only objects
   * labelled as ours, so a child missing from them is created (POST), which fails rather than take over an object
   * of that name; that one is read and written only if its controller is this pool (a label was edited away),
   * else left as it is: ChildConflictError. controller-runtime's CreateOrUpdate with SetControllerReference does
   * the same (AlreadyOwnedError), so the garbage collector never deletes with the pool what it did not make.
   * A create is one request; the field ownership it leaves is settled before the child's first apply (settleBefore).
   */
  private async applyIfChanged<T extends KubeObject>(
    pool: ExpertPool,
    kind: string,
    collection: string,
    desired: T,
    live: KubeObject | undefined,
  ): Promise<T | undefined> {
    const want = stampApplied(desired as never) as T;
    const ns = desired.metadata?.namespace as string;
    const name = desired.metadata?.name as string;
    const path = `${collection}/${name}`;
    if (!live) {
      try {
        const out = await this.d.kube.createForApply<T>(collection, want, FIELD_MANAGER);
        this.settled.delete(path); // its fields sit in an Update entry of ours until its first apply
        this.d.recent.put(kind, ns, name, out);
        return out;
      } catch (e) {
        if (!(e instanceof KubeError) || e.code !== 409) throw e;
      }
      live = await this.d.kube.get<KubeObject>(path);
      // deleted in between: the retry creates it
      if (!live) throw new Error(`${kind} ${name}: existed at create, gone at the read after; trying again`);
    }
    if (!controlledBy(live, pool)) throw new ChildConflictError(kind, name, controllerOf(live));
    if (!needsApply(want as never, live as never)) return undefined;
    await this.settleBefore(pool, kind, path, live);
    const out = await this.d.kube.apply<T>(path, want, FIELD_MANAGER);
    const uid = out.metadata?.uid;
    if (uid && !applyOwnership(managedFieldsOf(out), FIELD_MANAGER)) this.settled.set(path, uid);
    else this.settled.delete(path);
    this.d.recent.put(kind, ns, name, out);
    return out;
  }

  /**
   * Before an apply to a child: the fields of our Update entry (a create's, filed so by the API server) moved to our
   * Apply entry (Kube.settleFieldOwnership), else the apply would not own them and a field it leaves out would stay.
   * Nothing to do for a child this process has seen settled (`settled`); any other, a child created since or one
   * found after a restart, is read for its managedFields (the caches drop them), unless `live` came from a read or
   * a write and has them. The move is guarded by the resourceVersion; where it cannot be made (three writes raced
   * it, or the child is gone or no longer ours) nothing is applied and the pass fails, to be retried.
   */
  private async settleBefore(pool: ExpertPool, kind: string, path: string, live: KubeObject): Promise<void> {
    const uid = live.metadata?.uid;
    if (uid && this.settled.get(path) === uid) return;
    const name = live.metadata?.name as string;
    const full = managedFieldsOf(live) ? live : await this.d.kube.get<KubeObject>(path);
    if (!full) throw new Error(`${kind} ${name}: in the cache, gone at the read before its apply; trying again`);
    // Deleted and made anew by someone else since the cache saw it: not ours to write.
    if (!controlledBy(full, pool)) throw new ChildConflictError(kind, name, controllerOf(full));
    const out = await this.d.kube.settleFieldOwnership(path, full, FIELD_MANAGER);
    if (!out) throw new Error(`${kind} ${name}: gone while its field ownership was moved; trying again`);
    if (applyOwnership(managedFieldsOf(out), FIELD_MANAGER))
      throw new Error(`${kind} ${name}: other writes raced the move of its field ownership three times; trying again`);
  }

  /** Forgets what the pool's passes left in memory. */
  private forget(key: string): void {
    this.forgetHeat(key);
    this.plans.forget(key);
    const [ns, name] = splitKey(key);
    this.settled.delete(`${paths.configMaps(ns)}/${planConfigMapName(name)}`);
    this.settled.delete(`${paths.services(ns)}/${serviceName(name)}`);
    this.settled.delete(`${paths.statefulSets(ns)}/${statefulSetName(name)}`);
  }

  async reconcile(key: string): Promise<Result | undefined> {
    const [ns, name] = splitKey(key);
    const { caches, recent } = this.d;
    const pool = caches.pools.get(ns, name);
    // Gone or going: owner references let the garbage collector remove the children.
    if (!pool || pool.metadata.deletionTimestamp) {
      this.forget(key);
      // Held by a finalizer (foreground deletion, another controller's): its status says so, not its last Ready.
      if (pool) {
        const last = recent.pick("ExpertPool", ns, name, pool) ?? pool;
        await this.writeStatus(key, last, deletingStatus(last, this.nowString()));
      }
      return undefined;
    }

    // 1. Placement plan (stable against the plan already published); with rebalance on, judged under the heat.
    const cmName = planConfigMapName(name);
    const cachedCm = recent.pick("ConfigMap", ns, cmName, caches.configMaps.get(ns, cmName));
    // Another's ConfigMap of that name (with our labels) is no plan of ours to build on.
    const liveCm = controlledBy(cachedCm, pool) ? cachedCm : undefined;
    const previous = planFromConfigMap(liveCm);
    // A make-before-break transition in progress (plan-transition.ts): the plan it moves to. While it still fits the
    // spec it is what this pass plans from (the new workers keep warming up the same experts, and with rebalance on
    // no heat replan moves copies meanwhile); after a spec change (another scale) the published plan is.
    const stored = targetPlanFromConfigMap(liveCm);
    const moving = stored && previous && !sameAssignment(stored, previous) ? stored : undefined;
    const base = moving && planFitsPool(moving, pool) ? moving : previous;
    const pods = caches.pods.list(ns).filter((p) => p.metadata?.labels?.[POOL_LABEL] === name);
    const rebalance = rebalanceSettings(pool);
    let plan: PlanOutcome;
    let decision: RebalanceDecision | undefined;
    let heat: HeatObservation | undefined;
    let result: Result | undefined;
    if (rebalance) {
      // The remembered heat: a query due now goes out in the background (heatFor), never holding this pass.
      heat = this.heatFor(key, pool, rebalance);
      ({ outcome: plan, decision } = rebalancedPlan(pool, base, heat?.load, rebalance.minImprovement, {
        hold: !!moving && base === moving,
      }));
      plan = fitsConfigMap(plan);
      const clock = this.d.clock ?? Date.now;
      // Next pass: its answer queues it while a query is out, else when the next query is due.
      if (!this.heatQueries.has(key))
        result = { requeueAfterMs: Math.max(1, msUntilQuery(heat, heatKey(pool, rebalance), rebalance, clock())) };
      else if (!this.d.enqueue) result = { requeueAfterMs: rebalance.timeoutMs + 1000 };
    } else {
      this.forgetHeat(key);
      // The memo holds targets only: the step below is made afresh each pass, from the pods' readiness.
      plan = this.plans.plan(pool, base, () => fitsConfigMap(desiredPlan(pool, base)));
    }
    // What to publish on the way to that plan: it, or while workers it needs are not Ready, a transitional plan.
    let step: PlanStep | undefined;
    if (plan.ok)
      ({ outcome: plan, step } = stepOutcome(
        pool,
        previous,
        plan.plan,
        readyWorkers(pods),
        heatLoad(pool, heat?.load),
      ));
    let planInfo: PoolObservation["plan"];
    let planChanged = false;
    if (plan.ok) {
      planChanged = !previous || plan.plan.version !== previous.version;
      // How many copies the last version change moved; kept on the ConfigMap so it survives restarts.
      const moved = planChanged
        ? plan.stats.moved
        : Number((liveCm?.metadata?.annotations as Record<string, string> | undefined)?.[MOVED_ANNOTATION] ?? 0);
      plan.configMap.metadata = { ...plan.configMap.metadata, annotations: { [MOVED_ANNOTATION]: String(moved) } };
      let rebalanceInfo: RebalanceStatus | undefined;
      if (rebalance && decision) rebalanceInfo = rebalanceStatus(heat, decision, plan.plan, rebalance);
      planInfo = { plan: plan.plan, stats: plan.stats, moved, rebalance: rebalanceInfo };
    } else {
      planInfo = { error: plan.message };
    }

    // 2. The plan's ConfigMap and the Service at once, then the StatefulSet: no StatefulSet without a published plan
    // (its workers would start with nothing to load, or scale to workers the published plan does not list).
    // A child the API server refuses (its validation of a pod template built from the spec, admission, quota) is
    // written to status before the pass fails: otherwise the pool would sit there with no word of why.
    // A child whose name another object holds is left alone the same way, and reported (ChildConflict).
    const refusals: { kind: string; error: KubeError; message: string }[] = [];
    const conflicts: ChildConflictError[] = [];
    // The namespace is being deleted (and the pool with it): its creates are refused (403) until it is gone, which
    // is no failure of the pool's to report, nor to warn about in events the namespace refuses too.
    let terminating = false;
    const refusable = <T>(kind: string, childName: string, p: Promise<T>) =>
      p.catch((e: unknown) => {
        if (e instanceof ChildConflictError) {
          conflicts.push(e);
          return undefined;
        }
        if (namespaceTerminating(e)) {
          terminating = true;
          return undefined;
        }
        // 413: a body over the API server's request limit, refused like an invalid one.
        if (!(e instanceof KubeError) || ![400, 403, 413, 422].includes(e.code)) throw e;
        const said = typeof e.status?.message === "string" ? e.status.message : e.message;
        refusals.push({ kind, error: e, message: `${kind} ${childName}: ${said}` });
        return undefined;
      });
    const cachedSts = recent.pick(
      "StatefulSet",
      ns,
      statefulSetName(name),
      caches.statefulSets.get(ns, statefulSetName(name)),
    );
    await Promise.all([
      plan.ok
        ? refusable(
            "ConfigMap",
            cmName,
            this.applyIfChanged(pool, "ConfigMap", paths.configMaps(ns), plan.configMap as KubeObject, cachedCm),
          )
        : undefined,
      refusable(
        "Service",
        serviceName(name),
        this.applyIfChanged(
          pool,
          "Service",
          paths.services(ns),
          desiredService(pool) as KubeObject,
          recent.pick("Service", ns, serviceName(name), caches.services.get(ns, serviceName(name))),
        ),
      ),
    ]);
    // A refused plan ConfigMap leaves the published plan as it was: the workers, status and events stay with it.
    const published =
      plan.ok && !refusals.some((r) => r.kind === "ConfigMap") && !conflicts.some((c) => c.kind === "ConfigMap");
    // Nor are workers started whose names another's Service governs (their plan's endpoints would not resolve).
    const wroteSts =
      published && !conflicts.some((c) => c.kind === "Service")
        ? await refusable(
            "StatefulSet",
            statefulSetName(name),
            this.applyIfChanged(
              pool,
              "StatefulSet",
              paths.statefulSets(ns),
              desiredStatefulSet(
                pool,
                routerPoolName(pool, this.d.routerNamespace),
                this.d.workerDefaults,
              ) as KubeObject,
              cachedSts,
            ),
          )
        : undefined;
    if (terminating) {
      this.d.log(`expertpool ${key}: namespace ${ns} is being terminated; waiting for the pool's deletion`);
      return undefined;
    }
    // Status reads only our own StatefulSet, never another's of that name.
    let sts = controlledBy(cachedSts, pool) ? cachedSts : undefined;
    if (wroteSts) sts = wroteSts as typeof sts;
    if (plan.ok && published && planChanged && previous) {
      if (step?.kind === "transitional") {
        const waiting = step.waitingFor;
        const names = `${waiting.slice(0, 5).join(", ")}${waiting.length > 5 ? `, and ${waiting.length - 5} more` : ""}`;
        void this.d.events.emit(
          this.involved(pool),
          "Normal",
          "PlanTransition",
          `placement plan version ${plan.plan.version}: transitional, keeping ${step.kept} copies on ready workers until ${waiting.length} new workers are Ready (${names}); then version ${step.target.version}, ${plan.stats.moved} expert copies moved now`,
        );
      } else if (decision?.kind === "replanned") {
        void this.d.events.emit(
          this.involved(pool),
          "Normal",
          "PlanRebalanced",
          `placement plan version ${plan.plan.version} for the expert heat of the last ${rebalance?.window}: imbalance ${decision.before.toFixed(3)} -> ${decision.after.toFixed(3)} (${(decision.improvement * 100).toFixed(1)}% lower), ${plan.stats.moved} expert copies moved`,
        );
      } else {
        void this.d.events.emit(
          this.involved(pool),
          "Normal",
          "PlanPublished",
          `placement plan version ${plan.plan.version}: ${plan.stats.moved} expert copies moved${moving ? `, completing the transition from version ${previous.version}` : ""}`,
        );
      }
    }

    // 3. Status from observation.
    // The status to build on is the last one written, which the cache may not have yet: rebuilding from an older
    // one would move lastTransitionTime, write again and repeat the transition's event.
    const current = recent.pick("ExpertPool", ns, name, pool);
    const stsName = statefulSetName(name);
    const built = buildPoolStatus({
      pool: { ...pool, status: current?.status },
      statefulSet: sts,
      pods,
      plan: planInfo,
      planPublished: published || !plan.ok,
      publishedPlan: previous,
      refused: refusals.map((r) => r.message),
      conflicts: conflicts.map((c) => c.message),
      statefulSetEvents: caches.events?.list(ns).filter((e) => e.involvedObject?.name === stsName),
      now: this.nowString(),
    });
    // false: deleted meanwhile
    if (!(await this.writeStatus(key, { ...pool, status: current?.status }, built))) return undefined;
    // Retried with backoff: the refusal may not be the spec's fault (a webhook, a quota), and a spec edit comes
    // through the watch anyway.
    if (refusals.length > 0) throw refusals[0].error;
    // Retried with backoff too: the other object's deletion is no event here (the caches see only ours).
    if (conflicts.length > 0) throw conflicts[0];
    return result;
  }

  /**
   * Writes `built.status` where it differs from `pool.status` (the last one written) and emits its events
   * (pool-status.ts poolEvents: Normal for routine steps, Warning for failures). false: the pool is gone (404).
   */
  private async writeStatus(key: string, pool: ExpertPool, built: PoolStatusResult): Promise<boolean> {
    const name = pool.metadata.name;
    const ns = pool.metadata.namespace ?? "default";
    if (statusEqual(pool.status, built.status)) return true;
    try {
      const out = await this.d.kube.apply<ExpertPool & KubeObject>(
        `${paths.expertPools(ns)}/${name}/status`,
        { apiVersion: pool.apiVersion, kind: pool.kind, metadata: { name, namespace: ns }, status: built.status },
        STATUS_FIELD_MANAGER,
      );
      this.d.recent.put("ExpertPool", ns, name, out);
    } catch (e) {
      if ((e as { code?: number }).code === 404) {
        this.forget(key);
        return false;
      }
      throw e;
    }
    for (const ev of built.events) void this.d.events.emit(this.involved(pool), ev.type, ev.reason, ev.message);
    return true;
  }

  private involved(pool: ExpertPool) {
    return {
      apiVersion: pool.apiVersion,
      kind: pool.kind,
      name: pool.metadata.name,
      namespace: pool.metadata.namespace ?? "default",
      uid: pool.metadata.uid,
    };
  }
}

/**
 * The plan to publish on the way from `previous` to `target` (plan-transition.ts planStep) as an outcome: its stats
 * (movedExperts: the copies this version moves) and ConfigMap, which during a transition also holds the target. A
 * transition whose two plans would not fit one ConfigMap publishes the target at once, as before make-before-break.
 */
export function stepOutcome(
  pool: ExpertPool,
  previous: PlacementPlan | undefined,
  target: PlacementPlan,
  ready: ReadonlySet<string>,
  load?: number[][],
): { outcome: PlanOutcome; step: PlanStep } {
  const outcomeOf = (s: PlanStep): PlanOutcome => ({
    ok: true,
    plan: s.plan,
    stats: planStats(s.plan, load, previous),
    configMap: planConfigMap(pool, s.plan, s.kind === "transitional" ? s.target : undefined),
  });
  const step = planStep(previous, target, ready);
  const outcome = outcomeOf(step);
  if (step.kind === "final" || fitsConfigMap(outcome).ok) return { outcome, step };
  const final = planStep(previous, target, new Set(target.workers));
  return { outcome: outcomeOf(final), step: final };
}

/**
 * The outcome, or a failure (PlacementFailed in status) where its plan would not fit a ConfigMap: the API server
 * refuses more than 1 MiB of data (422), or a larger request outright (413), and every retry would plan it again.
 */
export function fitsConfigMap(outcome: PlanOutcome): PlanOutcome {
  if (!outcome.ok) return outcome;
  let bytes = 0;
  for (const [k, v] of Object.entries(outcome.configMap.data ?? {}))
    bytes += Buffer.byteLength(k) + Buffer.byteLength(v);
  if (bytes <= CONFIG_MAP_MAX_BYTES) return outcome;
  const mib = (n: number) => `${(n / 2 ** 20).toFixed(2)} MiB`;
  return {
    ok: false,
    message: `the placement plan is ${bytes} bytes (${mib(bytes)}), over the ${mib(CONFIG_MAP_MAX_BYTES)} a ConfigMap holds: lower placement.redundantExperts or replicas, or split the model's layers over several pools`,
  };
}

/**
 * A refusal because the namespace is being deleted: the NamespaceLifecycle admission's 403 ("unable to create new
 * content in namespace X because it is being terminated", cause NamespaceTerminating).
 */
export function namespaceTerminating(e: unknown): boolean {
  if (!(e instanceof KubeError) || e.code !== 403) return false;
  const causes = (e.status?.details as { causes?: { type?: string }[] } | undefined)?.causes ?? [];
  return causes.some((c) => c.type === "NamespaceTerminating") || /because it is being terminated/.test(e.message);
}

/** The managedFields of an object as a read or a write returned it; undefined for one from a cache (stripped). */
function managedFieldsOf(obj: KubeObject | undefined): ManagedFieldsEntry[] | undefined {
  return (obj?.metadata as { managedFields?: ManagedFieldsEntry[] } | undefined)?.managedFields;
}

/** The controller owner reference of `obj`, if any. */
function controllerOf(obj: KubeObject | undefined): OwnerReference | undefined {
  return obj?.metadata?.ownerReferences?.find((r) => r.controller === true);
}

/** Whether `obj` is controlled by `pool` (its controller owner reference has the pool's uid), as metav1.IsControlledBy. */
export function controlledBy(obj: KubeObject | undefined, pool: ExpertPool): boolean {
  const uid = controllerOf(obj)?.uid;
  return uid !== undefined && uid !== "" && uid === pool.metadata.uid;
}

/** A child's name is held by an object this pool does not control: it is left as it is (controller-runtime's AlreadyOwnedError). */
export class ChildConflictError extends Error {
  constructor(
    readonly kind: string,
    readonly childName: string,
    owner: OwnerReference | undefined,
  ) {
    super(
      `${kind} ${childName} exists and is not owned by this ExpertPool (${owner ? `its controller is ${owner.kind} ${owner.name}` : "it has no controller"}); it is left as it is: delete or rename it, or give the pool another name`,
    );
    this.name = "ChildConflictError";
  }
}

/** Status equality as the server stores it (undefined fields dropped). */
export function statusEqual(a: ExpertPoolStatus | Record<string, unknown> | undefined, b: unknown): boolean {
  return isDeepStrictEqual(clean(a ?? {}), clean(b ?? {}));
}
