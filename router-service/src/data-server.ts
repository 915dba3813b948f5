// The router's data path for engines (protocol: packages/protocol/src/data-path.ts, preface "SYRF"):
// ForwardStream's messages on a plain TCP socket. The same Router.forward, the same validation and the same per-item
// error replies as the gRPC stream, without HTTP/2's framing, flow control and per-stream bookkeeping on the
// router's one JavaScript thread, which is what bounds a saturated router (bench/results/h200-moe.md, session of
// 2026-11-30 07:55 UTC: grpc-js reading requests and writing replies were its two largest items after the flush).

import type { Socket } from "node:net";
import {
  DataPathError,
  type DataPathServer,
  type ForwardRequest,
  ForwardResponse,
  listenDataPath,
  ReadGate,
  ROUTER_DATA_PREFACE,
  serveFrames,
  toRpcError,
  writeFrame,
} from "@switchyard/protocol";
import { CallerScope } from "./caller-scope.js";
import { poolOf, type RequestCounter, serializeResponse } from "./reply.js";
import type { Router } from "./router.js";
import { replyPool } from "./wire/buffer-pool.js";
import { decodeForwardRequest } from "./wire/decode.js";
import { BACKING } from "./wire/encode.js";

/**
 * Requests one connection may have in flight before the router stops reading from it; it resumes below half of it.
 */
export const MAX_IN_FLIGHT_PER_CONNECTION = 4096;
/**
 * Reply bytes a connection may have queued in the router (written, not yet taken by the kernel) before the router
 * stops reading its requests; it resumes once they have drained. With both limits a client that sends without
 * reading its replies fills its own socket, not the router's memory (4096 DeepSeek-V3 prefill replies would be GBs).
 */
export const MAX_QUEUED_REPLY_BYTES = 64 << 20;

export interface DataConnectionOptions {
  maxMessageBytes: number;
  /** Hears protocol violations (the connection is dropped). */
  log: (line: string) => void;
  maxInFlight?: number;
  maxQueuedReplyBytes?: number;
  /** Bytes of partially received requests held across all connections (default PARTIAL_FRAME_BUDGET_BYTES). */
  partialFrameBudgetBytes?: number;
}

/** Serves one accepted engine connection until it closes. */
export function serveRouterDataConnection(
  socket: Socket,
  router: Router,
  count: RequestCounter,
  o: DataConnectionOptions,
): void {
  // Reading stops while either limit is reached and resumes once both are clear again.
  const gate = new ReadGate(socket, {
    maxInFlight: o.maxInFlight ?? MAX_IN_FLIGHT_PER_CONNECTION,
    maxQueuedBytes: o.maxQueuedReplyBytes ?? MAX_QUEUED_REPLY_BYTES,
  });
  let closed = false;
  // The client shut down its sending side: what it sent is still answered (as after a gRPC stream's half-close),
  // then the router ends its side.
  let ended = false;
  const endIfDone = () => {
    if (ended && gate.inFlight === 0 && !closed) socket.end();
  };
  // Idle engine connections live long; keepalive notices a peer that vanished without a FIN.
  socket.setKeepAlive(true, 30_000);
  // A closed connection's requests end at once (CANCELLED) rather than wait in the queues for nobody.
  const scope = new CallerScope();
  socket.on("close", () => {
    closed = true;
    scope.close();
  });
  // One reply callback per connection, not a closure per request (as the gRPC stream's handlers).
  const ok = (res: ForwardResponse) => {
    count(poolOf(res), "ForwardData", null);
    if (!closed) {
      const body = serializeResponse(res);
      const back = (res as unknown as Record<symbol, Buffer | undefined>)[BACKING];
      // A pooled reply buffer goes back once the socket is done with it.
      writeFrame(socket, body, back ? () => replyPool.give(back) : undefined);
    }
    gate.answered();
    endIfDone();
  };
  const onRequest = (frame: Buffer) => {
    let req: ForwardRequest;
    try {
      req = decodeForwardRequest(frame);
    } catch (err) {
      // No request id to answer under: the connection is unusable, as a malformed message fails a gRPC stream.
      throw new DataPathError(`malformed ForwardRequest: ${(err as Error).message}`);
    }
    gate.started();
    router.forward(req, Number.POSITIVE_INFINITY, scope).then(ok, (err) => {
      count(req.pool, "ForwardData", err);
      if (!closed) {
        const res: ForwardResponse = { requestId: req.requestId, hidden: undefined, stats: undefined };
        res.error = toRpcError(err);
        writeFrame(socket, ForwardResponse.encode(res).finish());
      }
      gate.answered();
      endIfDone();
    });
  };
  serveFrames(
    socket,
    o.maxMessageBytes,
    onRequest,
    (err) => o.log(`data path: dropping connection from ${socket.remoteAddress}:${socket.remotePort}: ${err.message}`),
    ROUTER_DATA_PREFACE,
    undefined,
    {
      // Not the socket's 'end': requests the reader still keeps (stopped by the gate or the partial-frame budget)
      // come after it, and are answered too.
      onEnd: () => {
        ended = true;
        endIfDone();
      },
    },
  );
}

/** Listens for engines' data-path connections. port 0 = any free port. */
export function startRouterDataServer(
  router: Router,
  count: RequestCounter,
  o: DataConnectionOptions & { host: string; port: number },
): Promise<DataPathServer> {
  return listenDataPath(o.host, o.port, (s) => serveRouterDataConnection(s, router, count, o), {
    allowHalfOpen: true,
    partialFrameBudgetBytes: o.partialFrameBudgetBytes,
  });
}
