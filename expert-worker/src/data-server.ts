// The worker's data path (protocol: packages/protocol/src/data-path.ts): RunExpertsStream's messages on a plain TCP
// socket. Same core, same validation, same per-batch deadline (ExpertBatch.timeout_ms) and cancel (ExpertBatch.cancel) and the same error replies
// as the gRPC stream; closing the connection cancels what still runs on it, as cancelling the stream does.
// Like the router's engine data path it stops reading a connection whose peer does not take its results (ReadGate).
// Unlike it, a FIN ends the connection (no half-open side): the router closes a worker connection only to give up
// on it, and the GPU time of what still runs there is better spent on other batches.

import { setMaxListeners } from "node:events";
import type { Socket } from "node:net";
import {
  cancelled,
  DataPathError,
  type DataPathServer,
  ExpertBatch,
  type ExpertResult,
  errorCodeOf,
  listenDataPath,
  ReadGate,
  serveFrames,
  toRpcError,
  writeFrameParts,
} from "@switchyard/protocol";
import { InFlightBatches, isCancelOnly } from "./batch-cancels.js";
import type { WorkerCore } from "./core.js";
import { encodeResultParts } from "./encode-result.js";
import type { WorkerMetrics } from "./metrics.js";
import { batchSignal } from "./server.js";
import { MAX_IN_FLIGHT_PER_CONNECTION, MAX_QUEUED_RESULT_BYTES } from "./stream-gate.js";

// The limits are the gRPC stream's too (stream-gate.ts).
export { MAX_IN_FLIGHT_PER_CONNECTION, MAX_QUEUED_RESULT_BYTES } from "./stream-gate.js";

export interface DataConnectionOptions {
  maxMessageBytes: number;
  /** Hears protocol violations (the connection is dropped). */
  log: (line: string) => void;
  maxInFlight?: number;
  maxQueuedResultBytes?: number;
}

/** Serves one accepted connection until it closes. */
export function serveDataConnection(
  socket: Socket,
  core: WorkerCore,
  metrics: WorkerMetrics,
  o: DataConnectionOptions,
): void {
  const ac = new AbortController();
  const gate = new ReadGate(socket, {
    maxInFlight: o.maxInFlight ?? MAX_IN_FLIGHT_PER_CONNECTION,
    maxQueuedBytes: o.maxQueuedResultBytes ?? MAX_QUEUED_RESULT_BYTES,
  });

  // Every in-flight batch listens on the connection's signal (bounded by the queue capacity).
  setMaxListeners(0, ac.signal);
  const count = (err?: unknown) =>
    metrics.requests.inc({ method: "RunExpertsData", code: err === undefined ? "OK" : errorCodeOf(err) });
  const reply = (res: ExpertResult) => {
    // the output's bytes go to the socket from the backend's result, not copied into one message first
    if (!ac.signal.aborted) writeFrameParts(socket, encodeResultParts(res));
  };
  const batches = new InFlightBatches();
  const onBatch = (frame: Buffer) => {
    let batch: ExpertBatch;
    try {
      batch = ExpertBatch.decode(frame);
    } catch (err) {
      // No batch id to answer under: the stream is unusable, as a malformed message fails a gRPC stream.
      throw new DataPathError(`malformed ExpertBatch: ${(err as Error).message}`);
    }
    if (batch.cancel.length > 0) batches.cancel(batch.cancel);
    if (isCancelOnly(batch)) return;
    const own = batches.track(batch.batchId);
    const bs = batchSignal(ac.signal, batch.timeoutMs, own.signal);
    const done = () => {
      bs.dispose();
      own.release();
    };
    gate.started();
    // a result over the limit is refused alone: the router drops a connection whose frame passes its own limit
    core.runBatch(batch, bs.signal, o.maxMessageBytes).then(
      (res) => {
        done();
        count();
        reply(res);
        gate.answered();
      },
      (err) => {
        done();
        count(err);
        // One bad batch answers in its own reply; the connection stays up.
        reply({ batchId: batch.batchId, output: undefined, stats: undefined, error: toRpcError(err) });
        gate.answered();
      },
    );
  };
  serveFrames(socket, o.maxMessageBytes, onBatch, (err) =>
    o.log(`data path: dropping connection from ${socket.remoteAddress}:${socket.remotePort}: ${err.message}`),
  );
  socket.on("close", () => ac.abort(cancelled("the router closed the data connection")));
}

/** Listens for data-path connections. port 0 = any free port (the bound one is advertised in Status). */
export function startDataServer(
  core: WorkerCore,
  metrics: WorkerMetrics,
  o: DataConnectionOptions & { host?: string; port: number },
): Promise<DataPathServer> {
  return listenDataPath(o.host ?? "0.0.0.0", o.port, (s) => serveDataConnection(s, core, metrics, o));
}
