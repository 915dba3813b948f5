import { describe, expect, it } from "vitest";
import { parseLocalArgs } from "./main.js";

describe("npm start flags", () => {
  it("defaults to a run that fits a 2-core machine", () => {
    const o = parseLocalArgs([]);
    expect(o).toMatchObject({
      family: "mixtral",
      size: "tiny",
      workers: 2,
      concurrency: 16,
      durationS: 20,
      dtype: "bf16",
    });
    expect(o.policy.batching.enabled).toBe(true);
  });

  it("takes family, size, workers, concurrency, duration and an inline policy", () => {
    const o = parseLocalArgs([
      "--family",
      "deepseek-v3",
      "--size=small",
      "--workers",
      "3",
      "--concurrency",
      "4",
      "--duration",
      "5s",
      "--policy",
      '{"batching":{"enabled":false}}',
    ]);
    expect(o).toMatchObject({ family: "deepseek-v3", size: "small", workers: 3, concurrency: 4, durationS: 5 });
    expect(o.policy.batching.enabled).toBe(false);
    expect(parseLocalArgs(["--policy", "/etc/policy.json"]).policyFile).toBe("/etc/policy.json");
  });

  it("names the bad flag", () => {
    expect(() => parseLocalArgs(["--family", "gpt"])).toThrow(/^--family: /);
    expect(() => parseLocalArgs(["--workers", "0"])).toThrow(/^--workers: /);
    expect(() => parseLocalArgs(["--policy", '{"gating":{"topP":3}}'])).toThrow(/policy\.gating\.topP/);
    expect(() => parseLocalArgs(["--bogus", "1"])).toThrow(/unknown flag --bogus/);
  });
});
