// parseRouterConfig's pool names: unique, and not the metrics' placeholder for pools the router does not serve.

import { describe, expect, it } from "vitest";
import { parseRouterConfig } from "./config.js";
import { UNKNOWN_POOL } from "./metrics.js";

const pool = (name: string) => ({ name, checkpoint: "/ckpt", planFile: "/plan.json" });

describe("parseRouterConfig pool names", () => {
  it(`refuses "${UNKNOWN_POOL}", whose series would read as requests to pools not served`, () => {
    expect(() => parseRouterConfig({ pools: [pool("a"), pool(UNKNOWN_POOL)] })).toThrow(
      /pools\[1\]\.name: "_unknown" is the metrics' label for requests to pools not served/,
    );
  });

  it("refuses a name given twice, naming the second", () => {
    expect(() => parseRouterConfig({ pools: [pool("a"), pool("a")] })).toThrow(/pools\[1\]\.name: duplicate pool "a"/);
  });
});
