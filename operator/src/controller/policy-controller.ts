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
import { type Kube, type KubeObject, type OwnerReference, paths } from "../runtime/kube.js";
import type { RecentWrites } from "../runtime/recent.js";
import { needsApply } from "./compare.js";
import { planFromConfigMap } from "./desired.js";
import type { HubTokenSync } from "./hub-token-sync.js";
import { FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL, planConfigMapName, STATUS_FIELD_MANAGER } from "./names.js";
import { splitKey } from "./pool-controller.js";
import { type ConfigLimits, ROUTER_CONFIG_KEY, RouterConfigFitter } from "./router-config-fit.js";
import {
  buildPolicyStatus,
  policyOutcome,
  publicationOf,
  type RouterPoolConfig,
  routerConfigCandidates,
  type WrittenPolicy,
  winningPolicy,
} from "./routing.js";

export { ROUTER_CONFIG_KEY };

/**
 * What the last router-config pass wrote: the pools it had no room for ("namespace/pool" -> why) and the policy each
 * pool's entry holds, read by the policy reconciler for their policies' status, and the figures the operator's
 * metrics show.
 */
export class RouterConfigFit {
  /** Whether a router-config pass has published since this manager started leading (a new leader knows nothing). */
  synced = false;
  leftOut = new Map<string, string>();
  /**
   * Per pool ("namespace/pool") the RoutingPolicy, at the generation, that the router ConfigMap holds since the last
   * pass that wrote it (or found it as wanted); pools on the defaults have none. A failed write leaves it as it was:
   * the ConfigMap still holds that.
   */
  written = new Map<string, WrittenPolicy>();
  /** Why the last router ConfigMap write failed; undefined once one goes through. */
  writeError: string | undefined;
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
  /**
   * Called with the pools ("namespace/pool") whose place in the router config changed (served or left out, the
   * policy generation their entry holds, the write failing or recovering): their policies' status.
   */
  onServedChanged?: (poolKeys: string[]) => void;
  /**
   * The owner reference (the operator's Deployment) for what the operator makes in a namespace, if any: the router
   * ConfigMap gets it, so the garbage collector deletes it with the Deployment (`helm uninstall`).
   */
  owner?: (namespace: string) => Promise<OwnerReference | undefined>;
  /** For what is said once (a first router pass that keeps failing). */
  log?: (message: string) => void;
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
  /** Whether the first router pass's failure was logged (once per manager, not per policy or retry). */
  private saidUnsynced = false;

  constructor(private readonly d: PolicyDeps) {}

