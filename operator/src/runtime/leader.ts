// Leader election on a coordination.k8s.io/v1 Lease, client-go style: acquire when the lease is free or
// expired, renew every retryPeriod, give up leadership when a renewal has not succeeded within renewDeadline
// (a request still out at the deadline is aborted: landing later, it would renew a lease another may hold by
// then) or as soon as a read shows the lease held by another.
// Optimistic concurrency (the read resourceVersion goes into the update) makes two candidates racing for an
// expired lease safe: one update wins, the other gets 409 Conflict.
import type { Kube } from "./kube.js";
import { KubeError, paths } from "./kube.js";
import type { Logger } from "./log.js";

export interface LeaderOptions {
  namespace: string;
  name: string;
  identity: string;
  leaseDurationMs?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
  onStartedLeading: () => void;
  onStoppedLeading: () => void;
  log?: Logger;
}

interface Lease {
  apiVersion: "coordination.k8s.io/v1";
  kind: "Lease";
  metadata: { name: string; namespace: string; resourceVersion?: string };
  spec: {
    holderIdentity?: string;
    leaseDurationSeconds?: number;
    acquireTime?: string;
    renewTime?: string;
    leaseTransitions?: number;
  };
}

/** MicroTime as the API expects it (RFC 3339 with microseconds). */
const microTime = (ms: number) => new Date(ms).toISOString().replace("Z", "000Z");

/** Deadlines and expiry on a clock that wall-clock steps do not move. */
const monotonic = () => performance.now();

export class LeaderElector {
  private leading = false;
  private lastRenew = 0;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  /** The campaign round in flight (or the last one): rounds run one at a time, and stop() waits for it. */
  private round: Promise<void> = Promise.resolve();
  /** A round that was in flight when stop() was called wrote the lease: stop() must release it. */
  private wroteWhileStopping = false;
  /** The lease as our last successful write left it: renewals skip the GET while we hold it. */
  private cached: Lease | undefined;
  /** The lease's spec as last read, and when (our monotonic clock) it was first read so. */
  private observed: { record: string; at: number } | undefined;
  /** The last read showed the lease held, unexpired, by another. */
  private heldByOther = false;
  private readonly leaseMs: number;
  private readonly renewDeadlineMs: number;
  private readonly retryMs: number;

  constructor(
    private readonly kube: Kube,
    private readonly o: LeaderOptions,
  ) {
    this.leaseMs = o.leaseDurationMs ?? 15_000;
    this.renewDeadlineMs = o.renewDeadlineMs ?? 10_000;
    this.retryMs = o.retryPeriodMs ?? 2_000;
  }

  isLeader(): boolean {
    return this.leading;
  }

