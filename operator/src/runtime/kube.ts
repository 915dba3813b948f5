// A thin REST client over the kubeconfig's credentials. The typed clients of @kubernetes/client-node cover the
// same calls, but the operator needs three things they make awkward: server-side apply on any kind with one
// call, a count of every request it makes (the benchmark's requests per pool and "zero writes after
// convergence" are measured here), and errors that keep the API server's Status (code, reason, message).

import { setTimeout as sleep } from "node:timers/promises";
import { HttpMethod, type KubeConfig, RequestContext } from "@kubernetes/client-node";
import { fetch } from "undici";

const MAX_RETRIES = 10;

/** Retry-After as whole seconds (the API server's form; client-go reads no other), or -1. */
function retryAfterSeconds(h: string | null): number {
  return h !== null && /^\d+$/.test(h.trim()) ? Number(h.trim()) : -1;
}

export class KubeError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    message: string,
    readonly status?: Record<string, unknown>,
  ) {
    super(message);
    this.name = "KubeError";
  }
}

export type Verb = "get" | "list" | "watch" | "create" | "update" | "patch" | "apply" | "delete";
const WRITES: ReadonlySet<Verb> = new Set(["create", "update", "patch", "apply", "delete"]);

export interface RequestRecord {
  verb: Verb;
  path: string;
  code: number;
}

export interface OwnerReference {
  apiVersion?: string;
  kind?: string;
  name?: string;
  uid?: string;
  controller?: boolean;
}

export interface ManagedFieldsEntry {
  manager?: string;
  operation?: string;
  apiVersion?: string;
  time?: unknown;
  fieldsType?: string;
  fieldsV1?: Record<string, unknown>;
  subresource?: string;
}

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata?: {
    name?: string;
    namespace?: string;
    uid?: string;
    resourceVersion?: string;
    ownerReferences?: OwnerReference[];
  };
}

export interface KubeList<T> {
  metadata?: { resourceVersion?: string; continue?: string };
  items: T[];
}

export class Kube {
  readonly server: string;
  /** Requests by verb since start; writes are create/update/patch/apply/delete. */
  readonly counts = new Map<Verb, number>();
  private listeners: ((r: RequestRecord) => void)[] = [];

  constructor(
    readonly kc: KubeConfig,
    private readonly userAgent = "switchyard-operator",
  ) {
    const cluster = kc.getCurrentCluster();
    if (!cluster) throw new Error("kubeconfig: no current cluster");
    this.server = cluster.server.replace(/\/$/, "");
  }

  onRequest(fn: (r: RequestRecord) => void): void {
    this.listeners.push(fn);
  }

  total(): number {
    let n = 0;
    for (const v of this.counts.values()) n += v;
    return n;
  }

  writes(): number {
    let n = 0;
    for (const [k, v] of this.counts) if (WRITES.has(k)) n += v;
    return n;
  }

  record(verb: Verb, path: string, code: number): void {
    this.counts.set(verb, (this.counts.get(verb) ?? 0) + 1);
    for (const l of this.listeners) l({ verb, path, code });
  }

  /** Headers and dispatcher (TLS, auth) for a URL, as client-node would use them. */
  async prepare(url: string, method: HttpMethod) {
    const ctx = new RequestContext(url, method);
    await this.kc.applySecurityAuthentication(ctx);
    return { headers: ctx.getHeaders() as Record<string, string>, dispatcher: ctx.getDispatcher() };
  }

