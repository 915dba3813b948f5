import { notFound } from "@switchyard/protocol";
import { describe, expect, it } from "vitest";
import { RouterMetrics, UNKNOWN_POOL } from "./metrics.js";
import { requestCounter } from "./reply.js";
import type { Router } from "./router.js";

describe("requestCounter", () => {
  // Only what the counter reads of a router: its metrics and the pools it serves.
  const counted = async (served: string[], calls: Array<[string, unknown]>) => {
    const router = { metrics: new RouterMetrics(), poolNames: () => served } as unknown as Router;
    const count = requestCounter(router);
    for (const [pool, err] of calls) count(pool, "Forward", err);
    const text = await router.metrics.registry.getSingleMetricAsString("switchyard_router_requests_total");
    return [...text.matchAll(/^switchyard_router_requests_total\{([^}]*)\} (\S+)$/gm)].map((m) => `${m[1]} ${m[2]}`);
  };

  it("counts a served pool under its name, one it does not serve under a label no pool can have", async () => {
    expect(UNKNOWN_POOL).not.toMatch(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/);
    // a real pool named "unknown" keeps its own series, apart from the requests for pools the router does not serve
    expect(
      await counted(
        ["unknown", "mix"],
        [
          ["unknown", null],
          ["unknown", null],
          ["mix", null],
          ["nope", notFound('unknown pool "nope"')],
          ["other", notFound('unknown pool "other"')],
        ],
      ),
    ).toEqual([
      'pool="unknown",method="Forward",code="OK" 2',
      'pool="mix",method="Forward",code="OK" 1',
      `pool="${UNKNOWN_POOL}",method="Forward",code="NOT_FOUND" 2`,
    ]);
  });
});
