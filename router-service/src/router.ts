// The router: gate -> batcher -> capacity -> replica choice -> dispatch -> combine, per pool.
//
// A request is gated when it arrives (the gate is per token), queued per (pool, layer, dtype), and merged with
// concurrent requests at flush. A flush regroups all merged (token, expert) assignments by expert and sends each
// worker one ExpertBatch per round on its long-lived stream. Rows whose worker fails are re-laid onto the other
// replicas of their expert (the failed worker excluded, or only for the expert it refused); with no replica left the
// requests holding them fail UNAVAILABLE naming the expert. Each request is combined and answered as soon as its own
// rows are in (core/flush-progress.ts). Every request has a deadline timer, so none hangs whatever the workers do;
// its tokens count against admission until it ends and no batch of its rows is still out.

import {
  cancelled,
  DType,
  deadlineExceeded,
  decodeTensor,
  dtypeSize,
  type ExpertResult,
  errorCodeOf,
  type ForwardRequest,
  type ForwardResponse,
  failedPrecondition,
  invalidArgument,
  isRetryable,
  notFound,
  resourceExhausted,
  type SwitchyardError,
  unavailable,
} from "@switchyard/protocol";
import type { CallerScope } from "./caller-scope.js";
import { sharedExpertFallback } from "./checkpoint-model.js";
import type { PlacementPlan, RoutingPolicy } from "./config.js";
import { Batcher, HOLD_CAP_MS } from "./core/batcher.js";
import { applyCapacity } from "./core/capacity.js";
import { alignedRows, combineInto, firstNonFinite, resultRows } from "./core/combine.js";
import { FlushProgress } from "./core/flush-progress.js";
import { latencyMs, outstandingRows } from "./core/load-view.js";
import { layoutRound, type WorkerBatchLayout } from "./core/plan-flush.js";
import type { ReplicaChooser, WorkerLoadView } from "./core/replicas.js";
import { type Assignment, collectAssignments, type TokenRouting, withSharedSlices } from "./core/routing.js";
import { WorkerConn, type WorkerTransport } from "./dispatch/worker-conn.js";
import { FlushGate, type GateItem, type PendingGate, UNGATED } from "./flush-gate.js";
import { type PoolMetrics, RouterMetrics } from "./metrics.js";
import type { PoolModel } from "./model.js";
import { PrometheusSignals } from "./signals/prometheus.js";
import { batchPool, replyPool } from "./wire/buffer-pool.js";
import { BACKING, ENCODED, encodeExpertBatch, encodeForwardResponse } from "./wire/encode.js";

/** Upper bound on tokens x hidden per request, protecting the router from huge allocations. */
const MAX_REQUEST_ELEMENTS = 64 << 20;
/** Default deadline for calls that carry none: no call waits forever. */
export const DEFAULT_DEADLINE_MS = 30_000;
/** Node fires a timer of more than 2^31 - 1 ms at once, so a later deadline waits this long at most. */
const MAX_TIMER_MS = 2 ** 31 - 1;
const MAX_DISPATCH_ATTEMPTS = 3;
/** Tags each reply with its pool's name (the server counts replies per pool without a closure per request). */
export const POOL = Symbol.for("switchyard.router.pool");

export interface PoolSetup {
  name: string;
  model: PoolModel;
  plan: PlacementPlan;
  /** worker id -> host:port (overrides plan.endpoints). */
  endpoints?: Record<string, string>;
  policy: RoutingPolicy;
}

/** A queued request: what its gate fills in (GateItem), and what the flush, the dispatch and the combine need. */
interface Item extends GateItem {
  enqueuedAt: number;
  /** The model the request was checked against (its hidden size, layer, experts): a flush runs only its own model's. */
  model: PoolModel;
  /** fp32 hidden for the shared expert (null when the model has none). */
  sharedInput: Float32Array | null;
  sharedOut: Float32Array | null;
  results: (Float32Array | Uint16Array | Uint8Array)[];
  /** Workers' sums of this item's tokens (combined batches): added to the shared expert's rows at the combine. */
  partials: Partial[] | null;
  workers: Set<number>;
  dropped: number;
  deadline: number;
  done: boolean;
  timer: NodeJS.Timeout | null;
  /** Leaves the caller's scope (forward's `scope`) once the item is finished. */
  unlisten: (() => void) | null;
  /** It brought an explicit assignment: its weights are the engine's, bounded by nothing but being finite. */
  explicit: boolean;
  /** What its flush still waits for (null until the flush dispatches it), and its index there: told when it ends. */
  progress: FlushProgress | null;
  flushIndex: number;
  /** Its rows out on workers in batches that have not settled (answered, failed, timed out, given up, abandoned). */
  rowsOut: number;
  /** The batches its rows went out in (null: none yet): the last request of one to end abandons it (finish()). */
  batches: OutBatch[] | null;
  /** Whether its tokens still count against the pool's maxQueueTokens (release()). */
  charged: boolean;
  batchTokens: number;
  batchRequests: number;
  queueWaitMs: number;
  requestId: bigint;
  resolve: (r: ForwardResponse) => void;
  reject: (e: unknown) => void;
}

/** One combined batch's sums for an item: token t's is row row[t] of `sums` (-1: none from this batch). */
interface Partial {
  sums: Float32Array;
  row: Int32Array;
  /** The token's lowest slot the sum covers: partials are added in this order. */
  firstSlot: Int32Array;
}

/**
 * A batch out on a worker, as its requests see it. Once every request with rows in it has ended, nothing waits for
 * it: the router abandons it (WorkerConn.abandon) rather than hold those requests' tokens and rows until the worker
 * answers or the batch's timeout (the latest deadline of its rows) passes, which a hung worker can make hours.
 */
interface OutBatch {
  conn: WorkerConn;
  /** Its batch id on `conn` (0 until run() encodes it: ids start at 1). */
  id: number;
  /** Requests with rows in it that had not ended when it went out and have not since. */
  live: number;
  /** Answered, failed, timed out or abandoned: nothing left to abandon. */
  settled: boolean;
}

/** A slot a worker's combined sum covers (locations[li] of it): no row of its own at the combine. */
const COVERED = -2;

/**
 * The combine's base for an item: its shared-expert rows (or zeros) plus the workers' sums of its tokens, added per
 * token in the order of the first slot each covers (the same answer however the replies interleaved).
 */
function baseWithPartials(it: Item, d: number): Float32Array | null {
  const parts = it.partials;
  if (!parts || parts.length === 0) return it.sharedOut;
  if (parts.length === 1 && !it.sharedOut) {
    // One worker summed every token (the common case: decode requests of one token, one worker per token's
    // experts): where its rows for this request's tokens are consecutive, the base is a view of them. The combine
    // only reads it. (The sum below would give the same values; it was 11% of the router's event loop at Qwen3.)
    const { row, sums } = parts[0];
    const r0 = row[0];
    let consecutive = r0 >= 0;
    for (let t = 1; consecutive && t < it.tokens; t++) consecutive = row[t] === r0 + t;
    if (consecutive) return sums.subarray(r0 * d, (r0 + it.tokens) * d);
  }
  const acc = it.sharedOut ? Float32Array.from(it.sharedOut) : new Float32Array(it.tokens * d);
  const order = parts.length > 1 ? [...parts] : parts;
  for (let t = 0; t < it.tokens; t++) {
    if (order.length > 1) order.sort((x, y) => x.firstSlot[t] - y.firstSlot[t]);
    const o = t * d;
    for (const e of order) {
      const r = e.row[t];
      if (r < 0) continue;
      const src = e.sums.subarray(r * d, (r + 1) * d);
      for (let j = 0; j < d; j++) acc[o + j] += src[j];
    }
  }
  return acc;
}

class Pool {
  conns: WorkerConn[] = [];
  replicas: number[][][] = [];
  /** Layers whose plan places the shared expert's slices: the workers run it there, the router only adds its slots. */
  sharedLayers = new Set<number>();
  /** Whether the router said that it computes this pool's shared expert in TypeScript (sayWhereSharedRuns). */
  sharedFallbackSaid = false;
  planVersion = 0;
  pendingTokens = 0;
  /**
   * The name the pool's workers know it by (their --pool; the plan's `pool`). The router may serve it under another:
   * the operator names a pool outside the router's namespace "namespace/name" (operator routerPoolName).
   */
  workerPool: string;
  readonly batcher: Batcher<Item, number>;
  readonly gate: FlushGate<Item>;
  readonly signals: PrometheusSignals;

  constructor(
    readonly name: string,
    workerPool: string,
    public model: PoolModel,
    public policy: RoutingPolicy,
    readonly metrics: PoolMetrics,
    flush: (pool: Pool, items: Item[]) => Promise<void>,
    fail: (pool: Pool, item: Item, err: unknown) => void,
    gateAhead: boolean,
  ) {
    this.gate = new FlushGate<Item>({
      model: () => this.model,
      gating: () => this.policy.gating,
      gateDuration: metrics.gateDuration,
      gateAheadTokens: metrics.gateAheadTokens,
      fail: (item, err) => fail(this, item, err),
    });
    this.batcher = new Batcher<Item, number>(
      policy.batching,
      (_k, items) => flush(this, items),
      gateAhead ? (k, item) => this.gate.startAhead(k, item) : undefined,
    );
    this.workerPool = workerPool;
    // The queries' $pool is the name the router serves the pool under: the workers label their metrics with it
    // (--metrics-pool, which the operator sets to its routerPoolName), so it selects this pool's workers even where
    // pools of one name run in two namespaces.
    this.signals = new PrometheusSignals(policy.loadSignals, name);
    this.signals.start();
  }

