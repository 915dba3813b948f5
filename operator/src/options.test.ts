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
  it("names the bad flag", () => {
    expect(() => parseOptions(["--metrics-port", "http"], {})).toThrow(/--metrics-port: must be a port/);
    expect(() => parseOptions(["--concurrency", "0"], {})).toThrow(/--concurrency/);
    expect(() => parseOptions(["--router-configmap", "a/b/c"], {})).toThrow(/--router-configmap/);
    expect(() => parseOptions(["--bogus"], {})).toThrow(/bogus/);
  });
});
