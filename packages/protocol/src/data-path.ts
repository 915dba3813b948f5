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
// sent, then closes. A server holds at most a budget of partially received frames across all its connections
// (PARTIAL_FRAME_BUDGET_BYTES): a connection whose frame does not fit is not read until it does (TCP flow control
// slows its client), and one whose frame stops arriving halfway is dropped (STALL_TIMEOUT_MS).
// A frame longer than the receiver's limit, or a wrong preface, closes the connection. At the
// router everything in flight on a worker connection then fails UNAVAILABLE and is re-laid on another replica, as
// for a broken gRPC stream. Closing a worker connection cancels every batch still running on it. Control calls (Status, Prefetch,
// Evict) and health stay on gRPC.

import { createServer, type Server, type Socket } from "node:net";
import { type BudgetWaiter, FrameBudget } from "./frame-budget.js";
import { HOLD_BUDGET, Intake } from "./intake.js";

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
 * How a FrameReader on the accepting side is told to stop (serveFrames wires it to the connection's intake and its
 * server's partial-frame budget). Without one a reader hands out every frame as soon as it is whole.
 */
export interface FrameFlow {
  /** Checked after each frame handed out and before parsing: true = stop here, keep the rest until drain(). */
  held(): boolean;
  /**
   * A frame of `len` bytes spans chunks and is about to be buffered: true = go on (its bytes are accounted for until
   * `whole`); false = stop before its body until drain(), when it is asked again.
   */
  admit(len: number): boolean;
  /** The frame `admit` let in is whole (handed out right after). */
  whole(len: number): void;
}

/**
 * Splits a byte stream into frames. Pure (no sockets): feed it chunks as they arrive (not reused afterwards); each
 * complete frame is handed to `onFrame` as a view into the chunk when it lies inside one (no copy), or as one
 * buffer assembled from the chunks it spans. Throws DataPathError on a bad preface or a frame over `maxFrameBytes`.
 * With a `flow` it stops mid-chunk when told to (held, or a spanning frame not admitted), keeps the rest of the
 * chunk and whatever is pushed meanwhile, and goes on from there at drain(): no frame lost or reordered.
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
  /** The frame being assembled still waits for flow.admit. */
  private admitting = false;
  /** Chunks (or the rest of one) not parsed yet because the flow stopped the reader, oldest first. */
  private rest: Buffer[] = [];
  /** Inside parse(): a drain() from a callback must not parse later chunks before the current one is done. */
  private parsing = false;

  private readonly preface: Buffer;

  /** `expectPreface`: true for the worker's (DATA_PREFACE), a buffer for another, false on the replies' side. */
  constructor(
    private readonly maxFrameBytes: number,
    expectPreface: boolean | Buffer,
    private readonly onFrame: (frame: Buffer) => void,
    private readonly flow: FrameFlow | null = null,
  ) {
    this.preface = expectPreface === true || expectPreface === false ? DATA_PREFACE : expectPreface;
    this.prefaceLeft = expectPreface === false ? 0 : this.preface.length;
  }

  push(chunk: Buffer): void {
    if (this.rest.length === 0 && !this.parsing && !this.flow?.held()) this.parse(chunk);
    else {
      this.rest.push(chunk);
      this.drain();
    }
  }

  /** Parses what was kept while stopped, until stopped again or nothing is left (the flow let go). */
  drain(): void {
    if (this.parsing) return;
    while (this.rest.length > 0 && !this.flow?.held()) this.parse(this.rest.shift() as Buffer);
  }

  private parse(chunk: Buffer): void {
    this.parsing = true;
    try {
      const stopAt = this.parseFrom(chunk);
      if (stopAt < chunk.length) this.rest.unshift(chunk.subarray(stopAt));
    } finally {
      this.parsing = false;
    }
  }

  /** Parses `chunk`; returns where it stopped (chunk.length: all of it). */
  private parseFrom(chunk: Buffer): number {
    let pos = 0;
    const n = chunk.length;
    const flow = this.flow;
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
        if (this.admitting) {
          if (!(flow as FrameFlow).admit(this.bodyLen)) return pos;
          this.admitting = false;
        }
        // Continuing a frame that spans chunks.
        const take = Math.min(this.bodyLen - this.bodyHave, n - pos);
        this.parts.push(chunk.subarray(pos, pos + take));
        this.bodyHave += take;
        pos += take;
        if (this.bodyHave === this.bodyLen) {
          const f = this.parts.length === 1 ? (this.parts[0] as Buffer) : Buffer.concat(this.parts, this.bodyLen);
          this.parts = [];
          this.bodyLen = -1;
          flow?.whole(f.length);
          this.onFrame(f);
          if (flow?.held()) return pos;
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
        if (this.headHave < HEADER) return pos;
        this.headHave = 0;
        len = this.head.readUInt32LE(0);
      }
      if (len > this.maxFrameBytes)
        throw new DataPathError(`frame of ${len} bytes is over the limit of ${this.maxFrameBytes} bytes`);
      if (n - pos >= len) {
        const f = chunk.subarray(pos, pos + len);
        pos += len;
        this.onFrame(f);
        // Exact limits: a chunk may carry hundreds of frames, and the gate that closed on this one must hold them.
        if (flow?.held()) return pos;
      } else {
        this.bodyLen = len;
        this.bodyHave = 0;
        // The branch above takes the rest of this chunk, if any, once the frame is admitted.
        this.admitting = flow !== null;
      }
    }
    return pos;
  }

  /** True until the whole preface has arrived. */
  get awaitingPreface(): boolean {
    return this.prefaceLeft > 0;
  }

  /** True between frames (nothing partial buffered, nothing kept unparsed): a connection closing now lost no message. */
  get idle(): boolean {
    return this.bodyLen < 0 && this.headHave === 0 && this.rest.length === 0;
  }

  /** True while bytes that arrived are kept unparsed (the flow stopped the reader). */
  get pending(): boolean {
    return this.rest.length > 0;
  }

  /** The frame being assembled (admitted or waiting to be): its length and the bytes of it that arrived; or null. */
  get partial(): { len: number; have: number } | null {
    return this.bodyLen < 0 ? null : { len: this.bodyLen, have: this.bodyHave };
  }

  /** Forgets a frame that can never finish (its sender ended): its bytes are dropped. */
  dropPartial(): void {
    this.parts = [];
    this.bodyLen = -1;
    this.admitting = false;
  }
}

