// RoutingPolicy -> the router's resolved policy, and all pools -> the router config document
// (docs/CONTRACTS.md "Router config"). Pure.
import {
  type PlacementPlan,
  PolicyError,
  type RoutingPolicy as ResolvedPolicy,
  resolveRoutingPolicy,
} from "@switchyard/moe";
import type { ExpertPool, RoutingPolicy, RoutingPolicyStatus } from "../api/v1alpha1.js";
import { type ConditionInput, mergeConditions, type Transition } from "./conditions.js";
import { planConfigMapName } from "./names.js";
import type { ConfigCandidate } from "./router-config-fit.js";

export type Resolution =
  | {
      ok: true;
      /** What the router config holds (the router fills the model's own figures from the checkpoint). */
      policy: ResolvedPolicy;
      /** status.effective: `policy` with the figures that come from the pool filled in (effectivePolicy). */
      effective: ResolvedPolicy;
    }
  | { ok: false; reason: string; message: string };

/**
 * The policy as the router applies it to `pool`, for status.effective ("spec with defaults filled in") and the
 * printer columns: the gating figures the router takes from the model (router-service checkpoint-model.ts route())
 * filled in from the pool's spec. Top-k gating (no topP): topK, unset = the model's topK. Top-p: maxK, unset =
 * max(topK, 2 × the model's topK) at most the experts; topK stays as the policy says, as under top-p it only feeds
 * that default. The router config keeps the nulls: the router reads the model's figures from its checkpoint.
 */
export function effectivePolicy(policy: ResolvedPolicy, pool: ExpertPool): ResolvedPolicy {
  const { experts, topK: modelTopK } = pool.spec.model;
  const g = policy.gating;
  const gating =
    g.topP === null
      ? { ...g, topK: g.topK ?? modelTopK }
      : { ...g, maxK: g.maxK ?? Math.min(experts, Math.max(g.topK ?? modelTopK, 2 * modelTopK)) };
  return { ...policy, gating };
}

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
  // The router refuses top-p on a sigmoid gate for every request (checkpoint-model.ts route()): DeepSeek-V3's
  // scores are independent sigmoids, not a distribution whose mass top-p could cut at. Its checkpoints always gate
  // with sigmoid (spec.ts refuses another scoring_func); "custom" says so only in its config.json, unseen here.
  if (policy.gating.topP !== null && pool.spec.model.architecture === "deepseek-v3") {
    return {
      ok: false,
      reason: "TopPNeedsSoftmaxGate",
      message: `spec.gating.topP needs a softmax gate; ExpertPool ${pool.metadata.name} is deepseek-v3, which gates with sigmoid (use spec.gating.topK)`,
    };
  }
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
  return { ok: true, policy, effective: effectivePolicy(policy, pool) };
}

/** The RoutingPolicy whose generation the router ConfigMap holds for a pool (RouterConfigFit.written). */
export interface WrittenPolicy {
  name: string;
  uid?: string;
  generation: number;
}

/**
 * Where the router config stands with a policy the router uses: its generation in the ConfigMap (`written`), not
 * yet (`pending`: the router config is rebuilt a few seconds after a change, debounced), or the ConfigMap write
 * failing (`failed`, with the API server's error).
 */
export type Publication = { state: "written" } | { state: "pending" } | { state: "failed"; error: string };

/**
 * The publication of `rp` from what the router config reconciler last wrote for its pool (`written`; undefined:
 * nothing of a policy, or no pass yet) and its last write error (undefined: the last write went through). The same
 * policy (name and uid: a policy deleted and made again starts at generation 1 too) at this generation or a later
 * one (the cache can trail the router pass) is written.
 */
export function publicationOf(
  rp: RoutingPolicy,
  written: WrittenPolicy | undefined,
  writeError: string | undefined,
): Publication {
  if (
    written &&
    written.name === rp.metadata.name &&
    (written.uid ?? "") === (rp.metadata.uid ?? "") &&
    written.generation >= (rp.metadata.generation ?? 0)
  )
    return { state: "written" };
  return writeError === undefined ? { state: "pending" } : { state: "failed", error: writeError };
}

/**
 * The policy's status. Ready is what the router holds: True only once the router ConfigMap has this generation
 * (`publication`; default written, for callers that do not track it), Pending (Ready False, Degraded False) until
 * then, RouterConfigWriteFailed (both) while writing it fails.
 */
