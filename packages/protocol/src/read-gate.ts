// Flow control for the side of a data-path connection that answers requests (the router's engine connections, the
// worker's router connections). TCP alone does not stop a peer that sends without reading its replies: the replies
// pile up in this process's socket buffer. So reading stops while the connection has too many requests unanswered or
// too many reply bytes not yet taken by the kernel, and the peer then fills its own buffers instead.

import type { Socket } from "node:net";

export interface ReadGateLimits {
  /** Requests in flight at which reading stops; it resumes at half of it. */
  maxInFlight: number;
  /** Reply bytes written but not yet taken by the kernel (socket.writableLength) above which reading stops. */
  maxQueuedBytes: number;
}

export class ReadGate {
  private open = 0;
  private paused = false;

  constructor(
    private readonly socket: Socket,
    private readonly limits: ReadGateLimits,
  ) {
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
      this.socket.pause();
    } else if (this.paused && this.open <= maxInFlight >> 1 && queued <= maxQueuedBytes) {
      this.paused = false;
      this.socket.resume();
    }
  }
}
