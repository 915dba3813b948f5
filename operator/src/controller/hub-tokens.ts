// Hub token sync (opt-in, --sync-hub-tokens; the chart's operator.syncHubTokens): the router's Secret holds, under
// `<namespace>_<pool>`, the token of each hf:// pool's checkpoint.tokenSecret, so that the router, which reads no
// Secrets of other namespaces, downloads the pool's gate tensors with the pool's own token (routing.ts
// routerTokenFile). Pure: which pools, what each pool's Secret gives, what to apply and whether to. The I/O is
// hub-token-sync.ts. Token values are base64 strings copied as the API server stores them, never decoded here, and
// go nowhere but into the apply body: no message built here contains one.
import type { ExpertPool } from "../api/v1alpha1.js";
import type { ManagedFieldsEntry } from "../runtime/kube.js";
import { routerTokenKey } from "./routing.js";

/** One pool whose token the router Secret should hold. */
export interface TokenSource {
  /** "namespace/pool", for the pool's events */
  pool: string;
  /** The router Secret's key: `<namespace>_<pool>` */
  routerKey: string;
  namespace: string;
  /** checkpoint.tokenSecret */
  secret: string;
  key: string;
}

/** The key tokenSecret.key defaults to (the CRD's description; desired.ts reads it the same way for the workers). */
export const DEFAULT_TOKEN_KEY = "HF_TOKEN";

/**
 * The pools whose token the router Secret should hold: hf:// checkpoints with a tokenSecret, not being deleted (the
 * router config drops such a pool too: routing.ts whyNotServed), sorted by router key. A pool without a published
 * plan yet counts: its token is in place before the router config names the pool.
 */
export function tokenSources(pools: readonly ExpertPool[]): TokenSource[] {
  const out: TokenSource[] = [];
  for (const p of pools) {
    const routerKey = routerTokenKey(p);
    const ts = p.spec.model.checkpoint.tokenSecret;
    if (routerKey === undefined || !ts || p.metadata.deletionTimestamp) continue;
    const namespace = p.metadata.namespace ?? "default";
    out.push({
      pool: `${namespace}/${p.metadata.name}`,
      routerKey,
      namespace,
      secret: ts.name,
      key: ts.key ?? DEFAULT_TOKEN_KEY,
    });
  }
  return out.sort((a, b) => a.routerKey.localeCompare(b.routerKey));
}

/** Why a pool's key is left out of the router Secret: an Event's reason and message (names only, never a value). */
export interface TokenProblem {
  reason: "HubTokenMissing" | "HubTokenForbidden";
  message: string;
}

export type TokenRead = { value: string } | { problem: TokenProblem };

/** What the router does without the key: said in every problem's message, so a reader knows the effect. */
const fallback = (src: TokenSource, router: RouterSecretRef) =>
  `the router's Secret ${router.namespace}/${router.name} gets no key ${src.routerKey}, so the router downloads this pool's tensors with its own HF_TOKEN, if any`;

export interface RouterSecretRef {
  namespace: string;
  name: string;
}

/**
 * What the pool's tokenSecret gives, from the Secret as read (undefined: not found): its key's value, base64 as
 * stored, or a problem naming the Secret and the key. An empty value counts as missing (no token to give).
 */
export function tokenFromSecret(
  src: TokenSource,
  secret: { data?: Record<string, string> } | undefined,
  router: RouterSecretRef,
): TokenRead {
  if (!secret)
    return {
      problem: {
        reason: "HubTokenMissing",
        message: `checkpoint.tokenSecret: Secret ${src.secret} not found in namespace ${src.namespace}; ${fallback(src, router)}`,
      },
    };
  const value = secret.data?.[src.key];
  if (!value)
    return {
      problem: {
        reason: "HubTokenMissing",
        message: `checkpoint.tokenSecret: Secret ${src.secret} has no key ${src.key}; ${fallback(src, router)}`,
      },
    };
  return { value };
}

/** The problem of a tokenSecret the operator may not read (403: the RBAC lacks get on Secrets in that namespace). */
export function forbidden(src: TokenSource, router: RouterSecretRef): TokenProblem {
  return {
    reason: "HubTokenForbidden",
    message: `checkpoint.tokenSecret: the operator may not read Secret ${src.secret} in namespace ${src.namespace} (the chart's operator.syncHubTokens grants get on Secrets in the watched namespaces); ${fallback(src, router)}`,
  };
}

