// GPU expert cache of the CUDA backend: a fixed pool of device slots (each holds one expert's bf16 weights) over
// the host tier (the worker's ResidencyCache of prepared experts). Pure bookkeeping, no CUDA: the upload itself
// is a callback, so this runs (and is tested) anywhere.
//
// - acquire(experts) pins the experts of one batch and resolves once all of them are on the device; missing ones
//   are uploaded concurrently (the copy stream overlaps compute of other batches).
// - prefetch(experts) starts uploads ahead of use and resolves once they are done, with the errors of those that failed.
// - eviction picks a victim through the same pluggable EvictionPolicy as the host cache (LRU by default) and never
//   takes a slot that is pinned by a running batch or still loading.
// - discard(experts) frees the slots of experts the host tier let go (their prepared form is never used again, and
//   the slot's entry would keep it alive): at once, or when the last batch using it lets go.

import type { EvictionPolicy } from "../cache.js";
import { abortError } from "../queue.js";
import type { DeviceCacheStats } from "./types.js";

export type GpuCacheStats = DeviceCacheStats;

export interface SlotKeyed {
  /** Stable identity of an expert across calls (one per prepared expert). */
  readonly cacheKey: string;
}

export type SlotUploader<E extends SlotKeyed> = (slot: number, expert: E) => Promise<number>;

interface Entry<E> {
  expert: E;
  slot: number;
  pins: number;
  loading?: Promise<void>;
  /** discard() came while the entry was pinned or loading, or before it was created: it goes once neither holds. */
  discarded?: boolean;
}

/** Every slot is pinned by a running batch or still loading: a state that passes. */
class SlotsBusy extends Error {
  constructor(capacity: number) {
    super(`GPU expert cache: all ${capacity} slots are in use by running batches`);
  }
}

export class GpuSlotCache<E extends SlotKeyed> {
  private readonly entries = new Map<string, Entry<E>>();
  /**
   * Everything discard() was given, by identity: a batch that fetched an expert from the host tier before the host
   * let it go may acquire it after the discard, when it has no entry yet (or no longer has one). Its entry is then
   * discarded from the start and goes at that batch's release, rather than holding a slot until the policy evicts it.
   * Weak: the prepared expert is garbage once the last batch is done with it.
   */
  private readonly discarded = new WeakSet<E>();
  private waiters: (() => void)[] = [];
  private readonly free: number[] = [];
  readonly stats: GpuCacheStats;

  constructor(
    readonly capacity: number,
    readonly policy: EvictionPolicy,
    private readonly upload: SlotUploader<E>,
    private readonly onEvent?: (kind: "hit" | "miss" | "evict" | "transfer", bytes?: number) => void,
  ) {
    if (!Number.isInteger(capacity) || capacity < 1)
      throw new Error(`capacity: must be an integer >= 1, got ${capacity}`);
    for (let s = capacity - 1; s >= 0; --s) this.free.push(s);
    this.stats = { hits: 0, misses: 0, evictions: 0, transferBytes: 0, resident: 0, capacity };
  }

  /** Slot of a resident (or loading) expert, else undefined. */
  slotOf(expert: E): number | undefined {
    return this.entries.get(expert.cacheKey)?.slot;
  }

