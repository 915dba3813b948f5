// grpc-js shell around WorkerCore: ExpertWorker service (unary + bidi stream), grpc.health.v1, deadlines and
// client cancellation turned into an AbortSignal that reaches the native kernel.

import { setMaxListeners } from "node:events";
import {
  type handleBidiStreamingCall,
  Server,
  ServerCredentials,
  type ServerUnaryCall,
  type sendUnaryData,
} from "@grpc/grpc-js";
import {
  cancelled,
  deadlineExceeded,
  type EvictRequest,
  type EvictResponse,
  type ExpertBatch,
  type ExpertResult,
  type ExpertWorkerServer,
  ExpertWorkerService,
  errorCodeOf,
  type PrefetchRequest,
  type PrefetchResponse,
  type StatusRequest,
  toGrpcStatus,
  toRpcError,
  type WorkerStatus,
} from "@switchyard/protocol";
import { HealthImplementation } from "grpc-health-check";
import { InFlightBatches, isCancelOnly } from "./batch-cancels.js";
import type { WorkerCore } from "./core.js";
import { encodeResult } from "./encode-result.js";
import type { WorkerMetrics } from "./metrics.js";
import { StreamGate, type StreamGateLimits } from "./stream-gate.js";

export const DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024;

/** setTimeout's largest delay (2^31-1 ms, ~24.8 days); Node fires a longer one after 1 ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * setTimeout for any delay: past MAX_TIMER_MS it is re-armed until due. A gRPC deadline or an ExpertBatch.timeout_ms
 * (uint32, up to ~49.7 days) past the limit would otherwise fail the call at once with DEADLINE_EXCEEDED.
 * Returns its cancel.
 */
export function armTimer(fn: () => void, ms: number): () => void {
  const due = Date.now() + ms;
  let timer: NodeJS.Timeout;
  const arm = (left: number) => {
    timer = left > MAX_TIMER_MS ? setTimeout(() => arm(due - Date.now()), MAX_TIMER_MS) : setTimeout(fn, left);
  };
  arm(ms);
  return () => clearTimeout(timer);
}

/** What callSignal needs of any server call (unary or stream). */
interface CallLike {
  getDeadline(): Date | number;
  on(event: "cancelled", listener: () => void): unknown;
  removeListener(event: "cancelled", listener: () => void): unknown;
}

/** An AbortSignal that fires on client cancel (CANCELLED) or when the call's deadline passes (DEADLINE_EXCEEDED). */
export function callSignal(call: CallLike): { signal: AbortSignal; dispose: () => void } {
  const ac = new AbortController();
  // A long-lived stream carries many batches at once and each in-flight batch listens on this signal until it ends
  // (bounded by the queue capacity), so Node's default of 10 listeners would warn about a leak that is not one.
  setMaxListeners(0, ac.signal);
  const onCancel = () => ac.abort(cancelled("client cancelled the call"));
  call.on("cancelled", onCancel);
  let stopTimer: (() => void) | undefined;
  const deadline = call.getDeadline();
  const at = deadline instanceof Date ? deadline.getTime() : Number(deadline);
  if (Number.isFinite(at)) {
    const ms = at - Date.now();
    if (ms <= 0) ac.abort(deadlineExceeded());
    // grpc-js answers DEADLINE_EXCEEDED itself; this makes the work stop too.
    else stopTimer = armTimer(() => ac.abort(deadlineExceeded()), ms);
  }
  return {
    signal: ac.signal,
    dispose: () => {
      stopTimer?.();
      call.removeListener("cancelled", onCancel);
    },
  };
}

/**
 * The signal one batch runs under: the call's (cancel, call deadline) plus ExpertBatch.timeout_ms, which is the
 * only deadline a stream batch has (the stream outlives it). The clock starts on arrival, so queue wait counts.
 * timeoutMs 0 = none. `own`: the batch's own cancel (ExpertBatch.cancel, batch-cancels.ts), which ends it alone.
 * With neither a timeout nor `own`, the call's signal as it is.
 */
export function batchSignal(
  parent: AbortSignal,
  timeoutMs: number,
  own?: AbortSignal,
): { signal: AbortSignal; dispose: () => void } {
  if (!timeoutMs && !own) return { signal: parent, dispose: () => {} };
  const ac = new AbortController();
  const onParent = () => ac.abort(parent.reason);
  const onOwn = () => ac.abort(own?.reason);
  if (parent.aborted) onParent();
  else parent.addEventListener("abort", onParent, { once: true });
  if (own?.aborted) onOwn();
  else own?.addEventListener("abort", onOwn, { once: true });
  const stopTimer = timeoutMs
    ? armTimer(
        () => ac.abort(deadlineExceeded(`batch timeout of ${timeoutMs} ms (ExpertBatch.timeout_ms) passed`)),
        timeoutMs,
      )
    : () => {};
  return {
    signal: ac.signal,
    dispose: () => {
      stopTimer();
      parent.removeEventListener("abort", onParent);
      own?.removeEventListener("abort", onOwn);
    },
  };
}

/** A result's bytes as grpc-js will hold them (its output; an error reply is small). */
function resultBytes(res: ExpertResult): number {
  return (res.output?.data.byteLength ?? 0) + (res.error?.message.length ?? 0) + 64;
}

