// What one flush still waits for, per request (its index in the flush): pure bookkeeping, no I/O.
//
// A worker batch's timeout is the latest deadline among its rows, which may be another request's: a batch to a slow
// or hung worker can outlive every request whose rows are elsewhere. So a request is answered the moment its own
// parts are in (its rows of every round, and a shared expert computed here), not when the flush's slowest batch
// ends; an overflow round (`queue`) goes once the round before it has handed back its rows of the experts the new
// round holds (so no expert runs more than its capacity of the flush's rows at a time), or their requests ended; and
// the caller learns when the first request is answered (firstAnswer: the router times how long the flush may still
// hold its key's later requests from it) and when every request has ended, however long a batch that no live request
// waits for is still out.

/** A row of a round: its request's index in the flush (an Assignment; rows are told apart by identity). */
export interface FlushRow {
  item: number;
}

export class FlushProgress {
  /** Per request: parts not in yet (rows of every round, plus one for a shared expert the router computes). */
  private readonly left: Int32Array;
  /** Per request: rows of the current round that the next waits for, not back yet. */
  private readonly inRound: Int32Array;
  private gating = new Set<FlushRow>();
  private readonly ended: Uint8Array;
  private live: number;
  /** Rows of the current round that the next waits for, of live requests, not back yet. */
  private roundLeft = 0;
  /** Whether arriving parts have completed a request yet: the flush's workers are handing results back. */
  private answered = false;
  private waiting: { cond: () => boolean; resolve: () => void }[] = [];

  /** `ready(i)`: request i has every part; the caller combines and answers it, and calls end(i). */
  constructor(
    requests: number,
    private readonly ready: (i: number) => void,
  ) {
    this.left = new Int32Array(requests);
    this.inRound = new Int32Array(requests);
    this.ended = new Uint8Array(requests);
    this.live = requests;
  }

  /** Request i waits for `n` more parts. */
  expect(i: number, n = 1): void {
    this.left[i] += n;
  }

  /** Calls ready() for every live request that waits for nothing (all its slots dropped or empty, say). */
  readyNow(): void {
    for (let i = 0; i < this.left.length; i++) if (!this.ended[i] && this.left[i] <= 0) this.ready(i);
  }

  /**
   * A round goes out; `gating`: those of its rows that the next round waits for (none for the last). Every row was
   * counted by expect() already.
   */
  startRound(gating: readonly FlushRow[]): void {
    this.inRound.fill(0);
    this.roundLeft = 0;
    this.gating = new Set();
    for (const a of gating) {
      if (this.ended[a.item] || this.gating.has(a)) continue;
      this.gating.add(a);
      this.inRound[a.item]++;
      this.roundLeft++;
    }
  }

  /**
   * A batch's rows are in (the caller has filed them with their requests): calls ready(i) for each request whose
   * last parts they were, once all of them are counted.
   */
  rowsIn(rows: readonly FlushRow[]): void {
    for (const a of rows) {
      const i = a.item;
      if (this.ended[i]) continue;
      this.left[i]--;
      if (this.gating.delete(a)) {
        this.inRound[i]--;
        this.roundLeft--;
      }
    }
    for (const a of rows) this.readyIfDone(a.item);
    this.wake();
  }

  /** Request i's shared expert (computed here) is in. */
  sharedIn(i: number): void {
    if (this.ended[i]) return;
    this.left[i]--;
    this.readyIfDone(i);
    this.wake();
  }

  private readyIfDone(i: number): void {
    if (this.ended[i] || this.left[i] > 0) return;
    this.answered = true;
    this.ready(i);
  }

  /** Request i ended (answered, failed, cancelled, past its deadline): nothing more is awaited for it. */
  end(i: number): void {
    if (this.ended[i]) return;
    this.ended[i] = 1;
    this.live--;
    this.roundLeft -= this.inRound[i];
    this.inRound[i] = 0;
    this.wake();
  }

  get allEnded(): boolean {
    return this.live === 0;
  }

  /** Resolves once every row of the current round that the next waits for is back or its request has ended. */
  roundDone(): Promise<void> {
    return this.until(() => this.roundLeft <= 0);
  }

  /** Resolves once arriving parts have completed a request, or every request has ended. */
  firstAnswer(): Promise<void> {
    return this.until(() => this.answered || this.live === 0);
  }

  /** Resolves once every request has ended. */
  allDone(): Promise<void> {
    return this.until(() => this.live === 0);
  }

  private until(cond: () => boolean): Promise<void> {
    if (cond()) return Promise.resolve();
    return new Promise((resolve) => this.waiting.push({ cond, resolve }));
  }

  private wake(): void {
    if (this.waiting.length === 0) return;
    const still: typeof this.waiting = [];
    for (const w of this.waiting) {
      if (w.cond()) w.resolve();
      else still.push(w);
    }
    this.waiting = still;
  }
}