  async request<T>(
    verb: Verb,
    method: HttpMethod,
    path: string,
    opts: {
      query?: Record<string, string | undefined>;
      body?: unknown;
      contentType?: string;
      signal?: AbortSignal;
    } = {},
  ): Promise<T> {
    const url = new URL(this.server + path);
    for (const [k, v] of Object.entries(opts.query ?? {})) if (v !== undefined) url.searchParams.set(k, v);
    const { headers, dispatcher } = await this.prepare(url.toString(), method);
    headers["user-agent"] = this.userAgent;
    headers.accept = "application/json";
    if (opts.body !== undefined) headers["content-type"] = opts.contentType ?? "application/json";
    const body = opts.body === undefined ? undefined : JSON.stringify(opts.body);
    // One budget for the request and its retries: a throttled or hung API server fails it, it never hangs it.
    const signal = opts.signal ?? AbortSignal.timeout(30_000);
    for (let attempt = 0; ; attempt++) {
      let res: Awaited<ReturnType<typeof fetch>>;
      let text: string;
      try {
        res = await fetch(url, {
          method,
          headers,
          // biome-ignore lint/suspicious/noExplicitAny: client-node types its dispatcher against its own undici copy
          dispatcher: dispatcher as any,
          body,
          signal,
        });
      } catch (e) {
        this.record(verb, path, 0);
        throw new KubeError(0, "ConnectionFailed", `${method} ${path}: ${(e as Error).message}`);
      }
      this.record(verb, path, res.status);
      try {
        text = await res.text();
      } catch (e) {
        throw new KubeError(0, "ConnectionFailed", `${method} ${path}: ${res.status}, body: ${(e as Error).message}`);
      }
      if (res.status < 400) return (text ? JSON.parse(text) : undefined) as T;
      let status: Record<string, unknown> | undefined;
      try {
        status = JSON.parse(text);
      } catch {
        status = undefined;
      }
      const reason = typeof status?.reason === "string" ? status.reason : String(res.status);
      const message = typeof status?.message === "string" ? status.message : text.slice(0, 500);
      const err = new KubeError(res.status, reason, `${method} ${path}: ${res.status} ${reason}: ${message}`, status);
      // As client-go's rest client: 429 and 5xx answers with Retry-After (API priority and fairness, an apiserver
      // shutting down) were not acted on and are sent again after the delay they ask for, at most 10 times.
      const retryAfter =
        res.status === 429 || res.status >= 500 ? retryAfterSeconds(res.headers.get("retry-after")) : -1;
      if (retryAfter < 0 || attempt >= MAX_RETRIES) throw err;
      try {
        await sleep(retryAfter * 1000, undefined, { signal });
      } catch {
        throw err;
      }
    }
  }

  async get<T>(path: string, opts: { signal?: AbortSignal } = {}): Promise<T | undefined> {
    try {
      return await this.request<T>("get", HttpMethod.GET, path, opts);
    } catch (e) {
      if (e instanceof KubeError && e.code === 404) return undefined;
      throw e;
    }
  }

  list<T>(path: string, query: Record<string, string | undefined> = {}): Promise<KubeList<T>> {
    return this.request<KubeList<T>>("list", HttpMethod.GET, path, { query });
  }

  /** Server-side apply (PATCH application/apply-patch+yaml; JSON is valid YAML). force: we own these fields. */
  apply<T>(path: string, body: unknown, fieldManager: string): Promise<T> {
    return this.request<T>("apply", HttpMethod.PATCH, path, {
      query: { fieldManager, force: "true" },
      body,
      contentType: "application/apply-patch+yaml",
    });
  }

  create<T>(path: string, body: unknown, opts: { signal?: AbortSignal } = {}): Promise<T> {
    return this.request<T>("create", HttpMethod.POST, path, { ...opts, body });
  }

  /**
   * Creates an object that `fieldManager` goes on to keep by server-side apply. A create, unlike an apply, fails (409
   * AlreadyExists) where an object of that name exists, so nothing is taken over (controller-runtime creates its
   * children the same way). One request: the API server files a create's fields under an Update entry of the
   * manager, which an apply does not own (a field later left out of the applied object would stay), and the caller
   * moves them to its Apply entry (settleFieldOwnership) before its first apply to the object, not here: most
   * objects are never applied to after their create, and a move costs a write.
   */
  createForApply<T extends KubeObject>(collection: string, body: KubeObject, fieldManager: string): Promise<T> {
    return this.request<T>("create", HttpMethod.POST, collection, { query: { fieldManager }, body });
  }

