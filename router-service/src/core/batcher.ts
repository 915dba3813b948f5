// Expert-aware batching, the timing half: requests for the same key (pool, layer, dtype) queue up and leave
// together when maxBatchTokens is reached or maxWaitMs after the first one arrived, whichever comes first.
// While flushesInFlight flushes of the same key (1 when unset here; the policy's default is 2) are still running,
// new requests wait instead (continuous batching): the workers are busy with those flushes, so another, smaller batch sent now would only
// queue behind them on the workers; held here it grows, and it leaves the moment one of them completes. A hold never
// outlasts HOLD_CAP_MS, and every request still has its own deadline timer in the router. Below that limit the
// usual maxWait applies.
// Each request that stays queued is also reported (onQueued): the router starts its gate product then, so that the
// gate overlaps the wait instead of following it.
// The flush callback then regroups the merged tokens by expert (plan-flush.ts). With batching disabled every
// request flushes alone, at once: the baseline the batching speedup is measured against.

export interface BatcherOptions {
  enabled: boolean;
  maxBatchTokens: number;
  maxWaitMs: number;
  /**
   * Flushes of one key that may run at once (default 1). With more, the next flush's gating and transfers overlap
   * the running one's time on the workers; requests are held only while this many run.
   */
  flushesInFlight?: number;
}

export interface Batchable {
  tokens: number;
  /** Arrival time (performance.now()); the flush reports each item's queue wait from it. */
  enqueuedAt: number;
}

interface Queue<T> {
  items: T[];
  tokens: number;
  timer: NodeJS.Timeout | NodeJS.Immediate | null;
  /** Flushes of this key still running. */
  running: number;
  /** The queued requests are held behind running flushes (their timer is the hold cap, not maxWait). */
  held: boolean;
}

/** Longest a request is held behind a running flush of its key before it is sent anyway. */
export const HOLD_CAP_MS = 250;

export class Batcher<T extends Batchable, K = string> {
  private readonly queues = new Map<K, Queue<T>>();

  constructor(
    private options: BatcherOptions,
    private readonly flush: (key: K, items: T[]) => void | Promise<void>,
    /** Told of each request that stays queued (held, or waiting for maxWait or more tokens), not of one sent at once. */
    private readonly onQueued?: (key: K, item: T) => void,
  ) {}

  setOptions(options: BatcherOptions): void {
    this.options = options;
    // A raised flushesInFlight frees held queues now rather than at their hold cap.
    for (const [key, q] of this.queues) if (q.held && q.running < this.inFlight) this.flushKey(key);
  }

  /** Tokens waiting (not yet flushed) across all keys. */
  get queuedTokens(): number {
    let n = 0;
    for (const q of this.queues.values()) n += q.tokens;
    return n;
  }

  add(key: K, item: T): void {
    if (!this.options.enabled) {
      this.flush(key, [item]);
      return;
    }
    let q = this.queues.get(key);
    if (!q) {
      q = { items: [], tokens: 0, timer: null, running: 0, held: false };
      this.queues.set(key, q);
    }
    // A request that would overflow the budget flushes what is queued first, so batches stay <= maxBatchTokens
    // (a single request larger than the budget goes alone).
    if (q.items.length > 0 && q.tokens + item.tokens > this.options.maxBatchTokens) this.flushKey(key);
    q.items.push(item);
    q.tokens += item.tokens;
    if (q.tokens >= this.options.maxBatchTokens) {
      this.flushKey(key);
      return;
    }
    if (q.timer === null) {
      const queue = q;
      const fire = () => {
        queue.timer = null;
        this.flushKey(key);
      };
      q.held = q.running >= this.inFlight;
      if (q.held) q.timer = setTimeout(fire, Math.max(HOLD_CAP_MS, this.options.maxWaitMs));
      else q.timer = this.options.maxWaitMs <= 0 ? setImmediate(fire) : setTimeout(fire, this.options.maxWaitMs);
    }
    this.onQueued?.(key, item);
  }

  private get inFlight(): number {
    return Math.max(1, this.options.flushesInFlight ?? 1);
  }

  /** Flushes everything now (shutdown, config change). */
  flushAll(): void {
    for (const key of [...this.queues.keys()]) this.flushKey(key);
  }

  private flushKey(key: K): void {
    const q = this.queues.get(key);
    if (!q || q.items.length === 0) return;
    if (q.timer !== null) {
      clearTimeout(q.timer as NodeJS.Timeout);
      clearImmediate(q.timer as NodeJS.Immediate);
      q.timer = null;
    }
    const items = q.items;
    q.items = [];
    q.tokens = 0;
    q.held = false;
    const done = this.flush(key, items);
    if (!done) return;
    q.running++;
    const queue = q;
    void done.finally(() => {
      queue.running--;
      // What was held behind the running flushes leaves now, as one batch; requests that came while fewer ran
      // keep their maxWait.
      if (queue.held && queue.running < this.inFlight && queue.items.length > 0) this.flushKey(key);
    });
  }
}
