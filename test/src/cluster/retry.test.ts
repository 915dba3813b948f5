// The port-retry path of startCluster: a port picked as free is taken before etcd binds it.
import { createServer } from "node:net";
import { CoreV1Api } from "@kubernetes/client-node";
import { expect, it } from "vitest";
import { startCluster } from "./cluster.js";
import { freePorts } from "./util.js";
import { describeWithClusterAssets } from "./vitest.js";

const minimal = { withKwok: false, withControllerManager: false, withScheduler: false } as const;

describeWithClusterAssets("startCluster port retry", minimal, () => {
  it("retries with new ports when a picked port is already in use", async () => {
    const blocker = createServer();
    await new Promise<void>((r) => blocker.listen(0, "127.0.0.1", r));
    const busy = (blocker.address() as { port: number }).port;
    let calls = 0;
    const pickPorts = async (n: number) => {
      calls++;
      const ports = await freePorts(n);
      if (calls === 1) ports[0] = busy; // etcd's client port
      return ports;
    };
    try {
      const cluster = await startCluster({ ...minimal, pickPorts });
      try {
        expect(calls).toBe(2);
        const ns = await cluster.kubeConfig.makeApiClient(CoreV1Api).listNamespace();
        expect(ns.items.map((n) => n.metadata?.name)).toContain("default");
      } finally {
        await cluster.stop();
      }
    } finally {
      blocker.close();
    }
  }, 120_000);
});
