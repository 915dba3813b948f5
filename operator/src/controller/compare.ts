// "Does the live object already say what we would apply?" Server-side apply is idempotent, but every apply is
// still a request and a write to audit; after convergence the operator must go quiet. The API server fills in
// defaults (probe timeouts, port protocols, fieldRef apiVersion, ...), so the test is containment: every field
// we set must be present and equal in the live object; fields we do not set are the server's business.

import { createHash } from "node:crypto";

const SUFFIX: Record<string, number> = {
  n: 1e-9,
  u: 1e-6,
  m: 1e-3,
  "": 1,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  P: 1e15,
  E: 1e18,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
  Pi: 2 ** 50,
  Ei: 2 ** 60,
};

/** A Kubernetes quantity as a number ("500m" -> 0.5, "1Gi" -> 1073741824); undefined when not one. */
export function parseQuantity(q: string | number): number | undefined {
  if (typeof q === "number") return q;
  const m = /^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)$/.exec(q.trim());
  if (!m) return undefined;
  const base = Number(m[1] + (m[2] ?? ""));
  return base * (SUFFIX[m[3] ?? ""] ?? 1);
}

function quantityEqual(a: unknown, b: unknown): boolean {
  if ((typeof a !== "string" && typeof a !== "number") || (typeof b !== "string" && typeof b !== "number"))
    return false;
  const x = parseQuantity(a);
  const y = parseQuantity(b);
  return x !== undefined && y !== undefined && Math.abs(x - y) <= Math.abs(x) * 1e-12;
}

/**
 * Whether the value at `path` is a quantity field the builders in desired.ts write: a `resources.requests|limits`
 * entry, or an `emptyDir.sizeLimit` (checkpoint.downloadSize).
 */
function isQuantityPath(path: string[]): boolean {
  const n = path.length;
  if (n >= 3 && path[n - 3] === "resources" && (path[n - 2] === "requests" || path[n - 2] === "limits")) return true;
  return n >= 2 && path[n - 2] === "emptyDir" && path[n - 1] === "sizeLimit";
}

/**
 * True when `desired` is contained in `live`: objects by key (extra live keys allowed), arrays element-wise
 * with equal length, scalars equal. Quantity fields (isQuantityPath) compare as quantities, because the server
 * canonicalises them ("0.5" is stored as "500m", "1.5Gi" as "1536Mi", "1e11" as "100G").
 */
export function contains(desired: unknown, live: unknown, path: string[] = []): boolean {
  if (desired === undefined) return true;
  if (Array.isArray(desired)) {
    if (!Array.isArray(live) || live.length !== desired.length) return false;
    return desired.every((d, i) => contains(d, live[i], [...path, String(i)]));
  }
  if (desired !== null && typeof desired === "object") {
    if (live === null || typeof live !== "object" || Array.isArray(live)) return false;
    const l = live as Record<string, unknown>;
    return Object.entries(desired as Record<string, unknown>).every(([k, v]) => contains(v, l[k], [...path, k]));
  }
  if (isQuantityPath(path)) return quantityEqual(desired, live);
  return desired === live;
}

interface Meta {
  metadata?: { labels?: Record<string, string>; annotations?: Record<string, string>; ownerReferences?: unknown[] };
  [k: string]: unknown;
}

/** Annotation on each child: a hash of what the operator last applied to it (stampApplied). */
export const APPLIED_HASH_ANNOTATION = "switchyard.dev/applied-hash";

/**
 * `desired` with APPLIED_HASH_ANNOTATION set to a hash of the rest of it. needsApply's containment cannot see a field
 * the operator stopped setting (a nodeSelector removed from the spec: the live object still has it, and contains
 * every field still wanted), so the change of hash is what makes that apply happen; server-side apply then drops the
 * fields this manager no longer sends. The children's builders are deterministic, so an unchanged spec keeps its hash.
 */
export function stampApplied<T extends Meta>(desired: T): T {
  const { [APPLIED_HASH_ANNOTATION]: _old, ...annotations } = desired.metadata?.annotations ?? {};
  const unstamped = { ...desired, metadata: { ...desired.metadata, annotations } };
  const hash = createHash("sha256").update(JSON.stringify(unstamped)).digest("hex").slice(0, 16);
  return {
    ...desired,
    metadata: { ...desired.metadata, annotations: { ...annotations, [APPLIED_HASH_ANNOTATION]: hash } },
  };
}

/** Whether applying `desired` would change `live` (undefined live: it does not exist yet). */
export function needsApply(desired: Meta, live: Meta | undefined): boolean {
  if (!live) return true;
  const { metadata: dm, apiVersion: _a, kind: _k, ...rest } = desired;
  const want = {
    metadata: { labels: dm?.labels, annotations: dm?.annotations, ownerReferences: dm?.ownerReferences },
    ...rest,
  };
  return !contains(want, live);
}
