// Load signals from Prometheus: runs the RoutingPolicy's PromQL queries on an interval through the HTTP API
// (GET /api/v1/query), keeps the last good per-worker values, and calls them stale once the last successful
// round is older than stalenessMs. A slow Prometheus (no answer within timeoutMs) counts as down. While stale,
// the router falls back to its own counters (tokens in flight per worker, dispatch latency EWMA). The queries'
// placeholders: `$pool` and `$namespace` (expandQuery).

import type { LoadSignalsPolicy } from "@switchyard/moe";

export interface PromSample {
  labels: Record<string, string>;
  value: number;
}

/** Parses an instant-query answer; throws with Prometheus's own error text when status is not success. */
export function parseInstantQuery(body: unknown): PromSample[] {
  const b = body as {
    status?: string;
    error?: string;
    errorType?: string;
    data?: { resultType?: string; result?: unknown };
  };
  if (b?.status !== "success") {
    throw new Error(`prometheus: ${b?.errorType ?? "error"}: ${b?.error ?? JSON.stringify(body).slice(0, 200)}`);
  }
  const data = b.data;
  if (!data) throw new Error("prometheus: answer without data");
  if (data.resultType === "scalar") {
    const v = data.result as [number, string];
    return [{ labels: {}, value: Number(v[1]) }];
  }
  if (data.resultType !== "vector" || !Array.isArray(data.result)) {
    throw new Error(`prometheus: expected an instant vector, got ${data.resultType}`);
  }
  return (data.result as { metric: Record<string, string>; value: [number, string] }[]).map((r) => ({
    labels: r.metric ?? {},
    value: Number(r.value?.[1]),
  }));
}

/** A Kubernetes namespace name (DNS-1123 label): also a regular expression that matches just itself. */
const NAMESPACE_NAME = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

/**
 * The namespace of a pool's workers as the router can tell: that of a pool it serves as "namespace/name" (outside its
 * own namespace: operator routing.ts routerPoolName), else its own (routerNamespace, the env POD_NAMESPACE); null
 * where it cannot (no POD_NAMESPACE, or the router runs outside Kubernetes).
 */
export function poolNamespace(pool: string, routerNamespace: string | null): string | null {
  const slash = pool.indexOf("/");
  const ns = slash >= 0 ? pool.slice(0, slash) : routerNamespace;
  return ns !== null && NAMESPACE_NAME.test(ns) ? ns : null;
}

/**
 * A load-signal query with its placeholders filled in: `$pool` by the name the router serves the pool under (the
 * workers' --metrics-pool: their series' `pool` label), `$namespace` by the pool's namespace (poolNamespace) as a
 * regular expression, `.*` where the router cannot tell. Meant for a regex matcher, as the default queries use it:
 * `namespace=~"$namespace|"` (the `|` also takes series without a namespace label).
 */
export function expandQuery(promql: string, pool: string, namespace: string | null): string {
  return promql.replace(/\$(namespace|pool)/g, (_, name: string) => (name === "pool" ? pool : (namespace ?? ".*")));
}

/** The router's own namespace: env POD_NAMESPACE, as a pod gets it from the downward API; null without it. */
export function routerNamespaceFromEnv(env: NodeJS.ProcessEnv = process.env): string | null {
  return env.POD_NAMESPACE || null;
}

export type FetchLike = (
  url: string,
  init: { signal: AbortSignal },
) => Promise<{ ok: boolean; status: number; json(): Promise<unknown> }>;

export interface SignalSnapshot {
  /** worker id -> queue depth (tokens or batches, as the query counts). */
  queueDepth: Map<string, number>;
  /** worker id -> latency in ms. */
  latencyMs: Map<string, number>;
  /** performance.now() of the last successful round; -Infinity = never. */
  at: number;
}

export class PrometheusSignals {
  private snapshot: SignalSnapshot = { queueDepth: new Map(), latencyMs: new Map(), at: Number.NEGATIVE_INFINITY };
  private timer: NodeJS.Timeout | null = null;
  private running = false;
  /** Bumped by stop(): the refresh loop a start() began runs only until then. */
  private loop = 0;
  /** start() was called and stop() not since. */
  private started = false;
  lastError: string | null = null;
  /** The pool's namespace, which the queries' `$namespace` selects (null: unknown, `$namespace` matches any). */
  readonly namespace: string | null;
  rounds = 0;
  failures = 0;

  constructor(
    private policy: LoadSignalsPolicy,
    private readonly pool: string,
    private readonly fetchImpl: FetchLike = fetch as unknown as FetchLike,
    private readonly now: () => number = () => performance.now(),
    // Why a log line: a wrong URL or query otherwise shows only as switchyard_router_load_signal_stale 1, with the
    // reason in no place an operator can read. One line when the failure starts or changes, one when it ends.
    private readonly log: (line: string) => void = (l) => console.log(`[router] ${l}`),
    routerNamespace: string | null = routerNamespaceFromEnv(),
  ) {
    this.namespace = poolNamespace(pool, routerNamespace);
  }

