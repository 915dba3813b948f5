import { describe, expect, it } from "vitest";
import { WorkQueue } from "./queue.js";

const deferred = () => {
  let resolve!: (v: number) => void;
  const p = new Promise<number>((r) => {
    resolve = r;
  });
  return { p, resolve };
};

describe("WorkQueue", () => {
  it("runs one job at a time and refuses beyond capacity with RESOURCE_EXHAUSTED", async () => {
    const depths: number[] = [];
    const q = new WorkQueue(1, 1, (d) => depths.push(d));
    const a = deferred();
    const b = deferred();
    const ja = q.submit({ run: () => a.p });
    const jb = q.submit({ run: () => b.p });
    await expect(q.submit({ run: async () => 3 })).rejects.toMatchObject({ code: "RESOURCE_EXHAUSTED" });
    expect(q.depth).toBe(2);
    a.resolve(1);
    expect((await ja).value).toBe(1);
    b.resolve(2);
    const rb = await jb;
    expect(rb.value).toBe(2);
    expect(rb.queueWaitMs).toBeGreaterThanOrEqual(0);
    expect(q.depth).toBe(0);
    expect(depths.at(-1)).toBe(0);
  });

  it("drops a waiting job whose signal aborts without running it", async () => {
    const q = new WorkQueue(4);
    const a = deferred();
    const ja = q.submit({ run: () => a.p });
    const ac = new AbortController();
    let ran = false;
    const jb = q.submit({
      signal: ac.signal,
      run: async () => {
        ran = true;
        return 0;
      },
    });
    ac.abort(new DOMException("t", "TimeoutError"));
    await expect(jb).rejects.toMatchObject({ code: "DEADLINE_EXCEEDED" });
    a.resolve(1);
    await ja;
    expect(ran).toBe(false);
    expect(q.depth).toBe(0);
  });

  it("passes the signal to a running job and keeps going after a failure", async () => {
    const q = new WorkQueue(0);
    await expect(q.submit({ run: async () => Promise.reject(new Error("boom")) })).rejects.toThrow("boom");
    const ac = new AbortController();
    const seen = q.submit({ signal: ac.signal, run: async (s) => s === ac.signal });
    expect((await seen).value).toBe(true);
  });
});

describe("WorkQueue.submitMergeable", () => {
  /** A run that records its parts and waits until released; answers each part with part * 10. */
  function recorder() {
    const runs: { parts: number[]; signal: AbortSignal | undefined; release: () => void }[] = [];
    const runAll = (parts: number[], signal: AbortSignal | undefined) =>
      new Promise<number[]>((resolve) => {
        runs.push({ parts, signal, release: () => resolve(parts.map((x) => x * 10)) });
      });
    return { runs, runAll };
  }
  const tick = () => new Promise((r) => setTimeout(r, 0));

  it("starts waiting jobs of its key with it, oldest first, within the weight limit; others keep their turn", async () => {
    const q = new WorkQueue(8, 1);
    const { runs, runAll } = recorder();
    const job = (part: number, key?: string, weight = 1) => q.submitMergeable({ part, key, weight }, runAll, 3);
    const a = job(1, "L0");
    const b = job(2, "L0");
    const c = job(3, "L1");
    const d = job(4, "L0", 2);
    const e = job(5, "L0");
    const f = job(6); // no key: always alone
    await tick();
    expect(runs.map((r) => r.parts)).toEqual([[1]]);
    expect(q.depth).toBe(6);
    runs[0].release();
    await tick();
    // b takes d (2 + 2 > 3? no: 1 + 2 = 3) and stops there: e would exceed the limit
    expect(runs.map((r) => r.parts)).toEqual([[1], [2, 4]]);
    expect(q.depth).toBe(4); // the merged run counts once, c, e and f wait
    runs[1].release();
    await tick();
    expect(runs[2].parts).toEqual([3]);
    runs[2].release();
    await tick();
    expect(runs[3].parts).toEqual([5]);
    runs[3].release();
    await tick();
    expect(runs[4].parts).toEqual([6]);
    runs[4].release();
    const got = await Promise.all([a, b, c, d, e, f]);
    expect(got.map((g) => g.value)).toEqual([10, 20, 30, 40, 50, 60]);
    expect(got.map((g) => g.merged)).toEqual([1, 2, 1, 2, 1, 1]);
    for (const g of got) expect(g.queueWaitMs).toBeGreaterThanOrEqual(0);
    expect(q.depth).toBe(0);
  });

  it("answers a member that aborts at once, and aborts the run only when every member has", async () => {
    const q = new WorkQueue(8, 1);
    const { runs, runAll } = recorder();
    const first = q.submitMergeable({ part: 0, key: "k", weight: 1 }, runAll, 10);
    const acs = [new AbortController(), new AbortController()];
    const members = acs.map((ac, i) =>
      q.submitMergeable({ part: i + 1, key: "k", weight: 1, signal: ac.signal }, runAll, 10),
    );
    await tick();
    runs[0].release();
    await first;
    await tick();
    expect(runs[1].parts).toEqual([1, 2]);
    const run = runs[1].signal as AbortSignal;
    acs[0].abort(new DOMException("t", "TimeoutError"));
    await expect(members[0]).rejects.toMatchObject({ code: "DEADLINE_EXCEEDED" });
    expect(run.aborted).toBe(false);
    acs[1].abort();
    await expect(members[1]).rejects.toMatchObject({ code: "CANCELLED" });
    expect(run.aborted).toBe(true);
    runs[1].release(); // the run's late answer goes nowhere
    await tick();
    expect(q.depth).toBe(0);
  });

  it("fails every member of a run that fails, and drops a waiting member that aborts before its run", async () => {
    const q = new WorkQueue(8, 1);
    const { runs, runAll } = recorder();
    const first = q.submitMergeable({ part: 0, key: "k", weight: 1 }, runAll, 10);
    const ac = new AbortController();
    const gone = q.submitMergeable({ part: 9, key: "k", weight: 1, signal: ac.signal }, runAll, 10);
    const failing = (parts: number[]) => Promise.reject(new Error(`boom ${parts.join(",")}`));
    const x = q.submitMergeable({ part: 1, key: "k", weight: 1 }, failing, 10);
    const y = q.submitMergeable({ part: 2, key: "k", weight: 1 }, runAll, 10);
    ac.abort();
    await expect(gone).rejects.toMatchObject({ code: "CANCELLED" });
    runs[0].release();
    await first;
    // x starts with its own runAll and takes y along: both fail with its error
    await expect(x).rejects.toThrow("boom 1,2");
    await expect(y).rejects.toThrow("boom 1,2");
    expect(runs.length).toBe(1);
    expect(q.depth).toBe(0);
  });

  it("refuses beyond capacity with RESOURCE_EXHAUSTED, as submit() does", async () => {
    const q = new WorkQueue(1, 1);
    const { runs, runAll } = recorder();
    const a = q.submitMergeable({ part: 1, key: "k", weight: 1 }, runAll, 10);
    const b = q.submitMergeable({ part: 2, key: "k", weight: 1 }, runAll, 10);
    await expect(q.submitMergeable({ part: 3, key: "k", weight: 1 }, runAll, 10)).rejects.toMatchObject({
      code: "RESOURCE_EXHAUSTED",
    });
    await tick();
    runs[0].release();
    await a;
    await tick();
    runs[1].release();
    expect((await b).value).toBe(20);
  });
});
