// The router's end of a worker's TCP data path (packages/protocol/src/data-path.ts): writes encoded ExpertBatch
// frames, hands each ExpertResult frame to `onResult` decoded without copying its rows, and reports the end of the
// connection once. Shaped like the part of a grpc-js duplex stream WorkerConn uses (write with a callback, end), so
// WorkerConn treats both paths alike.

import { connect, type Socket } from "node:net";
import { DATA_PREFACE, type ExpertResult, FrameReader, writeFrame } from "@switchyard/protocol";
import { decodeExpertResult } from "../wire/decode.js";

export interface DataConnHandlers {
  onResult(r: ExpertResult): void;
  /** Once: `err` null for an orderly close by the worker or by `end()`. */
  onClose(err: Error | null): void;
}

export class DataConn {
  private readonly socket: Socket;
  private closed = false;
  private readonly close: (err: Error | null) => void;
  /** True once the TCP connection is up; WorkerConn sends nothing here before that. */
  connected = false;

  /**
   * Connects at once. A connection not up within `connectTimeoutMs` is abandoned (onClose with an error): a port
   * that a firewall drops would otherwise leave the connect pending for minutes.
   */
  constructor(host: string, port: number, maxFrameBytes: number, connectTimeoutMs: number, h: DataConnHandlers) {
    const s = connect({ host, port, noDelay: true });
    this.socket = s;
    // A NAT or conntrack entry that expires drops an idle path without a word; keepalive probes find that out.
    s.setKeepAlive(true, 30_000);
    const timer = setTimeout(
      () => close(new Error(`connect to ${host}:${port} timed out after ${connectTimeoutMs} ms`)),
      connectTimeoutMs,
    );
    timer.unref();
    s.once("connect", () => {
      clearTimeout(timer);
      this.connected = true;
    });
    // Written before the connection is up: net.Socket queues it and sends it first.
    s.write(DATA_PREFACE);
    const close = (err: Error | null) => {
      if (this.closed) return;
      this.closed = true;
      this.connected = false;
      clearTimeout(timer);
      s.destroy();
      h.onClose(err);
    };
    this.close = close;
    const reader = new FrameReader(maxFrameBytes, false, (f) => h.onResult(decodeExpertResult(f)));
    s.on("data", (chunk: Buffer) => {
      try {
        reader.push(chunk);
      } catch (err) {
        close(err as Error);
      }
    });
    s.on("error", (err) => close(err));
    s.on("close", () => close(reader.idle ? null : new Error("connection closed in the middle of a reply")));
  }

  write(msg: Buffer, done: () => void): void {
    writeFrame(this.socket, msg, done);
  }

  end(): void {
    this.socket.end();
  }

  /** Drops the connection now, reporting `err` to onClose: a stalled path may never finish an orderly close. */
  abort(err: Error): void {
    this.close(err);
  }
}
