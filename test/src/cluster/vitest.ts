// Vitest glue: one cluster per describe block, skipped locally (with the reason printed) when the binaries are
// missing, failing in CI (CI=true) so a broken asset build can never turn into a green run.
import { afterAll, beforeAll, beforeEach, describe } from "vitest";
import { isCI, missingAssetsMessage } from "./assets.js";
import { type ClusterOptions, clusterAssets, startCluster, type TestCluster } from "./cluster.js";

/** Why cluster tests cannot run here, or undefined when they can. */
export function clusterUnavailableReason(opts: ClusterOptions = {}): string | undefined {
  const lookup = clusterAssets(opts);
  return lookup.missing.length > 0 ? missingAssetsMessage(lookup) : undefined;
}

/**
 * describe() for tests that need the cluster binaries but start clusters themselves: skipped locally with the reason
 * printed when binaries are missing; in CI every test of the block fails with that reason instead.
 */
export function describeWithClusterAssets(name: string, opts: ClusterOptions, fn: () => void) {
  const reason = clusterUnavailableReason(opts);
  if (reason && !isCI()) {
    console.warn(`[test-cluster] SKIPPING "${name}": ${reason}`);
    describe.skip(name, fn);
    return;
  }
  describe(name, () => {
    beforeAll(() => {
      if (reason) throw new Error(reason);
    });
    fn();
  });
}

/**
 * describe() with a fresh cluster started in beforeAll and stopped in afterAll. `fn` receives a getter (the cluster
 * exists only once beforeAll ran). On a failed test the component logs are printed and kept. Missing binaries: as
 * describeWithClusterAssets.
 *
 *   describeWithCluster("operator", { nodes: 2 }, (cluster) => {
 *     it("reconciles", async () => { await cluster().kubectl(["get", "nodes"]); });
 *   });
 */
export function describeWithCluster(name: string, opts: ClusterOptions, fn: (cluster: () => TestCluster) => void) {
  describeWithClusterAssets(name, opts, () => {
    let cluster: TestCluster | undefined;
    beforeAll(
      async () => {
        cluster = await startCluster(opts);
        console.info(
          `[test-cluster] "${name}" started in ${(cluster.timings.total / 1000).toFixed(1)} s`,
          cluster.timings,
        );
      },
      (opts.startTimeoutMs ?? 120_000) + 10_000,
    );
    afterAll(async () => {
      await cluster?.stop();
    }, 30_000);
    useClusterFailureLogs(() => cluster);
    fn(() => {
      if (!cluster) throw new Error("the test cluster is not running (did beforeAll fail? see its error)");
      return cluster;
    });
  });
}

/** Prints (and keeps) the cluster logs when a test of the surrounding describe() fails. Call it inside describe()
 * if you start and stop the cluster yourself. */
export function useClusterFailureLogs(get: () => TestCluster | undefined): void {
  beforeEach((ctx) => {
    ctx.onTestFailed(() => {
      const c = get();
      if (!c) return;
      c.markFailed();
      const crashed = c.crashed();
      console.error(
        `[test-cluster] test failed; ${crashed.length ? `crashed: ${crashed.join("; ")}; ` : ""}logs in ${c.dir}/logs\n${c.logs(25)}`,
      );
    });
  });
}
