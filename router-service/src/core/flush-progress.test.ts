import { describe, expect, it } from "vitest";
import { FlushProgress, type FlushRow } from "./flush-progress.js";

/** A flush of `n` requests that ends each request as it gets ready (as the router's answer does). */
function flush(n: number) {
  const answered: number[] = [];
  const p: FlushProgress = new FlushProgress(n, (i) => {
    answered.push(i);
    p.end(i);
  });
  return { p, answered };
}

const settled = async (x: Promise<void>) => {
  let done = false;
  void x.then(() => {
    done = true;
  });
  await new Promise((r) => setImmediate(r));
  return done;
};

describe("FlushProgress", () => {
  it("answers a request once its own rows are in, whatever the other requests still wait for", async () => {
    const { p, answered } = flush(2);
    const a0: FlushRow = { item: 0 };
    const a1: FlushRow = { item: 0 };
    const b0: FlushRow = { item: 1 };
    for (const r of [a0, a1, b0]) p.expect(r.item);
    p.readyNow();
    p.startRound([]);
    p.rowsIn([a0]);
    expect(answered).toEqual([]);
    p.rowsIn([a1]); // request 0 complete; request 1's row is still out
    expect(answered).toEqual([0]);
    expect(await settled(p.firstAnswer())).toBe(true);
    expect(await settled(p.allDone())).toBe(false);
    p.end(1); // its deadline
    expect(await settled(p.allDone())).toBe(true);
  });

  it("waits for a shared expert computed here; answers at once a request that waits for nothing", () => {
    const { p, answered } = flush(2);
    p.expect(0); // request 0: a shared expert, no rows; request 1: nothing (every slot dropped)
    p.readyNow();
    expect(answered).toEqual([1]);
    p.sharedIn(0);
    expect(answered).toEqual([1, 0]);
  });

  it("an overflow round waits only for the rows that gate it; an ended request's rows no longer count", async () => {
    const { p } = flush(2);
    const q0: FlushRow = { item: 0 };
    const b0: FlushRow = { item: 1 };
    const q1: FlushRow = { item: 0 };
    for (const r of [q0, b0, q1]) p.expect(r.item);
    p.startRound([q0, b0]);
    p.rowsIn([q0]);
    expect(await settled(p.roundDone())).toBe(false);
    p.end(1);
    expect(await settled(p.roundDone())).toBe(true);
    p.startRound([]); // the last round
    expect(await settled(p.roundDone())).toBe(true);
    expect(p.allEnded).toBe(false);
    p.rowsIn([q1]);
    expect(p.allEnded).toBe(true);
  });

  it("has no first answer while nothing is answered, and counts rows of an ended request no more", async () => {
    const { p, answered } = flush(1);
    const r: FlushRow = { item: 0 };
    p.expect(0);
    p.expect(0);
    expect(await settled(p.firstAnswer())).toBe(false);
    p.end(0); // cancelled
    p.rowsIn([r, r]);
    expect(answered).toEqual([]);
    expect(await settled(p.firstAnswer())).toBe(true); // every request ended
  });
});
