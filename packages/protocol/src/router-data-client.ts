// An engine's end of the router's TCP data path (data-path.ts, preface "SYRF"): ForwardStream's messages without
// HTTP/2. One connection carries any number of requests in flight; replies come in any order and are matched here
// by request_id, so the caller's own ids need not be unique.

import { connect, type Socket } from "node:net";
import { DataPathError, FrameReader, ROUTER_DATA_PREFACE, writeFrame } from "./data-path.js";
import { invalidArgument } from "./errors.js";
import { ForwardRequest, ForwardResponse } from "./gen/switchyard/v1/router.js";

export interface RouterDataClientOptions {
  /**
   * Replies longer than this close the connection, and a request longer than this is refused alone (default 512
   * MiB, the router's own limit, both ways: a longer frame makes the router drop the connection and everything in
   * flight on it).
   */
  maxMessageBytes?: number;
  /** A connection not up by then fails every request (default 10 s). */
  connectTimeoutMs?: number;
  /**
   * Request bytes the client queues while the router is not reading (it stops when its replies pile up) before
   * forward() waits for the queue to drain (default 64 MiB): the engine's memory stays bounded too.
   */
  maxQueuedBytes?: number;
}

/**
 * forward() resolves with the router's reply, whose `error` is set where the router failed that request (as on the
 * gRPC stream), and rejects only when the connection fails: every request in flight then rejects with its reason,
 * and so does every later call. While more than maxQueuedBytes of requests wait to be sent, forward() waits first.
 */
export class RouterDataClient {
  private readonly socket: Socket;
  private readonly waiting = new Map<
    bigint,
    { id: bigint; resolve(r: ForwardResponse): void; reject(e: Error): void }
  >();
  private nextId = 0n;
  private failed: Error | null = null;
  private readonly maxQueued: number;
  private readonly maxMessage: number;
  private drainWait: Promise<void> | null = null;

  constructor(host: string, port: number, o: RouterDataClientOptions = {}) {
    const s = connect({ host, port, noDelay: true, keepAlive: true, keepAliveInitialDelay: 30_000 });
    this.socket = s;
    this.maxQueued = o.maxQueuedBytes ?? 64 << 20;
    this.maxMessage = o.maxMessageBytes ?? 512 << 20;
    const timeoutMs = o.connectTimeoutMs ?? 10_000;
    const timer = setTimeout(
      () => this.fail(new Error(`router data path ${host}:${port}: connect timed out after ${timeoutMs} ms`)),
      timeoutMs,
    );
    timer.unref();
    s.once("connect", () => clearTimeout(timer));
    // Queued by the socket until it connects, then sent first.
    s.write(ROUTER_DATA_PREFACE);
    const reader = new FrameReader(this.maxMessage, false, (f) => this.onReply(f));
    s.on("data", (chunk: Buffer) => {
      try {
        reader.push(chunk);
      } catch (err) {
        this.fail(err as Error);
      }
    });
    s.on("error", (err) => this.fail(new Error(`router data path ${host}:${port}: ${err.message}`)));
    s.on("close", () => {
      clearTimeout(timer);
      this.fail(new Error(`router data path ${host}:${port}: connection closed`));
    });
  }

  /** Requests sent and not yet answered. */
  get inFlight(): number {
    return this.waiting.size;
  }

  /** Request bytes written and not yet taken by the kernel. */
  get queuedBytes(): number {
    return this.socket.writableLength;
  }

  async forward(req: ForwardRequest): Promise<ForwardResponse> {
    while (!this.failed && this.socket.writableLength > this.maxQueued) await this.drained();
    if (this.failed) throw this.failed;
    const wireId = ++this.nextId;
    // Encoded before it is registered: a request that cannot be encoded rejects without staying in flight.
    const body = ForwardRequest.encode({ ...req, requestId: wireId }).finish();
    if (body.byteLength > this.maxMessage)
      throw invalidArgument(
        "hidden",
        `the request is ${body.byteLength} bytes, over the data path's ${this.maxMessage}-byte message limit: send fewer tokens per call`,
      );
    return new Promise<ForwardResponse>((resolve, reject) => {
      this.waiting.set(wireId, { id: req.requestId, resolve, reject });
      writeFrame(this.socket, body);
    });
  }

  /** Resolves at the socket's next 'drain', or once it closes; one wait shared by every caller. */
  private drained(): Promise<void> {
    this.drainWait ??= new Promise<void>((resolve) => {
      const done = () => {
        this.socket.off("drain", done);
        this.socket.off("close", done);
        this.drainWait = null;
        resolve();
      };
      this.socket.on("drain", done);
      this.socket.on("close", done);
    });
    return this.drainWait;
  }

  /** Closes the connection; requests still in flight reject. */
  close(): void {
    this.fail(new Error("router data path: closed by the client"));
  }

  private onReply(frame: Buffer): void {
    let res: ForwardResponse;
    try {
      res = ForwardResponse.decode(frame);
    } catch (err) {
      throw new DataPathError(`malformed ForwardResponse: ${(err as Error).message}`);
    }
    const w = this.waiting.get(res.requestId);
    if (!w) throw new DataPathError(`reply to request ${res.requestId}, which is not in flight`);
    this.waiting.delete(res.requestId);
    res.requestId = w.id;
    w.resolve(res);
  }

  private fail(err: Error): void {
    if (this.failed) return;
    this.failed = err;
    this.socket.destroy();
    for (const w of this.waiting.values()) w.reject(err);
    this.waiting.clear();
  }
}
