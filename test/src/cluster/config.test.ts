import { describe, expect, it } from "vitest";
import {
  apiServerArgs,
  type ClusterLayout,
  controllerManagerArgs,
  etcdArgs,
  gpuNodeManifest,
  KCM_CONTROLLERS,
  kubeconfigContent,
  kwokArgs,
  parseAuditLog,
  schedulerArgs,
  tokenFileContent,
  tokenKubeconfigContent,
} from "./config.js";
import { KWOK_STAGES_YAML } from "./kwok-stages.js";

const layout: ClusterLayout = {
  dir: "/t",
  etcdDataDir: "/t/etcd",
  etcdClientPort: 1001,
  etcdPeerPort: 1002,
  apiServerPort: 1003,
  controllerManagerPort: 1004,
  schedulerPort: 1005,
  kwokPort: 1006,
  certDir: "/t/certs",
  tokenFile: "/t/tokens.csv",
  saPublicKeyFile: "/t/sa.pub",
  saPrivateKeyFile: "/t/sa.key",
  kubeconfigPath: "/t/kubeconfig",
  kwokConfigFile: "/t/kwok.yaml",
};

const flag = (args: string[], name: string) =>
  args
    .find((a) => a.startsWith(`--${name}=`))
    ?.split("=")
    .slice(1)
    .join("=");

describe("cluster command lines", () => {
  it("etcd listens on its two loopback ports and skips fsync", () => {
    const a = etcdArgs(layout);
    expect(flag(a, "listen-client-urls")).toBe("http://127.0.0.1:1001");
    expect(flag(a, "initial-cluster")).toBe("test=http://127.0.0.1:1002");
    expect(flag(a, "unsafe-no-fsync")).toBe("true");
    expect(flag(a, "data-dir")).toBe("/t/etcd");
  });

  it("kube-apiserver binds loopback, uses the token file and the SA key pair, RBAC on", () => {
    const a = apiServerArgs(layout, { serviceAccountAdmission: true });
    expect(flag(a, "etcd-servers")).toBe("http://127.0.0.1:1001");
    expect(flag(a, "secure-port")).toBe("1003");
    expect(flag(a, "bind-address")).toBe("127.0.0.1");
    expect(flag(a, "token-auth-file")).toBe("/t/tokens.csv");
    expect(flag(a, "service-account-key-file")).toBe("/t/sa.pub");
    expect(flag(a, "service-account-signing-key-file")).toBe("/t/sa.key");
    expect(flag(a, "authorization-mode")).toBe("RBAC");
    // node-lifecycle is off, so the not-ready taint would never be lifted
    expect(flag(a, "disable-admission-plugins")).toBe("TaintNodesByCondition");
    expect(KCM_CONTROLLERS).toContain("-node-lifecycle-controller");
  });

  it("without kube-controller-manager the ServiceAccount admission plugin is off too", () => {
    const a = apiServerArgs(layout, { serviceAccountAdmission: false });
    expect(flag(a, "disable-admission-plugins")?.split(",").sort()).toEqual([
      "ServiceAccount",
      "TaintNodesByCondition",
    ]);
  });

  it("controllers use the admin kubeconfig, loopback ports, no leader election", () => {
    for (const [a, port] of [
      [controllerManagerArgs(layout), "1004"],
      [schedulerArgs(layout), "1005"],
    ] as const) {
      expect(flag(a, "kubeconfig")).toBe("/t/kubeconfig");
      expect(flag(a, "secure-port")).toBe(port);
      expect(flag(a, "bind-address")).toBe("127.0.0.1");
      expect(flag(a, "leader-elect")).toBe("false");
    }
    expect(flag(controllerManagerArgs(layout), "service-account-private-key-file")).toBe("/t/sa.key");
  });

  it("kwok manages only annotated nodes and loads the stage config", () => {
    const a = kwokArgs(layout);
    expect(flag(a, "manage-all-nodes")).toBe("false");
    expect(flag(a, "manage-nodes-with-annotation-selector")).toBe("kwok.x-k8s.io/node=fake");
    expect(flag(a, "config")).toBe("/t/kwok.yaml");
    expect(flag(a, "server-address")).toBe("127.0.0.1:1006");
  });

  it("the kwok stages cover node initialisation and the pod life cycle", () => {
    const names = [...KWOK_STAGES_YAML.matchAll(/^ {2}name: (\S+)$/gm)].map((m) => m[1]);
    expect(names).toEqual(["node-initialize", "pod-ready", "pod-complete", "pod-delete"]);
    // template literal escaping kept Go template raw strings intact
    expect(KWOK_STAGES_YAML).toContain('bootID: {{ or $nodeInfo.bootID `""` }}');
  });
});

