import { afterEach, describe, expect, it, vi } from "vitest";
import { createLogger, type LogLevel } from "./log.js";

describe("createLogger", () => {
  afterEach(() => vi.restoreAllMocks());

  const collect = (level: LogLevel) => {
    const lines: [LogLevel, string][] = [];
    const log = createLogger(level, (l, m) => lines.push([l, m]));
    log.debug("d");
    log.info("i");
    log.warn("w");
    log.error("e");
    return lines;
  };

  it("writes messages at its level and above, dropping the rest", () => {
    expect(collect("debug")).toEqual([
      ["debug", "d"],
      ["info", "i"],
      ["warn", "w"],
      ["error", "e"],
    ]);
    expect(collect("info")).toEqual([
      ["info", "i"],
      ["warn", "w"],
      ["error", "e"],
    ]);
    expect(collect("warn")).toEqual([
      ["warn", "w"],
      ["error", "e"],
    ]);
    expect(collect("error")).toEqual([["error", "e"]]);
  });

  it("by default: a timestamp and the level on each line, warn and error on stderr", () => {
    const out = vi.spyOn(console, "log").mockImplementation(() => {});
    const err = vi.spyOn(console, "error").mockImplementation(() => {});
    const log = createLogger("info");
    log.debug("hidden");
    log.info("caches synced");
    log.error("expertpool ns/a: boom");
    expect(out.mock.calls.map((c) => c[0])).toEqual([
      expect.stringMatching(/^\d{4}-\d\d-\d\dT\S+Z info caches synced$/),
    ]);
    expect(err.mock.calls.map((c) => c[0])).toEqual([expect.stringMatching(/^\S+Z error expertpool ns\/a: boom$/)]);
  });

  it("keeps a message with line breaks (an API server's plain-text error body, a stack) on one line", () => {
    const err = vi.spyOn(console, "error").mockImplementation(() => {});
    createLogger("info").warn("watch expertpools: 404 page not found\n; restarting in 1000 ms\r\nat x");
    expect(err.mock.calls).toHaveLength(1);
    expect(err.mock.calls[0][0]).toMatch(
      /warn watch expertpools: 404 page not found\\n; restarting in 1000 ms\\nat x$/,
    );
    expect(err.mock.calls[0][0]).not.toMatch(/[\r\n]/);
  });
});
