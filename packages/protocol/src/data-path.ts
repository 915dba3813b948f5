// The data paths: a service's stream messages on a plain TCP connection instead of an HTTP/2 stream.
// shared/bench/TRANSPORT.md measured grpc-js at ~3x the cost of raw TCP per message on the build machine. Two hops
// repeat that cost for every MoE layer, so both offer this path beside gRPC:
// - the worker's (preface "SYDP"): ExpertWorker.RunExpertsStream's messages, ExpertBatch from the router and
//   ExpertResult back, matched by batch_id, replies in any order. Workers advertise the port in Status (data_port)
//   and the router uses it when it can reach it, falling back to the gRPC stream.
// - the router's (preface "SYRF"): Router.ForwardStream's messages, ForwardRequest from an engine and
//   ForwardResponse back, matched by request_id, replies in any order, a failed request answered in its reply's
//   error. Engines reach it on the router's --data-port (default 50052).
//
// Wire format (version 1):
//   client -> server, once:  the 4-byte magic + u32 little-endian version (1)
//   then each message, both ways:  u32 little-endian length N, then N bytes of protobuf
// An engine may shut down its sending side when it has sent its last request: the router answers everything it
// sent, then closes. A frame longer than the receiver's limit, or a wrong preface, closes the connection. At the
// router everything in flight on a worker connection then fails UNAVAILABLE and is re-laid on another replica, as
// for a broken gRPC stream. Closing a worker connection cancels every batch still running on it. Control calls (Status, Prefetch,
// Evict) and health stay on gRPC.

import { createServer, type Server, type Socket } from "node:net";

export const DATA_PATH_VERSION = 1;
/** The worker data path's preface: "SYDP", version. */
export const DATA_PREFACE: Buffer = Buffer.from([0x53, 0x59, 0x44, 0x50, DATA_PATH_VERSION, 0, 0, 0]);
/** The router data path's preface: "SYRF", version. A client on the wrong port fails at once, naming both. */
export const ROUTER_DATA_PREFACE: Buffer = Buffer.from([0x53, 0x59, 0x52, 0x46, DATA_PATH_VERSION, 0, 0, 0]);
const HEADER = 4;

/** A protocol violation on the data path: the connection cannot continue. */
export class DataPathError extends Error {
  override name = "DataPathError";
}

/**
 * Splits a byte stream into frames. Pure (no sockets): feed it chunks as they arrive (not reused afterwards); each
 * complete frame is handed to `onFrame` as a view into the chunk when it lies inside one (no copy), or as one
 * buffer assembled from the chunks it spans. Throws DataPathError on a bad preface or a frame over `maxFrameBytes`.
 */
export class FrameReader {
  private prefaceLeft: number;
  private head = Buffer.alloc(HEADER);
  private headHave = 0;
  // The pieces of a frame that spans chunks, kept until it is whole: memory follows the bytes that arrived, not the
  // length the header claims (a 4-byte header must not reserve 512 MiB), as grpc-js's own message decoder does.
  private parts: Buffer[] = [];
  /** The length of the frame being assembled, -1 between frames. */
  private bodyLen = -1;
  private bodyHave = 0;

  private readonly preface: Buffer;

  /** `expectPreface`: true for the worker's (DATA_PREFACE), a buffer for another, false on the replies' side. */
  constructor(
    private readonly maxFrameBytes: number,
    expectPreface: boolean | Buffer,
    private readonly onFrame: (frame: Buffer) => void,
  ) {
    this.preface = expectPreface === true || expectPreface === false ? DATA_PREFACE : expectPreface;
    this.prefaceLeft = expectPreface === false ? 0 : this.preface.length;
  }

  push(chunk: Buffer): void {
    let pos = 0;
    const n = chunk.length;
    while (this.prefaceLeft > 0 && pos < n) {
      const i = this.preface.length - this.prefaceLeft;
      if (chunk[pos] !== this.preface[i])
        throw new DataPathError(
          i < 4
            ? `bad preface: not a Switchyard data-path client of this service (expected "${this.preface.toString("latin1", 0, 4)}")`
            : `unsupported data-path version (this side speaks ${DATA_PATH_VERSION})`,
        );
      pos++;
      this.prefaceLeft--;
    }
    while (pos < n) {
      if (this.bodyLen >= 0) {
        // Continuing a frame that spans chunks.
        const take = Math.min(this.bodyLen - this.bodyHave, n - pos);
        this.parts.push(chunk.subarray(pos, pos + take));
        this.bodyHave += take;
        pos += take;
        if (this.bodyHave === this.bodyLen) {
          const f = this.parts.length === 1 ? (this.parts[0] as Buffer) : Buffer.concat(this.parts, this.bodyLen);
          this.parts = [];
          this.bodyLen = -1;
          this.onFrame(f);
        }
        continue;
      }
      let len: number;
      if (this.headHave === 0 && n - pos >= HEADER) {
        len = chunk.readUInt32LE(pos);
        pos += HEADER;
      } else {
        const take = Math.min(HEADER - this.headHave, n - pos);
        chunk.copy(this.head, this.headHave, pos, pos + take);
        this.headHave += take;
        pos += take;
        if (this.headHave < HEADER) return;
        this.headHave = 0;
        len = this.head.readUInt32LE(0);
      }
      if (len > this.maxFrameBytes)
        throw new DataPathError(`frame of ${len} bytes is over the limit of ${this.maxFrameBytes} bytes`);
      if (n - pos >= len) {
        const f = chunk.subarray(pos, pos + len);
        pos += len;
        this.onFrame(f);
      } else {
        this.bodyLen = len;
        this.bodyHave = 0;
        // The rest of this chunk, if any, is taken by the branch above.
      }
    }
  }

