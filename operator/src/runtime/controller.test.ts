import { describe, expect, it } from "vitest";
import { Controller } from "./controller.js";
import { createLogger, type LogLevel } from "./log.js";
import { OperatorMetrics } from "./metrics.js";

describe("Controller logging", () => {
  it("a failed reconcile at error, each finished one at debug (so --log-level debug traces every pass)", async () => {
    const lines: [LogLevel, string][] = [];
    let calls = 0;
    const ctl = new Controller(
      "expertpool",
      async () => {
        if (++calls === 1) throw new Error("conflict");
        return undefined;
      },
      new OperatorMetrics(false),
      1,
      createLogger("debug", (l, m) => lines.push([l, m])),
    );
    ctl.start();
    ctl.queue.add("ns/a");
    const t0 = Date.now();
    while (calls < 2 && Date.now() - t0 < 5_000) await new Promise((r) => setTimeout(r, 5));
    await ctl.stop(1_000);
    expect(lines[0]).toEqual(["error", "expertpool ns/a: conflict (retry 1)"]);
    expect(lines[1][0]).toBe("debug");
    expect(lines[1][1]).toMatch(/^expertpool ns\/a: reconciled in \d+ ms$/);
  });

  it("at info, a successful pass writes nothing", async () => {
    const lines: string[] = [];
    let done = false;
    const ctl = new Controller(
      "routingpolicy",
      async () => {
        done = true;
        return undefined;
      },
      new OperatorMetrics(false),
      1,
      createLogger("info", (_l, m) => lines.push(m)),
    );
    ctl.start();
    ctl.queue.add("ns/rp");
    const t0 = Date.now();
    while (!done && Date.now() - t0 < 5_000) await new Promise((r) => setTimeout(r, 5));
    await ctl.stop(1_000);
    expect(done).toBe(true);
    expect(lines).toEqual([]);
  });
});