  /** Reads the live state on every call (connections, signals), so one view serves every flush. */
  private readonly view: WorkerLoadView = {
    outstanding: (i) => outstandingRows(this.signals.fresh(), this.conns[i].id, this.conns[i].outstandingTokens),
    latencyMs: (i) =>
      latencyMs(
        this.signals.fresh(),
        this.policy.loadSignals.queries.latencySeconds !== null,
        this.conns[i].id,
        this.conns[i].latencyMs,
        this.conns[i].failing,
      ),
    latencyAgeMs: (i) => this.conns[i].latencyAgeMs,
    resident: (i, layer, expert) => this.conns[i].isResident(layer, expert),
    healthy: (i) => this.conns[i].healthy,
    serves: (i, layer, expert) => this.conns[i].serves(layer, expert),
  };
  private chooserOf: { policy: RoutingPolicy; chooser: ReplicaChooser } | null = null;

  /**
   * Whether every shared slice of `layer` has a replica whose worker serves it by its last Status (or has not
   * reported yet). A new plan reaches the router and the workers at different moments: until the workers have
   * loaded the slices, the router computes the shared expert itself instead of sending every token to a worker that
   * would refuse them.
   */
  slicesServed(layer: number): boolean {
    const E = this.model.experts;
    const row = this.replicas[layer] ?? [];
    for (let e = E; e < row.length; e++) if (!row[e].some((w) => this.conns[w]?.serves(layer, e))) return false;
    return true;
  }

  /** Replica choice for the current policy (rebuilt only when the policy object changes, not per flush). */
  chooser(): ReplicaChooser {
    if (this.chooserOf?.policy !== this.policy) {
      const chooser = {
        weights: this.policy.placement,
        loadScale: Math.max(1, this.policy.batching.maxBatchTokens / 4),
        view: this.view,
      };
      this.chooserOf = { policy: this.policy, chooser };
    }
    return this.chooserOf.chooser;
  }
}

/** What a pool serves and where, as the router's HTTP port shows it (GET /pools): operators and smoke checks. */
export interface PoolSummary {
  name: string;
  family: string;
  layers: number;
  /** Layers with routed experts: Forward takes only these (the others are dense in the model). */
  moeLayers: number[];
  experts: number;
  hiddenSize: number;
  planVersion: number;
  /** Each worker of the plan: its address, whether its last Status answered, and whether batches go by TCP. */
  workers: { id: string; address: string; healthy: boolean; dataPath: boolean }[];
}

export interface RouterOptions {
  metrics?: RouterMetrics;
  /** Status poll interval for worker connections (ms); 0 disables (tests). */
  statusIntervalMs?: number;
  /** How batches reach workers (default "auto": a worker's TCP data path where its Status offers one). */
  workerTransport?: WorkerTransport;
  /**
   * Fewest bytes a batch must save to go deduplicated to a worker that offers it (ExpertBatch.token_rows); default
   * SWITCHYARD_ROUTER_DEDUP_MIN_BYTES, else 256 KiB. Infinity: never.
   */
  dedupMinBytes?: number;
  /**
   * Whether a queued request that came with hidden states only has its gate started while it waits for its flush
   * (FlushGate.startAhead), or at the flush. Default SWITCHYARD_ROUTER_GATE_AHEAD, else true.
   */
  gateAhead?: boolean;
  /** Where the router says what an operator should know about a pool it loads; default stdout, `[router] ` first. */
  log?: (line: string) => void;
}

/** A pool of the config the router could not load (GET /pools lists it; its requests are told why). */
export interface UnloadedPool {
  name: string;
  error: string;
}

export class Router {
  readonly metrics: RouterMetrics;
  private readonly pools = new Map<string, Pool>();
  /** Pools the config names that could not be loaded, and why (setUnloaded; a loaded one of the name keeps serving). */
  private readonly unloaded = new Map<string, string>();
  private readonly statusIntervalMs: number;
  private readonly workerTransport: WorkerTransport;
  private readonly dedupMinBytes: number;
  private readonly gateAhead: boolean;
  private readonly log: (line: string) => void;

  constructor(o: RouterOptions = {}) {
    this.metrics = o.metrics ?? new RouterMetrics();
    this.statusIntervalMs = o.statusIntervalMs ?? 1000;
    this.workerTransport = o.workerTransport ?? "auto";
    this.dedupMinBytes = o.dedupMinBytes ?? dedupMinBytes(process.env.SWITCHYARD_ROUTER_DEDUP_MIN_BYTES);
    this.gateAhead = o.gateAhead ?? gateAhead(process.env.SWITCHYARD_ROUTER_GATE_AHEAD);
    this.log = o.log ?? ((l) => console.log(`[router] ${l}`));
  }

  /** One Status poll of every worker of `pool` now (tests and benchmarks that run without periodic polls). */
  async refreshWorkers(pool: string): Promise<void> {
    await Promise.all(this.workers(pool).map((c) => c.refreshStatus()));
  }

  poolNames(): string[] {
    return [...this.pools.keys()];
  }

  /** Every pool's model dimensions, plan version and workers (the HTTP port's /pools). */
  poolSummaries(): PoolSummary[] {
    return [...this.pools.values()].map((p) => ({
      name: p.name,
      family: p.model.family,
      layers: p.model.layers,
      moeLayers: Array.from({ length: p.model.layers }, (_, l) => l).filter((l) => p.model.isMoeLayer(l)),
      experts: p.model.experts,
      hiddenSize: p.model.hiddenSize,
      planVersion: p.planVersion,
      workers: p.conns.map((c) => ({ id: c.id, address: c.address, healthy: c.healthy, dataPath: c.usingDataPath })),
    }));
  }

  /**
   * Records that the config's pool `name` could not be loaded (`error`), or that it no longer fails (null). A pool of
   * that name already running keeps serving as it was; otherwise its requests fail UNAVAILABLE with the reason.
   */
  setUnloaded(name: string, error: string | null): void {
    if (error === null) this.unloaded.delete(name);
    else this.unloaded.set(name, error);
  }

  /** The config's pools that could not be loaded (GET /pools). */
  unloadedPools(): UnloadedPool[] {
    return [...this.unloaded].map(([name, error]) => ({ name, error }));
  }

  /** Worker connections of a pool (local mode and tests read counters from them). */
  workers(pool: string): readonly WorkerConn[] {
    return this.pools.get(pool)?.conns ?? [];
  }

  /** Sets the gauges sampled at scrape time (signal staleness, admitted tokens, outstanding rows per worker). */
  sampleGauges(): void {
    for (const [name, p] of this.pools) {
      this.metrics.loadSignalStale.set({ pool: name }, p.signals.stale ? 1 : 0);
      this.metrics.loadSignalsEnabled.set({ pool: name }, p.signals.enabled ? 1 : 0);
      this.metrics.admittedTokens.set({ pool: name }, p.pendingTokens);
      for (const c of p.conns) {
        const w = p.metrics.worker(c.id);
        w.outstanding.set(c.outstandingTokens);
        w.dataPath.set(c.usingDataPath ? 1 : 0);
      }
      p.metrics.flushHeat();
    }
  }

  /** Whether a pool runs on its own counters (Prometheus off, down or stale). */
  signalsStale(pool: string): boolean {
    return this.pools.get(pool)?.signals.stale ?? true;
  }

