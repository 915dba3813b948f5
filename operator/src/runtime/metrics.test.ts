import { describe, expect, it } from "vitest";
import { Controller } from "./controller.js";
import { OperatorMetrics, type PoolLike, poolReadiness } from "./metrics.js";

/** The exposition's lines of one metric (its samples, not HELP/TYPE). */
async function samples(m: OperatorMetrics, name: string): Promise<string[]> {
  return (await m.registry.metrics())
    .split("\n")
    .filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `))
    .sort();
}

type Cond = { status: string; reason?: string };
/** A pool whose Ready condition is `ready`, Degraded `degraded` (default False) and Progressing `progressing`. */
const pool = (namespace: string, name: string, ready?: Cond, degraded?: Cond, progressing?: Cond): PoolLike => ({
  metadata: { namespace, name },
  status: ready
    ? {
        conditions: [
          { type: "Progressing", ...(progressing ?? { status: "False", reason: "AsExpected" }) },
          { type: "Degraded", ...(degraded ?? { status: "False", reason: "AsExpected" }) },
          { type: "Ready", ...ready },
        ],
      }
    : {},
});

describe("poolReadiness", () => {
  it("a pool not Ready is named by Degraded's reason, else Progressing's, else Ready's; without Ready it is Unknown", () => {
    const notReady = { status: "False", reason: "ExpertsUnavailable" };
    expect(
      poolReadiness(
        pool(
          "team-a",
          "mixtral",
          notReady,
          { status: "True", reason: "InsufficientGPU" },
          { status: "True", reason: "ScalingUp" },
        ),
      ),
    ).toEqual({ namespace: "team-a", name: "mixtral", status: "False", reason: "InsufficientGPU" });
    expect(
      poolReadiness(pool("team-a", "warm", notReady, undefined, { status: "True", reason: "WaitingForReady" })).reason,
    ).toBe("WaitingForReady");
    expect(poolReadiness(pool("team-a", "lost", notReady)).reason).toBe("ExpertsUnavailable");
    // Ready: its own reason, whatever else is under way
    expect(
      poolReadiness(
        pool("team-a", "rolling", { status: "True", reason: "ExpertsServed" }, undefined, {
          status: "True",
          reason: "RollingUpdate",
        }),
      ).reason,
    ).toBe("ExpertsServed");
    expect(poolReadiness(pool("team-a", "new"))).toEqual({
      namespace: "team-a",
      name: "new",
      status: "Unknown",
      reason: "",
    });
    expect(poolReadiness({ metadata: { name: "x" } }).namespace).toBe("default");
  });
});

describe("OperatorMetrics: per-pool series", () => {
  it("switchyard_operator_pool_ready: one series per pool, 1 only when Ready, gone with the pool", async () => {
    const m = new OperatorMetrics(false);
    let pools = [
      pool(
        "team-a",
        "mixtral",
        { status: "False", reason: "ExpertsUnavailable" },
        { status: "True", reason: "InsufficientGPU" },
      ),
      pool("team-b", "mixtral", { status: "True", reason: "WorkersReady" }),
      pool("team-b", "new"),
    ];
    m.poolStates = () => pools.map(poolReadiness);
    expect(await samples(m, "switchyard_operator_pool_ready")).toEqual([
      'switchyard_operator_pool_ready{pool_namespace="team-a",pool="mixtral",reason="InsufficientGPU"} 0',
      'switchyard_operator_pool_ready{pool_namespace="team-b",pool="mixtral",reason="WorkersReady"} 1',
      'switchyard_operator_pool_ready{pool_namespace="team-b",pool="new",reason=""} 0',
    ]);
    // the aggregate the dashboards read stays
    expect(await samples(m, "switchyard_operator_pools")).toEqual([
      'switchyard_operator_pools{condition="False"} 1',
      'switchyard_operator_pools{condition="True"} 1',
      'switchyard_operator_pools{condition="Unknown"} 1',
    ]);
    // a reason that changes leaves one series for the pool; a deleted pool leaves none
    pools = [pool("team-a", "mixtral", { status: "False", reason: "WaitingForReady" })];
    expect(await samples(m, "switchyard_operator_pool_ready")).toEqual([
      'switchyard_operator_pool_ready{pool_namespace="team-a",pool="mixtral",reason="WaitingForReady"} 0',
    ]);
  });

  it("switchyard_operator_router_config_left_out names each pool left out, and drops it once it is back in", async () => {
    const m = new OperatorMetrics(false);
    let leftOut = ["team-a/big", "default/huge"];
    m.routerConfig = () => ({ bytes: 1_000_000, served: 3, leftOut });
    expect(await samples(m, "switchyard_operator_router_config_left_out")).toEqual([
      'switchyard_operator_router_config_left_out{pool_namespace="default",pool="huge"} 1',
      'switchyard_operator_router_config_left_out{pool_namespace="team-a",pool="big"} 1',
    ]);
    expect(await samples(m, "switchyard_operator_router_config_pools")).toEqual([
      'switchyard_operator_router_config_pools{state="left_out"} 2',
      'switchyard_operator_router_config_pools{state="served"} 3',
    ]);
    leftOut = ["team-a/big"];
    expect(await samples(m, "switchyard_operator_router_config_left_out")).toEqual([
      'switchyard_operator_router_config_left_out{pool_namespace="team-a",pool="big"} 1',
    ]);
  });
});

describe("OperatorMetrics: a controller's series exist from its start", () => {
  it("reconcile errors (and each result) at 0 before any reconcile, so rate() sees the first error", async () => {
    const m = new OperatorMetrics(false);
    new Controller("expertpool", async () => undefined, m, 2);
    new Controller("routingpolicy", async () => undefined, m, 1);
    expect(await samples(m, "controller_runtime_reconcile_errors_total")).toEqual([
      'controller_runtime_reconcile_errors_total{controller="expertpool"} 0',
      'controller_runtime_reconcile_errors_total{controller="routingpolicy"} 0',
    ]);
    expect(await samples(m, "controller_runtime_reconcile_total")).toEqual(
      ["expertpool", "routingpolicy"]
        .flatMap((c) =>
          ["success", "error", "requeue_after"].map(
            (r) => `controller_runtime_reconcile_total{controller="${c}",result="${r}"} 0`,
          ),
        )
        .sort(),
    );
    expect(await samples(m, "controller_runtime_max_concurrent_reconciles")).toEqual([
      'controller_runtime_max_concurrent_reconciles{controller="expertpool"} 2',
      'controller_runtime_max_concurrent_reconciles{controller="routingpolicy"} 1',
    ]);
  });
});
