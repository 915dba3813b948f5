// The chart's `helm test` Pod, run as its container would run it. kwok runs no containers, so the install test only
// checks the hook's Pod as the API server takes it; here the Pod's own command and args, rendered by the real helm
// binary for a router listening on this machine, run (from the repository root, the image's WORKDIR) against a real
// router app, with the router Service's name pointed at 127.0.0.1. A flag the chart passes that the check does not
// know, a port it gets wrong, or a pool name it spells otherwise makes the check fail here.
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { startTestRouter, type TestRouter } from "@switchyard/router-service";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CHART, exec, findTool, parseDocs, REPO } from "./helm.js";

const run = promisify(execFile);
const helm = findTool("helm", "SWITCHYARD_HELM");
const SMOKE = join(REPO, "router-service/dist/smoke/main.js");
const why = !helm ? "no helm binary (scripts/ci/build-test-assets.sh)" : !existsSync(SMOKE) ? `${SMOKE} not built` : "";
if (why) console.warn(`chart smoke command test SKIPPED: ${why}`);

type SmokePod = { metadata: { name: string }; spec: { containers: Array<{ command: string[]; args: string[] }> } };

describe.skipIf(!!why)("the chart's helm test Pod, its command run against a real router", () => {
  let t: TestRouter;
  beforeAll(async () => {
    t = await startTestRouter({
      hidden: 16,
      experts: 4,
      expert: (_l, e, x) => x.map((v) => (e + 1) * v),
      metricsPort: 0,
    });
  });
  afterAll(() => t?.close());

  /** The rendered smoke Pod's command line for the router's ports, with `extra` values set. */
  const rendered = async (extra: string[] = []) => {
    const s = t.app.server;
    const out = await exec(helm as string, [
      ...["template", "sy", CHART, "--show-only", "templates/tests/router-smoke.yaml"],
      ...["--set", `router.grpcPort=${s.port}`, "--set", `router.metricsPort=${s.metricsPort}`],
      ...["--set", `router.dataPort=${s.dataPort ?? 0}`, ...extra],
    ]);
    const [pod] = parseDocs(out.stdout) as unknown as SmokePod[];
    const service = pod.metadata.name.replace(/-smoke$/, "");
    const [c] = pod.spec.containers;
    const argv = [...c.command, ...c.args].map((a) => a.replaceAll(service, "127.0.0.1"));
    expect(argv[0]).toBe("node");
    return argv.slice(1);
  };
  const smoke = async (args: string[]) => {
    try {
      const r = await run(process.execPath, args, { cwd: REPO, timeout: 60_000 });
      return { code: 0, out: r.stdout + r.stderr };
    } catch (e) {
      const err = e as { code?: number; stdout?: string; stderr?: string };
      return { code: err.code ?? -1, out: `${err.stdout ?? ""}${err.stderr ?? ""}` };
    }
  };

  it("passes: readiness, health, /pools and a Forward per pool over gRPC and the data path", async () => {
    const r = await smoke(await rendered());
    expect(r.code, r.out).toBe(0);
    expect(r.out).toContain("smoke: all 6 checks passed");
    expect(r.out).toMatch(/Forward over data path :\d+/);
  });

  it("with tests.pools naming the pool, checks it; naming one the router does not serve, fails and says so", async () => {
    const ok = await smoke(await rendered(["--set", "tests.pools={p}"]));
    expect(ok.code, ok.out).toBe(0);
    const bad = await smoke(await rendered(["--set", "tests.pools={team-a/nope}"]));
    expect(bad.code, bad.out).not.toBe(0);
    expect(bad.out).toContain("team-a/nope");
  });
});