  /** Adds or updates a pool: model, plan, endpoints and policy take effect for the next flush. */
  setPool(s: PoolSetup): void {
    validatePlan(s.plan, s.model, s.name);
    // Everything that can refuse the setup before anything changes: a refused one leaves the running pool as it was
    // (or no pool), not a new policy over the old plan, or a registered pool without workers.
    const addresses = s.plan.workers.map((id) => {
      const address = s.endpoints?.[id] ?? s.plan.endpoints?.[id];
      if (!address) throw invalidArgument(`pools[${s.name}].endpoints.${id}`, "no endpoint for worker in plan");
      return address;
    });
    const running = this.pools.get(s.name);
    if (running && (s.plan.pool || s.name) !== running.workerPool)
      throw invalidArgument(
        `pools[${s.name}].plan.pool`,
        `"${s.plan.pool}": the pool's workers are "${running.workerPool}"; a new name is a new pool (remove it first)`,
      );
    let p = running;
    if (!p) {
      p = new Pool(
        s.name,
        s.plan.pool || s.name,
        s.model,
        s.policy,
        this.metrics.forPool(s.name),
        (pool, items) => this.flush(pool, items),
        (pool, item, err) => this.finish(pool, item, err),
        this.gateAhead,
      );
      this.pools.set(s.name, p);
    } else {
      p.model = s.model;
      p.policy = s.policy;
      p.batcher.setOptions(s.policy.batching);
      p.signals.setPolicy(s.policy.loadSignals);
    }
    const old = new Map(p.conns.map((c) => [`${c.id}@${c.address}`, c]));
    const conns: WorkerConn[] = [];
    for (const [i, id] of s.plan.workers.entries()) {
      const address = addresses[i];
      const key = `${id}@${address}`;
      const c =
        old.get(key) ??
        new WorkerConn({ id, address, statusIntervalMs: this.statusIntervalMs, transport: this.workerTransport });
      old.delete(key);
      conns.push(c);
    }
    for (const c of old.values()) c.close();
    const named = new Set(s.plan.workers);
    for (const c of old.values()) if (!named.has(c.id)) this.metrics.forgetWorker(s.name, c.id);
    p.conns = conns;
    p.replicas = s.plan.replicas.map((l) => l.map((r) => r.slice()));
    p.sharedLayers = new Set(s.plan.replicas.flatMap((l, i) => (l.length > s.model.experts ? [i] : [])));
    this.sayWhereSharedRuns(p);
    p.planVersion = s.plan.version;
    this.metrics.planVersion.set({ pool: s.name }, s.plan.version);
  }

  /**
   * Says once, when a pool's plan leaves its shared expert to the router (no slices on the workers) and that runs in
   * TypeScript on the event loop for want of the expert worker's native addon: a router image without it is slow.
   */
  private sayWhereSharedRuns(p: Pool): void {
    const m = p.model;
    const moe = m.hasShared ? Array.from({ length: m.layers }, (_, l) => l).filter((l) => m.isMoeLayer(l)) : [];
    const here = moe.filter((l) => !p.sharedLayers.has(l)).length;
    const why = here > 0 ? sharedExpertFallback(m) : null;
    if (why && !p.sharedFallbackSaid)
      this.log(
        `pool ${p.name}: the router computes the shared expert itself (${here} of ${moe.length} MoE layers: the plan places no slices on the workers there) in TypeScript on the event loop, tens of times slower than on native kernels: ${why}`,
      );
    p.sharedFallbackSaid = why !== null;
  }

  removePool(name: string): void {
    const p = this.pools.get(name);
    if (!p) return;
    p.batcher.flushAll();
    p.signals.stop();
    for (const c of p.conns) c.close();
    this.pools.delete(name);
    // its series go too: a removed pool would otherwise export its last values (and hold its heat series) for good
    this.metrics.forgetPool(name);
  }

  close(): void {
    for (const name of [...this.pools.keys()]) this.removePool(name);
  }

