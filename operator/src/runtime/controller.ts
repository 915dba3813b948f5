// Runs a reconcile function over a work queue with N concurrent workers, controller-runtime style: success
// forgets the key's backoff (optionally requeueing after a delay), an error retries it with backoff.
import { type Logger, silentLogger } from "./log.js";
import type { OperatorMetrics } from "./metrics.js";
import { WorkQueue } from "./queue.js";

export interface Result {
  requeueAfterMs?: number;
}

export type Reconcile = (key: string) => Promise<Result | undefined>;

export class Controller {
  readonly queue: WorkQueue;
  private running: Promise<void>[] = [];

  constructor(
    readonly name: string,
    private readonly reconcile: Reconcile,
    private readonly metrics: OperatorMetrics,
    private readonly concurrency = 4,
    private readonly log: Logger = silentLogger,
  ) {
    this.queue = new WorkQueue(name, metrics.queueMetrics(name));
    metrics.trackQueue(this.queue);
    metrics.initController(name, concurrency);
  }

  start(): void {
    for (let i = 0; i < this.concurrency; i++) this.running.push(this.worker());
  }

  private async worker(): Promise<void> {
    for (;;) {
      const key = await this.queue.get();
      if (key === undefined) return;
      const m = this.metrics;
      m.activeWorkers.inc({ controller: this.name });
      const end = m.reconcileTime.startTimer({ controller: this.name });
      const t0 = performance.now();
      try {
        const r = await this.reconcile(key);
        this.queue.forget(key);
        this.log.debug(
          `${this.name} ${key}: reconciled in ${Math.round(performance.now() - t0)} ms${r?.requeueAfterMs ? `, again in ${r.requeueAfterMs} ms` : ""}`,
        );
        if (r?.requeueAfterMs) {
          m.reconcileTotal.inc({ controller: this.name, result: "requeue_after" });
          this.queue.addAfter(key, r.requeueAfterMs);
        } else {
          m.reconcileTotal.inc({ controller: this.name, result: "success" });
        }
      } catch (e) {
        m.reconcileTotal.inc({ controller: this.name, result: "error" });
        m.reconcileErrors.inc({ controller: this.name });
        this.log.error(`${this.name} ${key}: ${(e as Error).message} (retry ${this.queue.retries(key) + 1})`);
        this.queue.addRateLimited(key);
      } finally {
        end();
        m.activeWorkers.dec({ controller: this.name });
        this.queue.done(key);
      }
    }
  }

  /** Stop taking work; wait up to timeoutMs for reconciles in flight. */
  async stop(timeoutMs: number): Promise<void> {
    this.queue.shutDown();
    await Promise.race([Promise.all(this.running), new Promise((r) => setTimeout(r, timeoutMs).unref())]);
  }
}
