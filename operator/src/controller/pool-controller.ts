// ExpertPool reconciler: the thin I/O shell around desired.ts and pool-status.ts. Level-triggered: every pass
// re-reads the pool and its children from the informer caches, applies whatever differs (server-side apply,
// one field manager), and rebuilds status from what it observes. Nothing is remembered between passes except
// the objects our own writes returned (RecentWrites), used only while the cache has not caught up, and, for pools
// with placement.rebalance on, the last expert heat Prometheus reported (rebalance.ts: a pass between two queries
// judges the plan under that heat, not under uniform load), which also schedules the pool's next pass.
import { isDeepStrictEqual } from "node:util";
import type { V1ConfigMap, V1Pod, V1Service, V1StatefulSet } from "@kubernetes/client-node";
import { clean } from "../api/schema.js";
import type { ExpertPool, ExpertPoolStatus } from "../api/v1alpha1.js";
import type { Result } from "../runtime/controller.js";
import type { EventRecorder } from "../runtime/events.js";
import type { Informer } from "../runtime/informer.js";
import { type Kube, KubeError, type KubeObject, paths } from "../runtime/kube.js";
import { type FetchLike, promInstantQuery } from "../runtime/prometheus.js";
import type { RecentWrites } from "../runtime/recent.js";
import { needsApply, stampApplied } from "./compare.js";
import {
  desiredPlan,
  desiredService,
  desiredStatefulSet,
  type PlanOutcome,
  planFromConfigMap,
  sharedSlicesOf,
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
import { buildPoolStatus, type PoolObservation } from "./pool-status.js";
import {
  type HeatObservation,
  heatKey,
  msUntilQuery,
  observe,
  type RebalanceDecision,
  type RebalanceSettings,
  type RebalanceStatus,
  rebalancedPlan,
  rebalanceSettings,
  rebalanceStatus,
} from "./rebalance.js";
import { routerPoolName } from "./routing.js";

export const MOVED_ANNOTATION = "switchyard.dev/moved-experts";

export interface PoolCaches {
  pools: Informer<ExpertPool>;
  statefulSets: Informer<V1StatefulSet>;
  services: Informer<V1Service>;
  configMaps: Informer<V1ConfigMap>;
  pods: Informer<V1Pod>;
}

export interface PoolControllerDeps {
  kube: Kube;
  /** The router's namespace: it serves (and labels the heat of) pools elsewhere as "namespace/name". */
  routerNamespace: string;
  caches: PoolCaches;
  recent: RecentWrites;
  events: EventRecorder;
  log: (m: string) => void;
  now?: () => string;
  /** Milliseconds clock for the rebalance schedule (default Date.now). */
  clock?: () => number;
  /** HTTP client for Prometheus heat queries (default: global fetch). */
  fetch?: FetchLike;
}

export function splitKey(key: string): [string, string] {
  const i = key.indexOf("/");
  return [key.slice(0, i), key.slice(i + 1)];
}

export class PoolReconciler {
  /** Last heat query per pool key, for pools with rebalance on. */
  private readonly heat = new Map<string, HeatObservation>();
  /** Each pool's last plan without rebalance: a pass with the same spec and its own plan published plans nothing. */
  private readonly plans = new PlanMemo();

  constructor(private readonly d: PoolControllerDeps) {}

  private nowString(): string {
    return this.d.now?.() ?? new Date().toISOString().replace(/\.\d+Z$/, "Z");
  }

  /**
   * The pool's heat for this pass: asks Prometheus when the last query is older than intervalSeconds (or was for
   * other settings), else the remembered answer. Never throws: a failed query keeps the last heat and its reason.
   */
  private async observeHeat(key: string, pool: ExpertPool, s: RebalanceSettings): Promise<HeatObservation> {
    const clock = this.d.clock ?? Date.now;
    const hk = heatKey(pool, s);
    const prev = this.heat.get(key);
    if (prev && msUntilQuery(prev, hk, s, clock()) > 0) return prev;
    let result: { load: number[][] | undefined } | { error: string };
    try {
      const body = await promInstantQuery(
        s.prometheusUrl,
        heatQuery(routerPoolName(pool, this.d.routerNamespace), s.window),
        {
          timeoutMs: s.timeoutMs,
          fetch: this.d.fetch,
        },
      );
      const h = parseHeat(body, { ...pool.spec.model, slices: sharedSlicesOf(pool.spec.model, pool.spec.placement) });
      // Heat the router could not label by expert: judging a plan on the rest would misread whole layers as idle.
      result =
        h.folded > 0
          ? {
              error: `heat incomplete: the router folded ${Math.round(h.folded)} of ${Math.round(h.total + h.folded)} assignments into expert="other" (its series cap); the plan stays`,
            }
          : { load: h.load };
    } catch (e) {
      result = { error: (e as Error).message };
    }
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
    return obs;
  }

  private async applyIfChanged<T extends KubeObject>(
    kind: string,
    collection: string,
    desired: T,
    live: KubeObject | undefined,
  ): Promise<T | undefined> {
    const want = stampApplied(desired as never) as T;
    if (!needsApply(want as never, live as never)) return undefined;
    const ns = desired.metadata?.namespace as string;
    const name = desired.metadata?.name as string;
    const out = await this.d.kube.apply<T>(`${collection}/${name}`, want, FIELD_MANAGER);
    this.d.recent.put(kind, ns, name, out);
    return out;
  }

  async reconcile(key: string): Promise<Result | undefined> {
    const [ns, name] = splitKey(key);
    const { caches, recent, kube } = this.d;
    const pool = caches.pools.get(ns, name);
    // Gone or going: owner references let the garbage collector remove the children.
    if (!pool || pool.metadata.deletionTimestamp) {
      this.heat.delete(key);
      this.plans.forget(key);
      return undefined;
    }

    // 1. Placement plan (stable against the plan already published); with rebalance on, judged under the heat.
    const cmName = planConfigMapName(name);
    const liveCm = recent.pick("ConfigMap", ns, cmName, caches.configMaps.get(ns, cmName));
    const previous = planFromConfigMap(liveCm);
    const rebalance = rebalanceSettings(pool);
    let plan: PlanOutcome;
    let decision: RebalanceDecision | undefined;
    let heat: HeatObservation | undefined;
    let result: Result | undefined;
    if (rebalance) {
      heat = await this.observeHeat(key, pool, rebalance);
      ({ outcome: plan, decision } = rebalancedPlan(pool, previous, heat.load, rebalance.minImprovement));
      const clock = this.d.clock ?? Date.now;
      result = { requeueAfterMs: Math.max(1, msUntilQuery(heat, heat.key, rebalance, clock())) };
    } else {
      this.heat.delete(key);
      plan = this.plans.plan(pool, previous, () => desiredPlan(pool, previous));
    }
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
    const refusals: { kind: string; error: KubeError; message: string }[] = [];
    const refusable = <T>(kind: string, childName: string, p: Promise<T>) =>
      p.catch((e: unknown) => {
        if (!(e instanceof KubeError) || ![400, 403, 422].includes(e.code)) throw e;
        const said = typeof e.status?.message === "string" ? e.status.message : e.message;
        refusals.push({ kind, error: e, message: `${kind} ${childName}: ${said}` });
        return undefined;
      });
    let sts = recent.pick("StatefulSet", ns, statefulSetName(name), caches.statefulSets.get(ns, statefulSetName(name)));
    await Promise.all([
      plan.ok
        ? refusable(
            "ConfigMap",
            cmName,
            this.applyIfChanged("ConfigMap", paths.configMaps(ns), plan.configMap as KubeObject, liveCm),
          )
        : undefined,
      refusable(
        "Service",
        serviceName(name),
        this.applyIfChanged(
          "Service",
          paths.services(ns),
          desiredService(pool) as KubeObject,
          recent.pick("Service", ns, serviceName(name), caches.services.get(ns, serviceName(name))),
        ),
      ),
    ]);
    // A refused plan ConfigMap leaves the published plan as it was: the workers, status and events stay with it.
    const published = plan.ok && !refusals.some((r) => r.kind === "ConfigMap");
    const wroteSts = published
      ? await refusable(
          "StatefulSet",
          statefulSetName(name),
          this.applyIfChanged(
            "StatefulSet",
            paths.statefulSets(ns),
            desiredStatefulSet(pool, routerPoolName(pool, this.d.routerNamespace)) as KubeObject,
            sts,
          ),
        )
      : undefined;
    if (wroteSts) sts = wroteSts as typeof sts;
    if (plan.ok && published && planChanged && previous) {
      if (decision?.kind === "replanned") {
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
          `placement plan version ${plan.plan.version}: ${plan.stats.moved} expert copies moved`,
        );
      }
    }

    // 3. Status from observation.
    const pods = caches.pods.list(ns).filter((p) => p.metadata?.labels?.[POOL_LABEL] === name);
    // The status to build on is the last one written, which the cache may not have yet: rebuilding from an older
    // one would move lastTransitionTime, write again and repeat the transition's event.
    const current = recent.pick("ExpertPool", ns, name, pool);
    const { status, transitions } = buildPoolStatus({
      pool: { ...pool, status: current?.status },
      statefulSet: sts,
      pods,
      plan: planInfo,
      planPublished: published || !plan.ok,
      refused: refusals.map((r) => r.message),
      now: this.nowString(),
    });
    if (!statusEqual(current?.status, status)) {
      try {
        const out = await kube.apply<ExpertPool & KubeObject>(
          `${paths.expertPools(ns)}/${name}/status`,
          { apiVersion: pool.apiVersion, kind: pool.kind, metadata: { name, namespace: ns }, status },
          STATUS_FIELD_MANAGER,
        );
        recent.put("ExpertPool", ns, name, out);
      } catch (e) {
        if ((e as { code?: number }).code === 404) {
          this.heat.delete(key);
          this.plans.forget(key);
          return undefined; // deleted meanwhile
        }
        throw e;
      }
      // Ready=False takes its reason from Degraded or Progressing, so one problem can make two transitions in one
      // pass: it is told once.
      const told = new Set<string>();
      const tell = (type: "Normal" | "Warning", reason: string, message: string) => {
        const k = `${type}\0${reason}\0${message}`;
        if (told.has(k)) return;
        told.add(k);
        void this.d.events.emit(this.involved(pool), type, reason, message);
      };
      for (const t of transitions) {
        if (t.type === "Ready" && t.from !== undefined) {
          tell(t.to === "True" ? "Normal" : "Warning", t.to === "True" ? "Ready" : t.reason, t.message);
        } else if (t.type === "Degraded" && t.to === "True") {
          tell("Warning", t.reason, t.message);
        } else if (
          t.type === "Progressing" &&
          t.to === "True" &&
          (t.reason === "InsufficientGPU" || t.reason === "Unschedulable")
        ) {
          tell("Warning", t.reason, t.message);
        }
      }
    }
    // Retried with backoff: the refusal may not be the spec's fault (a webhook, a quota), and a spec edit comes
    // through the watch anyway.
    if (refusals.length > 0) throw refusals[0].error;
    return result;
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

/** Status equality as the server stores it (undefined fields dropped). */
export function statusEqual(a: ExpertPoolStatus | Record<string, unknown> | undefined, b: unknown): boolean {
  return isDeepStrictEqual(clean(a ?? {}), clean(b ?? {}));
}