  /**
   * One Forward. `deadline` is absolute (Date.now() ms); the request's timeout_ms, if set and earlier, wins; with
   * neither, DEFAULT_DEADLINE_MS from now.
   * `scope`: the caller's (a gRPC call or stream, a data connection); when it closes, the request ends CANCELLED at
   * once and, if still queued, never reaches a worker.
   * Rejects with SwitchyardError (INVALID_ARGUMENT naming the field, NOT_FOUND, RESOURCE_EXHAUSTED, UNAVAILABLE,
   * DEADLINE_EXCEEDED, CANCELLED).
   */
  forward(req: ForwardRequest, deadline = Number.POSITIVE_INFINITY, scope?: CallerScope): Promise<ForwardResponse> {
    const started = performance.now();
    if (scope?.closed) return Promise.reject(cancelled(`cancelled by the caller (pool ${req.pool})`));
    const p = this.pools.get(req.pool);
    if (!p) {
      const why = this.unloaded.get(req.pool);
      return Promise.reject(
        why !== undefined
          ? unavailable(`pool ${JSON.stringify(req.pool)} is configured but could not be loaded: ${why}`)
          : req.pool
            ? notFound(
                `unknown pool ${quoteClipped(req.pool)} (serving: ${this.poolNames().join(", ") || "none"})`,
                "pool",
              )
            : invalidArgument("pool", "required"),
      );
    }
    try {
      const m = p.model;
      if (!Number.isInteger(req.layer) || req.layer < 0 || req.layer >= m.layers) {
        throw invalidArgument("layer", `must be in [0, ${m.layers}), got ${req.layer}`);
      }
      if (!m.isMoeLayer(req.layer))
        throw invalidArgument("layer", `layer ${req.layer} is dense (no experts) in pool ${p.name}`);
      const hiddenT = req.hidden;
      const h = hiddenT
        ? checkHidden(hiddenT, m.hiddenSize)
        : (() => {
            throw invalidArgument("hidden", "required");
          })();
      const T = h.tokens;
      if (T === 0) {
        const empty: ForwardResponse = {
          requestId: req.requestId,
          hidden: { dtype: h.dtype, shape: [0, m.hiddenSize], data: Buffer.alloc(0) },
          stats: emptyStats(),
          error: undefined,
        };
        (empty as unknown as Record<symbol, string>)[POOL] = p.name;
        return Promise.resolve(empty);
      }
      const maxQueue = p.policy.batching.maxQueueTokens;
      // A request that can never fit is told so: RESOURCE_EXHAUSTED is retryable, and a client would back off and
      // send it again for good.
      if (T > maxQueue)
        throw invalidArgument(
          "hidden.shape[0]",
          `${T} tokens exceed pool ${p.name}'s maxQueueTokens ${maxQueue} (tokens queued or in flight at once): split the request into parts of at most ${maxQueue} tokens`,
        );
      if (p.pendingTokens + T > maxQueue) {
        throw resourceExhausted(
          `pool ${p.name}: ${p.pendingTokens} tokens queued or in flight, ${T} more exceed maxQueueTokens ${maxQueue}`,
        );
      }
      let hiddenF32: Float32Array | null = null;
      const hidden32 = () => {
        hiddenF32 ??= decodeTensor(hiddenT, "hidden").values as Float32Array;
        return hiddenF32;
      };
      // The shared expert: as slots of its slices for the workers where the plan places them, else computed here;
      // not at all when the engine computes it itself (routed_only).
      const withShared = m.hasShared && req.routedOnly !== true;
      const onWorkers = withShared && p.sharedLayers.has(req.layer) && p.slicesServed(req.layer);
      const sharedScale = onWorkers ? (m.sharedScale?.(req.layer, hidden32, T, h.dtype) ?? null) : null;
      // A gate from the hidden states is one product for many requests' tokens (FlushGate: started while they wait
      // in the batcher, or at their flush), which reads the gate's weights once (7.3 MB at DeepSeek-V3) where one a
      // request read them per token.
      const pendingGate: PendingGate | null = req.gate === undefined ? { slices: onWorkers, sharedScale } : null;
      const gated = pendingGate ? UNGATED : this.gate(p, req, T);
      const routing =
        onWorkers && !pendingGate ? withSharedSlices(gated, m.experts, m.sharedSlices ?? 0, sharedScale) : gated;
      const sharedInput = withShared && !onWorkers ? hidden32() : null;
      const now = Date.now();
      // The request's own budget (ForwardRequest.timeout_ms: the data path's only deadline) and the call's, the
      // earlier of the two; neither: the default.
      const earliest = Math.min(deadline, req.timeoutMs ? now + req.timeoutMs : Number.POSITIVE_INFINITY);
      const dl = Math.min(Number.isFinite(earliest) ? earliest : now + DEFAULT_DEADLINE_MS, now + MAX_TIMER_MS);
      p.pendingTokens += T;
      p.metrics.tokens.inc(T);
      return new Promise<ForwardResponse>((resolve, reject) => {
        const item: Item = {
          tokens: T,
          enqueuedAt: started,
          model: m,
          layer: req.layer,
          dtype: h.dtype,
          hidden: h.data,
          sharedInput,
          sharedOut: null,
          pendingGate,
          gateJob: null,
          routing,
          slots: routing.slots,
          weights: routing.weights,
          locations: new Int32Array(T * routing.slots * 2).fill(-1),
          results: [],
          partials: null,
          workers: new Set(),
          dropped: 0,
          deadline: dl,
          done: false,
          timer: null,
          unlisten: null,
          explicit: req.gate?.$case === "assignment",
          progress: null,
          flushIndex: -1,
          rowsOut: 0,
          batches: null,
          charged: true,
          batchTokens: 0,
          batchRequests: 0,
          queueWaitMs: 0,
          requestId: req.requestId,
          resolve,
          reject,
        };
        item.timer = setTimeout(
          () =>
            this.finish(
              p,
              item,
              deadlineExceeded(
                `deadline exceeded after ${Math.round(performance.now() - started)} ms (pool ${p.name}, layer ${req.layer})`,
              ),
            ),
          Math.max(0, dl - now),
        );
        if (scope) {
          // As a deadline does: a queued item is skipped by its flush, a dispatched one's results are dropped.
          const onCancel = () =>
            this.finish(p, item, cancelled(`cancelled by the caller (pool ${p.name}, layer ${req.layer})`));
          scope.add(onCancel);
          item.unlisten = () => scope.delete(onCancel);
        }
        // Numeric key (layer, dtype): no string building per request.
        p.batcher.add(req.layer * 256 + h.dtype, item);
      });
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** The routing a request brings: an explicit assignment, or router logits to gate. */
  private gate(p: Pool, req: ForwardRequest, T: number): TokenRouting {
    const m = p.model;
    const g = req.gate;
    if (g?.$case === "assignment") return explicitRouting(g.value, T, m.experts);
    if (g?.$case !== "routerLogits") throw new Error("gate: no assignment or router_logits (the flush gates those)");
    // bf16 / fp16 as a half-precision engine's gate gives them (Qwen then rounds its weights to that dtype), widened
    const dtype = g.value.dtype;
    const logits = decodeTensor(g.value, "router_logits", {
      dtype: [DType.FLOAT32, DType.BFLOAT16, DType.FLOAT16],
      shape: [T, m.experts],
    }).values as Float32Array;
    return m.route(req.layer, logits, T, p.policy.gating, dtype, "router_logits");
  }

  private finish(p: Pool, item: Item, err: unknown | null, res?: ForwardResponse): void {
    if (item.done) return;
    item.done = true;
    if (item.timer) clearTimeout(item.timer);
    item.unlisten?.();
    item.progress?.end(item.flushIndex);
    const out = item.batches;
    if (out) {
      item.batches = null;
      // The last live request of a batch ended: settle it here (its send() then gives its rows' tokens back).
      for (const b of out) if (!b.settled && --b.live === 0) b.conn.abandon(b.id);
    }
    this.release(p, item);
    if (err) item.reject(err);
    else {
      p.metrics.requestDuration.observe((performance.now() - item.enqueuedAt) / 1000);
      (res as unknown as Record<symbol, string>)[POOL] = p.name;
      item.resolve(res!);
    }
  }

  /**
   * Gives an ended request's tokens back to admission (maxQueueTokens) once none of its rows is out on a worker: at
   * once for one still queued, else when its last batch settles. Until then the connection's pending entry holds the
   * send (and so the requests' rows): released at the cancel, a client that cancels in a loop while a worker hangs
   * would pin memory without bound. A batch settles when the worker answers, at its timeout (the latest deadline of
   * its rows), or, once its last live request ends, when finish() abandons it: the router then holds none of its
   * buffers (the pending entry is gone, the encoded batch went back to the pool once written), so the tokens come
   * back with the memory, and a stuck worker plus one cancelled request cannot hold the pool's admission for the
   * latest deadline in the batch. A request whose batch is shared with a live one keeps counting while that one waits
   * on it: its rows are still held.
   */
  private release(p: Pool, it: Item): void {
    if (!it.charged || !it.done || it.rowsOut > 0) return;
    it.charged = false;
    p.pendingTokens -= it.tokens;
  }

  /**
   * A flush as the batcher sees it: running, and so holding its key's later requests (flushesInFlight), until every
   * request has ended, or, from its first answer, as long again as that answer took, or HOLD_CAP_MS after its
   * batches went out, whichever comes first (runFlush): not until a batch on a hung worker times out.
   */
  private flush(p: Pool, all: Item[]): Promise<void> {
    return new Promise<void>((drained) => {
      // (runFlush catches what its requests can fail with; anything else still surfaces, as before)
      void this.runFlush(p, all, drained).finally(() => drained());
    });
  }

  private async runFlush(p: Pool, all: Item[], drained: () => void): Promise<void> {
    const m = p.model;
    // When the flush stops holding its key before it ends (below); cleared when it ends, so no timer outlives it.
    let hold: NodeJS.Timeout | null = null;
    let over = false;
    const releaseIn = (ms: number) => {
      if (over) return;
      if (hold) clearTimeout(hold);
      hold = setTimeout(drained, ms);
      hold.unref(); // it only frees a batcher slot: it must not keep a process alive
    };
    // A request checked against a model the pool has since replaced by one of another shape (a config reload with
    // another checkpoint) may not fit it (hidden size, layers, experts): it is told to come again. (The same
    // checkpoint reopened, say with another Hub token file, is another object of the same shape.)
    for (const it of all)
      if (it.model !== m && !it.done && !sameShape(it.model, m))
        this.finish(
          p,
          it,
          unavailable(
            `pool ${p.name}: its model changed while the request waited (hidden size ${it.model.hiddenSize} -> ${m.hiddenSize}, ${it.model.experts} -> ${m.experts} experts); send it again`,
          ),
        );
    // Items can finish (deadline) while queued; usually none has.
    let items = all.some((i) => i.done) ? all.filter((i) => !i.done) : all;
    if (items.length === 0) return;
    const flushStart = performance.now();
    const layer = items[0].layer;
    let batchTokens = 0;
    for (const it of items) {
      it.queueWaitMs = flushStart - it.enqueuedAt;
      batchTokens += it.tokens;
      p.metrics.queueWait.observe(it.queueWaitMs / 1000);
    }
    for (const it of items) {
      it.batchTokens = batchTokens;
      it.batchRequests = items.length;
    }
    p.metrics.batchTokens.observe(batchTokens);
    try {
      await p.gate.atFlush(layer, items);
      // The router computes the shared expert for these: read it from the checkpoint the first time.
      if (m.loadShared && items.some((i) => i.sharedInput && !i.done)) {
        try {
          await m.loadShared(layer);
        } catch (e) {
          // Only the requests that need the router's shared expert fail; the next flush reads it again.
          for (const it of items) if (it.sharedInput) this.finish(p, it, e);
        }
      }
      // Requests that ended while the gate ran (deadline, cancel, a bad gate product) take no capacity from the
      // others, add no heat, and send no rows.
      if (items.some((i) => i.done)) items = items.filter((i) => !i.done);
      if (items.length === 0) return;
      const routings = items.map((i) => i.routing);
      const all = collectAssignments(routings);
      // The shared expert's slices take every token: no capacity, no heat; they go with the first round. Split them
      // off even when the plan no longer places them (it changed after these requests' gate): dispatch then fails
      // them as unplaced, naming the expert, where capacity would have dropped them without a word.
      const sharedSlots = (m.sharedSlices ?? 0) > 0 ? all.filter((a) => a.expert >= m.experts) : [];
      const routed = sharedSlots.length > 0 ? all.filter((a) => a.expert < m.experts) : all;
      const cap = applyCapacity(routed, m.experts, p.policy.gating.capacityFactor, p.policy.gating.overflow, routings);
      for (const a of cap.dropped) items[a.item].dropped++;
      if (cap.dropped.length > 0) p.metrics.dropped.inc(cap.dropped.length);
      // Spill may have moved an assignment to another expert: the combine weight stays with its slot, and the
      // item's routing now names the expert that runs it (stats.experts_touched counts those).
      const rounds = cap.rounds;
      if (p.policy.gating.overflow === "spill" && p.policy.gating.capacityFactor !== null)
        for (const r of rounds)
          for (const a of r) {
            const rt = routings[a.item];
            rt.experts[a.token * rt.slots + a.slot] = a.expert;
          }
      const touched = new Set<number>();
      // heat rows hold the slices too (ids E + j): the operator's rebalance reads the tokens they actually get
      const heatWidth = m.experts + (m.sharedSlices ?? 0);
      for (const r of rounds) {
        for (const a of r) {
          touched.add(a.expert);
          p.metrics.addHeat(layer, heatWidth, a.expert, 1);
        }
      }
      for (const a of sharedSlots) p.metrics.addHeat(layer, heatWidth, a.expert, 1);
      if (sharedSlots.length > 0) rounds[0] = rounds.length > 0 ? rounds[0].concat(sharedSlots) : sharedSlots;
      p.metrics.expertsPerBatch.observe(touched.size);
      // Each request is answered the moment its own rows (and shared expert) are in, not when the flush's slowest
      // batch ends: that batch may wait on a hung worker until another request's later deadline.
      const progress = new FlushProgress(items.length, (i) => this.answer(p, m, items[i]));
      // The workers answer one flush's batches at about the same time: a batch still out when the rest of the flush
      // has taken as long again as its first answer did is on a slow or hung worker, and requests of the key held
      // behind it (the batcher's flushesInFlight) would only wait longer. The flush stops holding them then, and in
      // any case HOLD_CAP_MS after it went out: a flush whose every row went to a stuck worker has no first answer,
      // and would hold each later request of its key for the batcher's hold cap until its requests' deadlines. Why
      // HOLD_CAP_MS: it is what the batcher already judges holding a request to be worth (it sends one held that long
      // anyway), so the stuck flush costs the requests that arrive in its first HOLD_CAP_MS no more than today, and
      // later ones nothing; and it is far above the round trip of a batch the workers are answering (a few ms), so a
      // healthy flush never reaches it. A flush really that slow (a huge prefill on a busy GPU) then overlaps one more
      // flush of its key, which the workers' own queues bound (RESOURCE_EXHAUSTED past their queue capacity).
      const sentAt = performance.now();
      releaseIn(HOLD_CAP_MS);
      void progress.firstAnswer().then(() => {
        if (progress.allEnded) return;
        const took = performance.now() - sentAt;
        if (2 * took < HOLD_CAP_MS) releaseIn(took);
      });
      for (let i = 0; i < items.length; i++) {
        const it = items[i];
        it.progress = progress;
        it.flushIndex = i;
        if (it.sharedInput) progress.expect(i); // the shared expert the router computes
      }
      for (const r of rounds) for (const a of r) progress.expect(a.item);
      // The shared expert of the whole flush, natively off the event loop where the model can (one read of its
      // weights for every token of the flush), started before the rounds so that it overlaps them.
      // A shared expert that fails fails only the requests that need it (not routed_only ones, nor those whose
      // shared expert runs on workers).
      const failShared = (it: Item, e: unknown) => this.finish(p, it, e);
      const sharedIn = () => {
        for (let i = 0; i < items.length; i++) if (items[i].sharedInput) progress.sharedIn(i);
      };
      const sharedAll = m.hasShared && m.sharedBatch ? sharedForFlush(m, layer, items, failShared) : null;
      void sharedAll?.then(sharedIn); // never rejects
      const sharedHere = () => {
        for (const it of items)
          if (it.sharedInput && !it.done)
            try {
              it.sharedOut = m.shared(layer, it.sharedInput, it.tokens, it.dtype);
            } catch (e) {
              failShared(it, e);
            }
        sharedIn();
      };
      progress.readyNow(); // requests that wait for nothing (every slot dropped or empty)
      for (let r = 0; r < rounds.length && !progress.allEnded; r++) {
        const next = rounds[r + 1];
        progress.startRound(next ? rowsOfExperts(rounds[r], next) : []);
        const sent = this.dispatchRound(p, layer, items, rounds[r], progress);
        // Else the shared expert runs here, in TypeScript, while the first round's batches are on the workers.
        if (r === 0 && !sharedAll) sharedHere();
        // The next round (overflow "queue") goes once this one has handed back its rows of the experts the next
        // holds (or their requests ended), not when its slowest batch ends: that may be another expert's, on a hung
        // worker, until the latest deadline of its rows.
        if (next) await Promise.race([sent, progress.roundDone()]);
      }
      if (rounds.length === 0 && !sharedAll) sharedHere();
      // Done once every request has ended (each has a deadline timer), however long a batch no live request waits
      // for is still out.
      await progress.allDone();
    } catch (e) {
      for (const it of items) this.finish(p, it, e);
    } finally {
      over = true;
      if (hold) clearTimeout(hold);
    }
  }

  /** Combines a request whose every part is in (worker rows and sums, its shared expert) and answers it. */
  private answer(p: Pool, m: PoolModel, it: Item): void {
    if (it.done) return;
    try {
      const stats = {
        expertsTouched: distinctExperts(it, m.experts),
        workersUsed: it.workers.size,
        queueWaitMs: it.queueWaitMs,
        totalMs: performance.now() - it.enqueuedAt,
        droppedAssignments: it.dropped,
        batchTokens: it.batchTokens,
        batchRequests: it.batchRequests,
      };
      // Encode the reply once, then write the combined rows straight into its data field.
      const el = dtypeSize(it.dtype);
      const shape = [it.tokens, m.hiddenSize];
      const enc = encodeForwardResponse(
        it.requestId,
        it.dtype,
        shape,
        it.tokens * m.hiddenSize * el,
        stats,
        undefined,
        el,
        takeReply,
      );
      const dst =
        it.dtype === DType.FLOAT32
          ? new Float32Array(enc.data.buffer, enc.data.byteOffset, enc.data.byteLength / 4)
          : new Uint16Array(enc.data.buffer, enc.data.byteOffset, enc.data.byteLength / 2);
      const nonFinite = combineInto(
        {
          tokens: it.tokens,
          d: m.hiddenSize,
          dtype: it.dtype,
          slots: it.slots,
          weights: it.weights,
          locations: it.locations,
          results: it.results,
          base: baseWithPartials(it, m.hiddenSize),
        },
        dst,
      );
      // Both transports (gRPC and the data path) answer from here: neither hands out an Inf or NaN the sum made.
      if (nonFinite) {
        replyPool.give(enc.backing);
        throw nonFiniteOutput(it, dst, m.hiddenSize);
      }
      const res: ForwardResponse = {
        requestId: it.requestId,
        hidden: { dtype: it.dtype, shape, data: enc.data },
        stats,
        error: undefined,
      };
      (res as unknown as Record<symbol, Buffer>)[ENCODED] = enc.message;
      (res as unknown as Record<symbol, Buffer>)[BACKING] = enc.backing;
      this.finish(p, it, null, res);
    } catch (e) {
      this.finish(p, it, e);
    }
  }

  /**
   * Dispatches one round; retries failed workers' rows on other replicas. The workers that failed are remembered as
   * connections, not plan indices: a plan that changes while a batch is out (setPool) can reorder or drop workers,
   * and each attempt lays its rows out against the plan of that moment. Never rejects.
   */
  private async dispatchRound(
    p: Pool,
    layer: number,
    items: Item[],
    round: Assignment[],
    progress: FlushProgress,
  ): Promise<void> {
    // the workers that failed in this round, each with its error: a request no replica is left for is told them
    const failures = new RoundFailures();
    const todo = items.some((i) => i.done) ? round.filter((a) => !items[a.item].done) : round;
    try {
      await this.dispatchRows(p, layer, items, todo, 0, failures, progress);
    } catch (e) {
      for (const a of round) this.finish(p, items[a.item], e);
    }
  }

  /**
   * Attempt `attempt` at `rows`: laid out against the plan of this moment, without the workers that failed them in
   * this round. A batch's rows go again as soon as that batch fails, not when the attempt's slowest batch ends.
   */
  private async dispatchRows(
    p: Pool,
    layer: number,
    items: Item[],
    rows: Assignment[],
    attempt: number,
    failures: RoundFailures,
    progress: FlushProgress,
  ): Promise<void> {
    if (rows.length === 0) return;
    if (attempt >= MAX_DISPATCH_ATTEMPTS) {
      this.failUnplaced(p, layer, items, rows, failures);
      return;
    }
    const conns = p.conns;
    const lay = layoutRound(rows, {
      layer,
      replicas: p.replicas[layer] ?? [],
      workers: conns.length,
      chooser: p.chooser(),
      splitTokens: Math.max(16, p.policy.batching.maxBatchTokens / Math.max(1, conns.length)),
      exclude: indicesOf(conns, failures.workers),
      excludeFor: failures.perExpert(conns),
    });
    this.failUnplaced(p, layer, items, lay.unplaced, failures);
    const one = async (b: WorkerBatchLayout): Promise<void> => {
      const again = await this.sendOrRetry(p, layer, items, b, failures, progress);
      if (again === null) return;
      if (again.resend.length === 0) {
        await this.dispatchRows(p, layer, items, again.retry, attempt + 1, failures, progress);
        return;
      }
      await Promise.all([
        this.dispatchRows(p, layer, items, again.retry, attempt + 1, failures, progress),
        // The rows of the experts the worker did not refuse go again (to it, if the choice says so) without spending
        // an attempt: each such resend follows a refusal that left one more (worker, expert) out, so it ends.
        this.dispatchRows(p, layer, items, again.resend, attempt, failures, progress),
      ]);
    };
    // One batch (one worker) is the common case at small T: no Promise.all around it.
    if (lay.batches.length === 1) await one(lay.batches[0]);
    else await Promise.all(lay.batches.map(one));
  }

  /**
   * send(); when another replica may answer, returns the batch's still-live rows to send again (`retry`, with the
   * worker left out for the rest of the round): the worker unavailable or full, a deadline not yet everyone's, or
   * FAILED_PRECONDITION / INVALID_ARGUMENT, the worker's own state (an expert its plan no longer holds: plans reach
   * router and workers at different times; a checkpoint it cannot read or that disagrees with the router's). A
   * refusal that names one slice (`slices[i]...`) leaves the worker out for that slice's expert alone: `retry` holds
   * that expert's rows, `resend` the others'. Other errors fail the batch's requests (null, as on success).
   */
  private async sendOrRetry(
    p: Pool,
    layer: number,
    items: Item[],
    b: WorkerBatchLayout,
    failures: RoundFailures,
    progress: FlushProgress,
  ): Promise<{ retry: Assignment[]; resend: Assignment[] } | null> {
    const live = b.rows.some((a) => !items[a.item].done);
    if (!live) return null;
    // the connection the batch goes to, before any await: p.conns may be another plan's when it answers
    const conn = p.conns[b.worker];
    try {
      await this.send(p, layer, items, b, conn, progress);
      return null;
    } catch (e) {
      // Abandoned here, its every request ended (finish()): nothing to retry, and not the worker's error.
      if (errorCodeOf(e) === "CANCELLED" && !b.rows.some((a) => !items[a.item].done)) return null;
      // (not for a connection the plan dropped meanwhile: that would bring its forgotten series back)
      if (!conn.isClosed) p.metrics.worker(conn.id).errors.inc();
      const code = errorCodeOf(e);
      const rows = b.rows.filter((a) => !items[a.item].done);
      // A worker's INVALID_ARGUMENT is about the batch the router built (its pool, layer and shapes against the
      // worker's checkpoint, its row limits: the router checked the request itself), so it is the worker's state,
      // not the caller's fault: another replica may agree with the router (a rollout), and with none left the caller
      // is told UNAVAILABLE with the worker's words, never INVALID_ARGUMENT about a request it sent right.
      if (code === "FAILED_PRECONDITION" || code === "INVALID_ARGUMENT") {
        const slice = refusedSlice(e, b.slices.length);
        if (slice !== null) {
          // One expert refused (a plan rollout: the worker has dropped it, the router's plan still lists it): the
          // requests of its other experts are not failed with it, nor sent away from a worker that serves them.
          const expert = b.slices[slice].expert;
          const fresh = failures.refuse(conn, expert, e);
          if (!fresh) return { retry: rows, resend: [] };
          return { retry: rows.filter((a) => a.expert === expert), resend: rows.filter((a) => a.expert !== expert) };
        }
      }
      if (
        isRetryable(e) ||
        code === "FAILED_PRECONDITION" ||
        code === "INVALID_ARGUMENT" ||
        (code === "DEADLINE_EXCEEDED" && !allExpired(items, b))
      ) {
        failures.workers.set(conn, e);
        return { retry: rows, resend: [] };
      }
      for (const a of b.rows) this.finish(p, items[a.item], e);
      return null;
    }
  }

  private failUnplaced(p: Pool, layer: number, items: Item[], unplaced: Assignment[], failures: RoundFailures): void {
    for (const a of unplaced) {
      const it = items[a.item];
      if (it.done) continue;
      const conns = (p.replicas[layer]?.[a.expert] ?? []).map((w) => p.conns[w]);
      const reps = conns.map((c, i) => c?.id ?? `#${p.replicas[layer]?.[a.expert]?.[i]}`);
      // what each of its replicas that failed it in this round answered (the worker's own words, naming the field)
      const failedHere = conns.filter((c): c is WorkerConn => c !== undefined && failures.has(c, a.expert));
      const errors = failedHere.map((c) => {
        const e = failures.errorOf(c, a.expert);
        return `${c.id}: ${(e as Error)?.message ?? String(e)}`;
      });
      const why =
        reps.length === 0
          ? "no worker in the placement plan holds it"
          : `replicas ${reps.join(", ")} ${failures.any ? "failed or are" : "are"} unavailable${errors.length ? ` (${errors.join("; ")})` : ""}`;
      const message = `pool ${p.name} layer ${layer} expert ${a.expert}: ${why}`;
      // Every replica refused the batch itself (INVALID_ARGUMENT: a checkpoint that disagrees with the router's, a
      // row limit): sending it again will not help, so the caller is not told to retry (UNAVAILABLE would be).
      const refusedByAll =
        conns.length > 0 &&
        failedHere.length === conns.length &&
        failedHere.every((c) => errorCodeOf(failures.errorOf(c, a.expert)) === "INVALID_ARGUMENT");
      this.finish(p, it, refusedByAll ? failedPrecondition(message) : unavailable(message));
    }
  }

  private async send(
    p: Pool,
    layer: number,
    items: Item[],
    b: WorkerBatchLayout,
    conn: WorkerConn,
    progress: FlushProgress,
  ): Promise<void> {
    const first = items[b.rows[0].item];
    // the flush's model (its items'): p.model may have changed since the flush began
    const d = first.model.hiddenSize;
    const dtype = first.dtype;
    const rowBytes = d * dtypeSize(dtype);
    const n = b.rows.length;
    let deadline = 0;
    for (const a of b.rows) deadline = Math.max(deadline, items[a.item].deadline);
    const timeout = Math.max(1, deadline - Date.now());
    const wm = p.metrics.worker(conn.id);
    for (const s of b.slices) p.metrics.tokensPerExpertCall.observe(s.count);
    wm.tokens.inc(n);
    // A worker that takes them gets each distinct token once, and sums a token's rows itself where that answer is
    // the smaller one (token-rows.ts in the worker).
    const dedup =
      conn.lastStatus?.combines === true
        ? dedupRows(items, b.rows, rowBytes, this.dedupMinBytes, rowBytes < d * 4)
        : null;
    const sent = dedup ? dedup.pairs.length >> 1 : n;
    const t0 = performance.now();
    // Until the batch settles, its requests' tokens stay charged to admission, even those that end first (release());
    // the last of its live requests to end abandons it (finish()).
    const sentIn: OutBatch = { conn, id: 0, live: 0, settled: false };
    for (const a of b.rows) {
      const it = items[a.item];
      it.rowsOut++;
      if (it.done) continue;
      // (an item's rows of one batch are not consecutive, but nothing else is pushed to its list meanwhile)
      const bs = it.batches;
      if (bs === null) it.batches = [sentIn];
      else if (bs[bs.length - 1] !== sentIn) bs.push(sentIn);
      else continue;
      sentIn.live++;
    }
    let res: ExpertResult;
    try {
      res = await conn.run(
        (batchId) => {
          sentIn.id = Number(batchId); // (run() calls this synchronously, before it can settle)
          return encodeExpertBatch(
            {
              pool: p.workerPool,
              layer,
              dtype,
              rows: sent,
              hidden: d,
              rowBytes,
              slices: b.slices,
              batchId,
              // The flush's remaining deadline when the batch goes out (encode runs inside run(), synchronously):
              // stream batches carry no gRPC deadline.
              timeoutMs: timeout,
              tokenRows: dedup?.tokenRows,
              rowWeights: dedup?.weights,
              combine: dedup?.weights !== undefined,
            },
            (dst, at) => {
              for (let r = 0; r < sent; r++) {
                const item = dedup ? dedup.pairs[2 * r] : b.rows[r].item;
                const token = dedup ? dedup.pairs[2 * r + 1] : b.rows[r].token;
                const src = items[item].hidden;
                dst.set(src.subarray(token * rowBytes, (token + 1) * rowBytes), at + r * rowBytes);
              }
            },
            takeBatch,
          );
        },
        layer,
        b.slices.map((s) => s.expert),
        timeout,
        n,
        // a reply of the wrong size or dtype is the worker's fault (retried elsewhere), and counts against it
        (r) => {
          const o = r.output;
          const [rowsWanted, dtypeWanted, bytes] = dedup?.weights
            ? [sent, DType.FLOAT32, sent * d * 4]
            : [n, dtype, n * rowBytes];
          if (o && o.dtype === dtypeWanted && o.data.byteLength === bytes) return null;
          return unavailable(
            `worker ${conn.id}: malformed ${dedup?.weights ? "combined " : ""}result (expected ${rowsWanted}x${d} ${DType[dtypeWanted]}, got ${o ? `${o.shape.join("x")} ${DType[o.dtype]}, ${o.data.byteLength} bytes` : "no output"})`,
          );
        },
      );
    } finally {
      sentIn.settled = true;
      for (const a of b.rows) {
        const it = items[a.item];
        if (--it.rowsOut === 0) this.release(p, it);
      }
    }
    wm.dispatch.observe((performance.now() - t0) / 1000);
    const out = res.output as NonNullable<typeof res.output>; // run() checked it
    if (dedup?.weights) {
      addPartials(items, b, dedup, alignedRows({ data: out.data, dtype: DType.FLOAT32 }) as Float32Array);
      progress.rowsIn(b.rows);
      return;
    }
    const rows = resultRows({ data: out.data, dtype });
    // Index of this result in each item's results (-1: not yet added); rows come grouped by expert, not by item.
    const perItem: number[] = new Array(items.length).fill(-1);
    for (let r = 0; r < n; r++) {
      const a = b.rows[r];
      const it = items[a.item];
      if (it.done) continue;
      let ri = perItem[a.item];
      if (ri < 0) {
        ri = it.results.length;
        it.results.push(rows);
        it.workers.add(b.worker);
        perItem[a.item] = ri;
      }
      const li = (a.token * it.slots + a.slot) * 2;
      it.locations[li] = ri;
      it.locations[li + 1] = r;
    }
    progress.rowsIn(b.rows); // filed: the requests they complete are answered now
  }
}

/** The rows of `round` whose experts `next` also holds: what the next overflow round waits for. */
function rowsOfExperts(round: readonly Assignment[], next: readonly Assignment[]): Assignment[] {
  const experts = new Set<number>();
  for (const a of next) experts.add(a.expert);
  return round.filter((a) => experts.has(a.expert));
}

/**
 * The slice a worker's refusal names (`slices[i]...`, its field, or its message's start where the field did not
 * cross the wire: stream replies carry the message only), or null when it names none of the batch's.
 */
export function refusedSlice(e: unknown, slices: number): number | null {
  const field = (e as { field?: unknown })?.field;
  const text = typeof field === "string" ? field : e instanceof Error ? e.message : "";
  const m = /^slices\[(\d+)\]/.exec(text);
  if (!m) return null;
  const i = Number(m[1]);
  return i < slices ? i : null;
}

/**
 * The workers that failed in one dispatch round, each with its error: left out of the round's later attempts, and
 * named to a request no replica is left for. Kept as connections, not plan indices (the plan may change meanwhile).
 */
class RoundFailures {
  /** Workers that failed a whole batch (down, full, past a deadline, refused the batch itself). */
  readonly workers = new Map<WorkerConn, unknown>();
  /** Per expert, workers that refused that expert alone (a refusal naming its slice). */
  private readonly experts = new Map<number, Map<WorkerConn, unknown>>();

  /** Records that `conn` refused `expert`; false when it was already left out for it. */
  refuse(conn: WorkerConn, expert: number, e: unknown): boolean {
    let m = this.experts.get(expert);
    if (!m) {
      m = new Map();
      this.experts.set(expert, m);
    }
    if (m.has(conn) || this.workers.has(conn)) return false;
    m.set(conn, e);
    return true;
  }

  has(conn: WorkerConn, expert: number): boolean {
    return this.workers.has(conn) || this.experts.get(expert)?.has(conn) === true;
  }

  /** What `conn` answered when it failed `expert`'s rows in this round. */
  errorOf(conn: WorkerConn, expert: number): unknown {
    return this.workers.has(conn) ? this.workers.get(conn) : this.experts.get(expert)?.get(conn);
  }

  get any(): boolean {
    return this.workers.size > 0 || this.experts.size > 0;
  }

  /** The per-expert exclusions as plan indices of `conns` (layoutRound's excludeFor). */
  perExpert(conns: readonly WorkerConn[]): Map<number, Set<number>> | undefined {
    if (this.experts.size === 0) return undefined;
    const out = new Map<number, Set<number>>();
    for (const [expert, m] of this.experts) out.set(expert, indicesOf(conns, m));
    return out;
  }
}

/** A batch's distinct (item, token) pairs and what the worker needs to expand (and sum) them. */
interface DedupRows {
  /** item, token of each distinct row, flattened */
  pairs: number[];
  /** [rows]: the distinct row each assignment row reads */
  tokenRows: Uint32Array;
  /** [rows]: the gate weight of each assignment row, when the worker sums them (ExpertBatch.combine) */
  weights?: Float32Array;
}

/**
 * Distinct tokens of a worker batch, or null when that saves less than `minBytes`. `halfRows`: the rows are bf16 or
 * fp16, half the bytes of a token's FLOAT32 sum.
 */
function dedupRows(
  items: Item[],
  rows: readonly Assignment[],
  rowBytes: number,
  minBytes: number,
  halfRows: boolean,
): DedupRows | null {
  const n = rows.length;
  if ((n - 1) * rowBytes < minBytes) return null; // even one distinct token would not save enough
  const index = new Map<number, number>();
  const pairs: number[] = [];
  const tokenRows = new Uint32Array(n);
  for (let r = 0; r < n; r++) {
    const a = rows[r];
    const key = a.item * TOKEN_KEY_STRIDE + a.token;
    let u = index.get(key);
    if (u === undefined) {
      u = pairs.length >> 1;
      index.set(key, u);
      pairs.push(a.item, a.token);
    }
    tokenRows[r] = u;
  }
  const distinct = pairs.length >> 1;
  if (distinct === n || (n - distinct) * rowBytes < minBytes) return null;
  // Summed answers are FLOAT32, and the router adds each token's sums itself: worth it where they are at most half
  // the bytes of the rows (half-precision rows: n >= 4 distinct, a token's 4 or more experts on this worker; fp32
  // rows: n >= 2 distinct). Mixtral's top-2 on one worker (bf16, n = 2 distinct: sums as large as the rows) ran 15%
  // slower combined (bench/results/h200-moe.md).
  const sum = halfRows ? n >= 4 * distinct : n >= 2 * distinct;
  if (!sum) return { pairs, tokenRows };
  const weights = new Float32Array(n);
  for (let r = 0; r < n; r++) {
    const a = rows[r];
    const it = items[a.item];
    weights[r] = it.weights[a.token * it.slots + a.slot];
  }
  return { pairs, tokenRows, weights };
}

/**
 * Fewest bytes a batch must save before it goes deduplicated. Measured on one H200 worker, 64 sequences
 * (bench/results/h200-moe.md): DeepSeek-V3's batches save ~1.7 MB (+22% tokens/s), Qwen3-30B-A3B's ~360 KB (+12%);
 * Mixtral-8x7B's top-2 saves ~67 KB and ran 5% slower deduplicated, where the dedup's own passes (here, the worker's
 * expand) cost more than the transfer saved. From SWITCHYARD_ROUTER_DEDUP_MIN_BYTES ("off": never).
 */
export function dedupMinBytes(raw: string | undefined): number {
  if (raw === undefined || raw === "") return 256 * 1024;
  if (raw === "off") return Number.POSITIVE_INFINITY;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0)
    throw new Error(`SWITCHYARD_ROUTER_DEDUP_MIN_BYTES: expected a byte count >= 0 or "off", got "${raw}"`);
  return n;
}

/** SWITCHYARD_ROUTER_GATE_AHEAD ("on", the default, or "off"): RouterOptions.gateAhead. */
export function gateAhead(raw: string | undefined): boolean {
  if (raw === undefined || raw === "" || raw === "on") return true;
  if (raw === "off") return false;
  throw new Error(`SWITCHYARD_ROUTER_GATE_AHEAD: expected "on" or "off", got "${raw}"`);
}

/** Stride of an (item, token) key: tokens per request stay far below it. */
const TOKEN_KEY_STRIDE = 2 ** 32;

/**
 * Files a combined result with its items: each token's FLOAT32 sum as a partial (added at the combine, in slot
 * order of the first slot it covers, so answers do not depend on which worker replied first), and the slots it
 * covers marked COVERED.
 */
function addPartials(items: Item[], b: WorkerBatchLayout, dedup: DedupRows, sums: Float32Array): void {
  const { tokenRows } = dedup;
  const entries = new Map<number, Partial>();
  for (let r = 0; r < b.rows.length; r++) {
    const a = b.rows[r];
    const it = items[a.item];
    if (it.done) continue;
    let e = entries.get(a.item);
    if (!e) {
      e = { sums, row: new Int32Array(it.tokens).fill(-1), firstSlot: new Int32Array(it.tokens).fill(-1) };
      entries.set(a.item, e);
      if (it.partials) it.partials.push(e);
      else it.partials = [e];
      it.workers.add(b.worker);
    }
    const u = tokenRows[r];
    e.row[a.token] = u;
    if (e.firstSlot[a.token] < 0 || a.slot < e.firstSlot[a.token]) e.firstSlot[a.token] = a.slot;
    const li = (a.token * it.slots + a.slot) * 2;
    it.locations[li] = COVERED;
    it.locations[li + 1] = 0;
  }
}

const takeReply = (bytes: number) => replyPool.take(bytes);
const takeBatch = (bytes: number) => batchPool.take(bytes);

function allExpired(items: Item[], b: WorkerBatchLayout): boolean {
  const now = Date.now();
  return b.rows.every((a) => items[a.item].deadline <= now);
}

/** Routed experts the request reached (the shared expert's slices, ids from `experts` on, are not counted). */
/** The plan indices of `conns` that are in `set`. */
function indicesOf(conns: readonly WorkerConn[], set: ReadonlyMap<WorkerConn, unknown>): Set<number> {
  const out = new Set<number>();
  if (set.size > 0) for (let i = 0; i < conns.length; i++) if (set.has(conns[i])) out.add(i);
  return out;
}

function distinctExperts(it: Item, experts: number): number {
  const s = new Set<number>();
  const r = it.routing;
  for (let t = 0; t < r.tokens; t++) {
    for (let k = 0; k < r.slots; k++) {
      const li = (t * it.slots + k) * 2;
      const e = r.experts[t * r.slots + k];
      if (it.locations[li] !== -1 && e < experts) s.add(e);
    }
  }
  return s.size;
}

function emptyStats() {
  return {
    expertsTouched: 0,
    workersUsed: 0,
    queueWaitMs: 0,
    totalMs: 0,
    droppedAssignments: 0,
    batchTokens: 0,
    batchRequests: 0,
  };
}

/**
 * Starts the model's batched shared expert over every live item of a flush and, when it is done, gives each item its
 * rows; null when the model cannot batch it (the caller runs shared() per item). The promise never rejects
 * unobserved: a flush that returns early (every item done) drops it.
 */
function sharedForFlush(
  m: PoolModel,
  layer: number,
  items: Item[],
  fail: (it: Item, e: unknown) => void,
): Promise<void> | null {
  const need = items.filter((it) => it.sharedInput && !it.done);
  if (need.length === 0) return null;
  const d = m.hiddenSize;
  let n = 0;
  for (const it of need) n += it.tokens;
  let all = need[0].sharedInput!;
  if (need.length > 1) {
    all = new Float32Array(n * d);
    let off = 0;
    for (const it of need) {
      all.set(it.sharedInput!, off * d);
      off += it.tokens;
    }
  }
  // one dtype for all: the batcher keys a flush by (layer, dtype)
  let run: Promise<Float32Array> | null;
  try {
    run = m.sharedBatch!(layer, all, n, need[0].dtype);
  } catch (e) {
    for (const it of need) fail(it, e);
    return Promise.resolve();
  }
  if (!run) return null;
  // never rejects: a failure fails the requests that needed it, when it comes
  return run.then(
    (out) => {
      let off = 0;
      for (const it of need) {
        it.sharedOut = out.subarray(off * d, (off + it.tokens) * d);
        off += it.tokens;
      }
    },
    (e) => {
      for (const it of need) fail(it, e);
    },
  );
}

interface HiddenView {
  tokens: number;
  dtype: DType;
  data: Uint8Array;
}

/** Validates hidden [T, d] without widening it: the data path moves raw rows. */
function checkHidden(t: NonNullable<ForwardRequest["hidden"]>, d: number): HiddenView {
  if (t.dtype !== DType.FLOAT32 && t.dtype !== DType.BFLOAT16 && t.dtype !== DType.FLOAT16) {
    throw invalidArgument("hidden.dtype", `expected FLOAT32, BFLOAT16 or FLOAT16, got ${DType[t.dtype] ?? t.dtype}`);
  }
  if (t.shape.length !== 2)
    throw invalidArgument("hidden.shape", `expected [tokens, ${d}], got [${t.shape.join(", ")}]`);
  if (t.shape[1] !== d) throw invalidArgument("hidden.shape[1]", `expected hidden size ${d}, got ${t.shape[1]}`);
  const T = t.shape[0];
  if (T * d > MAX_REQUEST_ELEMENTS)
    throw invalidArgument("hidden.shape", `${T} x ${d} elements exceed the limit of ${MAX_REQUEST_ELEMENTS}`);
  const want = T * d * dtypeSize(t.dtype);
  if (!t.data || t.data.byteLength !== want) {
    throw invalidArgument(
      "hidden.data",
      `expected ${want} bytes for [${T}, ${d}] ${DType[t.dtype]}, got ${t.data?.byteLength ?? 0}`,
    );
  }
  return { tokens: T, dtype: t.dtype, data: t.data };
}

/**
 * A client's string quoted for an error message, clipped to 128 characters: a status message carries it back, and a
 * 100 KB one in a gRPC trailer hung the caller's connection instead of answering NOT_FOUND.
 */
export function quoteClipped(s: string, max = 128): string {
  return s.length <= max ? JSON.stringify(s) : `${JSON.stringify(s.slice(0, max))}... (${s.length} characters)`;
}

/**
 * INVALID_ARGUMENT for a request whose combined output holds an Inf or NaN, naming its first such token: under the
 * assignment's weights when the engine gave them (finite, but e.g. 1e38 times an expert's output overflows fp32),
 * else under its hidden states (the experts' outputs for them, or the request dtype's range, e.g. fp16's 65504).
 */
function nonFiniteOutput(it: Item, dst: Float32Array | Uint16Array, d: number): SwitchyardError {
  const i = firstNonFinite(dst, it.dtype);
  const [t, j] = [Math.floor(i / d), i % d];
  const v = elementValue(dst, it.dtype, i);
  const what = `token ${t}'s combined output is not finite (${v} at column ${j}):`;
  return it.explicit
    ? invalidArgument(
        `assignment.weights[${t}]`,
        `${what} these weights times the experts' outputs overflow ${DType[it.dtype]}`,
      )
    : invalidArgument(`hidden[${t}]`, `${what} the experts' outputs for it overflow ${DType[it.dtype]}`);
}

/** Element i of combined rows as a number (only non-finite ones are asked for: a half's exponent is all ones). */
function elementValue(dst: Float32Array | Uint16Array, dtype: DType, i: number): number {
  if (dtype === DType.FLOAT32) return dst[i];
  const h = dst[i];
  const nan = dtype === DType.BFLOAT16 ? (h & 0x7f) !== 0 : (h & 0x3ff) !== 0;
  return nan ? Number.NaN : h & 0x8000 ? Number.NEGATIVE_INFINITY : Number.POSITIVE_INFINITY;
}

/** An explicit top-k assignment: expert ids INT32 [T, k] and weights FLOAT32 [T, k]. */
function explicitRouting(
  a: { expertIds?: ForwardRequest["hidden"]; weights?: ForwardRequest["hidden"] },
  T: number,
  E: number,
): TokenRouting {
  const ids = decodeTensor(a.expertIds, "assignment.expert_ids", { dtype: DType.INT32, rank: 2 });
  if (ids.shape[0] !== T)
    throw invalidArgument("assignment.expert_ids.shape[0]", `expected ${T} tokens (hidden rows), got ${ids.shape[0]}`);
  const k = ids.shape[1];
  // Each expert at most once per token: more slots than experts can only be empty ones, and a slot count without a
  // bound let one request hold the router's thread for seconds (its checks and buffers scale with T x k).
  if (k > E)
    throw invalidArgument("assignment.expert_ids.shape[1]", `${k} slots per token exceed the pool's ${E} experts`);
  const w = decodeTensor(a.weights, "assignment.weights", { dtype: DType.FLOAT32, shape: [T, k] });
  // The decoded values as they are (a view of the request's bytes when aligned, else a copy): routing arrays are
  // only read, and the request's bytes live as long as the request.
  const experts = ids.values as Int32Array;
  const weights = w.values as Float32Array;
  for (let i = 0; i < experts.length; i++) {
    const e = experts[i];
    if (e < -1 || e >= E) {
      throw invalidArgument(
        `assignment.expert_ids[${Math.floor(i / k)}][${i % k}]`,
        `expert ${e} out of range [0, ${E}) (-1 = empty slot)`,
      );
    }
    if (!Number.isFinite(weights[i]))
      throw invalidArgument(`assignment.weights[${Math.floor(i / k)}][${i % k}]`, `must be finite, got ${weights[i]}`);
  }
  // Duplicates in one pass: seen[e] holds the last token (+1) that listed expert e.
  const seen = new Int32Array(E);
  for (let t = 0; t < T; t++) {
    for (let s = 0; s < k; s++) {
      const e = experts[t * k + s];
      if (e < 0) continue;
      if (seen[e] === t + 1) throw invalidArgument(`assignment.expert_ids[${t}]`, `expert ${e} listed twice`);
      seen[e] = t + 1;
    }
  }
  return { tokens: T, slots: k, experts, weights };
}

function validatePlan(plan: PlacementPlan, m: PoolModel, pool: string): void {
  const f = `pools[${pool}].plan`;
  if (!Array.isArray(plan.workers) || plan.workers.length === 0)
    throw invalidArgument(`${f}.workers`, "must list at least one worker");
  // connections are kept per id: a second entry of one id would leave the first's connection open for good
  const seen = new Map<string, number>();
  for (let i = 0; i < plan.workers.length; i++) {
    const j = seen.get(plan.workers[i]);
    if (j !== undefined)
      throw invalidArgument(`${f}.workers[${i}]`, `${JSON.stringify(plan.workers[i])} repeats ${f}.workers[${j}]`);
    seen.set(plan.workers[i], i);
  }
  if (!Array.isArray(plan.replicas) || plan.replicas.length !== m.layers) {
    throw invalidArgument(`${f}.replicas`, `must have one entry per layer (${m.layers}), got ${plan.replicas?.length}`);
  }
  for (let l = 0; l < plan.replicas.length; l++) {
    const layer = plan.replicas[l];
    if (!Array.isArray(layer)) throw invalidArgument(`${f}.replicas[${l}]`, "must be an array per expert");
    if (layer.length === 0 && !m.isMoeLayer(l)) continue; // dense layer
    // or one more per shared slice, which places the shared expert on the workers
    const slices = m.sharedSlices ?? 0;
    if (layer.length !== m.experts && (slices === 0 || layer.length !== m.experts + slices)) {
      throw invalidArgument(
        `${f}.replicas[${l}]`,
        `must have one entry per expert (${m.experts}${slices > 0 ? `, or ${m.experts + slices} with the shared expert's ${slices} slices` : ""}), got ${layer?.length}`,
      );
    }
    for (let e = 0; e < layer.length; e++) {
      const reps = layer[e];
      if (!Array.isArray(reps))
        throw invalidArgument(`${f}.replicas[${l}][${e}]`, "must be an array of worker indices");
      for (const w of reps) {
        if (!Number.isInteger(w) || w < 0 || w >= plan.workers.length) {
          throw invalidArgument(
            `${f}.replicas[${l}][${e}]`,
            `worker index ${w} out of range [0, ${plan.workers.length})`,
          );
        }
      }
    }
  }
}

/** Whether a request checked against model `a` fits model `b`: the sizes its rows, layer and routing were checked by. */
function sameShape(a: PoolModel, b: PoolModel): boolean {
  return (
    a.hiddenSize === b.hiddenSize &&
    a.layers === b.layers &&
    a.experts === b.experts &&
    (a.sharedSlices ?? 0) === (b.sharedSlices ?? 0)
  );
}
