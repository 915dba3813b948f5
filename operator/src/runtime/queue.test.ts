import { describe, expect, it } from "vitest";
import { WorkQueue } from "./queue.js";

describe("WorkQueue", () => {
  it("deduplicates keys waiting in line", async () => {
    const q = new WorkQueue("t");
    q.add("a");
    q.add("b");
    q.add("a");
    expect(q.length).toBe(2);
    expect(await q.get()).toBe("a");
    expect(await q.get()).toBe("b");
  });

  it("never hands a key to two workers; an add during processing requeues it after done()", async () => {
    const q = new WorkQueue("t");
    q.add("a");
    const k = await q.get();
    q.add("a"); // arrives while "a" is processing
    expect(q.length).toBe(0);
    let second: string | undefined;
    void q.get().then((x) => {
      second = x;
    });
    await new Promise((r) => setImmediate(r));
    expect(second).toBeUndefined();
    q.done(k as string);
    await new Promise((r) => setImmediate(r));
    expect(second).toBe("a");
  });

  it("retries with exponential backoff per key until forget()", () => {
    const q = new WorkQueue("t", undefined, { baseMs: 10, maxMs: 50 });
    expect(q.backoffMs("a")).toBe(10);
    q.addRateLimited("a");
    expect(q.backoffMs("a")).toBe(20);
    q.addRateLimited("a");
    q.addRateLimited("a");
    q.addRateLimited("a");
    expect(q.backoffMs("a")).toBe(50);
    expect(q.backoffMs("b")).toBe(10);
    q.forget("a");
    expect(q.backoffMs("a")).toBe(10);
    q.shutDown();
  });

  it("delivers a rate-limited key after its delay", async () => {
    const q = new WorkQueue("t", undefined, { baseMs: 30, maxMs: 30 });
    const t0 = Date.now();
    q.addRateLimited("a");
    expect(await q.get()).toBe("a");
    expect(Date.now() - t0).toBeGreaterThanOrEqual(25);
  });

  it("folds a burst of delayed adds of one key into one add", async () => {
    let adds = 0;
    const q = new WorkQueue("t", {
      depth: () => {},
      add: () => adds++,
      retry: () => {},
      queueDuration: () => {},
      workDuration: () => {},
    });
    for (let i = 0; i < 10; i++) q.addAfter("r", 20);
    q.addAfter("s", 20);
    await new Promise((r) => setTimeout(r, 60));
    expect(adds).toBe(2);
    expect(q.length).toBe(2);
    q.shutDown();
  });

  it("stops handing out queued keys once shut down", async () => {
    const q = new WorkQueue("t");
    q.add("a");
    q.shutDown();
    expect(await q.get()).toBeUndefined();
  });

  it("reports metrics and wakes waiters on shutdown", async () => {
    const seen: string[] = [];
    const q = new WorkQueue("t", {
      depth: (n) => seen.push(`depth ${n}`),
      add: () => seen.push("add"),
      retry: () => seen.push("retry"),
      queueDuration: () => seen.push("qd"),
      workDuration: () => seen.push("wd"),
    });
    q.add("x");
    const k = await q.get();
    q.done(k as string);
    expect(seen).toEqual(["add", "depth 1", "qd", "depth 0", "wd"]);
    const pending = q.get();
    q.shutDown();
    expect(await pending).toBeUndefined();
    q.add("y"); // ignored after shutdown
    expect(await q.get()).toBeUndefined();
  });

  it("counts a key added while it is processed once, and times its wait from that add", async () => {
    let now = 0;
    const adds: number[] = [];
    const waits: number[] = [];
    const q = new WorkQueue(
      "t",
      {
        depth: () => {},
        add: () => adds.push(now),
        retry: () => {},
        queueDuration: (s) => waits.push(s),
        workDuration: () => {},
      },
      undefined,
      () => now,
    );
    q.add("x");
    expect(await q.get()).toBe("x");
    now = 1000;
    q.add("x"); // an event while x is reconciled: x is dirty
    now = 6000;
    q.done("x"); // back in line, waiting since t=1000
    expect(await q.get()).toBe("x");
    expect(adds).toEqual([0, 1000]);
    expect(waits).toEqual([0, 5]);
  });
});