  get enabled(): boolean {
    return this.policy.prometheusUrl !== null;
  }

  /** True when signals are off, never arrived, or are older than stalenessMs. */
  get stale(): boolean {
    return !this.enabled || this.now() - this.snapshot.at > this.policy.stalenessMs;
  }

  /** The fresh snapshot, or null while stale (callers then use their own counters). */
  fresh(): SignalSnapshot | null {
    return this.stale ? null : this.snapshot;
  }

  setPolicy(policy: LoadSignalsPolicy): void {
    // Whether the owner started it, not whether a loop runs: a policy without a URL runs none, and a reload that
    // adds one must start it.
    const restart = this.started;
    this.stop();
    // Another Prometheus or other queries: the old answers say nothing about the new ones (every plan change sets
    // the same policy again, which keeps them).
    if (!sameSource(this.policy, policy))
      this.snapshot = { queueDepth: new Map(), latencyMs: new Map(), at: Number.NEGATIVE_INFINITY };
    this.policy = policy;
    if (restart) this.start();
  }

  start(): void {
    this.started = true;
    if (!this.enabled || this.timer) return;
    const loop = this.loop;
    const tick = async () => {
      if (!this.running) await this.refresh();
      // A tick whose round outlived stop() (setPolicy restarts) must not reschedule: the loop started since
      // would run beside it, and stop() could no longer reach it.
      if (this.timer && this.loop === loop) this.timer = setTimeout(tick, this.policy.refreshMs);
    };
    this.timer = setTimeout(tick, 0);
  }

  stop(): void {
    this.started = false;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.loop++;
  }

  /** One query round. Resolves (never rejects): a failure leaves the old snapshot to age into staleness. */
  async refresh(): Promise<void> {
    if (!this.enabled) return;
    this.running = true;
    this.rounds++;
    const policy = this.policy;
    try {
      const q = policy.queries;
      const [depth, lat] = await Promise.all([
        q.queueDepth ? this.query(policy, q.queueDepth) : Promise.resolve([]),
        q.latencySeconds ? this.query(policy, q.latencySeconds) : Promise.resolve([]),
      ]);
      // a round of a policy replaced meanwhile by another source: its answers are not the new queries'
      if (!sameSource(policy, this.policy)) return;
      const snap: SignalSnapshot = { queueDepth: new Map(), latencyMs: new Map(), at: this.now() };
      for (const s of depth)
        if (s.labels.worker && Number.isFinite(s.value)) snap.queueDepth.set(s.labels.worker, s.value);
      for (const s of lat) {
        if (s.labels.worker && Number.isFinite(s.value)) snap.latencyMs.set(s.labels.worker, s.value * 1000);
      }
      // Every worker exports its queue gauge from the start, so no sample at all means the query selects nothing
      // (a label or pool name that does not match): a failure to see, not a fresh answer of "no load". (The latency
      // query has none for idle workers: 0/0 rates, filtered above.)
      if (q.queueDepth && snap.queueDepth.size === 0)
        throw new Error(
          `prometheus: the queueDepth query returned no sample with a worker label (pool ${this.pool}${this.namespace ? `, namespace ${this.namespace}` : ""})`,
        );
      this.snapshot = snap;
      if (this.lastError !== null) this.log(`pool ${this.pool}: Prometheus load signals answer again`);
      this.lastError = null;
    } catch (e) {
      this.failures++;
      const message = e instanceof Error ? e.message : String(e);
      if (message !== this.lastError)
        this.log(
          `pool ${this.pool}: Prometheus load signals failed (${message}); the router uses its own counters ` +
            `once the last answer is ${policy.stalenessMs} ms old`,
        );
      this.lastError = message;
    } finally {
      this.running = false;
    }
  }

  private async query(policy: LoadSignalsPolicy, promql: string): Promise<PromSample[]> {
    const base = policy.prometheusUrl!.replace(/\/+$/, "");
    const url = `${base}/api/v1/query?query=${encodeURIComponent(expandQuery(promql, this.pool, this.namespace))}`;
    const res = await this.fetchImpl(url, { signal: AbortSignal.timeout(policy.timeoutMs) });
    // The body is read under the same timeout: a body that times out or is cut short is this side's failure to
    // read, not an error Prometheus answered (which parseInstantQuery reports with Prometheus's own text).
    let body: unknown;
    try {
      body = await res.json();
    } catch (e) {
      if (!res.ok) throw new Error(`prometheus: HTTP ${res.status}`);
      throw new Error(`prometheus: unreadable answer (HTTP ${res.status}): ${e instanceof Error ? e.message : e}`);
    }
    return parseInstantQuery(body);
  }
}

/** Whether two policies ask the same Prometheus the same queries. */
function sameSource(a: LoadSignalsPolicy, b: LoadSignalsPolicy): boolean {
  return (
    a.prometheusUrl === b.prometheusUrl &&
    a.queries.queueDepth === b.queries.queueDepth &&
    a.queries.latencySeconds === b.queries.latencySeconds
  );
}
