// RoutingPolicy reconciler (status: resolved or why not) and the router-config reconciler (one ConfigMap with
// every pool's resolved config that fits in it, docs/CONTRACTS.md "Router config"). Both re-read the caches on every
// pass; the pools the last fit left out are shared between them (RouterConfigFit).
import { isDeepStrictEqual } from "node:util";
import type { V1ConfigMap } from "@kubernetes/client-node";
import { defaultRoutingPolicy, type PlacementPlan } from "@switchyard/moe";
import { clean } from "../api/schema.js";
import type { ExpertPool, RoutingPolicy } from "../api/v1alpha1.js";
import type { EventRecorder } from "../runtime/events.js";
import type { Informer } from "../runtime/informer.js";
import { type Kube, type KubeObject, paths } from "../runtime/kube.js";
import type { RecentWrites } from "../runtime/recent.js";
import { needsApply } from "./compare.js";
import { planFromConfigMap } from "./desired.js";
import type { HubTokenSync } from "./hub-token-sync.js";
import { FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL, planConfigMapName, STATUS_FIELD_MANAGER } from "./names.js";
import { splitKey } from "./pool-controller.js";
import { type ConfigLimits, ROUTER_CONFIG_KEY, RouterConfigFitter } from "./router-config-fit.js";
import { buildPolicyStatus, policyOutcome, type RouterPoolConfig, routerConfigCandidates } from "./routing.js";

export { ROUTER_CONFIG_KEY };

/**
 * What the last router-config pass wrote: the pools it had no room for ("namespace/pool" -> why), read by the
 * policy reconciler for their policies' status, and the figures the operator's metrics show.
 */
export class RouterConfigFit {
  /** Whether a router-config pass has published since this manager started leading (a new leader knows nothing). */
  synced = false;
  leftOut = new Map<string, string>();
  bytes = 0;
  compressed = false;
  served = 0;
}

export interface RouterTarget {
  namespace: string;
  name: string;
}

export interface PolicyDeps {
  kube: Kube;
  pools: Informer<ExpertPool>;
  policies: Informer<RoutingPolicy>;
  configMaps: Informer<V1ConfigMap>;
  /** The cache holding the router ConfigMap; default configMaps (the watched namespaces include the router's). */
  routerConfigMaps?: Informer<V1ConfigMap>;
  recent: RecentWrites;
  events: EventRecorder;
  router: RouterTarget;
  /** Shared by the two reconcilers of one manager; absent: every pool fits. */
  fit?: RouterConfigFit;
  /** What the router ConfigMap may hold; default: the API server's 1 MiB. */
  configLimits?: ConfigLimits;
  /** --sync-hub-tokens: the router's Secret of Hub tokens, synced at the end of every router config pass. */
  hubTokens?: HubTokenSync;
  /** Called with the pools ("namespace/pool") whose place in the router config changed: their policies' status. */
  onServedChanged?: (poolKeys: string[]) => void;
  now?: () => string;
}

/**
 * Keys of the RoutingPolicies whose status depends on pool `ns/pool`: those pointing at it. Which of them wins, and
 * whether the router serves the pool at all, changes with any of them, the pool, or its placement ConfigMap, so an
 * event on one of those re-queues them all (a loser becomes the winner when the winner goes).
 */
export function policyKeysForPool(policies: readonly RoutingPolicy[], ns: string, pool: string): string[] {
  return policies
    .filter((rp) => (rp.metadata.namespace ?? "default") === ns && rp.spec.poolRef.name === pool)
    .map((rp) => `${ns}/${rp.metadata.name}`);
}

/** The pool's published plan, from its placement ConfigMap (our last write of it while the cache trails). */
function publishedPlan(d: PolicyDeps, ns: string, pool: string): PlacementPlan | undefined {
  const cmName = planConfigMapName(pool);
  return planFromConfigMap(d.recent.pick("ConfigMap", ns, cmName, d.configMaps.get(ns, cmName)));
}

export class PolicyReconciler {
  constructor(private readonly d: PolicyDeps) {}

  async reconcile(key: string): Promise<{ requeueAfterMs: number } | undefined> {
    const [ns, name] = splitKey(key);
    const { recent } = this.d;
    const rp = recent.pick("RoutingPolicy", ns, name, this.d.policies.get(ns, name));
    if (!rp || rp.metadata.deletionTimestamp) return undefined;
    const poolName = rp.spec.poolRef.name;
    const pool = this.d.pools.get(ns, poolName);
    // Judged as buildRouterConfig judges it, from the same caches: Ready=True only for the policy the router uses.
    // A new leader has not fitted the router config yet: judged now, a pool left out would read Ready and flip back
    // at the first pass. The first pass requeues every policy.
    if (this.d.fit && !this.d.fit.synced) return { requeueAfterMs: 1000 };
    const leftOut = this.d.fit?.leftOut.get(`${ns}/${poolName}`);
    const res = policyOutcome(rp, pool, this.d.policies.list(ns), publishedPlan(this.d, ns, poolName), leftOut);
    const { status, transitions } = buildPolicyStatus(
      rp,
      res,
      `${this.d.router.namespace}/${this.d.router.name}`,
      this.d.now?.() ?? new Date().toISOString().replace(/\.\d+Z$/, "Z"),
    );
    if (isDeepStrictEqual(clean(rp.status ?? {}), clean(status))) return undefined;
    try {
      const out = await this.d.kube.apply<RoutingPolicy>(
        `${paths.routingPolicies(ns)}/${name}/status`,
        { apiVersion: rp.apiVersion, kind: rp.kind, metadata: { name, namespace: ns }, status },
        STATUS_FIELD_MANAGER,
      );
      recent.put("RoutingPolicy", ns, name, out as KubeObject);
    } catch (e) {
      if ((e as { code?: number }).code === 404) return undefined;
      throw e;
    }
    for (const t of transitions) {
      if (t.type !== "Ready") continue;
      const involved = { apiVersion: rp.apiVersion, kind: rp.kind, name, namespace: ns, uid: rp.metadata.uid };
      void this.d.events.emit(involved, t.to === "True" ? "Normal" : "Warning", t.reason, t.message);
    }
    return undefined;
  }
}

