// One router -> worker connection. Batches go on a long-lived path that carries many at once, replies matched by
// batch_id: the worker's TCP data path (packages/protocol/src/data-path.ts) when its Status offers one and this
// connection may use it, else the RunExpertsStream gRPC stream (~3x cheaper per message than a unary call on
// grpc-js; see shared/bench/TRANSPORT.md) with a raised client flow-control window. Every send has a timeout, so no
// dispatch outlives its callers' deadlines. A broken path fails what is in flight on it with UNAVAILABLE (the flush
// then retries on another replica) and marks the worker down. The data path carries batches only once connected
// (the gRPC stream takes them while it connects), and one that fails to connect or breaks is left alone for a
// while, doubling per failure in a row (batches take the gRPC stream meanwhile), so a blocked data port costs no
// stalls. Status polls keep residency, queue depth, liveness and the data port fresh.
//
// Health: a failed Status or a broken path marks the worker down for `downMs` (out of replica choice), which the
// next good Status clears. A worker that answers Status but fails batches (a hung backend, an expert it cannot load)
// is not taken out: with one replica that would fail every request for the time out, and RESOURCE_EXHAUSTED is load,
// not a fault. It is made to look slow instead, so that the load-aware choice prefers other replicas where there are
// any: a timeout is a latency sample of the time it waited, an error reply the router retries elsewhere (retryable,
// FAILED_PRECONDITION, INVALID_ARGUMENT: the router built the batch) doubles the latency average (up to 10 s) where a
// success would have sampled its time (a fast error must not make a failing worker look fastest), and successes bring
// it back down (so does time: the replica choice believes an unsampled average less and less, core/latency-average.ts); a reply the caller finds malformed counts as such an error. Such a failure also marks it `failing`
// for FAILING_MS (or until a batch succeeds): the replica choice then keeps the penalty even where it reads run times
// from Prometheus, which has none for a worker that finishes no run (so does a batch unanswered for a second; a
// caller's short deadline passing does not). Two timeouts in a row
// on the data path reset that connection (a silently dropped path), so the next batches reconnect or take the gRPC
// stream. A worker that answers no Status poll three times in a row (a crashed node: no reset ever reaches us, and
// gRPC's keepalive takes ~15 s to notice) has the batches sent before the last failed poll given up with
// UNAVAILABLE, so they move to another replica instead of waiting for their callers' deadlines. A live worker answers
// Status from its event loop while its native backend computes on other threads, so this costs a live but busy
// worker nothing (the TypeScript reference backend, used only where no addon is built, yields between slices).

import {
  type ChannelOptions,
  type ClientDuplexStream,
  credentials,
  status as grpcStatus,
  Metadata,
  makeGenericClientConstructor,
} from "@grpc/grpc-js";
import {
  cancelled,
  deadlineExceeded,
  ExpertBatch,
  type ExpertResult,
  type ExpertWorkerClient,
  ExpertWorkerService,
  fromGrpcError,
  fromRpcError,
  isRetryable,
  type SwitchyardError,
  unavailable,
  type WorkerStatus,
} from "@switchyard/protocol";
import { type LatencyAverage, NO_LATENCY, withFailure, withSample, withTimeout } from "../core/latency-average.js";
import { batchPool } from "../wire/buffer-pool.js";
import { decodeExpertResult } from "../wire/decode.js";
import { DataConn } from "./data-conn.js";

/** Transport settings shared by the router's clients (and the benchmark's baseline forwarder). */
export const CLIENT_CHANNEL_OPTIONS: ChannelOptions = {
  "grpc.max_receive_message_length": 512 << 20,
  "grpc.max_send_message_length": 512 << 20,
  "grpc-node.flow_control_window": 16 << 20,
  "grpc.keepalive_time_ms": 10_000,
  "grpc.keepalive_timeout_ms": 5_000,
  "grpc.keepalive_permit_without_calls": 1,
  "grpc.initial_reconnect_backoff_ms": 100,
  "grpc.max_reconnect_backoff_ms": 2_000,
  // No transparent retries inside grpc-js: with them on, every message on a stream is first recorded in a per-call
  // retry buffer (and its write callback deferred a tick) in case the call must be replayed. The router re-lays a
  // failed worker's rows on another replica itself, so the buffering only costs CPU per message.
  "grpc.enable_retries": 0,
};

