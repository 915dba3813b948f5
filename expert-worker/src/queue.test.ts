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
