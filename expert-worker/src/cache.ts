// Expert residency cache: prepared experts (converted/packed weights, see ExpertBackend.prepare) keyed by
// (layer, expert), at most `capacity` of them. Which one leaves when a new one arrives is a pluggable policy
// (LRU by default). Loading reads only that expert's tensors from the checkpoint.
//
// A batch keeps references to the experts it runs, so evicting an expert that is in use only drops the cache's
// reference; memory is returned when the batch finishes.

import type { PreparedExpert } from "./backend/types.js";

export interface ExpertId {
  layer: number;
  expert: number;
}

export const keyOf = (layer: number, expert: number): string => `${layer}:${expert}`;

export function parseKey(key: string): ExpertId {
  const [l, e] = key.split(":");
  return { layer: Number(l), expert: Number(e) };
}

/** Chooses victims. Called with every resident key on insert/access/remove. */
export interface EvictionPolicy {
  readonly name: string;
  onInsert(key: string): void;
  onAccess(key: string): void;
  onRemove(key: string): void;
  /**
   * The key will not be seen again (the GPU tier's keys are one per prepared expert): drop whatever history is kept
   * for it past onRemove. Without it LFU's counts grew by one per expert ever prepared.
   */
  forget?(key: string): void;
  /** The key to evict next, never one in `protect`. */
  victim(protect: ReadonlySet<string>): string | undefined;
}

/** Least recently used: a Map keeps insertion order; touching re-inserts at the end. */
export class LruPolicy implements EvictionPolicy {
  readonly name = "lru";
  private readonly order = new Map<string, true>();
  onInsert(key: string): void {
    this.order.delete(key);
    this.order.set(key, true);
  }
  onAccess(key: string): void {
    this.onInsert(key);
  }
  onRemove(key: string): void {
    this.order.delete(key);
  }
  victim(protect: ReadonlySet<string>): string | undefined {
    for (const k of this.order.keys()) if (!protect.has(k)) return k;
    return undefined;
  }
}

/** Least frequently used (ties: least recent). For workloads with a stable hot set. */
export class LfuPolicy implements EvictionPolicy {
  readonly name = "lfu";
  private readonly counts = new Map<string, number>();
  private tick = 0;
  private readonly last = new Map<string, number>();
  onInsert(key: string): void {
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
    this.last.set(key, ++this.tick);
  }
  onAccess(key: string): void {
    this.onInsert(key);
  }
  onRemove(key: string): void {
    this.last.delete(key);
    // Frequency is kept across evictions so a hot expert that was pushed out comes back with its history.
  }
  forget(key: string): void {
    this.last.delete(key);
    this.counts.delete(key);
  }
  /** Keys with a frequency kept (resident or not). */
  get tracked(): number {
    return this.counts.size;
  }
  victim(protect: ReadonlySet<string>): string | undefined {
    let best: string | undefined;
    let bestC = Number.POSITIVE_INFINITY;
    let bestT = Number.POSITIVE_INFINITY;
    for (const [k, t] of this.last) {
      if (protect.has(k)) continue;
      const c = this.counts.get(k) ?? 0;
      if (c < bestC || (c === bestC && t < bestT)) {
        best = k;
        bestC = c;
        bestT = t;
      }
    }
    return best;
  }
}

export function makePolicy(name: string): EvictionPolicy {
  switch (name) {
    case "lru":
      return new LruPolicy();
    case "lfu":
      return new LfuPolicy();
    default:
      throw new Error(`unknown cache policy "${name}" (lru | lfu)`);
  }
}

export interface CacheEvents {
  hit?(id: ExpertId): void;
  miss?(id: ExpertId): void;
  /** An expert left the cache; `prepared` is what it held (batches that took it may still be running it). */
  evict?(id: ExpertId, prepared: PreparedExpert): void;
  /**
   * A load finished for an expert let go while it loaded (evict, a new plan): the batches that waited for it run
   * it, but nothing keeps it. No `evict` (it was never resident); its device slot (CUDA) is to go as for one.
   */
  unkept?(id: ExpertId, prepared: PreparedExpert): void;
  /** Bytes read from the checkpoint for a load. */
  transfer?(bytes: number): void;
  resident?(count: number): void;
}

export interface LoadedExpert {
  prepared: PreparedExpert;
  /** Bytes read from the checkpoint to build it. */
  sourceBytes: number;
}

export interface CacheOptions {
  capacity: number;
  load: (id: ExpertId) => Promise<LoadedExpert>;
  policy?: EvictionPolicy;
  events?: CacheEvents;
}

export class ResidencyCache {
  private cap: number;
  readonly policy: EvictionPolicy;
  private readonly entries = new Map<string, PreparedExpert>();
  /** Loads in flight; `keep` false: evicted while loading, so its callers get it but it does not become resident. */
  private readonly loading = new Map<string, { p: Promise<PreparedExpert>; keep: boolean }>();
  private readonly load: CacheOptions["load"];
  private readonly events: CacheEvents;
  hits = 0;
  misses = 0;
  evictions = 0;
  transferBytes = 0;

  constructor(o: CacheOptions) {
    if (!Number.isInteger(o.capacity) || o.capacity < 1) throw new Error("cache capacity must be an integer >= 1");
    this.cap = o.capacity;
    this.policy = o.policy ?? new LruPolicy();
    this.load = o.load;
    this.events = o.events ?? {};
  }

  /** Experts it holds at most. */
  get capacity(): number {
    return this.cap;
  }