/**
 * The generated ExpertWorker client, except that RunExpertsStream also takes an ExpertBatch already encoded
 * (wire/encode.ts writes token rows straight into the message; ts-proto would copy them four times) and decodes
 * results without copying their rows (wire/decode.ts).
 */
const FastWorkerClient = makeGenericClientConstructor(
  {
    ...ExpertWorkerService,
    runExpertsStream: {
      ...ExpertWorkerService.runExpertsStream,
      requestSerialize: (v: ExpertBatch | Buffer): Buffer =>
        Buffer.isBuffer(v) ? v : Buffer.from(ExpertBatch.encode(v).finish()),
      responseDeserialize: decodeExpertResult,
    },
  },
  "switchyard.v1.ExpertWorker",
) as unknown as new (
  address: string,
  creds: ReturnType<typeof credentials.createInsecure>,
  options: ChannelOptions,
) => ExpertWorkerClient;

/** Highest latency average a run of failed batches can give a worker (ms). */
const FAILED_LATENCY_MAX_MS = 10_000;
/** Timeouts in a row on one data-path connection that reset it. */
const DATA_TIMEOUTS_TO_RESET = 2;
/** Status polls in a row that fail before the batches in flight are given up on. */
const STATUS_FAILURES_TO_GIVE_UP = 3;
/** How long a failed batch marks a worker `failing` (unless a batch succeeds first). */
const FAILING_MS = 5000;
/** A batch unanswered this long when its timeout fires marks the worker failing. */
const STALLED_MS = 1000;

/** What WorkerConn needs of a path: a grpc-js duplex stream or a DataConn. */
interface BatchPath {
  write(msg: Buffer, done: () => void): unknown;
  end(): unknown;
}

interface Pending {
  resolve: (r: ExpertResult) => void;
  reject: (e: SwitchyardError) => void;
  timer: NodeJS.Timeout;
  tokens: number;
  sentAt: number;
  /** The path it went on: a broken path fails only its own batches. */
  via: BatchPath;
  /** The caller's check of a reply (null: well-formed), so that a malformed one counts as a failed batch. */
  check?: (r: ExpertResult) => SwitchyardError | null;
  /** Sent before its path's first reply: its round trip is no latency sample (see pathsAnswered). */
  first: boolean;
}

/**
 * "auto": the worker's TCP data path when its Status offers one (gRPC stream until the first Status, and for
 * `dataRetryMs` after the data path breaks); "grpc": the gRPC stream only.
 */
export type WorkerTransport = "auto" | "grpc";