  /**
   * Pins the distinct experts and resolves with their slots, in order, once all are on the device. With several
   * batches running at once (the backend's runs in flight) their pins together may hold every slot: then this
   * batch lets go of what it pinned and waits for a release, instead of failing a batch that fits the cache alone.
   * A batch whose `signal` aborts while it waits leaves at once with the abort's error.
   */
  async acquire(experts: readonly E[], signal?: AbortSignal): Promise<number[]> {
    const distinct = [...new Map(experts.map((e) => [e.cacheKey, e])).values()];
    if (distinct.length > this.capacity)
      throw new Error(
        `GPU expert cache: a batch needs ${distinct.length} experts but the cache has ${this.capacity} slots`,
      );
    const missed = new Set<string>(); // experts this batch found absent (one miss each, whatever the attempts)
    for (;;) {
      if (signal?.aborted) throw abortError(signal);
      const pinned: Entry<E>[] = [];
      try {
        for (const e of distinct) {
          const { entry, created } = this.pin(e);
          pinned.push(entry);
          if (created && !missed.has(e.cacheKey)) {
            missed.add(e.cacheKey);
            this.stats.misses++;
            this.onEvent?.("miss");
          }
        }
      } catch (err) {
        for (const p of pinned) this.unpinEntry(p);
        if (!(err instanceof SlotsBusy) || !this.anyHeld()) throw err;
        await this.released(signal);
        continue;
      }
      try {
        await Promise.all(pinned.map((p) => p.loading));
      } catch (err) {
        // By entry, not key: a failed upload dropped its entry, and a batch woken by the freed slot may already
        // have pinned a new one under the same key.
        for (const p of pinned) this.unpinEntry(p);
        throw err;
      }
      for (const e of distinct) {
        if (missed.has(e.cacheKey)) continue;
        this.stats.hits++;
        this.onEvent?.("hit");
        this.policy.onAccess(e.cacheKey);
      }
      return experts.map((e) => (this.entries.get(e.cacheKey) as Entry<E>).slot);
    }
  }

  /** Undoes acquire() for the same experts. */
  release(experts: readonly E[]): void {
    for (const key of new Set(experts.map((e) => e.cacheKey))) this.unpin(key);
  }

  /**
   * Frees the slots of experts that will not be asked for again (the host tier evicted their prepared form; a
   * reload prepares a new one under a new key). Before this, such slots stayed until the policy chose them, so a
   * warm-up or look-ahead, which only fill free slots, found none after a plan change. An expert pinned by a running
   * batch, or still loading, goes when that ends; a batch that asks for it meanwhile still gets it.
   */
  discard(experts: readonly E[]): void {
    for (const e of experts) {
      this.discarded.add(e);
      const entry = this.entries.get(e.cacheKey);
      if (!entry) {
        // an expert the policy evicted earlier: its key will not come back, nor should its history stay (LFU)
        this.policy.forget?.(e.cacheKey);
        continue;
      }
      entry.discarded = true;
      this.dropIfDiscarded(entry);
    }
  }

  /**
   * Starts uploads of experts not yet resident; resolves when they are loaded, with the errors of those whose upload
   * failed (reported, not thrown: a failed upload frees its slot, and the batch that needs the expert tries again).
   * `evict: false` uses free slots only and stops when none is left (look-ahead for queued batches must not push
   * out experts that other queued batches are about to use).
   */
  prefetch(experts: readonly E[], o: { evict?: boolean } = {}): Promise<unknown[]> {
    const loads: Promise<unknown>[] = [];
    for (const e of new Map(experts.map((x) => [x.cacheKey, x])).values()) {
      // already there, or let go by the host tier (its slot would go again as soon as it had loaded)
      if (this.entries.has(e.cacheKey) || this.discarded.has(e)) continue;
      if (o.evict === false && this.free.length === 0) break;
      let entry: Entry<E>;
      try {
        entry = this.pin(e).entry;
      } catch {
        break; // every slot pinned: prefetch is best effort
      }
      loads.push(
        (entry.loading ?? Promise.resolve()).then(
          () => {
            this.unpin(e.cacheKey);
            return undefined;
          },
          (err: unknown) => err ?? new Error("upload failed"),
        ),
      );
    }
    return Promise.all(loads).then((r) => r.filter((x) => x !== undefined));
  }