/** An owner reference: the operator's own Deployment, for the router Secret the operator made. */
export interface Owner {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
}

/**
 * The server-side apply body of the router Secret: exactly `tokens` (router key -> base64 value) as its data. With
 * one field manager, keys it applied before and not now are removed (a pool gone, its Secret gone); keys another
 * manager set (a user's `kubectl create secret`) stay theirs. No type: a Secret the user made keeps its own, and a
 * new one is Opaque. No labels either: the Secret may belong to a user's tooling. `owner` (ownsRouterSecret): the
 * operator's Deployment, so `helm uninstall` has the garbage collector delete the Secret with it.
 */
export function routerSecretApply(router: RouterSecretRef, tokens: ReadonlyMap<string, string>, owner?: Owner) {
  const keys = [...tokens.keys()].sort();
  return {
    apiVersion: "v1",
    kind: "Secret",
    metadata: { name: router.name, namespace: router.namespace, ...(owner ? { ownerReferences: [owner] } : {}) },
    ...(keys.length ? { data: Object.fromEntries(keys.map((k) => [k, tokens.get(k) as string])) } : {}),
  };
}

/**
 * Whether the router Secret is the operator's to give its Deployment as owner (and so to have deleted with it): one
 * it is about to create (none live), one that has that owner already (an apply without it would drop it), or one
 * whose every key is this manager's (made by an operator from before owners were set). A Secret holding a key of
 * another manager (a user's) is theirs: it gets no owner and outlives the release, as they made it.
 */
export function ownsRouterSecret(live: LiveSecret | undefined, manager: string, owner: Owner): boolean {
  if (!live) return true;
  if (live.metadata?.ownerReferences?.some((r) => r.uid === owner.uid)) return true;
  const mine = appliedDataKeys(live, manager);
  return Object.keys(live.data ?? {}).every((k) => mine.has(k));
}

/** The router Secret as read from the API server: its data, and the metadata these checks read. */
interface LiveSecret {
  data?: Record<string, string>;
  metadata?: { managedFields?: ManagedFieldsEntry[]; ownerReferences?: { uid?: string }[] };
}

/** The data keys `manager` owns by apply in a live object (its managedFields). */
export function appliedDataKeys(
  live: { metadata?: { managedFields?: ManagedFieldsEntry[] } },
  manager: string,
): Set<string> {
  const out = new Set<string>();
  for (const m of live.metadata?.managedFields ?? []) {
    if (m.manager !== manager || m.operation !== "Apply") continue;
    const data = m.fieldsV1?.["f:data"];
    if (data && typeof data === "object")
      for (const f of Object.keys(data)) if (f.startsWith("f:")) out.add(f.slice(2));
  }
  return out;
}

/**
 * Whether the live router Secret (undefined: there is none) differs from `tokens`: a key missing or holding another
 * value, a key this manager applied that should be gone, or `owner` (if given) missing from its owner references. Read from the object itself, managedFields included, so
 * a restarted or new leader that finds the Secret as wanted writes nothing, and a Secret deleted or edited by hand is
 * put back at the next pass. No Secret and nothing to hold: nothing to create.
 */
export function routerSecretNeedsApply(
  tokens: ReadonlyMap<string, string>,
  live: LiveSecret | undefined,
  manager: string,
  owner?: Owner,
): boolean {
  if (!live) return tokens.size > 0;
  if (owner && !live.metadata?.ownerReferences?.some((r) => r.uid === owner.uid)) return true;
  for (const [k, v] of tokens) if (live.data?.[k] !== v) return true;
  const owned = appliedDataKeys(live, manager);
  if (owned.size !== tokens.size) return true;
  for (const k of owned) if (!tokens.has(k)) return true;
  return false;
}

/**
 * The problems to report as Warning Events: those new since the last pass, or whose message changed. A pool keeps
 * its problem quietly while it lasts (a pass runs at every pool event); once solved, a recurrence is new again.
 */
export function newProblems(
  reported: ReadonlyMap<string, string>,
  now: ReadonlyMap<string, TokenProblem>,
): Array<[pool: string, problem: TokenProblem]> {
  return [...now].filter(([pool, p]) => reported.get(pool) !== p.message);
}
