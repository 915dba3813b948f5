// The bytes of partially received frames a data-path server may hold across all its connections. Each connection
// alone is bounded by the frame limit (maxMessageBytes), but up to MAX_DATA_CONNECTIONS of them each holding most of a
// 512 MiB frame is hundreds of GB: a review held 1.5 GB of partial frames in a router with six connections that sent
// the header and most of a large frame, then stalled.
//
// A frame that spans chunks takes its whole length (its header's claim) from the budget when it starts and gives it
// back when it is whole or its connection ends. Taking the claim up front, not the bytes as they arrive, means an
// admitted frame can always finish: were bytes counted as they came, several large frames could each get partway,
// fill the budget together and wait for each other for good. A frame that does not fit waits (its connection stops
// reading, FrameReader keeps the rest of the chunk) in arrival order: later small frames do not overtake a waiting
// large one, so none starves. A frame larger than the whole budget is admitted alone, once nothing else holds any.
// Pure: no sockets, no timers.

/** A frame waiting for room; cancel it with FrameBudget.cancel when its connection ends first. */
export interface BudgetWaiter {
  readonly bytes: number;
  readonly grant: () => void;
}

export class FrameBudget {
  private used = 0;
  private readonly queue: BudgetWaiter[] = [];

  constructor(readonly limitBytes: number) {
    if (!(limitBytes > 0)) throw new RangeError(`partial-frame budget must be positive, got ${limitBytes}`);
  }

  /** Bytes taken by frames in progress. */
  get usedBytes(): number {
    return this.used;
  }

  /** Frames waiting for room. */
  get waiting(): number {
    return this.queue.length;
  }

  /**
   * Takes `bytes` now if they fit and nobody waits ahead (returns null), else queues `grant`, called once they have
   * been taken for it (returns the waiter).
   */
  take(bytes: number, grant: () => void): BudgetWaiter | null {
    if (this.queue.length === 0 && this.fits(bytes)) {
      this.used += bytes;
      return null;
    }
    const w = { bytes, grant };
    this.queue.push(w);
    return w;
  }

  /** Gives back what a frame took (it is whole, or its connection ended) and admits the waiters that now fit. */
  give(bytes: number): void {
    this.used -= bytes;
    this.admit();
  }

  /** Forgets a waiter whose connection ended before its turn (the ones behind it may fit now). */
  cancel(w: BudgetWaiter): void {
    const i = this.queue.indexOf(w);
    if (i < 0) return;
    this.queue.splice(i, 1);
    if (i === 0) this.admit();
  }

  private fits(bytes: number): boolean {
    return this.used === 0 || this.used + bytes <= this.limitBytes;
  }

  private admit(): void {
    while (this.queue.length > 0 && this.fits((this.queue[0] as BudgetWaiter).bytes)) {
      const w = this.queue.shift() as BudgetWaiter;
      this.used += w.bytes;
      w.grant();
    }
  }
}
