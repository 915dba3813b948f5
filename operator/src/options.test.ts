import { describe, expect, it } from "vitest";
import { parseOptions } from "./options.js";

describe("parseOptions", () => {
  it("defaults", () => {
    expect(parseOptions([], {})).toEqual({
      metricsPort: 8080,
      healthPort: 8081,
      leaderElect: false,
      namespace: undefined,
      leaseNamespace: "default",
      leaseName: "switchyard-operator",
      routerConfigMap: { namespace: "default", name: "switchyard-router" },
      syncHubTokens: false,
      routerHfTokensSecret: { namespace: "default", name: "switchyard-router-hf-tokens" },
      workerDefaults: {},
      concurrency: 16,
      identity: undefined,
      logLevel: "info",
    });
  });
  it("--log-level, or SWITCHYARD_LOG_LEVEL as the chart's operator.logLevel sets it", () => {
    expect(parseOptions([], { SWITCHYARD_LOG_LEVEL: "debug" })).toMatchObject({ logLevel: "debug" });
    expect(parseOptions(["--log-level", "error"], { SWITCHYARD_LOG_LEVEL: "debug" })).toMatchObject({
      logLevel: "error",
    });
    expect(parseOptions(["--log-level=WARN"], {})).toMatchObject({ logLevel: "warn" });
    expect(() => parseOptions(["--log-level", "verbose"], {})).toThrow(/--log-level: .*debug, info, warn, error/);
    expect(() => parseOptions([], { SWITCHYARD_LOG_LEVEL: "trace" })).toThrow(/--log-level/);
  });
  it("flags, env fallbacks and the pod's namespace", () => {
    const o = parseOptions(["--leader-elect", "--metrics-port", "9000", "--router-configmap", "sys/rc"], {
      SWITCHYARD_HEALTH_PORT: "9001",
      POD_NAMESPACE: "ops",
      POD_NAME: "op-0",
    });
    expect(o).toMatchObject({
      metricsPort: 9000,
      healthPort: 9001,
      leaderElect: true,
      leaseNamespace: "ops",
      routerConfigMap: { namespace: "sys", name: "rc" },
      identity: "op-0",
    });
  });
  it("--sync-hub-tokens and the router's Secret, beside the router ConfigMap unless named", () => {
    expect(parseOptions(["--router-configmap", "sys/rc"], {})).toMatchObject({
      syncHubTokens: false,
      routerHfTokensSecret: { namespace: "sys", name: "switchyard-router-hf-tokens" },
    });
    expect(
      parseOptions(["--sync-hub-tokens", "--router-configmap", "sys/rc", "--router-hf-tokens-secret", "tok"], {}),
    ).toMatchObject({ syncHubTokens: true, routerHfTokensSecret: { namespace: "sys", name: "tok" } });
    expect(
      parseOptions([], { SWITCHYARD_SYNC_HUB_TOKENS: "true", SWITCHYARD_ROUTER_HF_TOKENS_SECRET: "rel/sy-tokens" }),
    ).toMatchObject({ syncHubTokens: true, routerHfTokensSecret: { namespace: "rel", name: "sy-tokens" } });
    expect(() => parseOptions(["--router-hf-tokens-secret", "a/b/c"], {})).toThrow(/--router-hf-tokens-secret/);
  });
  it("--worker-image-pull-secret and --worker-pod-label (repeatable), or their env as comma-separated lists", () => {
    expect(
      parseOptions(
        [
          "--worker-image-pull-secret",
          "regcred",
          "--worker-image-pull-secret=mirror.creds",
          "--worker-pod-label",
          "cost-center=inference",
          "--worker-pod-label=sidecar.istio.io/inject=false",
          "--worker-pod-label",
          "empty=",
        ],
        {},
      ),
    ).toMatchObject({
      workerDefaults: {
        imagePullSecrets: ["regcred", "mirror.creds"],
        podLabels: { "cost-center": "inference", "sidecar.istio.io/inject": "false", empty: "" },
      },
    });
    expect(
      parseOptions([], {
        SWITCHYARD_WORKER_IMAGE_PULL_SECRET: "regcred, other",
        SWITCHYARD_WORKER_POD_LABEL: "team=ml,tier=gpu",
      }),
    ).toMatchObject({
      workerDefaults: { imagePullSecrets: ["regcred", "other"], podLabels: { team: "ml", tier: "gpu" } },
    });
    // the flag wins over the env, as for every other flag
    expect(
      parseOptions(["--worker-image-pull-secret", "a"], { SWITCHYARD_WORKER_IMAGE_PULL_SECRET: "b" }),
    ).toMatchObject({ workerDefaults: { imagePullSecrets: ["a"] } });
  });
  it("refuses worker defaults the API server would refuse on a pod, and the operator's own labels", () => {
    expect(() => parseOptions(["--worker-image-pull-secret", "Reg_Cred"], {})).toThrow(/--worker-image-pull-secret/);
    expect(() => parseOptions(["--worker-pod-label", "nolabel"], {})).toThrow(/--worker-pod-label: want KEY=VALUE/);
    expect(() => parseOptions(["--worker-pod-label", "a b=c"], {})).toThrow(/--worker-pod-label/);
    expect(() => parseOptions(["--worker-pod-label", "k=bad value"], {})).toThrow(/--worker-pod-label/);
    expect(() => parseOptions(["--worker-pod-label", `k=${"v".repeat(64)}`], {})).toThrow(/--worker-pod-label/);
    for (const k of ["app.kubernetes.io/component", "app.kubernetes.io/managed-by", "switchyard.dev/pool"])
      expect(() => parseOptions(["--worker-pod-label", `${k}=x`], {}), k).toThrow(/operator's own label/);
  });
  it("reads numbers as decimal digits only, and errors quote the text given", () => {
    for (const v of ["", " ", "0x10", "1e3", "8080.0", "+8080"])
      expect(() => parseOptions([`--metrics-port=${v}`], {}), v).toThrow(
        `--metrics-port: must be a port 0-65535, got ${JSON.stringify(v)}`,
      );
    expect(() => parseOptions([], { SWITCHYARD_HEALTH_PORT: "" })).toThrow(
      '--health-port: must be a port 0-65535, got ""',
    );
    expect(() => parseOptions(["--metrics-port", "65536"], {})).toThrow(/--metrics-port: must be a port 0-65535/);
    expect(parseOptions(["--metrics-port=0", "--health-port", "65535"], {})).toMatchObject({
      metricsPort: 0,
      healthPort: 65535,
    });
    expect(() => parseOptions(["--concurrency", "abc"], {})).toThrow('--concurrency: must be 1-64, got "abc"');
    expect(() => parseOptions(["--concurrency", "0x10"], {})).toThrow('--concurrency: must be 1-64, got "0x10"');
    expect(() => parseOptions([], { SWITCHYARD_CONCURRENCY: "1e1" })).toThrow('--concurrency: must be 1-64, got "1e1"');
    expect(parseOptions(["--concurrency", "64"], {})).toMatchObject({ concurrency: 64 });
  });
  it("a boolean flag's env var is true, false, 1 or 0; anything else is refused naming the variable", () => {
    for (const [v, want] of [
      ["true", true],
      ["1", true],
      ["false", false],
      ["0", false],
    ] as const) {
      expect(parseOptions([], { SWITCHYARD_LEADER_ELECT: v }), v).toMatchObject({ leaderElect: want });
      expect(parseOptions([], { SWITCHYARD_SYNC_HUB_TOKENS: v }), v).toMatchObject({ syncHubTokens: want });
    }
    for (const v of ["yes", "on", "TRUE", ""])
      expect(() => parseOptions([], { SWITCHYARD_LEADER_ELECT: v }), v).toThrow(
        `SWITCHYARD_LEADER_ELECT: want true, false, 1 or 0, got ${JSON.stringify(v)}`,
      );
    expect(() => parseOptions([], { SWITCHYARD_SYNC_HUB_TOKENS: "no" })).toThrow(/^SWITCHYARD_SYNC_HUB_TOKENS: /);
    // the flag itself takes no value: present is true
    expect(() => parseOptions(["--leader-elect=yes"], {})).toThrow(/--leader-elect/);
    expect(parseOptions(["--leader-elect"], { SWITCHYARD_LEADER_ELECT: "false" })).toMatchObject({ leaderElect: true });
  });
  it("names the bad flag", () => {
    expect(() => parseOptions(["--metrics-port", "http"], {})).toThrow(/--metrics-port: must be a port/);
    expect(() => parseOptions(["--concurrency", "0"], {})).toThrow(/--concurrency/);
    expect(() => parseOptions(["--router-configmap", "a/b/c"], {})).toThrow(/--router-configmap/);
    expect(() => parseOptions(["--bogus"], {})).toThrow(/bogus/);
  });
});
