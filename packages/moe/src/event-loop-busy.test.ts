import { describe, expect, it } from "vitest";
import { eventLoopBusyCollector } from "./event-loop-busy.js";

describe("eventLoopBusyCollector", () => {
  it("adds the busy milliseconds since the previous collect, as seconds, and never a negative amount", () => {
    const readings = [1000, 1250, 1250, 3250];
    const collect = eventLoopBusyCollector(() => readings.shift() as number);
    const added: number[] = [];
    const counter = { inc: (v: number) => added.push(v) };
    collect.call(counter); // 1250 - 1000
    collect.call(counter); // unchanged: nothing added
    collect.call(counter); // 3250 - 1250
    expect(added).toEqual([0.25, 2]);
  });

  it("reads the real event loop: a busy spin shows up as busy time", () => {
    const collect = eventLoopBusyCollector();
    let total = 0;
    const counter = { inc: (v: number) => (total += v) };
    const until = Date.now() + 60;
    while (Date.now() < until) {} // the loop is busy for 60 ms
    return new Promise<void>((resolve) =>
      setImmediate(() => {
        collect.call(counter);
        expect(total).toBeGreaterThanOrEqual(0.05);
        resolve();
      }),
    );
  });
});
