import { describe, expect, it } from "vitest";
import type { ExpertBackend, PreparedExpert } from "./backend/types.js";
import { type ExpertId, ResidencyCache } from "./cache.js";
import { warmExperts, warmList, warmSummary } from "./warm.js";

const ids = (...keys: string[]): ExpertId[] =>
  keys.map((k) => {
    const [layer, expert] = k.split(":").map(Number);
    return { layer, expert };
  });
const keys = (xs: ExpertId[]) => xs.map((i) => `${i.layer}:${i.expert}`);

function cacheOf(capacity: number, fail?: string) {
  const loads: string[] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const cache = new ResidencyCache({
    capacity,
    load: async ({ layer, expert }) => {
      loads.push(`${layer}:${expert}`);
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      await new Promise((r) => setTimeout(r, 2));
      inFlight--;
      if (`${layer}:${expert}` === fail) throw new Error("tensor model.layers.1.mlp.experts.2.up_proj.weight missing");
      const p: PreparedExpert = { hiddenSize: 4, intermediateSize: 8, bytes: 100 };
      return { prepared: p, sourceBytes: 1000 };
    },
  });
  return { cache, loads, maxInFlight: () => maxInFlight };
}

function deviceBackend() {
  const uploaded: PreparedExpert[] = [];
  const evictFlags: (boolean | undefined)[] = [];
  const backend = {
    prefetch: async (xs: readonly PreparedExpert[], o?: { evict?: boolean }) => {
      uploaded.push(...xs);
      evictFlags.push(o?.evict);
      return [];
    },
    deviceCacheStats: () => ({
      hits: 0,
      misses: 0,
      evictions: 0,
      transferBytes: 0,
      resident: uploaded.length,
      capacity: 9,
    }),
  } as unknown as ExpertBackend;
  return { backend, uploaded, evictFlags };
}

describe("warmList", () => {
  it("takes the cold experts in layer, expert order, up to the free slots", async () => {
    const { cache } = cacheOf(4);
    await cache.get(1, 0); // resident already: not warmed again, and it holds one of the 4 slots
    const r = warmList(ids("1:3", "0:2", "1:0", "0:1", "1:1"), cache);
    expect(keys(r.take)).toEqual(["0:1", "0:2", "1:1"]);
    expect(r.leftCold).toBe(1);
  });

  it("takes ids generated (layers × experts may be far more than the cache), in any order, keeping only its room", async () => {
    const { cache } = cacheOf(3);
    await cache.get(0, 1);
    function* all(layers: number, experts: number) {
      for (let layer = 0; layer < layers; layer++)
        for (let expert = 0; expert < experts; expert++) yield { layer, expert };
    }
    const r = warmList(all(60, 20_000), cache);
    expect(keys(r.take)).toEqual(["0:0", "0:2"]);
    expect(r.leftCold).toBe(60 * 20_000 - 1 - 2);
    const shuffled = ids("2:1", "0:5", "1:7", "0:3", "3:0", "0:4", "0:1");
    expect(keys(warmList(shuffled, cache).take)).toEqual(["0:3", "0:4"]);
    await cache.get(0, 2);
    await cache.get(0, 3);
    expect(warmList(shuffled, cache)).toEqual({ take: [], leftCold: 5 });
  });
});