  start(): void {
    this.stopped = false;
    this.tick();
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => this.tick(), this.retryMs);
  }

  private tick(): void {
    this.round = this.round.then(() => this.campaign());
  }

  private async campaign(): Promise<void> {
    if (this.stopped) return;
    let ok = false;
    const started = monotonic();
    // A leader's round may run only until its renew deadline; a candidate's, one deadline's length.
    const budget = this.leading ? this.lastRenew + this.renewDeadlineMs - started : this.renewDeadlineMs;
    this.heldByOther = false;
    try {
      ok = await this.tryAcquireOrRenew(AbortSignal.timeout(Math.max(1, Math.ceil(budget))));
    } catch (e) {
      this.o.log?.warn(`leader election: ${(e as Error).message}`);
    }
    // stop() was called while the request was out: it waits for this round and then releases the lease, so the
    // round neither starts leading nor schedules another. Otherwise a stopped candidate could lead again, and its
    // renewal, landing after the release, take the lease back from the standby.
    if (this.stopped) {
      this.wroteWhileStopping = ok;
      return;
    }
    try {
      if (ok) {
        this.lastRenew = monotonic();
        if (!this.leading) {
          this.leading = true;
          this.o.log?.info(`leader election: ${this.o.identity} became leader of ${this.o.namespace}/${this.o.name}`);
          this.o.onStartedLeading();
        }
      }
      if (this.leading && (this.heldByOther || monotonic() - this.lastRenew >= this.renewDeadlineMs)) {
        this.leading = false;
        this.o.log?.warn(
          `leader election: ${this.o.identity} lost the lease (${this.heldByOther ? "held by another" : "no renewal within the deadline"})`,
        );
        this.o.onStoppedLeading();
      }
    } catch (e) {
      this.o.log?.error(`leader election: a callback failed: ${(e as Error).message}`);
    }
    this.schedule();
  }

  private async tryAcquireOrRenew(signal: AbortSignal): Promise<boolean> {
    const base = paths.leases(this.o.namespace);
    const now = Date.now();
    const lease = this.cached ?? (await this.kube.get<Lease>(`${base}/${this.o.name}`, { signal }));
    this.cached = undefined;
    const spec = {
      holderIdentity: this.o.identity,
      leaseDurationSeconds: Math.ceil(this.leaseMs / 1000),
      renewTime: microTime(now),
    };
    if (!lease) {
      try {
        this.cached = await this.kube.create<Lease>(
          base,
          {
            apiVersion: "coordination.k8s.io/v1",
            kind: "Lease",
            metadata: { name: this.o.name, namespace: this.o.namespace },
            spec: { ...spec, acquireTime: microTime(now), leaseTransitions: 0 },
          },
          { signal },
        );
        return true;
      } catch (e) {
        if (e instanceof KubeError && e.code === 409) return false;
        throw e;
      }
    }
    const held = lease.spec.holderIdentity;
    const duration = (lease.spec.leaseDurationSeconds ?? 15) * 1000;
    const mine = held === this.o.identity;
    // Another holder's lease expires leaseDuration after we last saw its record change, by our own clock, as in
    // client-go: its renewTime is stamped by the holder's clock, and any skew against ours would let us take a
    // live lease or wait out a dead one for as long as the skew.
    const record = JSON.stringify(lease.spec);
    if (this.observed?.record !== record) this.observed = { record, at: monotonic() };
    if (!mine && held && monotonic() - this.observed.at < duration) {
      this.heldByOther = true;
      return false;
    }
    try {
      this.cached = await this.kube.update<Lease>(
        `${base}/${this.o.name}`,
        {
          ...lease,
          spec: {
            ...lease.spec,
            ...spec,
            acquireTime: mine ? lease.spec.acquireTime : microTime(now),
            leaseTransitions: (lease.spec.leaseTransitions ?? 0) + (mine ? 0 : 1),
          },
        },
        { signal },
      );
      return true;
    } catch (e) {
      if (e instanceof KubeError && e.code === 409) return false;
      throw e;
    }
  }

  /** Stop campaigning; when leading, release the lease so a standby takes over without waiting for expiry. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    // A renewal still out could otherwise land after the release. Not longer than the renew deadline: an API server
    // that does not answer must not hold up the shutdown (the lease then expires on its own).
    let bound: NodeJS.Timeout | undefined;
    await Promise.race([this.round, new Promise((r) => (bound = setTimeout(r, this.renewDeadlineMs)))]);
    clearTimeout(bound);
    const holds = this.leading || this.wroteWhileStopping;
    this.wroteWhileStopping = false;
    if (!holds) return;
    this.leading = false;
    try {
      const path = `${paths.leases(this.o.namespace)}/${this.o.name}`;
      const signal = AbortSignal.timeout(this.renewDeadlineMs);
      const lease = await this.kube.get<Lease>(path, { signal });
      if (lease?.spec.holderIdentity === this.o.identity) {
        await this.kube.update(
          path,
          {
            ...lease,
            spec: { ...lease.spec, holderIdentity: "", renewTime: microTime(Date.now()), leaseDurationSeconds: 1 },
          },
          { signal },
        );
      }
    } catch (e) {
      this.o.log?.warn(`leader election: release failed: ${(e as Error).message}`);
    }
  }
}
