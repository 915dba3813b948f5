import { describe, expect, it } from "vitest";
import { LfuPolicy, LruPolicy } from "../cache.js";
import { GpuSlotCache } from "./cuda-cache.js";

const ex = (k: string) => ({ cacheKey: k });

function harness(capacity: number, opts: { fail?: Set<string>; delay?: boolean } = {}) {
  const uploads: { slot: number; key: string }[] = [];
  const gates: (() => void)[] = [];
  const cache = new GpuSlotCache(capacity, new LruPolicy(), async (slot, e: { cacheKey: string }) => {
    uploads.push({ slot, key: e.cacheKey });
    if (opts.delay) await new Promise<void>((r) => gates.push(r));
    if (opts.fail?.has(e.cacheKey)) throw new Error(`upload ${e.cacheKey} failed`);
    return 100;
  });
  return {
    cache,
    uploads,
    open: () => {
      for (const g of gates.splice(0)) g();
    },
  };
}

describe("GpuSlotCache", () => {
  it("uploads misses once, counts hits, and hands out distinct slots", async () => {
    const { cache, uploads } = harness(4);
    const [a, b] = [ex("a"), ex("b")];
    const s1 = await cache.acquire([a, b, a]);
    expect(s1[0]).toBe(s1[2]);
    expect(s1[0]).not.toBe(s1[1]);
    cache.release([a, b, a]);
    const s2 = await cache.acquire([b]);
    cache.release([b]);
    expect(s2[0]).toBe(s1[1]);
    expect(uploads).toHaveLength(2);
    expect(cache.stats).toMatchObject({
      hits: 1,
      misses: 2,
      evictions: 0,
      transferBytes: 200,
      resident: 2,
      capacity: 4,
    });
  });

  it("evicts the least recently used unpinned expert and reuses its slot", async () => {
    const { cache, uploads } = harness(2);
    const [a, b, c] = [ex("a"), ex("b"), ex("c")];
    const [sa] = await cache.acquire([a]);
    cache.release([a]);
    await cache.acquire([b]);
    cache.release([b]);
    await cache.acquire([a]); // a becomes most recent; b is the LRU victim
    cache.release([a]);
    const [sc] = await cache.acquire([c]);
    cache.release([c]);
    expect(cache.slotOf(b)).toBeUndefined();
    expect(cache.slotOf(a)).toBe(sa);
    expect(sc).not.toBe(sa);
    expect(cache.stats.evictions).toBe(1);
    expect(uploads.map((u) => u.key)).toEqual(["a", "b", "c"]);
  });

  it("never evicts an expert pinned by a running batch: a batch that finds every slot pinned waits for a release", async () => {
    const { cache } = harness(1);
    await cache.acquire([ex("a")]);
    let got: number[] | undefined;
    const b = cache.acquire([ex("b")]).then((s) => {
      got = s;
    });
    await new Promise((r) => setTimeout(r, 20));
    expect(got).toBeUndefined();
    expect(cache.slotOf(ex("a"))).toBe(0);
    cache.release([ex("a")]);
    await b;
    expect(got).toEqual([0]);
    expect(cache.slotOf(ex("a"))).toBeUndefined();
    expect(cache.stats).toMatchObject({ hits: 0, misses: 2, evictions: 1 });
  });

  it("two running batches whose experts together exceed the slots: the second waits, then evicts, counted once", async () => {
    const { cache, uploads } = harness(3);
    const first = await cache.acquire([ex("a"), ex("b")]);
    // c takes the free slot; d finds a and b pinned and c pinned by this very batch: it lets go of c and waits
    const second = cache.acquire([ex("c"), ex("d")]);
    await new Promise((r) => setTimeout(r, 20));
    expect(uploads.map((u) => u.key)).toEqual(["a", "b", "c"]);
    cache.release([ex("a"), ex("b")]);
    const slots = await second;
    expect(new Set([...first, ...slots]).size).toBe(3);
    expect(uploads.map((u) => u.key)).toEqual(["a", "b", "c", "d"]);
    expect(cache.stats).toMatchObject({ hits: 0, misses: 4, evictions: 1, resident: 3 });
    cache.release([ex("c"), ex("d")]);
  });

  it("a waiting batch's abandoned upload that fails is no unhandled rejection, and the batch still gets its experts", async () => {
    // x's first upload fails while the batch that started it waits for a slot for z (y is pinned by a running batch)
    const failOnce = new Set(["x"]);
    const gates: (() => void)[] = [];
    const cache = new GpuSlotCache(2, new LruPolicy(), async (_slot, e: { cacheKey: string }) => {
      if (e.cacheKey === "x") await new Promise<void>((r) => gates.push(r));
      if (failOnce.delete(e.cacheKey)) throw new Error(`upload ${e.cacheKey} failed`);
      return 100;
    });
    await cache.acquire([ex("y")]);
    const waiting = cache.acquire([ex("x"), ex("z")]);
    await new Promise((r) => setTimeout(r, 10));
    for (const g of gates.splice(0)) g(); // x's upload fails now, pinned by nobody
    await new Promise((r) => setTimeout(r, 10));
    cache.release([ex("y")]);
    await new Promise((r) => setTimeout(r, 10));
    for (const g of gates.splice(0)) g(); // the retry's upload of x succeeds
    await expect(waiting).resolves.toHaveLength(2);
  });

  it("a batch whose signal aborts while it waits for a slot leaves at once with the abort's error", async () => {
    const { cache } = harness(1);
    await cache.acquire([ex("a")]);
    const ac = new AbortController();
    const waiting = cache.acquire([ex("b")], ac.signal);
    await new Promise((r) => setTimeout(r, 10));
    ac.abort();
    await expect(waiting).rejects.toMatchObject({ code: "CANCELLED" });
    cache.release([ex("a")]);
    expect(cache.slotOf(ex("a"))).toBe(0); // the aborted batch took nothing
    expect(cache.slotOf(ex("b"))).toBeUndefined();
    await expect(cache.acquire([ex("b")], AbortSignal.abort())).rejects.toMatchObject({ code: "CANCELLED" });
  });

  it("a batch waiting behind a loading prefetch gets the slot when that upload fails", async () => {
    // the only slot is held by a prefetch still uploading; its upload fails and frees the slot
    const { cache, open } = harness(1, { delay: true, fail: new Set(["p"]) });
    void cache.prefetch([ex("p")]);
    const b = cache.acquire([ex("b")]);
    await new Promise((r) => setTimeout(r, 10));
    open(); // p's upload fails and frees the slot
    await new Promise((r) => setTimeout(r, 10));
    open(); // b's own upload
    await expect(b).resolves.toEqual([0]);
  });

  it("prefetch resolves with the errors of the uploads that failed, and loads the rest", async () => {
    const { cache } = harness(3, { fail: new Set(["b"]) });
    const failed = await cache.prefetch([ex("a"), ex("b"), ex("c")]);
    expect(failed).toHaveLength(1);
    expect(String(failed[0])).toMatch(/b/);
    expect(cache.slotOf(ex("a"))).toBeDefined();
    expect(cache.slotOf(ex("b"))).toBeUndefined(); // its slot freed
    expect(await cache.prefetch([ex("a")])).toEqual([]);
  });

  it("an uploader that throws at once fails the batch and frees the slot (never a hit on a slot not uploaded)", async () => {
    let calls = 0;
    const cache = new GpuSlotCache(1, new LruPolicy(), (_slot, e: { cacheKey: string }) => {
      calls++;
      if (calls === 1) throw new Error(`upload ${e.cacheKey}: its ArrayBuffer is detached`);
      return Promise.resolve(100);
    });
    await expect(cache.acquire([ex("a")])).rejects.toThrow(/detached/);
    expect(cache.slotOf(ex("a"))).toBeUndefined();
    await expect(cache.acquire([ex("a")])).resolves.toEqual([0]);
    expect(calls).toBe(2); // uploaded for real the second time
    expect(cache.stats.hits).toBe(0);
  });

  it("rejects a batch with more experts than slots, naming both numbers", async () => {
    const { cache } = harness(2);
    await expect(cache.acquire([ex("a"), ex("b"), ex("c")])).rejects.toThrow(
      /needs 3 experts but the cache has 2 slots/,
    );
  });

  it("concurrent batches share one upload of the same expert", async () => {
    const { cache, uploads, open } = harness(2, { delay: true });
    const p1 = cache.acquire([ex("a")]);
    const p2 = cache.acquire([ex("a")]);
    await Promise.resolve();
    open();
    const [[s1], [s2]] = await Promise.all([p1, p2]);
    expect(s1).toBe(s2);
    expect(uploads).toHaveLength(1);
  });

  it("a failed upload frees its slot and the next acquire retries", async () => {
    const fail = new Set(["a"]);
    const { cache, uploads } = harness(1, { fail });
    await expect(cache.acquire([ex("a")])).rejects.toThrow(/upload a failed/);
    expect(cache.stats.resident).toBe(0);
    fail.clear();
    await expect(cache.acquire([ex("a")])).resolves.toEqual([0]);
    expect(uploads).toHaveLength(2);
  });

  it("a batch whose uploads failed lets go of its own pins only, not those of a batch that re-uploaded them", async () => {
    // uploads settled by hand: A's two fail together, which frees the two slots B waits for
    const pending = new Map<string, { resolve: (n: number) => void; reject: (e: Error) => void }>();
    const cache = new GpuSlotCache(
      3,
      new LruPolicy(),
      (_slot, e: { cacheKey: string }) =>
        new Promise<number>((resolve, reject) => pending.set(e.cacheKey, { resolve, reject })),
    );
    const settle = (k: string, err?: Error) => (err ? pending.get(k)?.reject(err) : pending.get(k)?.resolve(100));
    const [z, x, w, v, q] = ["z", "x", "w", "v", "q"].map(ex);
    const d = cache.acquire([z]);
    settle("z");
    await d; // D keeps z pinned
    const a = cache.acquire([x, w]);
    const b = cache.acquire([x, v]); // x is A's (loading), v finds no slot: B waits
    settle("x", new Error("upload x failed"));
    settle("w", new Error("upload w failed"));
    await expect(a).rejects.toThrow("upload x failed");
    await new Promise((r) => setTimeout(r, 0));
    settle("x"); // B's own upload of x, into a slot A's failure freed
    settle("v");
    const slots = await b;
    // B holds x and v: a batch needing another expert finds every slot pinned and waits, evicting nothing
    const c = cache.acquire([q]);
    await new Promise((r) => setTimeout(r, 10));
    expect(pending.has("q")).toBe(false);
    expect([cache.slotOf(x), cache.slotOf(v)]).toEqual(slots);
    cache.release([x, v]);
    await new Promise((r) => setTimeout(r, 0));
    settle("q");
    expect(await c).toHaveLength(1);
  });

  it("prefetch loads ahead without pinning, and the later acquire is a hit", async () => {
    const { cache } = harness(2);
    await cache.prefetch([ex("a"), ex("b")]);
    expect(cache.stats).toMatchObject({ misses: 0, hits: 0, resident: 2 });
    await cache.acquire([ex("a")]);
    expect(cache.stats.hits).toBe(1);
    cache.release([ex("a")]);
    // prefetched experts are not pinned: a new one can evict b
    await cache.acquire([ex("c")]);
    expect(cache.slotOf(ex("b"))).toBeUndefined();
  });

  it("prefetch with evict: false fills free slots only and never evicts", async () => {
    const { cache, uploads } = harness(2);
    await cache.acquire([ex("a")]);
    cache.release([ex("a")]);
    await cache.prefetch([ex("b"), ex("c")], { evict: false });
    expect(uploads.map((u) => u.key)).toEqual(["a", "b"]); // c found no free slot
    expect(cache.stats).toMatchObject({ evictions: 0, resident: 2 });
    expect(cache.slotOf(ex("a"))).toBeDefined();
    // the default (evict allowed) makes room
    await cache.prefetch([ex("c")]);
    expect(cache.stats.evictions).toBe(1);
    expect(cache.slotOf(ex("c"))).toBeDefined();
  });

  it("discard frees an idle expert's slot at once, for a fill that never evicts", async () => {
    const { cache, uploads } = harness(2);
    await cache.acquire([ex("a"), ex("b")]);
    cache.release([ex("a"), ex("b")]);
    cache.discard([ex("a"), ex("z")]); // z: never here, nothing to do
    expect(cache.stats).toMatchObject({ resident: 1, evictions: 1 });
    expect(cache.slotOf(ex("a"))).toBeUndefined();
    await cache.prefetch([ex("c")], { evict: false });
    expect(uploads.map((u) => u.key)).toEqual(["a", "b", "c"]);
    expect(cache.slotOf(ex("b"))).toBeDefined(); // the free slot took c; b stayed
  });

  it("discard of an expert a running batch holds frees its slot when that batch lets go, not before", async () => {
    const { cache } = harness(2);
    const [slot] = await cache.acquire([ex("a")]);
    cache.discard([ex("a")]);
    expect(cache.slotOf(ex("a"))).toBe(slot);
    // another batch that still has it (queued before the host let it go) gets it where it is
    expect(await cache.acquire([ex("a")])).toEqual([slot]);
    cache.release([ex("a")]);
    expect(cache.slotOf(ex("a"))).toBe(slot);
    cache.release([ex("a")]);
    expect(cache.slotOf(ex("a"))).toBeUndefined();
    expect(cache.stats).toMatchObject({ resident: 0, evictions: 1 });
  });

  it("discard of an expert still loading frees its slot once the upload is done", async () => {
    const { cache, open } = harness(2, { delay: true });
    const loading = cache.prefetch([ex("a")]);
    cache.discard([ex("a")]);
    expect(cache.slotOf(ex("a"))).toBeDefined();
    open();
    await loading;
    expect(cache.slotOf(ex("a"))).toBeUndefined();
    expect(cache.stats).toMatchObject({ resident: 0, evictions: 1, transferBytes: 100 });
  });

  it("an expert discarded before any batch put it on the device leaves at the release of the batch that ran it", async () => {
    const { cache, uploads } = harness(2);
    const p1 = ex("p1");
    cache.discard([p1]); // the host tier let it go; a batch that fetched it before runs now
    const [slot] = await cache.acquire([p1]);
    expect(cache.slotOf(p1)).toBe(slot);
    cache.release([p1]);
    expect(cache.slotOf(p1)).toBeUndefined();
    expect(cache.stats).toMatchObject({ resident: 0, evictions: 1 });
    // both slots are free for a warm-up, which never evicts; a prefetch of the discarded one uploads nothing
    await cache.prefetch([p1, ex("a"), ex("b")], { evict: false });
    expect(uploads.map((u) => u.key)).toEqual(["p1", "a", "b"]);
    expect(cache.stats.resident).toBe(2);
  });

  it("LFU forgets the count of every prepared expert the host tier let go (one key each, never seen again)", async () => {
    const policy = new LfuPolicy();
    const cache = new GpuSlotCache(2, policy, async () => 10);
    for (let i = 0; i < 1000; i++) {
      const e = ex(`cuda-expert-${i}`);
      await cache.acquire([e]);
      cache.release([e]);
      // half leave the host tier while on the device, half after the policy evicted them from it
      if (i % 2 === 0) cache.discard([e]);
      else if (i > 4) cache.discard([ex(`cuda-expert-${i - 4}`)]);
    }
    expect(policy.tracked).toBeLessThanOrEqual(4);
    expect(cache.stats.resident).toBeLessThanOrEqual(2);
  });

  it("validates capacity", () => {
    expect(() => harness(0)).toThrow(/capacity: must be an integer >= 1/);
  });
});