  /** True until the whole preface has arrived. */
  get awaitingPreface(): boolean {
    return this.prefaceLeft > 0;
  }

  /** True between frames (nothing partial buffered): a connection closing now lost no message. */
  get idle(): boolean {
    return this.bodyLen < 0 && this.headHave === 0;
  }
}

/**
 * The accepting side of one data-path connection: no Nagle delay, the client's preface checked, each frame handed
 * to `onFrame`. A protocol violation (bad preface, oversized frame, or an error `onFrame` throws as DataPathError)
 * destroys the socket after `onViolation` heard it. Socket errors end the connection quietly ('close' follows).
 */
export function serveFrames(
  socket: Socket,
  maxFrameBytes: number,
  onFrame: (frame: Buffer) => void,
  onViolation?: (err: Error) => void,
  preface: Buffer = DATA_PREFACE,
  prefaceTimeoutMs = PREFACE_TIMEOUT_MS,
): void {
  socket.setNoDelay(true);
  const reader = new FrameReader(maxFrameBytes, preface, onFrame);
  // A connection that never says who it is holds a file handle for nothing (1,000 of them took every handle a router
  // had): it is dropped once the preface is overdue.
  const prefaceTimer = setTimeout(() => {
    if (!reader.awaitingPreface) return;
    onViolation?.(new DataPathError(`no preface within ${prefaceTimeoutMs} ms`));
    socket.destroy();
  }, prefaceTimeoutMs);
  prefaceTimer.unref();
  socket.on("close", () => clearTimeout(prefaceTimer));
  socket.on("data", (chunk: Buffer) => {
    try {
      reader.push(chunk);
    } catch (err) {
      onViolation?.(err as Error);
      socket.destroy();
    }
  });
  socket.on("error", () => {});
}

/** How long an accepted data-path connection may take to send its preface before it is dropped. */
export const PREFACE_TIMEOUT_MS = 10_000;
/** Open data-path connections a server accepts at once (engines and routers hold a few each). */
export const MAX_DATA_CONNECTIONS = 1024;

/** The 4-byte length prefix of a frame of `len` bytes. */
export function frameHeader(len: number): Buffer {
  const h = Buffer.allocUnsafe(HEADER);
  h.writeUInt32LE(len, 0);
  return h;
}

/**
 * Writes one frame: header and body leave in one writev (corked), the body is not copied. `done` runs once the
 * socket is finished with `body` (the caller may reuse it then).
 */
export function writeFrame(socket: Socket, body: Uint8Array, done?: (err?: Error | null) => void): void {
  socket.cork();
  socket.write(frameHeader(body.byteLength));
  socket.write(body, done);
  socket.uncork();
}

/**
 * One frame whose body is the parts' concatenation, written without joining them (the socket sends them in one
 * writev): a result's output goes to the kernel from the backend's own memory. The parts must not change until the
 * write completes.
 */
export function writeFrameParts(socket: Socket, parts: readonly Uint8Array[]): void {
  let n = 0;
  for (const p of parts) n += p.byteLength;
  socket.cork();
  socket.write(frameHeader(n));
  for (const p of parts) if (p.byteLength > 0) socket.write(p);
  socket.uncork();
}

/** A listening data path: its bound port, and close() (stops listening and drops the open connections). */
export interface DataPathServer {
  server: Server;
  port: number;
  close(): Promise<void>;
}

/**
 * Listens on host:port (0: any free port) and hands each accepted connection to `onConnection`. `allowHalfOpen`:
 * a client's FIN does not end the server's side; `onConnection` must end it (e.g. once its replies are written).
 */
export async function listenDataPath(
  host: string,
  port: number,
  onConnection: (socket: Socket) => void,
  o: { allowHalfOpen?: boolean; maxConnections?: number } = {},
): Promise<DataPathServer> {
  const sockets = new Set<Socket>();
  const server = createServer({ allowHalfOpen: o.allowHalfOpen ?? false }, (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    onConnection(s);
  });
  // Past this many open connections new ones are refused at once (Node closes them), so that connections alone cannot
  // take every file handle the process has: its worker connections, gRPC and /metrics need some too.
  server.maxConnections = o.maxConnections ?? MAX_DATA_CONNECTIONS;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  return {
    server,
    port: (server.address() as { port: number }).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      }),
  };
}
