import { describeWithCluster } from "@switchyard/test/cluster/vitest";
import { expect, it } from "vitest";
import { adminClient, createNamespace, pool, startOperator, waitReady } from "./helpers.js";

describeWithCluster("operator smoke", { nodes: 2, gpusPerNode: 8 }, (cluster) => {
  it("makes a pool Ready", async () => {
    const c = cluster();
    await c.kubectl(["apply", "--server-side", "-f", "crds/"]);
    await c.kubectl([
      "wait",
      "--for=condition=Established",
      "crd/expertpools.switchyard.dev",
      "crd/routingpolicies.switchyard.dev",
    ]);
    const admin = adminClient(c);
    await createNamespace(admin, "smoke");
    const m = startOperator(c);
    await m.start();
    try {
      await admin.create("/apis/switchyard.dev/v1alpha1/namespaces/smoke/expertpools", pool("a", "smoke"));
      const p = await waitReady(admin, "smoke", "a");
      console.log(JSON.stringify(p.status, null, 1));
      console.log(Object.fromEntries(m.kube.counts));
      expect(p.status?.readyReplicas).toBe(2);
    } finally {
      await m.stop();
    }
  });
});