/** The host part of a gRPC target ("h:p", "[v6]:p", "dns:///h:p"), or null where a TCP data path cannot follow it. */
export function hostOf(address: string): string | null {
  const a = address.replace(/^dns:(\/\/[^/]*)?\//, "");
  if (a.startsWith("unix:") || a.includes("/")) return null;
  if (a.startsWith("[")) {
    const end = a.indexOf("]");
    return end > 1 ? a.slice(1, end) : null;
  }
  const colon = a.lastIndexOf(":");
  const host = colon >= 0 ? a.slice(0, colon) : a;
  return host.length > 0 ? host : null;
}

export interface WorkerConnOptions {
  id: string;
  address: string;
  /** Interval of Status polls (residency, queue depth, liveness). 0 = no polling. */
  statusIntervalMs?: number;
  /** A worker whose path or Status failed stays out of replica choice this long (unless a Status poll succeeds sooner). */
  downMs?: number;
  /** Default "auto". */
  transport?: WorkerTransport;
  /** A data path that broke is left alone this long, doubled per failure in a row up to 5 min. Default 5000. */
  dataRetryMs?: number;
  /** A data-path connect not done by then counts as a failure. Default 3000. */
  dataConnectTimeoutMs?: number;
  /** Largest reply frame accepted on the data path (as the gRPC client's receive limit). */
  maxMessageBytes?: number;
}

export class WorkerConn {
  readonly id: string;
  readonly address: string;
  private client: ExpertWorkerClient;
  private stream: ClientDuplexStream<ExpertBatch | Buffer, ExpertResult> | null = null;
  private data: DataConn | null = null;
  /** The worker's data-path port from its last Status (0: none offered). */
  private dataPort = 0;
  private dataOffUntil = 0;
  /** Data-path failures since it last carried a reply (the backoff's exponent). */
  private dataFailures = 0;
  /** Batches on the current data-path connection that timed out since its last reply. */
  private dataTimeouts = 0;
  private readonly dataConnectTimeoutMs: number;
  private readonly dataHost: string | null;
  private readonly transport: WorkerTransport;
  private readonly dataRetryMs: number;
  private readonly maxMessageBytes: number;
  // Batch ids are numbers here (a Map keyed by BigInt hashes the BigInt, and BigInt++ allocates); the wire's uint64
  // takes them as BigInt (2^53 batches per connection would take centuries).
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private downUntil = 0;
  private statusTimer: NodeJS.Timeout | null = null;
  /** Status polls that failed since the last one answered. */
  private statusFailures = 0;
  private closed = false;
  /**
   * Paths that have answered a batch. The batches sent on a new stream or data connection before its first reply pay
   * its one-off costs (the stream's or socket's set-up, the worker's first pass through that path; under load a whole
   * wave of flushes lands on a new replica at once): tens of ms that would make a new replica read slow, and lose the
   * even split, until its reading faded. Their round trips are not sampled; timeouts still are.
   */
  private readonly pathsAnswered = new WeakSet<BatchPath>();
  /** Batch ids abandoned in this tick, by the path they went on: one cancel-only message per path (flushCancels). */
  private readonly toCancel = new Map<BatchPath, bigint[]>();

  /** Tokens sent and not yet answered. */
  outstandingTokens = 0;
  /** EWMA of dispatch round trips and when it was last sampled (see latencyMs, latencyAgeMs). */
  private latency: LatencyAverage = NO_LATENCY;
  /** performance.now() of its last failed batch from this router (an error reply, a malformed reply, given up); 0
   * after a success. */
  private failedAt = 0;
  /** Resident experts from the last Status, as layer*65536+expert; plus what the router sent since (optimistic). */
  readonly resident = new Set<number>();
  /** Experts its last Status listed as served (its share of the plan it has loaded), as layer*65536+expert; null
   * before the first Status. */
  served: Set<number> | null = null;
  queueDepth = 0;
  cacheHits = 0;
  cacheMisses = 0;
  lastStatus: WorkerStatus | null = null;
  private readonly downMs: number;

  constructor(o: WorkerConnOptions) {
    this.id = o.id;
    this.address = o.address;
    this.downMs = o.downMs ?? 1000;
    this.transport = o.transport ?? "auto";
    this.dataRetryMs = o.dataRetryMs ?? 5000;
    this.dataConnectTimeoutMs = o.dataConnectTimeoutMs ?? 3000;
    this.maxMessageBytes = o.maxMessageBytes ?? (CLIENT_CHANNEL_OPTIONS["grpc.max_receive_message_length"] as number);
    this.dataHost = hostOf(o.address);
    this.client = new FastWorkerClient(o.address, credentials.createInsecure(), CLIENT_CHANNEL_OPTIONS);
    const interval = o.statusIntervalMs ?? 1000;
    if (interval > 0) {
      const poll = () => {
        if (this.closed) return;
        this.refreshStatus(interval).finally(() => {
          if (this.closed) return;
          this.statusTimer = setTimeout(poll, interval);
          this.statusTimer.unref?.(); // polling alone must not keep a process alive
        });
      };
      this.statusTimer = setTimeout(poll, 0);
      this.statusTimer.unref?.();
    }
  }

  /** EWMA of its dispatch round trips, ms (0 = no sample yet); failed batches double it (see the header). */
  get latencyMs(): number {
    return this.latency.ms;
  }

  /** Sets the average as if sampled now (tests and tools that stage a worker's reading). */
  set latencyMs(ms: number) {
    this.latency = { ms, at: performance.now() };
  }

  /**
   * ms since its latency average was last sampled or failed: the replica choice believes it less the older it is
   * (core/latency-average.ts), so one slow sample cannot keep it out of the choice for good, and gives a tie to the
   * oldest. Infinity before the first sample: a copy never heard from is the oldest, so it wins a tie and gets the
   * batch that samples it (with 0 it lost every tie to a copy that had been sampled, and at light load, where every
   * score ties, a new replica got no traffic at all). The choice fades nothing for it (there is no reading of ours).
   */
  get latencyAgeMs(): number {
    return this.latency.ms === 0 ? Number.POSITIVE_INFINITY : performance.now() - this.latency.at;
  }

  /** A batch from this router failed within FAILING_MS and none has succeeded since. */
  get failing(): boolean {
    return this.failedAt > 0 && performance.now() - this.failedAt < FAILING_MS;
  }

  /** Closed: the plan dropped it, or the router shut down. */
  get isClosed(): boolean {
    return this.closed;
  }

  get healthy(): boolean {
    return !this.closed && performance.now() >= this.downUntil;
  }

  /** Whether its last Status lists (layer, expert) as served; true before the first Status (nothing known yet). */
  serves(layer: number, expert: number): boolean {
    return this.served === null || this.served.has(layer * 65536 + expert);
  }

  isResident(layer: number, expert: number): boolean {
    return this.resident.has(layer * 65536 + expert);
  }

  /**
   * Sends one batch on the worker's current path (data path or gRPC stream): `encode(batchId)` returns the encoded
   * ExpertBatch. Resolves with the worker's
   * result or rejects (UNAVAILABLE / DEADLINE_EXCEEDED / the worker's error). `experts` of `layer` count as resident
   * on this worker from now on (it loads what it runs). `check` judges a reply the worker sent without an error: one it
   * refuses rejects with its error, and counts against the worker as a retryable error reply does.
   */
  run(
    encode: (batchId: bigint) => Buffer,
    layer: number,
    experts: readonly number[],
    timeoutMs: number,
    tokens: number,
    check?: (r: ExpertResult) => SwitchyardError | null,
  ): Promise<ExpertResult> {
    if (this.closed) return Promise.reject(unavailable(`worker ${this.id} (${this.address}): connection closed`));
    const via = this.path();
    const batchId = this.nextId++;
    return new Promise<ExpertResult>((resolve, reject) => {
      const timer = setTimeout(
        () => {
          const p = this.pending.get(batchId);
          if (!p) return;
          this.pending.delete(batchId);
          this.outstandingTokens -= tokens;
          // It took at least this long: without the sample a worker that never answers keeps its old, fast average.
          const waited = performance.now() - p.sentAt;
          this.latency = withTimeout(this.latency, waited, performance.now());
          // A second without a word is the worker's failing; a caller's short deadline passing is not.
          if (waited >= STALLED_MS) this.failedAt = performance.now();
          reject(deadlineExceeded(`worker ${this.id} did not answer within ${Math.round(timeoutMs)} ms`));
          const data = this.data;
          if (p.via === data && ++this.dataTimeouts >= DATA_TIMEOUTS_TO_RESET)
            data.abort(new Error(`${this.dataTimeouts} batches in a row unanswered`));
        },
        Math.max(1, timeoutMs),
      );
      const first = !this.pathsAnswered.has(via);
      this.pending.set(batchId, { resolve, reject, timer, tokens, sentAt: performance.now(), via, check, first });
      this.outstandingTokens += tokens;
      for (const e of experts) this.resident.add(layer * 65536 + e);
      const msg = encode(BigInt(batchId));
      // A pooled batch buffer goes back once the path is done with it (grpc-js framed or the socket wrote it).
      via.write(msg, () => batchPool.give(msg));
    });
  }

  /**
   * Settles batch `batchId` here without its reply, because no request waits for it any more (every request with
   * rows in it ended: cancelled, past its deadline, failed elsewhere): its run() rejects with CANCELLED, its tokens
   * leave outstandingTokens, and the pending entry, which held the caller's batch (and so its requests' rows), is
   * forgotten. A reply that comes later is dropped, as one after a timeout is. A worker whose Status sets `cancels`
   * is told (ExpertBatch.cancel on the batch's own path, the tick's ids in one message): it takes the batch out of its
   * queue, or stops it where its backend can, instead of computing a result nobody reads. The wait counts as a timeout's would only where it says something:
   * waited longer than the average, the worker is slower than it read (a hung worker whose callers all give up first
   * must still look slow; with no average yet, only a wait of STALLED_MS); a shorter wait is no sample (the caller
   * gave up, not the worker). No-op for a batch already settled.
   */
  abandon(batchId: bigint | number): void {
    const id = Number(batchId);
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    this.outstandingTokens -= p.tokens;
    const now = performance.now();
    const waited = now - p.sentAt;
    if (this.latency.ms > 0 ? waited > this.latency.ms : waited >= STALLED_MS)
      this.latency = withTimeout(this.latency, waited, now);
    if (waited >= STALLED_MS) this.failedAt = now;
    if (this.lastStatus?.cancels === true) this.cancelLater(p.via, id);
    p.reject(cancelled(`worker ${this.id}: batch ${id} abandoned: every request in it has ended`));
  }

  private cancelLater(via: BatchPath, id: number): void {
    // A flush abandons its batches together: they leave as one message per path, after the tick's abandons.
    if (this.toCancel.size === 0) queueMicrotask(() => this.flushCancels());
    const ids = this.toCancel.get(via);
    if (ids) ids.push(BigInt(id));
    else this.toCancel.set(via, [BigInt(id)]);
  }

  private flushCancels(): void {
    for (const [via, ids] of this.toCancel) {
      // A path that has gone took its batches with it (the worker cancels what ran on a closed connection).
      const live = via === this.stream || (via === this.data && this.data.connected);
      if (!this.closed && live)
        via.write(Buffer.from(ExpertBatch.encode(ExpertBatch.fromPartial({ cancel: ids })).finish()), () => {});
    }
    this.toCancel.clear();
  }

  /** Whether batches go over the worker's data path now (connected; otherwise the gRPC stream). */
  get usingDataPath(): boolean {
    return this.data?.connected === true;
  }

  private path(): BatchPath {
    const data = this.data;
    if (data?.connected) return data;
    if (
      data === null &&
      this.transport === "auto" &&
      this.dataPort > 0 &&
      this.dataHost !== null &&
      performance.now() >= this.dataOffUntil
    ) {
      try {
        this.openData(this.dataHost, this.dataPort);
      } catch {
        // net.connect throws at once on some bad addresses: a failed connect, backed off like one
        this.data = null;
        this.backOffData();
      }
    }
    // Not connected yet (or not offered): this batch takes the gRPC stream.
    return this.ensureStream();
  }

  private openData(host: string, port: number): void {
    let replied = false;
    this.dataTimeouts = 0;
    const conn: DataConn = new DataConn(host, port, this.maxMessageBytes, this.dataConnectTimeoutMs, {
      onResult: (r) => {
        replied = true;
        this.dataFailures = 0;
        if (this.data === conn) this.dataTimeouts = 0;
        this.onResult(r);
      },
      onClose: (err) => {
        if (this.data === conn) this.data = null;
        const lost = this.failPath(conn, err, `data path ${host}:${port}`);
        // Broken (an error, closed under batches, or closed before it ever answered: a worker that refuses the
        // preface, as during a rolling upgrade, would otherwise be reconnected per batch): gRPC carries the
        // batches for a while.
        if (lost > 0 || err || !replied) this.backOffData();
      },
    });
    this.data = conn;
  }

  /** One more data-path failure in a row: batches take the gRPC stream for dataRetryMs, doubled per failure. */
  private backOffData(): void {
    this.dataFailures++;
    this.dataOffUntil = performance.now() + Math.min(this.dataRetryMs * 2 ** (this.dataFailures - 1), 300_000);
  }

  private readonly onResult = (r: ExpertResult): void => {
    const id = Number(r.batchId);
    const p = this.pending.get(id);
    if (!p) return; // timed out earlier; the late reply is dropped
    this.pending.delete(id);
    clearTimeout(p.timer);
    this.outstandingTokens -= p.tokens;
    this.pathsAnswered.add(p.via);
    if (r.error && r.error.code !== grpcStatus.OK) {
      // No latency sample of a fast error: it would make a failing worker look fastest. A worker that could not take
      // the batch, or refused it (the router built it: its plan or checkpoint disagrees), looks slower instead.
      const e = fromRpcError(r.error);
      if (
        isRetryable(e) ||
        e.code === "DEADLINE_EXCEEDED" ||
        e.code === "FAILED_PRECONDITION" ||
        e.code === "INVALID_ARGUMENT"
      )
        this.sampleFailure();
      p.reject(e);
      return;
    }
    const bad = p.check?.(r) ?? null;
    if (bad) {
      this.sampleFailure();
      p.reject(bad);
      return;
    }
    if (!p.first) this.sampleLatency(performance.now() - p.sentAt);
    this.failedAt = 0;
    p.resolve(r);
  };

  /** A failed batch: the latency average doubles (up to FAILED_LATENCY_MAX_MS) instead of taking a sample. */
  private sampleFailure(): void {
    this.failedAt = performance.now();
    this.latency = withFailure(this.latency, this.failedAt, FAILED_LATENCY_MAX_MS);
  }

  private sampleLatency(ms: number): void {
    this.latency = withSample(this.latency, ms, performance.now());
  }

  /** Fails what is in flight on `via` (only there): UNAVAILABLE naming the worker and the path. Returns how many. */
  private failPath(via: BatchPath, err: unknown, what: string): number {
    const cause = err ? fromGrpcError(err) : null;
    const e = unavailable(
      `worker ${this.id} (${this.address}): ${what} ${cause ? `failed: ${cause.message}` : "ended"}`,
      cause ?? undefined,
    );
    let inFlight = 0;
    for (const [id, p] of this.pending) {
      if (p.via !== via) continue;
      inFlight++;
      clearTimeout(p.timer);
      this.outstandingTokens -= p.tokens;
      this.pending.delete(id);
      p.reject(e);
    }
    // A data path that fails to connect says nothing about the worker (its gRPC stream may be fine); a path that
    // broke under batches, or a broken gRPC stream, does.
    if (inFlight > 0 || (cause && !(via instanceof DataConn))) this.markDown();
    return inFlight;
  }

  private ensureStream(): ClientDuplexStream<ExpertBatch | Buffer, ExpertResult> {
    if (this.stream) return this.stream;
    const s = this.client.runExpertsStream() as unknown as ClientDuplexStream<ExpertBatch | Buffer, ExpertResult>;
    this.stream = s;
    s.on("data", this.onResult);
    const fail = (err: unknown) => {
      if (this.stream !== s) return;
      this.stream = null;
      this.failPath(s, err, "stream");
    };
    s.on("error", fail);
    s.on("end", () => fail(null));
    s.on("close", () => fail(null));
    return s;
  }

  markDown(): void {
    this.downUntil = performance.now() + this.downMs;
  }

  /** One Status poll now, applied (residency, queue depth, liveness, data port); never rejects. */
  refreshStatus(timeoutMs = 2000): Promise<void> {
    const asked = performance.now();
    return new Promise((resolve) => {
      this.client.status({}, new Metadata(), { deadline: Date.now() + Math.max(200, timeoutMs) }, (err, st) => {
        if (this.closed) return resolve();
        if (err || !st) {
          this.markDown();
          if (++this.statusFailures >= STATUS_FAILURES_TO_GIVE_UP) this.giveUpInFlight(asked);
        } else {
          this.statusFailures = 0;
          this.downUntil = 0;
          this.lastStatus = st;
          this.queueDepth = st.queueDepth;
          this.cacheHits = Number(st.cacheHits);
          this.cacheMisses = Number(st.cacheMisses);
          // a port no socket can take (a bad worker build, a uint32 on the wire) is no data path, not a throw per batch
          this.dataPort = Number.isInteger(st.dataPort) && st.dataPort > 0 && st.dataPort <= 65535 ? st.dataPort : 0;
          this.resident.clear();
          for (const k of st.resident) this.resident.add(k.layer * 65536 + k.expert);
          this.served = new Set(st.served.map((k) => k.layer * 65536 + k.expert));
        }
        resolve();
      });
    });
  }

  /**
   * Fails the batches sent before `before` (the start of the last failed Status poll) with UNAVAILABLE, so that the
   * router lays them on another replica; the data path, most likely as dead as the worker, is reset.
   */
  private giveUpInFlight(before: number): void {
    const e = unavailable(
      `worker ${this.id} (${this.address}): answered no Status poll ${this.statusFailures} times in a row; a batch in flight was given up`,
    );
    let given = 0;
    for (const [id, p] of this.pending) {
      if (p.sentAt >= before) continue;
      clearTimeout(p.timer);
      this.outstandingTokens -= p.tokens;
      this.pending.delete(id);
      given++;
      p.reject(e);
    }
    if (given > 0) this.sampleFailure();
    this.data?.abort(new Error(`worker answered no Status poll ${this.statusFailures} times in a row`));
  }

  /** One Status call now (local mode and tests read cache counters). */
  status(timeoutMs = 2000): Promise<WorkerStatus> {
    return new Promise((resolve, reject) => {
      this.client.status({}, new Metadata(), { deadline: Date.now() + timeoutMs }, (err, st) =>
        err ? reject(fromGrpcError(err)) : resolve(st),
      );
    });
  }

  close(): void {
    this.closed = true;
    if (this.statusTimer) clearTimeout(this.statusTimer);
    const e = unavailable(`worker ${this.id}: connection closed`);
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(id);
      p.reject(e);
    }
    this.stream?.end();
    this.stream = null;
    this.data?.end();
    this.data = null;
    this.client.close();
  }
}