export function buildPolicyStatus(
  rp: RoutingPolicy,
  res: Resolution,
  configMap: string,
  now: string,
  publication: Publication = { state: "written" },
): { status: RoutingPolicyStatus; transitions: Transition[] } {
  const generation = rp.metadata.generation ?? 0;
  let ready: ConditionInput;
  let degraded: ConditionInput;
  if (!res.ok) {
    ready = { type: "Ready", status: "False", reason: res.reason, message: res.message };
    degraded = { type: "Degraded", status: "True", reason: res.reason, message: res.message };
  } else if (publication.state === "written") {
    ready = { type: "Ready", status: "True", reason: "Resolved", message: `published in ConfigMap ${configMap}` };
    degraded = { type: "Degraded", status: "False", reason: "AsExpected", message: "policy resolved" };
  } else if (publication.state === "pending") {
    ready = {
      type: "Ready",
      status: "False",
      reason: "Pending",
      message: `generation ${generation} is resolved and not yet in ConfigMap ${configMap} (the router config is rewritten a few seconds after a change); the router uses what the ConfigMap holds`,
    };
    degraded = { type: "Degraded", status: "False", reason: "AsExpected", message: "policy resolved" };
  } else {
    const message = `generation ${generation} is resolved, but writing ConfigMap ${configMap} fails (retried with backoff): ${publication.error}; the router keeps what the ConfigMap last held`;
    ready = { type: "Ready", status: "False", reason: "RouterConfigWriteFailed", message };
    degraded = { type: "Degraded", status: "True", reason: "RouterConfigWriteFailed", message };
  }
  const { conditions, transitions } = mergeConditions(rp.status?.conditions, [ready, degraded], generation, now);
  const status: RoutingPolicyStatus = { observedGeneration: generation, conditions, configMap };
  if (res.ok) status.effective = res.effective as unknown as Record<string, unknown>;
  return { status, transitions };
}

export interface RouterPoolConfig {
  name: string;
  checkpoint: string;
  /** checkpoint.endpoint: the Hub mirror the router downloads an hf:// checkpoint's gate tensors from */
  hfEndpoint?: string;
  /** hf:// with checkpoint.tokenSecret: where the router looks for the pool's Hub token (routerTokenFile) */
  hfTokenFile?: string;
  plan: PlacementPlan;
  endpoints: Record<string, string>;
  policy: ResolvedPolicy;
}

/**
 * Where the chart mounts the router's optional Secret `<fullname>-router-hf-tokens` (docs/CONTRACTS.md "Router config").
 * A pool's checkpoint.tokenSecret reaches its workers; for the router, the same token goes into that Secret under the
 * key `<namespace>_<pool>` (names have no "_", so keys cannot collide): by hand, or by the operator with
 * --sync-hub-tokens (hub-tokens.ts), which is the only time it reads Secrets.
 */
export const ROUTER_HF_TOKEN_DIR = "/etc/switchyard/hf-tokens";

/** The router Secret's key for an hf:// pool with a tokenSecret; undefined otherwise (the router's HF_TOKEN). */
export function routerTokenKey(pool: ExpertPool): string | undefined {
  const c = pool.spec.model.checkpoint;
  if (!c.tokenSecret || !c.uri?.startsWith("hf://")) return undefined;
  return `${pool.metadata.namespace ?? "default"}_${pool.metadata.name}`;
}

