// A deduplicating keyed work queue with client-go's semantics:
// - a key is queued at most once (adding it again while queued is a no-op);
// - a key being processed is never handed to a second worker; adding it meanwhile marks it dirty, and it is
//   queued again when the worker calls done();
// - failures are retried with per-key exponential backoff (addRateLimited), reset by forget();
// - addAfter() delays an add (requeueAfter).
// Metrics hooks mirror client-go's workqueue metrics.

export interface QueueMetrics {
  depth(n: number): void;
  add(): void;
  retry(): void;
  queueDuration(seconds: number): void;
  workDuration(seconds: number): void;
}

export interface RateLimit {
  baseMs: number;
  maxMs: number;
}

export class WorkQueue {
  private queue: string[] = [];
  private dirty = new Set<string>();
  private processing = new Map<string, number>(); // key -> start time
  private addedAt = new Map<string, number>();
  private failures = new Map<string, number>();
  private waiters: ((key: string | undefined) => void)[] = [];
  private timers = new Set<NodeJS.Timeout>();
  private delayed = new Map<string, { due: number; timer: NodeJS.Timeout }>();
  private shuttingDown = false;

  constructor(
    readonly name: string,
    private readonly metrics?: QueueMetrics,
    private readonly limit: RateLimit = { baseMs: 100, maxMs: 60_000 },
    private readonly now: () => number = () => performance.now(),
  ) {}

  get length(): number {
    return this.queue.length;
  }

  add(key: string): void {
    if (this.shuttingDown || this.dirty.has(key)) return;
    this.metrics?.add();
    this.dirty.add(key);
    this.addedAt.set(key, this.now());
    if (this.processing.has(key)) return; // requeued by done()
    this.enqueue(key);
  }

  /** Hands a dirty key to a waiting worker, or puts it in line; its wait is timed from its add. */
  private enqueue(key: string): void {
    const w = this.waiters.shift();
    if (w) {
      this.dirty.delete(key);
      this.processing.set(key, this.now());
      const at = this.addedAt.get(key);
      this.addedAt.delete(key);
      this.metrics?.queueDuration(at !== undefined ? (this.now() - at) / 1000 : 0);
      w(key);
      return;
    }
    this.queue.push(key);
    this.metrics?.depth(this.queue.length);
  }

  addAfter(key: string, ms: number): void {
    if (this.shuttingDown) return;
    if (ms <= 0) {
      this.add(key);
      return;
    }
    // One pending delayed add per key, the earliest: a burst of events becomes one pass, not one per event.
    const due = this.now() + ms;
    const pending = this.delayed.get(key);
    if (pending && pending.due <= due) return;
    if (pending) {
      clearTimeout(pending.timer);
      this.timers.delete(pending.timer);
    }
    const t = setTimeout(() => {
      this.timers.delete(t);
      this.delayed.delete(key);
      this.add(key);
    }, ms);
    t.unref();
    this.timers.add(t);
    this.delayed.set(key, { due, timer: t });
  }

  /** Backoff for this key's next retry: base × 2^failures, capped. */
  backoffMs(key: string): number {
    const n = this.failures.get(key) ?? 0;
    return Math.min(this.limit.maxMs, this.limit.baseMs * 2 ** n);
  }

  addRateLimited(key: string): void {
    const ms = this.backoffMs(key);
    this.failures.set(key, (this.failures.get(key) ?? 0) + 1);
    this.metrics?.retry();
    this.addAfter(key, ms);
  }

  forget(key: string): void {
    this.failures.delete(key);
  }

  retries(key: string): number {
    return this.failures.get(key) ?? 0;
  }

  /** Next key to process; undefined once shut down (queued keys are dropped: a new leader relists anyway). */
  get(): Promise<string | undefined> {
    if (this.shuttingDown) return Promise.resolve(undefined);
    if (this.queue.length > 0) {
      const key = this.queue.shift() as string;
      this.dirty.delete(key);
      this.processing.set(key, this.now());
      const at = this.addedAt.get(key);
      this.addedAt.delete(key);
      if (at !== undefined) this.metrics?.queueDuration((this.now() - at) / 1000);
      this.metrics?.depth(this.queue.length);
      return Promise.resolve(key);
    }
    return new Promise((r) => this.waiters.push(r));
  }

  done(key: string): void {
    const started = this.processing.get(key);
    this.processing.delete(key);
    if (started !== undefined) this.metrics?.workDuration((this.now() - started) / 1000);
    // Added while it was being processed: hand it out again (to a waiting worker, or back in line), as that add
    // counted and timed it (client-go's Done): not a second add, nor a wait that starts only now.
    if (this.dirty.has(key) && !this.shuttingDown) this.enqueue(key);
  }

  /** Seconds of work in progress, and the longest single run, for the unfinished-work gauges. */
  inFlight(): { unfinishedSeconds: number; longestSeconds: number } {
    const now = this.now();
    let sum = 0;
    let max = 0;
    for (const t of this.processing.values()) {
      sum += (now - t) / 1000;
      max = Math.max(max, (now - t) / 1000);
    }
    return { unfinishedSeconds: sum, longestSeconds: max };
  }

  isIdle(): boolean {
    return this.queue.length === 0 && this.processing.size === 0;
  }

  shutDown(): void {
    this.shuttingDown = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.delayed.clear();
    for (const w of this.waiters) w(undefined);
    this.waiters = [];
  }

  /** Resolves when no work is queued or running (for graceful shutdown). */
  async drain(timeoutMs: number): Promise<boolean> {
    const end = Date.now() + timeoutMs;
    while (this.processing.size > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    return this.processing.size === 0;
  }
}
