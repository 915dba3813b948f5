// gRPC shell around Router: Forward (unary) and ForwardStream (bidi; replies matched by request_id, per-item
// errors inside the reply so one bad request does not tear the stream down), health service, and the HTTP
// side (/metrics, /healthz, /readyz).

import type { EventEmitter } from "node:events";
import type { Http2Session } from "node:http2";
import type { AddressInfo } from "node:net";
import {
  Server,
  ServerCredentials,
  type ServerDuplexStream,
  type ServerOptions,
  type ServerUnaryCall,
  type sendUnaryData,
  status,
} from "@grpc/grpc-js";
import {
  type ForwardRequest,
  type ForwardResponse,
  RouterService,
  toGrpcStatus,
  toRpcError,
} from "@switchyard/protocol";
import express from "express";
import { HealthImplementation } from "grpc-health-check";
import { CallerScope } from "./caller-scope.js";
import { MAX_IN_FLIGHT_PER_CONNECTION, MAX_QUEUED_REPLY_BYTES, startRouterDataServer } from "./data-server.js";
import { poolOf, type RequestCounter, requestCounter, serializeResponse } from "./reply.js";
import type { Router } from "./router.js";
import { replyPool } from "./wire/buffer-pool.js";
import { decodeForwardRequest } from "./wire/decode.js";
import { BACKING, ENCODED } from "./wire/encode.js";

/**
 * RouterService whose requests decode without copying activations (wire/decode.ts) and whose replies reuse the bytes
 * the router already encoded (wire/encode.ts).
 */
export const ROUTER_SERVICE = {
  ...RouterService,
  forward: { ...RouterService.forward, requestDeserialize: decodeForwardRequest, responseSerialize: serializeResponse },
  forwardStream: {
    ...RouterService.forwardStream,
    requestDeserialize: decodeForwardRequest,
    responseSerialize: serializeResponse,
  },
} as const;

export const SERVER_OPTIONS: ServerOptions = {
  "grpc.max_receive_message_length": 512 << 20,
  "grpc.max_send_message_length": 512 << 20,
  "grpc.keepalive_permit_without_calls": 1,
  "grpc.http2.min_ping_interval_without_data_ms": 5_000,
};

/**
 * grpc-js servers advertise the HTTP/2 default 64 KiB windows, which stall large client->server messages
 * (shared/bench/TRANSPORT.md). grpc-js has no option for them, so:
 * - the stream window: grpc-js passes its http2 server options object to http2.createServer, so we raise
 *   settings.initialWindowSize there before bind;
 * - the connection window, which no setting controls: each session must call setLocalWindowSize. Without it at most
 *   64 KiB of requests are in flight on a client's connection, and the next ones wait for a WINDOW_UPDATE that Node
 *   sends only once the server's event loop has read the data. With 128 streams of 8 KiB requests (Mixtral's
 *   d=4096) on one connection that wait was most of a request's latency, and the router's throughput dropped to
 *   60% (local mode, --concurrency 128). grpc-js creates its http2 servers in bindAsync and keeps them in a private
 *   map, so bindAsync is wrapped to hook their sessions once bound.
 * Used by the router, the fake worker, and by the benchmark's baseline forwarder so both sides ride the same
 * transport.
 */
export function raiseServerWindow(server: Server, bytes = 16 << 20): void {
  const s = server as unknown as {
    commonServerOptions?: { settings?: Record<string, unknown> };
    http2Servers?: Map<EventEmitter, unknown>;
  };
  if (s.commonServerOptions) {
    s.commonServerOptions.settings = { ...(s.commonServerOptions.settings ?? {}), initialWindowSize: bytes };
  }
  const hooked = new WeakSet<EventEmitter>();
  const bind = server.bindAsync.bind(server);
  server.bindAsync = (port, creds, callback) =>
    bind(port, creds, (err, boundPort) => {
      for (const h of s.http2Servers?.keys() ?? []) {
        if (hooked.has(h)) continue;
        hooked.add(h);
        h.on("session", (session: Http2Session) => session.setLocalWindowSize(bytes));
      }
      callback(err, boundPort);
    });
}

function deadlineOf(call: { getDeadline(): Date | number }): number {
  const d = call.getDeadline();
  const ms = d instanceof Date ? d.getTime() : d;
  return Number.isFinite(ms) ? ms : Number.POSITIVE_INFINITY;
}

/** A reply's bytes as grpc-js will send them (the router's replies are encoded already; others are small). */
function replyBytes(res: ForwardResponse): number {
  const encoded = (res as unknown as Record<symbol, Buffer | undefined>)[ENCODED];
  return encoded?.byteLength ?? (res.hidden?.data.byteLength ?? 0) + (res.error?.message.length ?? 0) + 32;
}

export interface StreamLimits {
  /** Requests a stream may have taken and not yet answered to grpc-js before the router stops reading it. */
  maxInFlight?: number;
  /** Reply bytes a stream may have queued in the router (flow control holds them) before it stops reading it. */
  maxQueuedReplyBytes?: number;
}