/** The router's token file for an hf:// pool with a tokenSecret; undefined otherwise (the router's HF_TOKEN). */
export function routerTokenFile(pool: ExpertPool): string | undefined {
  const key = routerTokenKey(pool);
  return key === undefined ? undefined : `${ROUTER_HF_TOKEN_DIR}/${key}`;
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
 * Which of several RoutingPolicies for one pool comes first: the oldest, then by name. Creation time is fixed for
 * an object's life, so adding a policy never takes the pool from the one it has; the name breaks same-second ties.
 */
export function policyPrecedence(a: RoutingPolicy, b: RoutingPolicy): number {
  return (
    (a.metadata.creationTimestamp ?? "").localeCompare(b.metadata.creationTimestamp ?? "") ||
    a.metadata.name.localeCompare(b.metadata.name)
  );
}

/**
 * The RoutingPolicy the router config uses for `pool`: of those in `policies` that point at it (others are
 * skipped), the first by policyPrecedence that resolves against it; undefined: none does, the router uses the
 * defaults. The router config and every policy's status both ask this, so they cannot disagree on the winner.
 */
export function winningPolicy(
  pool: ExpertPool,
  policies: readonly RoutingPolicy[],
): { rp: RoutingPolicy; policy: ResolvedPolicy } | undefined {
  const ns = pool.metadata.namespace ?? "default";
  const candidates = policies
    .filter((rp) => (rp.metadata.namespace ?? "default") === ns && rp.spec.poolRef.name === pool.metadata.name)
    .sort(policyPrecedence);
  for (const rp of candidates) {
    const r = resolvePolicy(rp, pool);
    if (r.ok) return { rp, policy: r.policy };
  }
  return undefined;
}

/**
 * Why the router config has no entry for `pool` (undefined: it has one). `plan` is the pool's published plan.
 * The same test decides both buildRouterConfig's pools and a policy's PoolNotServed.
 */
export function whyNotServed(pool: ExpertPool, plan: PlacementPlan | undefined): string | undefined {
  const name = pool.metadata.name;
  if (pool.metadata.deletionTimestamp) return `ExpertPool ${name} is being deleted`;
  if (plan) return undefined;
  // The pool's own Ready reason (PlacementFailed, ...) says where to look; its message stays there, as it changes
  // more often than a policy's status should be rewritten.
  const ready = pool.status?.conditions?.find((c) => c.type === "Ready");
  const see = ready && ready.status !== "True" ? ` (its Ready condition: ${ready.reason})` : "";
  return `ExpertPool ${name} has no published placement plan in ConfigMap ${planConfigMapName(name)}${see}; the router serves the pool once it has one`;
}

/**
 * A policy's outcome as the router sees it: resolved against its pool, the policy the router config uses for the
 * pool (`policies`: every cached policy), and the pool in the router config at all (`plan`: its published plan;
 * `leftOut`: why the router config had no room for the pool, from the last fit of it).
 */
export function policyOutcome(
  rp: RoutingPolicy,
  pool: ExpertPool | undefined,
  policies: readonly RoutingPolicy[],
  plan: PlacementPlan | undefined,
  leftOut?: string,
): Resolution {
  const res = resolvePolicy(rp, pool);
  if (!res.ok || !pool) return res;
  // The cache may hold an older copy of rp than the caller (our own status write): compare by name.
  const others = policies.filter((p) => p.metadata.name !== rp.metadata.name);
  const winner = winningPolicy(pool, [...others, rp]);
  if (winner && winner.rp.metadata.name !== rp.metadata.name) {
    return {
      ok: false,
      reason: "Superseded",
      message: `RoutingPolicy ${winner.rp.metadata.name} also targets ExpertPool ${pool.metadata.name} and takes precedence (older, or same age and earlier name); the router uses it, not this one`,
    };
  }
  const why = whyNotServed(pool, plan);
  if (why) return { ok: false, reason: "PoolNotServed", message: why };
  if (leftOut)
    return { ok: false, reason: "RouterConfigFull", message: `ExpertPool ${pool.metadata.name} is ${leftOut}` };
  return res;
}

/**
 * The router config's entries, one for every pool that has a published plan, in the order they get room in the
 * ConfigMap (router-config-fit.ts): the oldest pool first, then by namespace/name, so a new pool never takes an
 * older one's place. A pool uses its winningPolicy (the oldest that resolves for it: deterministic when several
 * point at one pool); without one, the defaults.
 */
export function routerConfigCandidates(i: RouterInputs): ConfigCandidate<RouterPoolConfig>[] {
  const byPool = new Map<string, RoutingPolicy[]>();
  for (const rp of i.policies) {
    const key = `${rp.metadata.namespace ?? "default"}/${rp.spec.poolRef.name}`;
    byPool.set(key, [...(byPool.get(key) ?? []), rp]);
  }
  const keyOf = (p: ExpertPool) => `${p.metadata.namespace ?? "default"}/${p.metadata.name}`;
  const pools = [...i.pools].sort(
    (a, b) =>
      (a.metadata.creationTimestamp ?? "").localeCompare(b.metadata.creationTimestamp ?? "") ||
      keyOf(a).localeCompare(keyOf(b)),
  );
  const out: ConfigCandidate<RouterPoolConfig>[] = [];
  for (const pool of pools) {
    const key = keyOf(pool);
    const plan = i.plans.get(key);
    if (!plan || whyNotServed(pool, plan)) continue;
    const hfTokenFile = routerTokenFile(pool);
    out.push({
      key,
      entry: {
        name: routerPoolName(pool, i.routerNamespace),
        checkpoint: routerCheckpointPath(pool),
        ...(pool.spec.model.checkpoint.endpoint ? { hfEndpoint: pool.spec.model.checkpoint.endpoint } : {}),
        ...(hfTokenFile ? { hfTokenFile } : {}),
        plan,
        endpoints: plan.endpoints ?? {},
        policy: winningPolicy(pool, byPool.get(key) ?? [])?.policy ?? i.defaults,
      },
    });
  }
  return out;
}

/** The router config document for these entries, sorted by name (the same pools write the same bytes). */
export function routerConfigDocument(pools: readonly RouterPoolConfig[]): { pools: RouterPoolConfig[] } {
  return { pools: [...pools].sort((a, b) => a.name.localeCompare(b.name)) };
}

/** One router config for every pool that has a published plan (before fitting it into a ConfigMap). */
export function buildRouterConfig(i: RouterInputs): { pools: RouterPoolConfig[] } {
  return routerConfigDocument(routerConfigCandidates(i).map((c) => c.entry));
}

export { planConfigMapName };
