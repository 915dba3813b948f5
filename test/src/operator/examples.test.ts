// The manifests in examples/ (which the READMEs and the chart's NOTES point users at) stay valid: the API server
// accepts every one of them as written, the operator plans every pool and resolves every policy, and the status
// fields the examples' comments mention read as they say (the DeepSeek-V3 pool's shared-expert slice past its
// dense layers, each policy's TopK / TopP / MaxK columns).
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  applyDefaults,
  desiredPlan,
  type ExpertPool,
  expertPoolSpecSchema,
  type Manager,
  type RoutingPolicy,
} from "@switchyard/operator";
import { describeWithCluster } from "@switchyard/test/cluster/vitest";
import { loadAll } from "js-yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { waitUntil } from "../cluster/index.js";
import { adminClient, cond, createNamespace, type Obj, RP, startOperator, XP } from "./helpers.js";

const REPO = join(dirname(fileURLToPath(import.meta.url)), "../../..");
const DIR = join(REPO, "examples");
const NS = "examples";

const files = readdirSync(DIR).filter((f) => f.endsWith(".yaml"));
const docs = files.flatMap((f) =>
  loadAll(readFileSync(join(DIR, f), "utf8")).map((d) => ({ file: f, doc: d as ExpertPool | RoutingPolicy })),
);
const pools = docs.filter((d) => d.doc.kind === "ExpertPool").map((d) => d.doc as ExpertPool);
const policies = docs.filter((d) => d.doc.kind === "RoutingPolicy").map((d) => d.doc as RoutingPolicy);

describe("examples/", () => {
  it("has a Mixtral pool with a checkpoint, a DeepSeek-V3 pool with dense layers and a shared expert, and a policy for each gating style", () => {
    expect(files.length).toBeGreaterThanOrEqual(5);
    const arch = (a: string) => pools.find((p) => p.spec.model.architecture === a);
    expect(arch("mixtral")?.spec.model.checkpoint).toBeDefined();
    expect(arch("deepseek-v3")?.spec.model).toMatchObject({ firstDenseLayers: 3, sharedExperts: 1 });
    const poolOf = (rp: RoutingPolicy) => pools.find((p) => p.metadata.name === rp.spec.poolRef.name);
    // every policy points at an example pool, one policy a pool (a second would be Superseded)
    for (const rp of policies) expect(poolOf(rp), rp.metadata.name).toBeDefined();
    expect(new Set(policies.map((rp) => rp.spec.poolRef.name)).size).toBe(policies.length);
    const styles = policies.map((rp) =>
      rp.spec.gating?.topP !== undefined
        ? "top-p"
        : poolOf(rp)?.spec.model.architecture === "deepseek-v3"
          ? "sigmoid group-limited top-k"
          : "softmax top-k",
    );
    expect(new Set(styles)).toEqual(new Set(["top-p", "sigmoid group-limited top-k", "softmax top-k"]));
    for (const { file, doc } of docs) expect(doc.metadata.namespace, `${file}: namespace-free`).toBeUndefined();
  });

  it.each(pools.map((p) => [p.metadata.name, p] as const))("pool %s: the operator can plan it", (_, p) => {
    const pool = { ...p, metadata: { ...p.metadata, namespace: NS } };
    pool.spec = applyDefaults(expertPoolSpecSchema.json, pool.spec) as ExpertPool["spec"];
    const planned = desiredPlan(pool, undefined);
    expect(planned.ok ? "planned" : planned.message).toBe("planned");
  });
});

describeWithCluster(
  "examples/ on a real API server, reconciled by the operator",
  { withKwok: false, withControllerManager: false, withScheduler: false },
  (cluster) => {
    let op: Manager | undefined;

    beforeAll(async () => {
      const c = cluster();
      await c.kubectl(["apply", "-f", "crds/"]);
      await c.kubectl([
        "wait",
        "--for=condition=Established",
        "crd/expertpools.switchyard.dev",
        "crd/routingpolicies.switchyard.dev",
      ]);
      await createNamespace(adminClient(c), NS);
    }, 60_000);

    afterAll(async () => {
      await op?.stop();
    });

    it("kubectl apply -f examples/ creates every object as written", async () => {
      const c = cluster();
      // Server-side apply refuses an unknown field (a typo the API server would otherwise prune without a word).
      const r = await c.kubectl(["apply", "--server-side", "--field-manager=examples", "-n", NS, "-f", "examples/"]);
      expect(r.stderr).not.toMatch(/unknown field|Warning/i);
      const got = await c.kubectl(["get", "switchyard", "-n", NS, "-o", "name"]);
      for (const { doc } of docs)
        expect(got.stdout).toContain(`${doc.kind.toLowerCase()}.switchyard.dev/${doc.metadata.name}`);
    }, 60_000);

    it("the operator plans every pool and resolves every policy; status reads as the examples say", async () => {
      const c = cluster();
      const k = adminClient(c);
      op = startOperator(c);
      await op.start();
      let listed: { items: Obj[] } = { items: [] };
      await waitUntil(
        async () => {
          listed = (await k.get<{ items: Obj[] }>(RP(NS))) ?? { items: [] };
          return (
            listed.items.length === policies.length && listed.items.every((p) => cond(p, "Ready")?.status === "True")
          );
        },
        {
          timeoutMs: 60_000,
          what: `every example RoutingPolicy Ready (${JSON.stringify(listed.items.map((p) => [p.metadata.name, cond(p, "Ready")]))})`,
        },
      );
      const xps = (await k.get<{ items: Obj[] }>(XP(NS)))?.items ?? [];
      for (const p of xps) expect(cond(p, "Degraded"), p.metadata.name).toMatchObject({ status: "False" });
      const ds = xps.find((p) => p.metadata.name === "deepseek-v3");
      expect(ds?.status?.placement).toMatchObject({ sharedSlices: 1, movedExperts: 0, workers: 16 });

      // The policies' columns: the pool's model topK under top-k gating, TopP and MaxK under top-p.
      const table = await c.kubectl(["get", "rpol", "-n", NS]);
      const rows = table.stdout.trim().split("\n");
      expect(rows[0]).toMatch(/^NAME\s+POOL\s+READY\s+TOPK\s+TOPP\s+MAXK\s+AGE$/);
      // kubectl aligns each column under its header and leaves a null cell blank: cut the rows at the headers.
      const starts = [...rows[0].matchAll(/\S+/g)].map((m) => m.index ?? 0);
      const row = (name: string) => {
        const r = rows.find((line) => line.startsWith(`${name} `)) ?? "";
        return starts.map((at, i) => r.slice(at, starts[i + 1]).trim());
      };
      expect(row("deepseek-v3").slice(1, 6)).toEqual(["deepseek-v3", "True", "8", "", ""]);
      expect(row("mixtral").slice(1, 6)).toEqual(["mixtral", "True", "2", "", ""]);
      expect(row("qwen3").slice(1, 6)).toEqual(["qwen3", "True", "", "0.7", "12"]);
    }, 120_000);
  },
);