/** Options of serveFrames beyond the positional ones. */
export interface ServeFramesOptions {
  /**
   * The budget of partially received frames this connection draws on: by default its server's, where listenDataPath
   * accepted it; null = none (a socket of a server of its own, e.g. a test's).
   */
  budget?: FrameBudget | null;
  /** A frame that spans chunks and gets fewer than STALL_MIN_BYTES in this long drops the connection. */
  stallTimeoutMs?: number;
  /**
   * The client's sending side ended and every whole frame it sent has been handed out. The socket's own 'end' can
   * come earlier, while frames the reader kept (stopped by the gate or the budget) are still to come.
   */
  onEnd?: () => void;
}

/**
 * The accepting side of one data-path connection: no Nagle delay, the client's preface checked, each frame handed
 * to `onFrame`. A protocol violation (bad preface, oversized frame, or an error `onFrame` throws as DataPathError)
 * destroys the socket after `onViolation` heard it. Socket errors end the connection quietly ('close' follows).
 * Reading stops while the connection's ReadGate is closed (exactly at its limit, mid-chunk if need be) and while a
 * frame that spans chunks waits for room in the server's partial-frame budget (frame-budget.ts); a frame that stalls
 * halfway drops the connection.
 */
export function serveFrames(
  socket: Socket,
  maxFrameBytes: number,
  onFrame: (frame: Buffer) => void,
  onViolation?: (err: Error) => void,
  preface: Buffer = DATA_PREFACE,
  prefaceTimeoutMs = PREFACE_TIMEOUT_MS,
  o: ServeFramesOptions = {},
): void {
  socket.setNoDelay(true);
  const intake = Intake.of(socket);
  const budget = o.budget === undefined ? (budgets.get(socket) ?? null) : o.budget;
  const stallMs = o.stallTimeoutMs ?? STALL_TIMEOUT_MS;
  const violation = (err: Error) => {
    onViolation?.(err);
    socket.destroy();
  };

  // The stall clock: a window runs while a frame is admitted and partial. A frame that stays partial through a whole
  // window in which fewer than STALL_MIN_BYTES arrived drops the connection.
  let stall: NodeJS.Timeout | null = null;
  let received = 0; // bytes read from the socket
  let frames = 0; // frames admitted
  let mark = 0; // `received` when the window began
  let markFrame = 0; // `frames` when the window began
  const stallWindow = () => {
    mark = received;
    markFrame = frames;
    if (stall) stall.refresh();
    else {
      stall = setTimeout(onStallCheck, stallMs);
      stall.unref();
    }
  };

  // The frame being assembled: the bytes it took from the budget (0: none admitted), or its place in the queue.
  let reserved = 0;
  let waiter: BudgetWaiter | null = null;
  const admitted = (len: number) => {
    reserved = len;
    frames++;
    if (!stall) stallWindow();
  };
  const flow: FrameFlow = {
    held: () => intake.held,
    admit: (len) => {
      if (reserved > 0) return true; // room was granted while the connection waited
      if (waiter) return false;
      // Waiting, not dropping: a well-behaved client whose large frame comes while others fill the budget loses
      // nothing (its connection and every request in flight on it stay up); TCP slows it down meanwhile, as the
      // ReadGate does a client that does not read its replies.
      waiter =
        budget?.take(len, () => {
          waiter = null;
          admitted(len);
          intake.release(HOLD_BUDGET);
        }) ?? null;
      if (waiter) {
        intake.hold(HOLD_BUDGET);
        return false;
      }
      admitted(len);
      return true;
    },
    whole: () => {
      budget?.give(reserved);
      reserved = 0;
    },
  };
  const reader = new FrameReader(maxFrameBytes, preface, onFrame, flow);

  const onStallCheck = () => {
    const p = reader.partial;
    if (socket.destroyed || reserved === 0 || p === null) {
      stall = null; // nothing in progress: the clock starts again with the next frame
      return;
    }
    // Frames after the window's first one get a window of their own; time this side held the connection is not the
    // client's.
    if (frames !== markFrame || intake.held || received - mark >= STALL_MIN_BYTES) return stallWindow();
    // Dropped, not waited for: its claim on the budget would keep well-behaved clients' large frames waiting, and a
    // client that stopped halfway through a frame loses no request it finished sending.
    violation(
      new DataPathError(
        `frame of ${p.len} bytes stalled: ${p.have} bytes of it arrived, ${received - mark} in the last ${stallMs} ms`,
      ),
    );
  };

  // 'end' can come while the reader still keeps frames (stopped by the gate or the budget): onEnd waits for them.
  let endSeen = false;
  let endTold = false;
  const tellEnd = () => {
    if (!endSeen || endTold || socket.destroyed || reader.pending) return;
    endTold = true;
    // Nothing more can arrive: a frame still partial is cut short. (No waiter here: one stops the reader with the
    // rest of its chunk kept, and `pending` waits for that.)
    if (reader.partial) {
      reader.dropPartial();
      flow.whole(0);
    }
    o.onEnd?.();
  };
  intake.onOpen = () => {
    try {
      reader.drain();
    } catch (err) {
      violation(err as Error);
    }
    tellEnd();
  };
  // Released: the time held did not count against the frame in progress.
  intake.onRelease = () => {
    if (reserved > 0) stallWindow();
  };

  // A connection that never says who it is holds a file handle for nothing (1,000 of them took every handle a router
  // had): it is dropped once the preface is overdue.
  const prefaceTimer = setTimeout(() => {
    if (!reader.awaitingPreface) return;
    violation(new DataPathError(`no preface within ${prefaceTimeoutMs} ms`));
  }, prefaceTimeoutMs);
  prefaceTimer.unref();
  socket.on("close", () => {
    clearTimeout(prefaceTimer);
    if (stall) clearTimeout(stall);
    // What the connection took from the budget, or waited for, goes to the others.
    if (waiter) budget?.cancel(waiter);
    waiter = null;
    flow.whole(0);
  });
  socket.on("data", (chunk: Buffer) => {
    received += chunk.length;
    try {
      reader.push(chunk);
    } catch (err) {
      violation(err as Error);
    }
  });
  socket.on("end", () => {
    endSeen = true;
    tellEnd();
  });
  socket.on("error", () => {});
}

