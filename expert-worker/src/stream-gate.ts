// Backpressure for a RunExpertsStream call, as ReadGate (packages/protocol) is for the data path: the worker stops
// reading a stream's batches while their results wait to be sent, and reads again once they have gone. A router
// that stops reading its results (HTTP/2 flow control then holds them in grpc-js) would otherwise grow the worker by
// one result per batch it keeps sending. Pure: the gRPC shell (server.ts) reports reads, writes and answers.

/** Batches one connection or stream may have in flight before the worker stops reading it; it resumes at half. */
export const MAX_IN_FLIGHT_PER_CONNECTION = 4096;
/**
 * Result bytes a connection or stream may have queued in the worker (written, not yet taken by the kernel or by
 * grpc-js) before the worker stops reading its batches; it resumes once they have drained. One DeepSeek-V3 prefill
 * result is ~120 MB, so a peer that stops reading would otherwise grow the worker by that much per batch it sends.
 */
export const MAX_QUEUED_RESULT_BYTES = 256 << 20;

export interface StreamGateLimits {
  maxInFlight?: number;
  maxQueuedBytes?: number;
}

/** What the gate needs of the call: grpc-js's ServerDuplexStream (a Readable) stops delivering 'data' when paused. */
export interface Pausable {
  pause(): unknown;
  resume(): unknown;
}

export class StreamGate {
  private open = 0;
  private queued = 0;
  /** write() returned false: grpc-js's write buffer is over its mark until 'drain'. */
  private mustDrain = false;
  private paused = false;
  private readonly maxInFlight: number;
  private readonly maxQueuedBytes: number;

  constructor(
    private readonly stream: Pausable,
    limits: StreamGateLimits = {},
  ) {
    this.maxInFlight = limits.maxInFlight ?? MAX_IN_FLIGHT_PER_CONNECTION;
    this.maxQueuedBytes = limits.maxQueuedBytes ?? MAX_QUEUED_RESULT_BYTES;
  }

  /** True while reading is stopped. */
  get isPaused(): boolean {
    return this.paused;
  }

  /** Result bytes written and not yet taken. */
  get queuedBytes(): number {
    return this.queued;
  }

  /** A batch was read: it counts until `answered`. */
  started(): void {
    this.open++;
    this.check();
  }

  /** A batch's reply was written (or the batch ended without one). */
  answered(): void {
    this.open--;
    this.check();
  }

  /** A result of `bytes` was written; `accepted` is write()'s return (false: wait for 'drain'). */
  wrote(bytes: number, accepted: boolean): void {
    this.queued += bytes;
    if (!accepted) this.mustDrain = true;
    this.check();
  }

  /** grpc-js took a written result (the write's callback). */
  sent(bytes: number): void {
    this.queued -= bytes;
    this.check();
  }

  /** The stream's 'drain'. */
  drained(): void {
    this.mustDrain = false;
    this.check();
  }

  /** Stops reading while a limit is reached; reads again once every one is clear. */
  private check(): void {
    if (!this.paused && (this.mustDrain || this.queued > this.maxQueuedBytes || this.open >= this.maxInFlight)) {
      this.paused = true;
      this.stream.pause();
    } else if (
      this.paused &&
      !this.mustDrain &&
      this.queued <= this.maxQueuedBytes &&
      this.open <= this.maxInFlight >> 1
    ) {
      this.paused = false;
      this.stream.resume();
    }
  }
}
