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
  /** A mergeable job's key, size and handle: a job of the same key that starts takes it into its run. */
  merge?: { key: string; weight: number; member: Member };
}

/** One job of a merged run: its part, and how to answer it. */
interface Member {
  part: unknown;
  signal?: AbortSignal;
  submitted: number;
  settled: boolean;
  resolve(r: { value: unknown; queueWaitMs: number; merged: number }): void;
  reject(err: unknown): void;
}

/** A job whose work can run in one go with other waiting jobs of the same key (submitMergeable). */
export interface MergeableJob<P> {
  part: P;
  /** Jobs of one key may share a run; undefined: this job always runs alone. */
  key?: string;
  /** Its size against the run's limit (rows of a batch). */
  weight: number;
  signal?: AbortSignal;
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
    const refused = this.refusal(signal);
    if (refused) return Promise.reject(refused);
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
      this.wait({ start, abandon: reject, signal });
    });
  }

  /**
   * Like submit(), for work that costs less run together than apart (the CUDA backend reads each expert's weights
   * once per run, whatever its rows). When this job starts, every waiting job of its key joins it, oldest first,
   * while their weights stay within `maxWeight`; `runAll` gets their parts in that order and answers each part, in
   * one slot. A member whose signal aborts is answered at once with the abort; the run's signal aborts once every
   * member's has. `merged` is how many jobs the run answered.
   */
  submitMergeable<P, R>(
    job: MergeableJob<P>,
    runAll: (parts: P[], signal: AbortSignal | undefined) => Promise<R[]>,
    maxWeight: number,
  ): Promise<{ value: R; merged: number } & JobTiming> {
    const { signal } = job;
    const refused = this.refusal(signal);
    if (refused) return Promise.reject(refused);
    return new Promise((resolve, reject) => {
      const self: Member = {
        part: job.part,
        signal,
        submitted: performance.now(),
        settled: false,
        resolve: resolve as Member["resolve"],
        reject,
      };
      const start = () => {
        const members = [self];
        let weight = job.weight;
        if (job.key !== undefined) {
          for (let i = 0; i < this.waiting.length; ) {
            const w = this.waiting[i];
            if (w.merge?.key === job.key && weight + w.merge.weight <= maxWeight) {
              this.waiting.splice(i, 1);
              if (w.signal && w.onAbort) w.signal.removeEventListener("abort", w.onAbort);
              members.push(w.merge.member);
              weight += w.merge.weight;
            } else i++;
          }
        }
        this.running++;
        this.onDepthChange(this.depth);
        const started = performance.now();
        // The run stops only when nobody waits for it any more; a member that gives up is answered now.
        const all = new AbortController();
        let waitingFor = members.length;
        const leave: (() => void)[] = [];
        for (const m of members) {
          const s = m.signal;
          if (!s) continue;
          const onAbort = () => {
            if (!m.settled) {
              m.settled = true;
              m.reject(abortError(s));
            }
            if (--waitingFor === 0) all.abort(s.reason);
          };
          if (s.aborted) onAbort();
          else {
            s.addEventListener("abort", onAbort, { once: true });
            leave.push(() => s.removeEventListener("abort", onAbort));
          }
        }
        const finish = () => {
          for (const l of leave) l();
          this.running--;
          this.pump();
        };
        let p: Promise<R[]>;
        try {
          p = all.signal.aborted
            ? Promise.reject(abortError(all.signal))
            : runAll(
                members.map((m) => m.part as P),
                members.some((m) => m.signal) ? all.signal : undefined,
              );
        } catch (err) {
          p = Promise.reject(err);
        }
        p.then(
          (values) => {
            finish();
            members.forEach((m, i) => {
              if (m.settled) return;
              m.settled = true;
              m.resolve({ value: values[i], queueWaitMs: started - m.submitted, merged: members.length });
            });
          },
          (err) => {
            finish();
            for (const m of members) {
              if (m.settled) continue;
              m.settled = true;
              m.reject(err);
            }
          },
        );
      };
      if (this.running < this.concurrency) {
        start();
        return;
      }
      this.wait({
        start,
        abandon: (err) => {
          self.settled = true;
          reject(err);
        },
        signal,
        merge: job.key !== undefined ? { key: job.key, weight: job.weight, member: self } : undefined,
      });
    });
  }

  /** Puts a job in line; an abort of its signal while it waits takes it out and answers it with the abort. */
  private wait(w: Waiting): void {
    const { signal } = w;
    if (signal) {
      w.onAbort = () => {
        const i = this.waiting.indexOf(w);
        if (i >= 0) {
          this.waiting.splice(i, 1);
          this.onDepthChange(this.depth);
          w.abandon(abortError(signal));
        }
      };
      signal.addEventListener("abort", w.onAbort, { once: true });
    }
    this.waiting.push(w);
    this.onDepthChange(this.depth);
  }

  /** Why a job cannot even queue: its caller has gone, or every slot and waiting place is taken. */
  private refusal(signal: AbortSignal | undefined): SwitchyardError | null {
    if (signal?.aborted) return abortError(signal);
    if (this.running >= this.concurrency && this.waiting.length >= this.capacity)
      return resourceExhausted(
        `worker queue full (${this.running} running, ${this.waiting.length} waiting, capacity ${this.capacity})`,
      );
    return null;
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
