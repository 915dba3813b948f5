import { describe, expect, it } from "vitest";
import type { PreparedExpert } from "./backend/types.js";
import { type ExpertId, LfuPolicy, ResidencyCache } from "./cache.js";

function fakeCache(capacity: number, policy?: LfuPolicy) {
  const loads: string[] = [];
  const events = { hits: 0, misses: 0, evictions: 0, bytes: 0, unkept: [] as string[] };
  const cache = new ResidencyCache({
    capacity,
    policy,
    load: async ({ layer, expert }: ExpertId) => {
      loads.push(`${layer}:${expert}`);
      await new Promise((r) => setTimeout(r, 1));
      const p: PreparedExpert = { hiddenSize: 4, intermediateSize: 8, bytes: 100 };
      return { prepared: p, sourceBytes: 10 };
    },
    events: {
      hit: () => events.hits++,
      miss: () => events.misses++,
      evict: () => events.evictions++,
      unkept: (id) => events.unkept.push(`${id.layer}:${id.expert}`),
      transfer: (b) => {
        events.bytes += b;
      },
    },
  });
  return { cache, loads, events };
}

describe("ResidencyCache", () => {
  it("counts hits and misses and evicts the least recently used", async () => {
    const { cache, loads, events } = fakeCache(2);
    await cache.get(0, 1);
    await cache.get(0, 2);
    await cache.get(0, 1); // hit; 0:2 is now least recent
    await cache.get(0, 3); // evicts 0:2
    expect(
      cache
        .resident()
        .map((k) => `${k.layer}:${k.expert}`)
        .sort(),
    ).toEqual(["0:1", "0:3"]);
    expect(loads).toEqual(["0:1", "0:2", "0:3"]);
    expect([cache.hits, cache.misses, cache.evictions, cache.transferBytes]).toEqual([1, 3, 1, 30]);
    expect(events).toEqual({ hits: 1, misses: 3, evictions: 1, bytes: 30, unkept: [] });
  });

  it("shares one load between concurrent misses of the same expert", async () => {
    const { cache, loads } = fakeCache(4);
    const [a, b] = await Promise.all([cache.get(1, 5), cache.get(1, 5)]);
    expect(a.expert).toBe(b.expert);
    expect(loads).toEqual(["1:5"]);
  });

  it("does not evict experts of the same batch while making room", async () => {
    const { cache } = fakeCache(2);
    await cache.get(0, 0);
    await cache.get(0, 1);
    const protect = new Set(["0:1", "0:2"]);
    await cache.get(0, 2, protect); // victim must be 0:0 even though 0:1... is older than nothing else
    expect(cache.has(0, 1)).toBe(true);
    expect(cache.has(0, 0)).toBe(false);
  });

  it("prefetch reports loaded / already resident / evicted; evict removes", async () => {
    const { cache } = fakeCache(2);
    await cache.get(0, 0);
    const r = await cache.prefetch([
      { layer: 0, expert: 0 },
      { layer: 0, expert: 1 },
    ]);
    expect(r.alreadyResident).toEqual([{ layer: 0, expert: 0 }]);
    expect(r.loaded).toEqual([{ layer: 0, expert: 1 }]);
    expect(r.evicted).toEqual([]);
    const r2 = await cache.prefetch([{ layer: 1, expert: 0 }]);
    expect(r2.evicted).toEqual([{ layer: 0, expert: 0 }]);
    expect(
      cache.evict([
        { layer: 1, expert: 0 },
        { layer: 9, expert: 9 },
      ]),
    ).toEqual([{ layer: 1, expert: 0 }]);
    expect(cache.size).toBe(1);
  });

  it("an expert evicted while it loads is handed to its callers but not kept", async () => {
    const { cache, loads, events } = fakeCache(4);
    const got = cache.get(0, 0);
    // the plan took it away (or an Evict RPC came) while its checkpoint read was out
    expect(cache.evict([{ layer: 0, expert: 0 }])).toEqual([]);
    expect((await got).hit).toBe(false);
    expect(cache.has(0, 0)).toBe(false);
    expect(cache.size).toBe(0);
    // asked for again after the evict: kept, from the one load
    const again = cache.get(0, 1);
    cache.evict([{ layer: 0, expert: 1 }]);
    const [a, b] = await Promise.all([again, cache.get(0, 1)]);
    expect(a.expert).toBe(b.expert);
    expect(cache.has(0, 1)).toBe(true);
    expect(loads).toEqual(["0:0", "0:1"]);
    // the one let go is reported (its device slot goes too), the one wanted again is not
    expect(events.unkept).toEqual(["0:0"]);
    expect(events.evictions).toBe(0);
  });

  it("prefetch does not report as loaded an expert evicted while it loaded", async () => {
    const { cache } = fakeCache(4);
    const r = cache.prefetch([
      { layer: 0, expert: 0 },
      { layer: 0, expert: 1 },
    ]);
    cache.evict([{ layer: 0, expert: 0 }]);
    expect((await r).loaded).toEqual([{ layer: 0, expert: 1 }]);
    expect(cache.resident()).toEqual([{ layer: 0, expert: 1 }]);
  });

  it("LFU keeps the frequently used expert", async () => {
    const { cache } = fakeCache(2, new LfuPolicy());
    await cache.get(0, 0);
    await cache.get(0, 0);
    await cache.get(0, 0);
    await cache.get(0, 1);
    await cache.get(0, 2); // LRU would evict 0:0; LFU evicts 0:1 (count 1, older than 0:2)
    expect(cache.has(0, 0)).toBe(true);
    expect(cache.has(0, 1)).toBe(false);
  });

  it("rejects a capacity below one", () => {
    expect(() => fakeCache(0)).toThrow(/capacity/);
    expect(() => fakeCache(1).cache.resize(0)).toThrow(/capacity/);
  });

  it("resize: a larger capacity keeps more; a smaller one evicts the policy's victims down to it", async () => {
    const { cache, loads, events } = fakeCache(2);
    cache.resize(3);
    for (const e of [0, 1, 2]) await cache.get(0, e);
    expect([cache.capacity, cache.size, cache.evictions]).toEqual([3, 3, 0]);
    await cache.get(0, 0); // 0:1 is now the least recent, then 0:2
    expect(cache.resize(1)).toEqual([
      { layer: 0, expert: 1 },
      { layer: 0, expert: 2 },
    ]);
    expect(cache.resident()).toEqual([{ layer: 0, expert: 0 }]);
    expect([cache.capacity, events.evictions]).toEqual([1, 2]);
    await cache.get(0, 3); // at the new capacity: 0:0 makes room
    expect(cache.resident()).toEqual([{ layer: 0, expert: 3 }]);
    expect(loads).toEqual(["0:0", "0:1", "0:2", "0:3"]);
  });
});