  /**
   * `obj` (as a read or a write returned it, managedFields included) with `fieldManager`'s Update entry folded into
   * its Apply entry (applyOwnership): one JSON patch guarded by the resourceVersion, read again and retried when
   * another write came between; `obj` as it is, and no request, when there is nothing to fold. When three tries all
   * raced another writer, the last object read, its Update entry still there (the caller checks: applyOwnership);
   * undefined when the object is gone.
   */
  async settleFieldOwnership<T extends KubeObject>(path: string, obj: T, fieldManager: string): Promise<T | undefined> {
    let cur: T | undefined = obj;
    for (let attempt = 0; cur && attempt < 3; attempt++) {
      const meta = cur.metadata as { managedFields?: ManagedFieldsEntry[] } | undefined;
      const entries = applyOwnership(meta?.managedFields, fieldManager);
      if (!entries) return cur;
      try {
        return await this.request<T>("patch", HttpMethod.PATCH, path, {
          body: [
            { op: "test", path: "/metadata/resourceVersion", value: cur.metadata?.resourceVersion },
            { op: "replace", path: "/metadata/managedFields", value: entries },
          ],
          contentType: "application/json-patch+json",
        });
      } catch (e) {
        // 409: the object changed under the patch; 422: its test op failed (the resourceVersion moved).
        if (!(e instanceof KubeError) || (e.code !== 409 && e.code !== 422)) throw e;
      }
      cur = await this.get<T>(path);
    }
    return cur;
  }

  update<T>(path: string, body: unknown, opts: { signal?: AbortSignal } = {}): Promise<T> {
    return this.request<T>("update", HttpMethod.PUT, path, { ...opts, body });
  }
}

/**
 * `manager`'s managed-fields entries with its Update entries (a create's, or any write other than an apply) folded
 * into its Apply entry of the same apiVersion: the union of their field sets, under the Apply entry it has or the
 * first Update entry turned into one. undefined: it has no such Update entry (nothing to do). Subresource entries
 * (status) are left as they are. What client-go's csaupgrade does for kubectl's move to server-side apply.
 */
export function applyOwnership(
  entries: ManagedFieldsEntry[] | undefined,
  manager: string,
): ManagedFieldsEntry[] | undefined {
  if (!entries) return undefined;
  const mine = (m: ManagedFieldsEntry, op: string) => m.manager === manager && m.operation === op && !m.subresource;
  const updates = entries.filter((m) => mine(m, "Update"));
  if (updates.length === 0) return undefined;
  const others = entries.filter((m) => !mine(m, "Update") && !mine(m, "Apply"));
  // by apiVersion: an entry's field set is in its apiVersion's terms
  const applied = new Map<string | undefined, ManagedFieldsEntry>();
  for (const m of entries) if (mine(m, "Apply")) applied.set(m.apiVersion, { ...m });
  for (const m of updates) {
    const a = applied.get(m.apiVersion);
    if (a) a.fieldsV1 = unionFields(a.fieldsV1 ?? {}, m.fieldsV1 ?? {});
    else applied.set(m.apiVersion, { ...m, operation: "Apply" });
  }
  return [...others, ...applied.values()];
}

/** The union of two FieldsV1 sets (nested objects, {} at the leaves). */
function unionFields(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const x = out[k];
    out[k] =
      x && typeof x === "object" && v && typeof v === "object"
        ? unionFields(x as Record<string, unknown>, v as Record<string, unknown>)
        : v;
  }
  return out;
}

/** REST paths of the kinds the operator touches. */
export const paths = {
  expertPools: (ns?: string) => `/apis/switchyard.dev/v1alpha1${ns ? `/namespaces/${ns}` : ""}/expertpools`,
  routingPolicies: (ns?: string) => `/apis/switchyard.dev/v1alpha1${ns ? `/namespaces/${ns}` : ""}/routingpolicies`,
  statefulSets: (ns?: string) => `/apis/apps/v1${ns ? `/namespaces/${ns}` : ""}/statefulsets`,
  services: (ns?: string) => `/api/v1${ns ? `/namespaces/${ns}` : ""}/services`,
  configMaps: (ns?: string) => `/api/v1${ns ? `/namespaces/${ns}` : ""}/configmaps`,
  /** Only with --sync-hub-tokens: the pools' tokenSecrets and the router's Secret, each by name (never listed). */
  secrets: (ns: string) => `/api/v1/namespaces/${ns}/secrets`,
  pods: (ns?: string) => `/api/v1${ns ? `/namespaces/${ns}` : ""}/pods`,
  events: (ns: string) => `/api/v1/namespaces/${ns}/events`,
  leases: (ns: string) => `/apis/coordination.k8s.io/v1/namespaces/${ns}/leases`,
};