  async reconcile(key: string): Promise<{ requeueAfterMs: number } | undefined> {
    const [ns, name] = splitKey(key);
    const { recent } = this.d;
    const rp = recent.pick("RoutingPolicy", ns, name, this.d.policies.get(ns, name));
    if (!rp || rp.metadata.deletionTimestamp) return undefined;
    const poolName = rp.spec.poolRef.name;
    const pool = this.d.pools.get(ns, poolName);
    // Judged as buildRouterConfig judges it, from the same caches: Ready=True only for the policy the router uses,
    // and only once the router ConfigMap holds its generation (RouterConfigFit.written).
    // A new leader has not fitted the router config yet: judged now, a pool left out would read Ready and flip back
    // at the first pass. The first pass requeues every policy; while it keeps failing, the policies say so.
    const fit = this.d.fit;
    if (fit && !fit.synced) {
      if (fit.writeError === undefined) return { requeueAfterMs: 1000 };
      if (!this.saidUnsynced) {
        this.saidUnsynced = true;
        this.d.log?.(
          `routingpolicy: the router config has not been written since this operator took the lead (${fit.writeError}); RoutingPolicies say RouterConfigWriteFailed until a write goes through`,
        );
      }
    }
    const leftOut = fit?.leftOut.get(`${ns}/${poolName}`);
    const res = policyOutcome(rp, pool, this.d.policies.list(ns), publishedPlan(this.d, ns, poolName), leftOut);
    const { status, transitions } = buildPolicyStatus(
      rp,
      res,
      `${this.d.router.namespace}/${this.d.router.name}`,
      this.d.now?.() ?? new Date().toISOString().replace(/\.\d+Z$/, "Z"),
      fit ? publicationOf(rp, fit.written.get(`${ns}/${poolName}`), fit.writeError) : undefined,
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
      // Pending is the routine few seconds between an edit and the router config write: the Resolved after it says it.
      if (t.type !== "Ready" || t.reason === "Pending") continue;
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
    /** The policy each served pool's entry holds (pools on the defaults: none). */
    written: Map<string, WrittenPolicy>;
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
    const policies = [...this.d.policies.list()];
    const candidates = routerConfigCandidates({
      pools: [...pools],
      policies,
      plans,
      routerNamespace: this.d.router.namespace,
      defaults: defaultRoutingPolicy(),
    });
    const { namespace, name } = this.d.router;
    const fit = await this.fitter.fit(candidates, `${namespace}/${name}`);
    const owner = await this.d.owner?.(namespace);
    const configMap: V1ConfigMap = {
      apiVersion: "v1",
      kind: "ConfigMap",
      metadata: {
        name,
        namespace,
        labels: { [MANAGED_BY_LABEL]: MANAGED_BY, "app.kubernetes.io/component": "router-config" },
        ...(owner ? { ownerReferences: [owner as never] } : {}),
      },
      data: fit.data,
      ...(fit.binaryData ? { binaryData: fit.binaryData } : {}),
    };
    const written = new Map<string, WrittenPolicy>();
    const byKey = new Map(pools.map((p) => [`${p.metadata.namespace ?? "default"}/${p.metadata.name}`, p]));
    for (const c of candidates) {
      const pool = byKey.get(c.key);
      if (!pool || fit.leftOut.has(c.key)) continue;
      const w = winningPolicy(pool, policies);
      if (w)
        written.set(c.key, {
          name: w.rp.metadata.name,
          uid: w.rp.metadata.uid,
          generation: w.rp.metadata.generation ?? 0,
        });
    }
    return {
      configMap,
      leftOut: fit.leftOut,
      written,
      bytes: fit.bytes,
      compressed: fit.compressed,
      served: fit.pools.length,
    };
  }

  async reconcile(): Promise<undefined> {
    const { namespace, name } = this.d.router;
    const want = await this.desired();
    const cached = (this.d.routerConfigMaps ?? this.d.configMaps).get(namespace, name);
    const live = this.d.recent.pick("ConfigMap", namespace, name, cached);
    if (needsApply(want.configMap as never, live as never)) {
      let out: V1ConfigMap;
      try {
        out = await this.d.kube.apply<V1ConfigMap>(
          `${paths.configMaps(namespace)}/${name}`,
          want.configMap,
          FIELD_MANAGER,
        );
      } catch (e) {
        this.writeFailed((e as Error).message);
        throw e;
      }
      this.d.recent.put("ConfigMap", namespace, name, out as KubeObject);
    }
    this.published(want.leftOut, want.written, want);
    // After the ConfigMap: a Secret that cannot be read or written fails (and retries) this pass without holding
    // back the other pools' config. The router reads a pool's token file at each download try, so the order of the
    // two writes does not matter to it.
    await this.d.hubTokens?.sync(this.d.pools.list());
    return undefined;
  }

  /** The pools' keys, for requeueing every policy. */
  private allPools(): string[] {
    return this.d.pools.list().map((p) => `${p.metadata.namespace ?? "default"}/${p.metadata.name}`);
  }

  /** A failed ConfigMap write: every policy says so (once per new error, not per retry); `written` stays as it was. */
  private writeFailed(error: string) {
    const fit = this.d.fit;
    if (!fit || fit.writeError === error) return;
    fit.writeError = error;
    this.d.onServedChanged?.(this.allPools());
  }

  /**
   * After a write (or none needed): the shared fit, a Warning on each pool newly left out, the policies of the pools
   * whose entry changed (or of all, after a failure or on the first pass) requeued.
   */
  private published(
    leftOut: Map<string, string>,
    written: Map<string, WrittenPolicy>,
    figures: { bytes: number; compressed: boolean; served: number },
  ) {
    const fit = this.d.fit;
    if (!fit) return;
    const changed = [...new Set([...fit.leftOut.keys(), ...leftOut.keys()])].filter(
      (k) => fit.leftOut.get(k) !== leftOut.get(k),
    );
    const same = (a: WrittenPolicy | undefined, b: WrittenPolicy | undefined) =>
      a?.name === b?.name && a?.uid === b?.uid && a?.generation === b?.generation;
    const rewritten = [...new Set([...fit.written.keys(), ...written.keys()])].filter(
      (k) => !same(fit.written.get(k), written.get(k)),
    );
    const recovered = fit.writeError !== undefined;
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
    fit.written = written;
    fit.writeError = undefined;
    fit.bytes = figures.bytes;
    fit.compressed = figures.compressed;
    fit.served = figures.served;
    if (!fit.synced || recovered) {
      // the policies that waited for this first pass (PolicyReconciler), or said the write failed: whatever their
      // pools' place
      fit.synced = true;
      this.d.onServedChanged?.([...new Set([...this.allPools(), ...changed, ...rewritten])]);
    } else if (changed.length + rewritten.length > 0)
      this.d.onServedChanged?.([...new Set([...changed, ...rewritten])]);
  }
}