export function routerHandlers(
  router: Router,
  count: RequestCounter = requestCounter(router),
  limits: StreamLimits = {},
) {
  const maxInFlight = limits.maxInFlight ?? MAX_IN_FLIGHT_PER_CONNECTION;
  const maxQueued = limits.maxQueuedReplyBytes ?? MAX_QUEUED_REPLY_BYTES;
  return {
    forward(call: ServerUnaryCall<ForwardRequest, ForwardResponse>, cb: sendUnaryData<ForwardResponse>) {
      const req = call.request;
      // A call the client cancels (or whose connection drops) stops waiting in the router's queues.
      const scope = new CallerScope();
      call.on("cancelled", () => scope.close());
      router.forward(req, deadlineOf(call), scope).then(
        (res) => {
          count(req.pool, "Forward", null);
          cb(null, res);
        },
        (err) => {
          count(req.pool, "Forward", err);
          cb(toGrpcStatus(err));
        },
      );
    },
    forwardStream(call: ServerDuplexStream<ForwardRequest, ForwardResponse>) {
      const deadline = deadlineOf(call);
      // Every request of the stream ends when it is cancelled.
      const scope = new CallerScope();
      call.on("cancelled", () => scope.close());
      let open = 0;
      let ended = false;
      // Replies written and not yet taken by grpc-js: a client that does not read its replies holds them here
      // (HTTP/2 flow control), so reading its requests stops at the limits, as on the data path (data-server.ts).
      let queued = 0;
      let queuedBytes = 0;
      let paused = false;
      const gate = () => {
        const full = open + queued >= maxInFlight || queuedBytes > maxQueued;
        if (full && !paused) {
          paused = true;
          call.pause();
        } else if (paused && open + queued <= maxInFlight >> 1 && queuedBytes <= maxQueued) {
          paused = false;
          call.resume();
        }
      };
      const done = () => {
        if (ended && open === 0) call.end();
      };
      const send = (res: ForwardResponse) => {
        if (call.cancelled) return;
        // A pooled reply buffer goes back once grpc-js has copied it into its frame (the write's callback).
        const back = (res as unknown as Record<symbol, Buffer | undefined>)[BACKING];
        const n = replyBytes(res);
        queued++;
        queuedBytes += n;
        call.write(res, () => {
          queued--;
          queuedBytes -= n;
          if (back) replyPool.give(back);
          if (paused) gate();
        });
      };
      // One settle callback pair per stream, not per request: no promise chains per item.
      const ok = (res: ForwardResponse) => {
        open--;
        count(poolOf(res), "ForwardStream", null);
        send(res);
        gate();
        done();
      };
      call.on("data", (req: ForwardRequest) => {
        open++;
        gate();
        router.forward(req, deadline, scope).then(ok, (err) => {
          open--;
          count(req.pool, "ForwardStream", err);
          send({ requestId: req.requestId, hidden: undefined, stats: undefined, error: toRpcError(err) });
          gate();
          done();
        });
      });
      call.on("end", () => {
        ended = true;
        done();
      });
      // A stream that fails (a request grpc-js cannot decode ends it INTERNAL) answers nothing more: its requests
      // still in the router's queues stop there, as on a cancel.
      call.on("error", () => {
        ended = true;
        scope.close();
      });
    },
  };
}

export interface StartedRouter {
  port: number;
  metricsPort: number | null;
  /** The engines' data path (data-server.ts), or null where it is off. */
  dataPort: number | null;
  health: HealthImplementation;
  close(): Promise<void>;
}

export async function serveRouter(
  router: Router,
  o: {
    port: number;
    host?: string;
    metricsPort?: number | null;
    /** The engines' TCP data path: a port (0: any free one), or null / absent for none. */
    dataPort?: number | null;
    log?: (line: string) => void;
  },
): Promise<StartedRouter> {
  const server = new Server(SERVER_OPTIONS);
  raiseServerWindow(server);
  const count = requestCounter(router);
  server.addService(ROUTER_SERVICE, routerHandlers(router, count));
  const health = new HealthImplementation({ "": "SERVING", "switchyard.v1.Router": "SERVING" });
  health.addToServer(server);
  const host = o.host ?? "0.0.0.0";
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${host}:${o.port}`, ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  const data =
    o.dataPort === undefined || o.dataPort === null
      ? null
      : await startRouterDataServer(router, count, {
          host,
          port: o.dataPort,
          maxMessageBytes: SERVER_OPTIONS["grpc.max_receive_message_length"] as number,
          log: o.log ?? ((l) => console.log(`[router] ${l}`)),
        });
  let httpClose: () => Promise<void> = async () => {};
  let metricsPort: number | null = null;
  if (o.metricsPort !== undefined && o.metricsPort !== null) {
    const app = express();
    app.get("/metrics", async (_req, res) => {
      router.sampleGauges();
      res.set("Content-Type", router.metrics.registry.contentType);
      res.send(await router.metrics.registry.metrics());
    });
    app.get("/healthz", (_req, res) => void res.send("ok"));
    // What each pool serves (dimensions, MoE layers, plan version, workers): for operators, and for the chart's
    // `helm test` smoke check, which needs a pool's hidden size and an MoE layer to build its requests.
    // unloaded: pools of the config the router could not load, with the reason (their requests fail UNAVAILABLE)
    app.get(
      "/pools",
      (_req, res) => void res.json({ pools: router.poolSummaries(), unloaded: router.unloadedPools() }),
    );
    app.get("/readyz", (_req, res) => {
      const ready = router.poolNames().length > 0;
      res.status(ready ? 200 : 503).send(ready ? "ready" : "no pools configured");
    });
    const srv = await new Promise<import("node:http").Server>((resolve) => {
      const s = app.listen(o.metricsPort!, host, () => resolve(s));
    });
    metricsPort = (srv.address() as AddressInfo).port;
    httpClose = () => new Promise((r) => srv.close(() => r()));
  }
  return {
    port,
    metricsPort,
    dataPort: data?.port ?? null,
    health,
    async close() {
      health.setStatus("", "NOT_SERVING");
      await data?.close();
      await new Promise<void>((r) => server.tryShutdown(() => r()));
      await httpClose();
    },
  };
}

export { status };