/** How long an accepted data-path connection may take to send its preface before it is dropped. */
export const PREFACE_TIMEOUT_MS = 10_000;
/**
 * How long a frame that spans chunks may go with fewer than STALL_MIN_BYTES arriving before its connection is dropped
 * (time while this side holds the connection does not count). An engine writes a frame whole at once: even a 512 MiB
 * frame on a 1 Gbit/s link takes ~4 s.
 */
export const STALL_TIMEOUT_MS = 30_000;
/** Bytes a frame in progress must get per STALL_TIMEOUT_MS: one byte per window would keep its budget forever. */
export const STALL_MIN_BYTES = 64 << 10;
/** Open data-path connections a server accepts at once (engines and routers hold a few each). */
export const MAX_DATA_CONNECTIONS = 1024;
/**
 * Bytes of partially received frames a data-path server holds across all its connections (frame-budget.ts): two
 * frames of the router's 512 MiB limit at once, many times the largest request of the models served (a
 * DeepSeek-V3 prefill of 4096 tokens is 58 MiB of bf16).
 */
export const PARTIAL_FRAME_BUDGET_BYTES = 1 << 30;

// The budget of the server that accepted a socket (listenDataPath), found by serveFrames: every caller's connections
// are bounded without passing it through their own code (the worker's data server included).
const budgets = new WeakMap<Socket, FrameBudget>();

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
  /** The partial frames its connections hold (serveFrames draws on it). */
  budget: FrameBudget;
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
  o: { allowHalfOpen?: boolean; maxConnections?: number; partialFrameBudgetBytes?: number } = {},
): Promise<DataPathServer> {
  const sockets = new Set<Socket>();
  const budget = new FrameBudget(o.partialFrameBudgetBytes ?? PARTIAL_FRAME_BUDGET_BYTES);
  const server = createServer({ allowHalfOpen: o.allowHalfOpen ?? false }, (s) => {
    sockets.add(s);
    budgets.set(s, budget);
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
    budget,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      }),
  };
}