  /** Pins a resident (or loading) expert, or takes a slot for it and starts its upload (created). */
  private pin(e: E): { entry: Entry<E>; created: boolean } {
    const hit = this.entries.get(e.cacheKey);
    if (hit) {
      hit.pins++;
      return { entry: hit, created: false };
    }
    const slot = this.takeSlot();
    const entry: Entry<E> = { expert: e, slot, pins: 1 };
    if (this.discarded.has(e)) entry.discarded = true;
    this.entries.set(e.cacheKey, entry);
    this.policy.onInsert(e.cacheKey);
    this.stats.resident = this.entries.size;
    // An uploader that throws at once (a detached buffer) fails like one that rejects: the slot must not stay pinned
    // as if resident, never uploaded, where the next batch would compute with whatever weights it held.
    let started: Promise<number>;
    try {
      started = this.upload(slot, e);
    } catch (err) {
      started = Promise.reject(err);
    }
    entry.loading = started.then(
      (bytes) => {
        entry.loading = undefined;
        this.stats.transferBytes += bytes;
        this.onEvent?.("transfer", bytes);
        if (entry.pins === 0) {
          this.dropIfDiscarded(entry);
          this.wake(); // evictable now
        }
      },
      (err) => {
        // a failed upload leaves nothing behind: the slot returns to the pool
        this.entries.delete(e.cacheKey);
        this.policy.onRemove(e.cacheKey);
        this.free.push(slot);
        this.stats.resident = this.entries.size;
        this.wake();
        throw err;
      },
    );
    // Whoever pinned it may have let go (a batch that then waits for slots, a prefetch): the failure is handled above
    // and reaches the batches awaiting it; it must not also surface as an unhandled rejection.
    entry.loading.catch(() => {});
    return { entry, created: true };
  }

  private unpin(key: string): void {
    const e = this.entries.get(key);
    if (e) this.unpinEntry(e);
  }

  private unpinEntry(e: Entry<E>): void {
    if (e.pins > 0 && --e.pins === 0) {
      this.dropIfDiscarded(e);
      this.wake();
    }
  }

  /** Frees a discarded entry's slot once nothing holds it (counted as an eviction: the slot lost its expert). */
  private dropIfDiscarded(e: Entry<E>): void {
    if (!e.discarded || e.pins > 0 || e.loading || this.entries.get(e.expert.cacheKey) !== e) return;
    this.entries.delete(e.expert.cacheKey);
    this.policy.onRemove(e.expert.cacheKey);
    // each prepared expert has a key of its own, never asked for again once discarded: no history to keep (LFU)
    this.policy.forget?.(e.expert.cacheKey);
    this.free.push(e.slot);
    this.stats.evictions++;
    this.onEvent?.("evict");
    this.stats.resident = this.entries.size;
    this.wake();
  }

  /** Whether a slot is pinned or loading: something a waiting acquire() can wait for. */
  private anyHeld(): boolean {
    for (const e of this.entries.values()) if (e.pins > 0 || e.loading) return true;
    return false;
  }

  /** Resolves at the next wake(); rejects with the abort's error if `signal` aborts first. */
  private released(signal?: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        const i = this.waiters.indexOf(wake);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(abortError(signal as AbortSignal));
      };
      const wake = () => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      };
      this.waiters.push(wake);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** Lets every waiting acquire() try again (a slot may have come free). */
  private wake(): void {
    const waiting = this.waiters;
    this.waiters = [];
    for (const resolve of waiting) resolve();
  }

  private takeSlot(): number {
    const s = this.free.pop();
    if (s !== undefined) return s;
    const protect = new Set<string>();
    for (const [k, e] of this.entries) if (e.pins > 0 || e.loading) protect.add(k);
    const victim = this.policy.victim(protect);
    const v = victim === undefined ? undefined : this.entries.get(victim);
    if (!v || v.pins > 0 || v.loading) throw new SlotsBusy(this.capacity);
    this.entries.delete(v.expert.cacheKey);
    this.policy.onRemove(v.expert.cacheKey);
    this.stats.evictions++;
    this.onEvent?.("evict");
    this.stats.resident = this.entries.size;
    return v.slot;
  }
}