describe("warmExperts", () => {
  it("loads into the host cache, uploads each into free device slots only, and reports it", async () => {
    const { cache, loads, maxInFlight } = cacheOf(8);
    const { backend, uploaded, evictFlags } = deviceBackend();
    const progress: string[] = [];
    const r = await warmExperts({
      ids: ids("0:0", "0:1", "0:2", "1:0", "1:1"),
      cache,
      backend,
      concurrency: 2,
      progress: (n, of) => progress.push(`${n}/${of}`),
    });
    expect(progress).toEqual(["0/5", "1/5", "2/5", "3/5", "4/5", "5/5"]);
    expect(loads.sort()).toEqual(["0:0", "0:1", "0:2", "1:0", "1:1"]);
    expect(maxInFlight()).toBe(2);
    expect(uploaded).toHaveLength(5);
    expect(new Set(evictFlags)).toEqual(new Set([false]));
    expect(r).toMatchObject({ loaded: 5, leftCold: 0, bytes: 5000, deviceResident: 5 });
    expect(r.stopped).toBeUndefined();
    // Warming is not traffic: no hits or misses counted.
    expect([cache.hits, cache.misses]).toEqual([0, 0]);
    expect(warmSummary(r)).toMatch(/^warm-up done: 5 experts \(0\.00 GB\) loaded in [\d.]+ s; 5 on the device$/);
  });

  it("fills only what the cache holds and says how many stay cold", async () => {
    const { cache } = cacheOf(2);
    const r = await warmExperts({ ids: ids("0:0", "0:1", "0:2"), cache, backend: {} as ExpertBackend });
    expect(keys(cache.resident()).sort()).toEqual(["0:0", "0:1"]);
    expect(r).toMatchObject({ loaded: 2, leftCold: 1, deviceResident: undefined });
    expect(warmSummary(r)).toMatch(/1 left cold \(more than the cache holds\)/);
  });

  it("names the expert that failed to load", async () => {
    const { cache } = cacheOf(8, "1:2");
    await expect(
      warmExperts({ ids: ids("0:0", "1:2", "1:3"), cache, backend: {} as ExpertBackend, concurrency: 1 }),
    ).rejects.toThrow(/warm-up: layer 1 expert 2: tensor .*up_proj.weight missing/);
  });

  it("takes a read that fails because the worker closed as a stop, not a broken checkpoint", async () => {
    let closing = false;
    const cache = new ResidencyCache({
      capacity: 8,
      load: async () => {
        closing = true; // close() runs while this read is out, and the read fails on the closed file
        throw new Error("EBADF: file descriptor closed");
      },
    });
    const r = await warmExperts({
      ids: ids("0:0", "0:1"),
      cache,
      backend: {} as ExpertBackend,
      concurrency: 1,
      stopped: () => closing,
    });
    expect(r).toMatchObject({ loaded: 0, leftCold: 2, stopped: true });
  });

  it("never evicts: traffic that fills the cache meanwhile ends the warm-up at the last free slot", async () => {
    const { cache, loads } = cacheOf(3);
    let first = true;
    const r = await warmExperts({
      ids: ids("0:0", "0:1", "0:2"),
      cache,
      backend: {} as ExpertBackend,
      concurrency: 1,
      progress: () => {
        if (first) {
          first = false;
          return;
        }
        // after the first load, a batch brings 1:0 in: two slots left, one for the warm-up
        void cache.get(1, 0);
      },
    });
    await new Promise((res) => setTimeout(res, 10));
    expect(cache.evictions).toBe(0);
    expect(loads).toContain("1:0");
    expect(r.loaded + r.leftCold).toBe(3);
    expect(r.leftCold).toBeGreaterThan(0);
  });

  it("never evicts: traffic that fills the cache while a warm-up read is out keeps its experts", async () => {
    let release!: () => void;
    const slow = new Promise<void>((r) => (release = r));
    const cache = new ResidencyCache({
      capacity: 2,
      load: async ({ layer }) => {
        if (layer === 0) await slow; // the warm-up's read
        return { prepared: { hiddenSize: 4, intermediateSize: 8, bytes: 100 }, sourceBytes: 1000 };
      },
    });
    const warming = warmExperts({ ids: ids("0:0"), cache, backend: {} as ExpertBackend, concurrency: 1 });
    // batches bring 1:0 and 1:1 in meanwhile: the cache is full when the warm-up's expert arrives
    await cache.get(1, 0);
    await cache.get(1, 1);
    release();
    const r = await warming;
    expect(cache.evictions).toBe(0);
    expect(keys(cache.resident()).sort()).toEqual(["1:0", "1:1"]);
    expect(r).toMatchObject({ loaded: 0, leftCold: 1 });
  });

  it("skips experts the worker stopped serving while it ran", async () => {
    const { cache, loads } = cacheOf(8);
    const served = new Set(["0:0", "0:1", "0:2"]);
    const r = await warmExperts({
      ids: ids("0:0", "0:1", "0:2"),
      cache,
      backend: {} as ExpertBackend,
      concurrency: 1,
      serves: (i) => served.has(`${i.layer}:${i.expert}`),
      progress: (n) => {
        if (n === 1) served.delete("0:1"); // a new plan took 0:1 away
      },
    });
    expect(loads).toEqual(["0:0", "0:2"]);
    expect(r).toMatchObject({ loaded: 2, leftCold: 0 });
  });

  it("stops between loads when the worker closes", async () => {
    const { cache, loads } = cacheOf(8);
    let n = 0;
    const r = await warmExperts({
      ids: ids("0:0", "0:1", "0:2", "0:3"),
      cache,
      backend: {} as ExpertBackend,
      concurrency: 1,
      stopped: () => n++ >= 2,
    });
    expect(loads).toEqual(["0:0", "0:1"]);
    expect(r).toMatchObject({ loaded: 2, leftCold: 2, stopped: true });
    expect(warmSummary(r)).toMatch(/^warm-up stopped: 2 experts/);
  });
});
