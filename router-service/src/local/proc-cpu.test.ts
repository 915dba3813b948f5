import { describe, expect, it } from "vitest";
import { cpuByThread, cpuSeconds, parseProcStatCpu, threadCpuLine } from "./proc-cpu.js";

describe("process CPU time", () => {
  it("reads utime + stime from a stat line whose command holds spaces and parentheses", () => {
    const line =
      "4242 (node (w 0) x) S 1 4242 4242 0 -1 4194560 1200 0 0 0 250 75 0 0 20 0 11 0 123456 1000000 5000 18446744073709551615";
    expect(parseProcStatCpu(line)).toBeCloseTo(3.25, 10);
  });

  it("rejects a line it cannot read", () => {
    expect(() => parseProcStatCpu("garbage")).toThrow(/unexpected \/proc stat line/);
  });

  it("measures this process and its main thread, and says null for a process that does not exist", async () => {
    if (process.platform !== "linux") {
      console.log("skipped: /proc is Linux only");
      return;
    }
    const a = await cpuSeconds(process.pid);
    const am = await cpuSeconds(process.pid, true);
    const end = performance.now() + 300; // > 10 ms ticks, spun on this (the main) thread
    let x = 0;
    while (performance.now() < end) x += Math.sqrt(x + 1);
    const b = await cpuSeconds(process.pid);
    const bm = await cpuSeconds(process.pid, true);
    expect(x).toBeGreaterThan(0);
    expect(bm! - am!).toBeGreaterThan(0.1);
    expect(b! - a!).toBeGreaterThanOrEqual(bm! - am! - 0.02);
    expect(await cpuSeconds(2 ** 22 + 7)).toBeNull();
  });
});

describe("CPU per thread name", () => {
  it("lists the busiest names between two readings, as cores, a renamed thread's CPU only from the window", () => {
    const th = (name: string, seconds: number) => ({ name, seconds });
    const a = new Map([
      ["10", th("main", 1)],
      ["11", th("node", 2)], // renamed sy-cuda-run in between: its 2 s from before are not the run's
      ["12", th("cuda-EvtHandlr", 0)],
    ]);
    const b = new Map([
      ["10", th("main", 2)],
      ["11", th("sy-cuda-run", 6)],
      ["12", th("cuda-EvtHandlr", 0.01)],
      ["13", th("V8 Worker", 0.5)], // started in the window
    ]);
    expect(threadCpuLine(a, b, 4)).toBe("sy-cuda-run 1.00, main 0.25, V8 Worker 0.13");
    expect(threadCpuLine(a, b, 4, 1)).toBe("sy-cuda-run 1.00");
    expect(threadCpuLine(null, b, 4)).toBe("?");
  });

  it("reads this process's threads, the JavaScript one as main", async () => {
    if (process.platform !== "linux") {
      console.log("skipped: /proc is Linux only");
      return;
    }
    const m = await cpuByThread(process.pid);
    expect(m).not.toBeNull();
    expect(m!.get(String(process.pid))?.name).toBe("main");
    expect(m!.size).toBeGreaterThan(1); // and at least libuv's or V8's helpers
    expect([...m!.values()].every((t) => t.seconds >= 0)).toBe(true);
    expect(await cpuByThread(2 ** 22 + 7)).toBeNull();
  });
});