export class RouterConfigReconciler {
  private readonly fitter: RouterConfigFitter<RouterPoolConfig>;
  constructor(private readonly d: PolicyDeps) {
    this.fitter = new RouterConfigFitter(d.configLimits);
  }

  async desired(): Promise<{
    configMap: V1ConfigMap;
    leftOut: Map<string, string>;
    bytes: number;
    compressed: boolean;
    served: number;
  }> {
    const pools = this.d.pools.list();
    const plans = new Map<string, PlacementPlan>();
    for (const p of pools) {
      const ns = p.metadata.namespace ?? "default";
      const plan = publishedPlan(this.d, ns, p.metadata.name);
      if (plan) plans.set(`${ns}/${p.metadata.name}`, plan);
    }
    const candidates = routerConfigCandidates({
      pools: [...pools],
      policies: [...this.d.policies.list()],
      plans,
      routerNamespace: this.d.router.namespace,
      defaults: defaultRoutingPolicy(),
    });
    const { namespace, name } = this.d.router;
    const fit = await this.fitter.fit(candidates, `${namespace}/${name}`);
    const configMap: V1ConfigMap = {
      apiVersion: "v1",
      kind: "ConfigMap",
      metadata: {
        name,
        namespace,
        labels: { [MANAGED_BY_LABEL]: MANAGED_BY, "app.kubernetes.io/component": "router-config" },
      },
      data: fit.data,
      ...(fit.binaryData ? { binaryData: fit.binaryData } : {}),
    };
    return { configMap, leftOut: fit.leftOut, bytes: fit.bytes, compressed: fit.compressed, served: fit.pools.length };
  }

  async reconcile(): Promise<undefined> {
    const { namespace, name } = this.d.router;
    const want = await this.desired();
    const cached = (this.d.routerConfigMaps ?? this.d.configMaps).get(namespace, name);
    const live = this.d.recent.pick("ConfigMap", namespace, name, cached);
    if (needsApply(want.configMap as never, live as never)) {
      const out = await this.d.kube.apply<V1ConfigMap>(
        `${paths.configMaps(namespace)}/${name}`,
        want.configMap,
        FIELD_MANAGER,
      );
      this.d.recent.put("ConfigMap", namespace, name, out as KubeObject);
    }
    this.published(want.leftOut, want);
    // After the ConfigMap: a Secret that cannot be read or written fails (and retries) this pass without holding
    // back the other pools' config. The router reads a pool's token file at each download try, so the order of the
    // two writes does not matter to it.
    await this.d.hubTokens?.sync(this.d.pools.list());
    return undefined;
  }

  /** After a write (or none needed): the shared fit, a Warning on each pool newly left out, their policies requeued. */
  private published(leftOut: Map<string, string>, figures: { bytes: number; compressed: boolean; served: number }) {
    const fit = this.d.fit;
    if (!fit) return;
    const changed = [...new Set([...fit.leftOut.keys(), ...leftOut.keys()])].filter(
      (k) => fit.leftOut.get(k) !== leftOut.get(k),
    );
    for (const k of changed) {
      const why = leftOut.get(k);
      if (!why || fit.leftOut.has(k)) continue;
      const [ns, pool] = splitKey(k);
      const p = this.d.pools.get(ns, pool);
      if (p) {
        const involved = { apiVersion: p.apiVersion, kind: p.kind, name: pool, namespace: ns, uid: p.metadata.uid };
        void this.d.events.emit(involved, "Warning", "RouterConfigFull", `ExpertPool ${pool} is ${why}`);
      }
    }
    fit.leftOut = leftOut;
    fit.bytes = figures.bytes;
    fit.compressed = figures.compressed;
    fit.served = figures.served;
    if (!fit.synced) {
      // the policies that waited for this first pass (PolicyReconciler), whatever their pools' place
      fit.synced = true;
      const all = this.d.pools.list().map((p) => `${p.metadata.namespace ?? "default"}/${p.metadata.name}`);
      this.d.onServedChanged?.([...new Set([...all, ...changed])]);
    } else if (changed.length > 0) this.d.onServedChanged?.(changed);
  }
}
