import { describe, expect, it } from "vitest";
import { FrameBudget } from "./frame-budget.js";

describe("FrameBudget", () => {
  it("takes what fits at once and queues the rest, admitting it in arrival order as room comes back", () => {
    const b = new FrameBudget(100);
    const granted: string[] = [];
    expect(b.take(60, () => granted.push("a"))).toBeNull();
    const w1 = b.take(50, () => granted.push("b"));
    // 10 would fit, but a later small frame does not overtake a waiting large one (none starves)
    const w2 = b.take(10, () => granted.push("c"));
    expect([w1 !== null, w2 !== null, b.usedBytes, b.waiting]).toEqual([true, true, 60, 2]);
    b.give(60);
    expect(granted).toEqual(["b", "c"]);
    expect([b.usedBytes, b.waiting]).toEqual([60, 0]);
    b.give(50);
    b.give(10);
    expect(b.usedBytes).toBe(0);
  });

  it("admits a frame larger than the whole budget alone, once nothing else holds any", () => {
    const b = new FrameBudget(100);
    const granted: number[] = [];
    expect(b.take(30, () => {})).toBeNull();
    expect(b.take(250, () => granted.push(250))).not.toBeNull();
    b.give(30);
    expect([granted, b.usedBytes]).toEqual([[250], 250]);
    expect(b.take(1, () => granted.push(1))).not.toBeNull(); // nothing fits beside it
    b.give(250);
    expect(granted).toEqual([250, 1]);
  });

  it("forgets a cancelled waiter, and the ones behind it move up", () => {
    const b = new FrameBudget(100);
    const granted: string[] = [];
    b.take(90, () => {});
    const big = b.take(80, () => granted.push("big"));
    b.take(10, () => granted.push("small"));
    b.cancel(big!);
    expect(granted).toEqual(["small"]);
    expect([b.usedBytes, b.waiting]).toEqual([100, 0]);
    b.cancel(big!); // twice: nothing
    expect(b.waiting).toBe(0);
  });

  it("refuses a budget that is not positive", () => {
    expect(() => new FrameBudget(0)).toThrow(/must be positive/);
  });
});
