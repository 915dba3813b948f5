// Bounded work queue in front of the compute backend.
//
// At most `concurrency` jobs run at once (one by default: the native backend already uses every core, so more
// would only interleave); at most `capacity` more wait. A job that does not fit is refused at once with
// RESOURCE_EXHAUSTED (the router retries elsewhere rather than piling latency up here). A waiting job whose
// signal aborts leaves the queue without ever reaching the backend; a running job gets the signal itself.

import { cancelled, deadlineExceeded, resourceExhausted, SwitchyardError } from "@switchyard/protocol";

export interface QueuedJob<T> {
  run: (signal: AbortSignal | undefined) => Promise<T>;
  signal?: AbortSignal;
}

export interface JobTiming {
  /** Milliseconds between submit and start. */
  queueWaitMs: number;
}

interface Waiting {
  start: () => void;
  abandon: (err: unknown) => void;
  signal?: AbortSignal;
  onAbort?: () => void;
}

export function abortError(signal: AbortSignal): SwitchyardError {
  const r = signal.reason as unknown;
  if (r instanceof SwitchyardError) return r;
  if (r instanceof Error && r.name === "TimeoutError") return deadlineExceeded();
  return cancelled();
}

export class WorkQueue {
  private running = 0;
  private readonly waiting: Waiting[] = [];

  constructor(
    readonly capacity: number,
    readonly concurrency = 1,
    private readonly onDepthChange: (depth: number) => void = () => {},
  ) {
    if (!Number.isInteger(capacity) || capacity < 0) throw new Error(`queue capacity must be an integer >= 0`);
    if (!Number.isInteger(concurrency) || concurrency < 1) throw new Error(`queue concurrency must be >= 1`);
  }

  /** Jobs waiting plus jobs running. */
  get depth(): number {
    return this.waiting.length + this.running;
  }

  submit<T>(job: QueuedJob<T>): Promise<{ value: T } & JobTiming> {
    const { signal } = job;
    if (signal?.aborted) return Promise.reject(abortError(signal));
    if (this.running >= this.concurrency && this.waiting.length >= this.capacity) {
      return Promise.reject(
        resourceExhausted(
          `worker queue full (${this.running} running, ${this.waiting.length} waiting, capacity ${this.capacity})`,
        ),
      );
    }
    const submitted = performance.now();
    return new Promise((resolve, reject) => {
      const start = () => {
        this.running++;
        this.onDepthChange(this.depth);
        const queueWaitMs = performance.now() - submitted;
        const finish = () => {
          this.running--;
          this.pump();
        };
        let p: Promise<T>;
        try {
          p = signal?.aborted ? Promise.reject(abortError(signal)) : job.run(signal);
        } catch (err) {
          p = Promise.reject(err);
        }
        p.then(
          (value) => {
            finish();
            resolve({ value, queueWaitMs });
          },
          (err) => {
            finish();
            reject(err);
          },
        );
      };
      if (this.running < this.concurrency) {
        start();
        return;
      }
      const w: Waiting = { start, abandon: reject, signal };
      if (signal) {
        w.onAbort = () => {
          const i = this.waiting.indexOf(w);
          if (i >= 0) {
            this.waiting.splice(i, 1);
            this.onDepthChange(this.depth);
            reject(abortError(signal));
          }
        };
        signal.addEventListener("abort", w.onAbort, { once: true });
      }
      this.waiting.push(w);
      this.onDepthChange(this.depth);
    });
  }

  private pump(): void {
    while (this.running < this.concurrency && this.waiting.length > 0) {
      const w = this.waiting.shift() as Waiting;
      if (w.signal && w.onAbort) w.signal.removeEventListener("abort", w.onAbort);
      w.start();
    }
    this.onDepthChange(this.depth);
  }
}
