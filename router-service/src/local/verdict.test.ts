import { describe, expect, it } from "vitest";
import { type RunTally, verdict } from "./verdict.js";

const base: RunTally = {
  forwards: 100,
  verified: 100,
  wrong: 0,
  errors: 0,
  unverifiable: 0,
  unchecked: 0,
  smokeOk: true,
};

describe("the local mode's last line", () => {
  it("says every answer matched only when every answer was compared", () => {
    expect(verdict(base)).toEqual({ ok: true, line: "OK: every answer matched the reference (100 verified)" });
  });

  it("with answers not compared (capacity drops, not sampled), says how many of all were", () => {
    const v = verdict({ ...base, forwards: 1000, verified: 154, unverifiable: 846 });
    expect(v.ok).toBe(true);
    expect(v.line).toBe(
      "OK: every compared answer matched the reference (154 of 1000 answers compared; 846 with capacity drops not compared)",
    );
    expect(verdict({ ...base, verified: 60, unchecked: 40 }).line).toBe(
      "OK: every compared answer matched the reference (60 of 100 answers compared; 40 not sampled (every reference thread busy))",
    );
  });

  it("fails a run that verified nothing, saying why rather than '0 wrong answers, 0 errors'", () => {
    expect(verdict({ ...base, forwards: 0, verified: 0 })).toEqual({
      ok: false,
      line: "FAILED: no answer was verified against the reference: no forward completed during the load (is --duration long enough?)",
    });
    expect(verdict({ ...base, forwards: 12, verified: 0, unverifiable: 12 }).line).toBe(
      "FAILED: no answer was verified against the reference: 12 forwards, 12 with capacity drops not compared",
    );
  });

  it("fails on wrong answers, errors or the smoke check, naming each", () => {
    expect(verdict({ ...base, wrong: 2, errors: 1, smokeOk: false })).toEqual({
      ok: false,
      line: "FAILED: 2 wrong of 100 answers verified, 1 errors, the smoke check failed",
    });
    expect(verdict({ ...base, verified: 0, forwards: 3, errors: 3 }).line).toBe(
      "FAILED: 0 wrong of 0 answers verified, 3 errors",
    );
  });
});
