// Flow control for the side of a data-path connection that answers requests (the router's engine connections, the
// worker's router connections). TCP alone does not stop a peer that sends without reading its replies: the replies
// pile up in this process's socket buffer. So reading stops while the connection has too many requests unanswered or
// too many reply bytes not yet taken by the kernel, and the peer then fills its own buffers instead.
// The limit on requests is exact: the frame reader stops handing out the frames of a chunk it is parsing as soon as
// the gate closes (intake.ts), so a chunk carrying hundreds of small requests cannot overshoot it.

import type { Socket } from "node:net";
import { HOLD_GATE, Intake } from "./intake.js";

export interface ReadGateLimits {
  /** Requests in flight at which reading stops; it resumes at half of it. */
  maxInFlight: number;
  /** Reply bytes written but not yet taken by the kernel (socket.writableLength) above which reading stops. */
  maxQueuedBytes: number;
}

export class ReadGate {
  private open = 0;
  private paused = false;
  private readonly intake: Intake;

  constructor(
    private readonly socket: Socket,
    private readonly limits: ReadGateLimits,
  ) {
    this.intake = Intake.of(socket);
    socket.on("drain", () => this.check());
  }

  /** Requests read and not yet answered. */
  get inFlight(): number {
    return this.open;
  }

  /** True while reading is stopped. */
  get isPaused(): boolean {
    return this.paused;
  }

  /** A request was read: it counts until `answered`. */
  started(): void {
    this.open++;
    this.check();
  }

  /** A request's reply was written (or the request ended without one). */
  answered(): void {
    this.open--;
    this.check();
  }

  /** Stops reading while either limit is reached; reads again once both are clear. */
  check(): void {
    const queued = this.socket.writableLength;
    const { maxInFlight, maxQueuedBytes } = this.limits;
    if (!this.paused && (this.open >= maxInFlight || queued > maxQueuedBytes)) {
      this.paused = true;
      this.intake.hold(HOLD_GATE);
    } else if (this.paused && this.open <= maxInFlight >> 1 && queued <= maxQueuedBytes) {
      this.paused = false;
      // The frames the reader kept when the gate closed are handed out first, and may close it again.
      this.intake.release(HOLD_GATE);
    }
  }
}