  /**
   * Holds at most `capacity` from now on (the worker's share of a new plan); when fewer than are resident, the
   * policy's victims leave (with `evict` events) until the rest fits. Returns them.
   */
  resize(capacity: number): ExpertId[] {
    if (!Number.isInteger(capacity) || capacity < 1) throw new Error("cache capacity must be an integer >= 1");
    this.cap = capacity;
    const out: ExpertId[] = [];
    while (this.entries.size > this.cap) {
      const v = this.policy.victim(new Set());
      if (v === undefined) break;
      this.remove(v);
      out.push(parseKey(v));
    }
    return out;
  }

  has(layer: number, expert: number): boolean {
    return this.entries.has(keyOf(layer, expert));
  }

  /** The prepared expert if resident, without counting a hit or touching the eviction order. */
  peek(layer: number, expert: number): PreparedExpert | undefined {
    return this.entries.get(keyOf(layer, expert));
  }

  resident(): ExpertId[] {
    return [...this.entries.keys()].map(parseKey);
  }

  get size(): number {
    return this.entries.size;
  }

  /**
   * The prepared expert, loading it on a miss. `protect` keys (the other experts of the same batch) are not
   * chosen as victims while room is made, unless nothing else is left.
   */
  async get(
    layer: number,
    expert: number,
    protect: ReadonlySet<string> = new Set(),
  ): Promise<{ expert: PreparedExpert; hit: boolean }> {
    const key = keyOf(layer, expert);
    const have = this.entries.get(key);
    if (have) {
      this.hits++;
      this.policy.onAccess(key);
      this.events.hit?.({ layer, expert });
      return { expert: have, hit: true };
    }
    this.misses++;
    this.events.miss?.({ layer, expert });
    return { expert: await this.insert(key, layer, expert, protect), hit: false };
  }

  /** Load experts that are not resident. Returns what was loaded, what already was there, what got evicted. */
  async prefetch(ids: ExpertId[]): Promise<{ loaded: ExpertId[]; alreadyResident: ExpertId[]; evicted: ExpertId[] }> {
    const loaded: ExpertId[] = [];
    const alreadyResident: ExpertId[] = [];
    const evicted: ExpertId[] = [];
    const protect = new Set(ids.map((i) => keyOf(i.layer, i.expert)));
    for (const id of ids) {
      const key = keyOf(id.layer, id.expert);
      if (this.entries.has(key)) {
        alreadyResident.push(id);
        this.policy.onAccess(key);
        continue;
      }
      await this.insert(key, id.layer, id.expert, protect, evicted);
      // not when it was evicted while it loaded (a plan change, an Evict): it is not resident
      if (this.entries.has(key)) loaded.push(id);
    }
    return { loaded, alreadyResident, evicted };
  }

  /**
   * Loads the expert into a free slot, never evicting (warm-up). False, and not kept, when no slot is free by the
   * time it has loaded (other loads took them meanwhile).
   */
  async fill(id: ExpertId): Promise<boolean> {
    const key = keyOf(id.layer, id.expert);
    if (this.entries.has(key)) return true;
    await this.insert(key, id.layer, id.expert, new Set(), undefined, false);
    return this.entries.has(key);
  }

  /** Removes the experts; one still loading is handed to whoever waits for it but not kept (it was let go). */
  evict(ids: ExpertId[]): ExpertId[] {
    const out: ExpertId[] = [];
    for (const id of ids) {
      const key = keyOf(id.layer, id.expert);
      const l = this.loading.get(key);
      if (l) l.keep = false;
      if (this.remove(key)) out.push(id);
    }
    return out;
  }

  /** Evicts every expert, resident or loading, that `keep` refuses (a new plan); returns the resident ones. */
  retain(keep: (id: ExpertId) => boolean): ExpertId[] {
    return this.evict([...this.entries.keys(), ...this.loading.keys()].map(parseKey).filter((id) => !keep(id)));
  }

  private remove(key: string): boolean {
    const prepared = this.entries.get(key);
    if (!prepared) return false;
    this.entries.delete(key);
    this.policy.onRemove(key);
    this.evictions++;
    this.events.evict?.(parseKey(key), prepared);
    this.events.resident?.(this.entries.size);
    return true;
  }

  private async insert(
    key: string,
    layer: number,
    expert: number,
    protect: ReadonlySet<string>,
    evicted?: ExpertId[],
    evict = true,
  ): Promise<PreparedExpert> {
    let l = this.loading.get(key);
    // asked for again after an evict: wanted after all
    if (l) l.keep = true;
    else {
      // Concurrent misses on one expert share a single load.
      const p = this.load({ layer, expert }).then((r) => {
        this.transferBytes += r.sourceBytes;
        this.events.transfer?.(r.sourceBytes);
        return r.prepared;
      });
      const entry = { p, keep: true };
      l = entry;
      this.loading.set(key, entry);
      p.finally(() => this.loading.delete(key)).catch(() => {});
      // before the waiters below take it up: they see the same `keep`
      p.then(
        (prepared) => {
          if (!entry.keep) this.events.unkept?.({ layer, expert }, prepared);
        },
        () => {},
      );
    }
    const prepared = await l.p;
    if (!l.keep) return prepared;
    if (!this.entries.has(key)) {
      if (!evict && this.entries.size >= this.capacity) return prepared;
      while (this.entries.size >= this.capacity) {
        const v = this.policy.victim(protect) ?? this.policy.victim(new Set());
        if (v === undefined) break;
        this.remove(v);
        evicted?.push(parseKey(v));
      }
      this.entries.set(key, prepared);
      this.policy.onInsert(key);
      this.events.resident?.(this.entries.size);
    } else {
      this.policy.onAccess(key);
    }
    return this.entries.get(key) as PreparedExpert;
  }
}
