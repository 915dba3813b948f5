// values.schema.json: bad values fail `helm template` (and so install/upgrade/lint) with a message that names the
// offending value's path.
import { describe, expect, it } from "vitest";
import { CHART, exec, findTool } from "./helm.js";

const helm = findTool("helm", "SWITCHYARD_HELM");
if (!helm)
  console.warn("schema tests SKIPPED: no helm binary (run scripts/ci/build-test-assets.sh or set SWITCHYARD_HELM)");

// [--set or --set-string argument, text the error must contain]
const BAD: Array<[string, string, string]> = [
  ["--set", "router.replicas=-1", "/router/replicas"],
  ["--set", "operator.image.pullPolicy=Sometimes", "/operator/image/pullPolicy"],
  ["--set", "rooter.replicas=2", "rooter"],
  ["--set-string", "router.grpcPort=abc", "/router/grpcPort"],
  ["--set", "router.grpcPort=70000", "/router/grpcPort"],
  ["--set", "prometheusRule.routerErrorRate.ratio=2", "/prometheusRule/routerErrorRate/ratio"],
  ["--set", "prometheusRule.expertLoadImbalance.ratio=0.9", "/prometheusRule/expertLoadImbalance/ratio"],
  ["--set", "prometheusRule.disabled={NoSuchAlert}", "/prometheusRule/disabled/0"],
  ["--set", "monitoring.interval=5min", "/monitoring/interval"],
  // Prometheus durations: units largest first, each once (model.ParseDuration refuses the rest, and the Prometheus
  // Operator then rejects the whole PrometheusRule or monitor)
  ["--set", "prometheusRule.workerDown.for=30s1m", "/prometheusRule/workerDown/for"],
  ["--set", "prometheusRule.routerConfigFull.for=5m5m", "/prometheusRule/routerConfigFull/for"],
  ["--set", "prometheusRule.workerDown.startupGrace=1m1h", "/prometheusRule/workerDown/startupGrace"],
  ["--set", "monitoring.scrapeTimeout=10s5s", "/monitoring/scrapeTimeout"],
  ["--set-string", "monitoring.interval=", "/monitoring/interval"],
  // the operator fixes the workers' ports (operator/src/controller/names.ts); another value would misdirect the
  // workers' NetworkPolicy
  ["--set", "workers.grpcPort=6000", "/workers/grpcPort"],
  ["--set", "workers.dataPort=6001", "/workers/dataPort"],
  ["--set", "workers.metricsPort=9999", "/workers/metricsPort"],
  ["--set", "podSecurityContext.runAsNonRoot=false", "/podSecurityContext/runAsNonRoot"],
  [
    "--set",
    "containerSecurityContext.allowPrivilegeEscalation=true",
    "/containerSecurityContext/allowPrivilegeEscalation",
  ],
  ["--set", "operator.watchNamespace=Not_A_Namespace", "/operator/watchNamespace"],
  ["--set", "operator.image.digest=latest", "/operator/image/digest"],
  ["--set", "router.service.type=ExternalName", "/router/service/type"],
  ["--set", "operator.leaderElection.enabled=maybe", "/operator/leaderElection/enabled"],
  ["--set", "router.autoscaling.maxReplicas=0", "/router/autoscaling/maxReplicas"],
  [
    "--set",
    "router.autoscaling.targetCPUUtilizationPercentage=0",
    "/router/autoscaling/targetCPUUtilizationPercentage",
  ],
  // object names and the app.kubernetes.io/name label: DNS labels, at most 63 characters (the fullname a 53-character
  // release name gives); Service names start with a letter
  ["--set", `fullnameOverride=${"f".repeat(64)}`, "/fullnameOverride"],
  ["--set", "fullnameOverride=Edge", "/fullnameOverride"],
  ["--set", "fullnameOverride=1edge", "/fullnameOverride"],
  ["--set", "nameOverride=Switch", "/nameOverride"],
  ["--set", "nameOverride=moe.v2", "/nameOverride"],
  ["--set", "nameOverride=moe-", "/nameOverride"],
  ["--set", "prometheusRule.routerSaturated.utilization=0", "/prometheusRule/routerSaturated/utilization"],
  ["--set", "tests.tokens=0", "/tests/tokens"],
  ["--set-string", "tests.timeoutMs=20s", "/tests/timeoutMs"],
  ["--set", "tests.pool=default/tiny", "pool"],
  ["--set-string", "tests.pools[0]=default tiny", "/tests/pools/0"],
];

describe.skipIf(!helm)("values.schema.json", () => {
  it.each(BAD)("rejects %s %s, naming the value", async (flag, value, path) => {
    const r = await exec(helm!, ["template", "sy", CHART, flag, value]);
    expect(r.code, r.stdout).not.toBe(0);
    expect(r.stderr).toContain("values don't meet the specifications of the schema");
    expect(r.stderr).toContain(path);
  });

  it("accepts the documented knobs", async () => {
    const r = await exec(helm!, [
      ...["template", "sy", CHART],
      ...["--set", "router.replicas=0", "--set", "operator.watchNamespace=ml-team"],
      ...["--set", "prometheusRule.enabled=true", "--set", "prometheusRule.disabled={SwitchyardWorkerDown}"],
      ...["--set", "monitoring.interval=1m30s", "--set", "router.pdb.minAvailable=50%"],
      ...["--set", "prometheusRule.disabled={SwitchyardRouterSaturated}", "--set", "router.service.headless=false"],
      ...["--set", "tests.pools={default/tiny}", "--set", "tests.tokens=1", "--set", "tests.timeoutMs=60000"],
      ...["--set", "prometheusRule.workerDown.for=1h30m", "--set", "prometheusRule.routerLatency.for=1m500ms"],
      ...["--set", "prometheusRule.disabled={SwitchyardRouterConfigFull}"],
      // a share of the CPU request: the router has no CPU limit, so above 100% is a real target
      ...["--set", "router.autoscaling.enabled=true", "--set", "router.autoscaling.targetCPUUtilizationPercentage=150"],
      ...["--set", `fullnameOverride=${"f".repeat(63)}`, "--set", "nameOverride=moe"],
      // values files written for charts that had these values still install, at the operator's ports
      ...["--set", "workers.grpcPort=50061", "--set", "workers.dataPort=50062", "--set", "workers.metricsPort=9401"],
    ]);
    expect(r.code, r.stderr).toBe(0);
  });
});