describe("credentials and kubeconfig", () => {
  it("token file grants system:masters", () => {
    expect(tokenFileContent("abc123")).toBe('abc123,switchyard-test-admin,switchyard-test-admin,"system:masters"\n');
    expect(() => tokenFileContent("a,b")).toThrow(/token/);
  });

  it("kubeconfig points at the server with the bearer token", () => {
    const k = JSON.parse(kubeconfigContent("https://127.0.0.1:1003", "tok"));
    expect(k["current-context"]).toBe("switchyard-test");
    expect(k.clusters[0].cluster.server).toBe("https://127.0.0.1:1003");
    expect(k.clusters[0].cluster["insecure-skip-tls-verify"]).toBe(true);
    expect(k.users[0].user.token).toBe("tok");
  });
});

describe("gpuNodeManifest", () => {
  it("declares nvidia.com/gpu capacity and allocatable and the kwok annotation", () => {
    const n = gpuNodeManifest("gpu-node-0", { gpus: 8, labels: { "nvidia.com/gpu.product": "H200" } });
    expect(n.status.capacity["nvidia.com/gpu"]).toBe("8");
    expect(n.status.allocatable["nvidia.com/gpu"]).toBe("8");
    expect(n.metadata.annotations["kwok.x-k8s.io/node"]).toBe("fake");
    expect(n.metadata.labels["nvidia.com/gpu.product"]).toBe("H200");
    expect(n.spec.taints).toEqual([]);
  });

  it("rejects bad names and GPU counts, naming the field", () => {
    expect(() => gpuNodeManifest("Bad_Name", { gpus: 1 })).toThrow(/node name/);
    expect(() => gpuNodeManifest("ok", { gpus: -1 })).toThrow(/gpus/);
    expect(() => gpuNodeManifest("ok", { gpus: 1.5 })).toThrow(/gpus/);
  });
});

describe("audit log", () => {
  it("turns on the apiserver audit flags only when asked", () => {
    expect(flag(apiServerArgs(layout, { serviceAccountAdmission: true }), "audit-log-path")).toBeUndefined();
    const a = apiServerArgs(
      { ...layout, auditPolicyFile: "/t/audit-policy.yaml", auditLogFile: "/t/logs/audit.log" },
      { serviceAccountAdmission: true },
    );
    expect(flag(a, "audit-policy-file")).toBe("/t/audit-policy.yaml");
    expect(flag(a, "audit-log-path")).toBe("/t/logs/audit.log");
    expect(flag(a, "audit-log-mode")).toBe("blocking");
  });

  it("keeps completed requests only", () => {
    const ev = (stage: string, verb: string) =>
      JSON.stringify({ stage, verb, user: { username: "u" }, requestReceivedTimestamp: "2026-01-01T00:00:00Z" });
    const events = parseAuditLog(`${ev("ResponseStarted", "create")}\n${ev("ResponseComplete", "patch")}\n\n`);
    expect(events.map((e) => e.verb)).toEqual(["patch"]);
  });

  it("builds a kubeconfig for another identity", () => {
    const k = JSON.parse(tokenKubeconfigContent("https://127.0.0.1:9", "sa-token", "ns-op"));
    expect(k.users).toEqual([{ name: "ns-op", user: { token: "sa-token" } }]);
    expect(k.contexts[0].context.user).toBe("ns-op");
  });
});
