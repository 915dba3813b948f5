// RoutingPolicy -> the router's resolved policy, and all pools -> the router config document
// (docs/CONTRACTS.md "Router config"). Pure.
import {
  type PlacementPlan,
  PolicyError,
  type RoutingPolicy as ResolvedPolicy,
  resolveRoutingPolicy,
} from "@switchyard/moe";
import type { ExpertPool, RoutingPolicy, RoutingPolicyStatus } from "../api/v1alpha1.js";
import { mergeConditions, type Transition } from "./conditions.js";
import { planConfigMapName } from "./names.js";

export type Resolution = { ok: true; policy: ResolvedPolicy } | { ok: false; reason: string; message: string };

/** Resolves a RoutingPolicy against its pool: defaults filled, then cross-object checks CEL cannot do. */
export function resolvePolicy(rp: RoutingPolicy, pool: ExpertPool | undefined): Resolution {
  if (!pool) {
    return {
      ok: false,
      reason: "PoolNotFound",
      message: `ExpertPool ${rp.spec.poolRef.name} does not exist in namespace ${rp.metadata.namespace ?? "default"}`,
    };
  }
  const { poolRef: _ref, ...rest } = rp.spec;
  let policy: ResolvedPolicy;
  try {
    policy = resolveRoutingPolicy(rest, "spec");
  } catch (e) {
    if (e instanceof PolicyError) return { ok: false, reason: "InvalidPolicy", message: e.message };
    throw e;
  }
  const experts = pool.spec.model.experts;
  if (policy.gating.topK !== null && policy.gating.topK > experts) {
    return {
      ok: false,
      reason: "TopKExceedsExperts",
      message: `spec.gating.topK ${policy.gating.topK} exceeds the ${experts} experts of ExpertPool ${pool.metadata.name}`,
    };
  }
  if (policy.gating.maxK !== null && policy.gating.maxK > experts) {
    return {
      ok: false,
      reason: "MaxKExceedsExperts",
      message: `spec.gating.maxK ${policy.gating.maxK} exceeds the ${experts} experts of ExpertPool ${pool.metadata.name}`,
    };
  }
  return { ok: true, policy };
}

export function buildPolicyStatus(
  rp: RoutingPolicy,
  res: Resolution,
  configMap: string,
  now: string,
): { status: RoutingPolicyStatus; transitions: Transition[] } {
  const generation = rp.metadata.generation ?? 0;
  const ready = res.ok
    ? { type: "Ready", status: "True" as const, reason: "Resolved", message: `published in ConfigMap ${configMap}` }
    : { type: "Ready", status: "False" as const, reason: res.reason, message: res.message };
  const degraded = res.ok
    ? { type: "Degraded", status: "False" as const, reason: "AsExpected", message: "policy resolved" }
    : { type: "Degraded", status: "True" as const, reason: res.reason, message: res.message };
  const { conditions, transitions } = mergeConditions(rp.status?.conditions, [ready, degraded], generation, now);
  const status: RoutingPolicyStatus = { observedGeneration: generation, conditions, configMap };
  if (res.ok) status.effective = res.policy as unknown as Record<string, unknown>;
  return { status, transitions };
}

export interface RouterPoolConfig {
  name: string;
  checkpoint: string;
  plan: PlacementPlan;
  endpoints: Record<string, string>;
  policy: ResolvedPolicy;
}

/** Where the router finds a pool's checkpoint (gate weights). The chart mounts PVCs under /checkpoints. */
export function routerCheckpointPath(pool: ExpertPool): string {
  const c = pool.spec.model.checkpoint;
  if (c.hostPath) return c.hostPath.path;
  if (c.pvc) return `/checkpoints/${c.pvc.claimName}${c.pvc.subPath ? `/${c.pvc.subPath}` : ""}`;
  return c.uri ?? "";
}

/** The name the router serves a pool under: its own name in the router's namespace, namespace/name elsewhere. */
export function routerPoolName(pool: ExpertPool, routerNamespace: string): string {
  const ns = pool.metadata.namespace ?? "default";
  return ns === routerNamespace ? pool.metadata.name : `${ns}/${pool.metadata.name}`;
}

export interface RouterInputs {
  pools: ExpertPool[];
  policies: RoutingPolicy[];
  /** Published plans by "namespace/pool". */
  plans: Map<string, PlacementPlan>;
  routerNamespace: string;
  defaults: ResolvedPolicy;
}

/**
 * One router config for every pool that has a published plan. A pool uses the oldest RoutingPolicy that
 * resolves for it (deterministic when several point at one pool); without one, the defaults.
 */
export function buildRouterConfig(i: RouterInputs): { pools: RouterPoolConfig[] } {
  const byPool = new Map<string, RoutingPolicy[]>();
  for (const rp of i.policies) {
    const key = `${rp.metadata.namespace ?? "default"}/${rp.spec.poolRef.name}`;
    byPool.set(key, [...(byPool.get(key) ?? []), rp]);
  }
  const out: RouterPoolConfig[] = [];
  for (const pool of i.pools) {
    if (pool.metadata.deletionTimestamp) continue;
    const key = `${pool.metadata.namespace ?? "default"}/${pool.metadata.name}`;
    const plan = i.plans.get(key);
    if (!plan) continue;
    const candidates = (byPool.get(key) ?? []).sort(
      (a, b) =>
        (a.metadata.creationTimestamp ?? "").localeCompare(b.metadata.creationTimestamp ?? "") ||
        a.metadata.name.localeCompare(b.metadata.name),
    );
    let policy = i.defaults;
    for (const rp of candidates) {
      const r = resolvePolicy(rp, pool);
      if (r.ok) {
        policy = r.policy;
        break;
      }
    }
    out.push({
      name: routerPoolName(pool, i.routerNamespace),
      checkpoint: routerCheckpointPath(pool),
      plan,
      endpoints: plan.endpoints ?? {},
      policy,
    });
  }
  out.sort((a, b) => a.name.localeCompare(b.name));
  return { pools: out };
}

export { planConfigMapName };