export interface HandlerLimits {
  /** The server's grpc.max_send_message_length: a batch whose result would pass it is refused alone. */
  maxMessageBytes?: number;
  /** When a RunExpertsStream call stops being read (stream-gate.ts). */
  stream?: StreamGateLimits;
}

export function buildHandlers(
  core: WorkerCore,
  metrics: WorkerMetrics,
  limits: HandlerLimits = {},
): ExpertWorkerServer {
  // grpc-js fails a call whose message passes its send limit, a stream with every batch still on it
  const maxMessageBytes = limits.maxMessageBytes;
  const count = (method: string, err?: unknown) =>
    metrics.requests.inc({ method, code: err === undefined ? "OK" : errorCodeOf(err) });

  function unary<Req, Res>(method: string, fn: (req: Req, signal: AbortSignal) => Promise<Res> | Res) {
    return (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>) => {
      const { signal, dispose } = callSignal(call);
      Promise.resolve()
        .then(() => fn(call.request, signal))
        .then(
          (res) => {
            count(method);
            callback(null, res);
          },
          (err) => {
            count(method, err);
            callback(toGrpcStatus(err));
          },
        )
        .finally(dispose);
    };
  }

  const runExpertsStream: handleBidiStreamingCall<ExpertBatch, ExpertResult> = (call) => {
    const { signal, dispose } = callSignal(call);
    // Reading stops while results wait to be sent (a router that does not read them), as on the data path.
    const gate = new StreamGate(call, limits.stream);
    const onDrain = () => gate.drained();
    call.on("drain", onDrain);
    let disposed = false;
    const close = () => {
      if (disposed) return;
      disposed = true;
      dispose();
      call.removeListener("drain", onDrain);
    };
    let inflight = 0;
    let ended = false;
    const maybeEnd = () => {
      if (ended && inflight === 0) {
        close();
        call.end();
      }
    };
    const reply = (res: ExpertResult) => {
      if (signal.aborted) return;
      const n = resultBytes(res);
      gate.wrote(
        n,
        call.write(res, () => gate.sent(n)),
      );
    };
    const batches = new InFlightBatches();
    call.on("data", (batch: ExpertBatch) => {
      if (batch.cancel.length > 0) batches.cancel(batch.cancel);
      if (isCancelOnly(batch)) return;
      inflight++;
      gate.started();
      const own = batches.track(batch.batchId);
      const bs = batchSignal(signal, batch.timeoutMs, own.signal);
      core
        .runBatch(batch, bs.signal, maxMessageBytes)
        .then(
          (res) => {
            count("RunExpertsStream");
            reply(res);
          },
          (err) => {
            count("RunExpertsStream", err);
            // One bad batch answers in its own reply; the stream stays up.
            reply({ batchId: batch.batchId, output: undefined, stats: undefined, error: toRpcError(err) });
          },
        )
        .finally(() => {
          bs.dispose();
          own.release();
          inflight--;
          gate.answered();
          maybeEnd();
        });
    });
    call.on("end", () => {
      ended = true;
      maybeEnd();
    });
    call.on("error", close);
    // A client that cancels (or whose connection drops) without half-closing sends neither 'end' nor 'error': without
    // this the deadline timer and the listeners stayed until the deadline (if any) passed.
    call.on("cancelled", close);
  };

  return {
    runExperts: unary<ExpertBatch, ExpertResult>("RunExperts", async (req, signal) => {
      // A unary call may carry both a gRPC deadline and timeout_ms: whichever passes first stops the batch.
      const bs = batchSignal(signal, req.timeoutMs);
      try {
        return await core.runBatch(req, bs.signal, maxMessageBytes);
      } finally {
        bs.dispose();
      }
    }),
    runExpertsStream,
    prefetch: unary<PrefetchRequest, PrefetchResponse>("Prefetch", async (req) => {
      const r = await core.prefetch(req.pool, req.experts);
      return { loaded: r.loaded, alreadyResident: r.alreadyResident, evicted: r.evicted };
    }),
    evict: unary<EvictRequest, EvictResponse>("Evict", (req) => ({ evicted: core.evict(req.pool, req.experts) })),
    status: unary<StatusRequest, WorkerStatus>("Status", () => core.status()),
  };
}

/** The service with results serialized by the one-copy encoder (encode-result.ts). */
const WORKER_SERVICE = {
  ...ExpertWorkerService,
  runExperts: { ...ExpertWorkerService.runExperts, responseSerialize: encodeResult },
  runExpertsStream: { ...ExpertWorkerService.runExpertsStream, responseSerialize: encodeResult },
};

export interface GrpcServerHandle {
  server: Server;
  port: number;
  health: HealthImplementation;
}

export async function startGrpcServer(
  core: WorkerCore,
  metrics: WorkerMetrics,
  o: { host?: string; port: number; maxMessageBytes?: number; stream?: StreamGateLimits },
): Promise<GrpcServerHandle> {
  const max = o.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  const server = new Server({
    "grpc.max_receive_message_length": max,
    "grpc.max_send_message_length": max,
  });
  server.addService(WORKER_SERVICE, buildHandlers(core, metrics, { maxMessageBytes: max, stream: o.stream }));
  const health = new HealthImplementation({
    "": "NOT_SERVING",
    [ExpertWorkerService.runExperts.path.split("/")[1]]: "NOT_SERVING",
  });
  health.addToServer(server);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${o.host ?? "0.0.0.0"}:${o.port}`, ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  return { server, port, health };
}
