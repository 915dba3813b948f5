// Pure builders for the test cluster: command lines, kubeconfig and fake GPU Node objects. No I/O here, so the
// flag sets are unit-tested without any binary (config.test.ts).

/** Files and ports of one cluster; everything lives under `dir` (a fresh temp dir). */
export interface ClusterLayout {
  dir: string;
  etcdDataDir: string;
  etcdClientPort: number;
  etcdPeerPort: number;
  apiServerPort: number;
  controllerManagerPort: number;
  schedulerPort: number;
  kwokPort: number;
  certDir: string;
  tokenFile: string;
  saPublicKeyFile: string;
  saPrivateKeyFile: string;
  kubeconfigPath: string;
  kwokConfigFile: string;
  /** Set when the audit log is on. */
  auditPolicyFile?: string;
  auditLogFile?: string;
}

/** Kubernetes' node-lifecycle controller would mark fake nodes NotReady (and evict their pods) after ~50 s without
 * heartbeats; kwok could send them, but that is a steady stream of Node writes. Turning the controller off keeps the
 * cluster quiet, which matters for "zero writes after convergence" checks. */
export const KCM_CONTROLLERS = "*,-node-lifecycle-controller";

/** Annotation that tells kwok a Node is its to manage (matches --manage-nodes-with-annotation-selector). */
export const KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node";
export const GPU_RESOURCE = "nvidia.com/gpu";

export function etcdArgs(l: ClusterLayout): string[] {
  const client = `http://127.0.0.1:${l.etcdClientPort}`;
  const peer = `http://127.0.0.1:${l.etcdPeerPort}`;
  return [
    "--name=test",
    `--data-dir=${l.etcdDataDir}`,
    `--listen-client-urls=${client}`,
    `--advertise-client-urls=${client}`,
    `--listen-peer-urls=${peer}`,
    `--initial-advertise-peer-urls=${peer}`,
    `--initial-cluster=test=${peer}`,
    // Throwaway data: skipping fsync makes every write (and so every test) much faster.
    "--unsafe-no-fsync=true",
    "--log-level=warn",
  ];
}

export function apiServerArgs(l: ClusterLayout, opts: { serviceAccountAdmission: boolean }): string[] {
  const args = [
    `--etcd-servers=http://127.0.0.1:${l.etcdClientPort}`,
    `--secure-port=${l.apiServerPort}`,
    "--bind-address=127.0.0.1",
    "--advertise-address=127.0.0.1",
    // No --tls-cert-file: the API server writes a self-signed serving cert into --cert-dir (envtest does the same);
    // clients skip verification. The cert survives restarts because the dir does.
    `--cert-dir=${l.certDir}`,
    `--token-auth-file=${l.tokenFile}`,
    "--authorization-mode=RBAC",
    "--service-cluster-ip-range=10.0.0.0/24",
    "--allow-privileged=true",
    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
    `--service-account-key-file=${l.saPublicKeyFile}`,
    `--service-account-signing-key-file=${l.saPrivateKeyFile}`,
    // Priority-and-fairness bootstraps a dozen config objects and runs extra controllers; tests do not need it, and
    // the legacy max-inflight limits are plenty on loopback.
    "--enable-priority-and-fairness=false",
    "--profiling=false",
    "--v=1",
  ];
  if (l.auditPolicyFile && l.auditLogFile) {
    // Synchronous JSON lines, never rotated: tests read the file right after the request returns.
    args.push(
      `--audit-policy-file=${l.auditPolicyFile}`,
      `--audit-log-path=${l.auditLogFile}`,
      "--audit-log-mode=blocking",
    );
    args.push("--audit-log-format=json", "--audit-log-maxsize=0");
  }
  // TaintNodesByCondition puts node.kubernetes.io/not-ready:NoSchedule on every new Node, and only the node-lifecycle
  // controller (off, see KCM_CONTROLLERS) would take it away again.
  const disabled = ["TaintNodesByCondition"];
  // Without kube-controller-manager nobody creates the "default" ServiceAccount, and the ServiceAccount admission
  // plugin would reject every pod (envtest disables it for the same reason).
  if (!opts.serviceAccountAdmission) disabled.push("ServiceAccount");
  args.push(`--disable-admission-plugins=${disabled.join(",")}`);
  return args;
}

export function controllerManagerArgs(l: ClusterLayout): string[] {
  return [
    `--kubeconfig=${l.kubeconfigPath}`,
    "--bind-address=127.0.0.1",
    `--secure-port=${l.controllerManagerPort}`,
    "--leader-elect=false",
    `--controllers=${KCM_CONTROLLERS}`,
    "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
    `--root-ca-file=${l.certDir}/apiserver.crt`,
    `--service-account-private-key-file=${l.saPrivateKeyFile}`,
    "--v=1",
  ];
}

export function schedulerArgs(l: ClusterLayout): string[] {
  return [
    `--kubeconfig=${l.kubeconfigPath}`,
    "--bind-address=127.0.0.1",
    `--secure-port=${l.schedulerPort}`,
    "--leader-elect=false",
    "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
    "--v=1",
  ];
}

export function kwokArgs(l: ClusterLayout): string[] {
  return [
    `--kubeconfig=${l.kubeconfigPath}`,
    `--config=${l.kwokConfigFile}`,
    "--manage-all-nodes=false",
    `--manage-nodes-with-annotation-selector=${KWOK_NODE_ANNOTATION}=fake`,
    "--manage-nodes-with-label-selector=",
    "--disregard-status-with-annotation-selector=kwok.x-k8s.io/status=custom",
    "--disregard-status-with-label-selector=",
    // Only written into Node/Pod status; nothing ever connects to these addresses.
    "--cidr=10.0.0.1/24",
    "--node-ip=10.0.0.1",
    `--server-address=127.0.0.1:${l.kwokPort}`,
  ];
}

/** Static token file line: token,user,uid,"groups". system:masters makes the user cluster-admin. */
export function tokenFileContent(token: string): string {
  if (!/^[A-Za-z0-9]+$/.test(token)) throw new Error("token: must be alphanumeric (it goes into a CSV file)");
  return `${token},switchyard-test-admin,switchyard-test-admin,"system:masters"\n`;
}

/** Kubeconfig as JSON (JSON is YAML, so kubectl, helm, kwok and client-node all read it). */
export function kubeconfigContent(server: string, token: string): string {
  const name = "switchyard-test";
  return `${JSON.stringify(
    {
      apiVersion: "v1",
      kind: "Config",
      clusters: [{ name, cluster: { server, "insecure-skip-tls-verify": true } }],
      users: [{ name, user: { token } }],
      contexts: [{ name, context: { cluster: name, user: name, namespace: "default" } }],
      "current-context": name,
    },
    null,
    2,
  )}\n`;
}

export interface GpuNodeOptions {
  /** GPUs per node (capacity and allocatable of nvidia.com/gpu). */
  gpus: number;
  /** Extra labels, e.g. a GPU product. */
  labels?: Record<string, string>;
  /** Taints; none by default so pods need no toleration. */
  taints?: { key: string; value?: string; effect: "NoSchedule" | "PreferNoSchedule" | "NoExecute" }[];
  cpu?: string;
  memory?: string;
  pods?: number;
}

/** A fake GPU Node for kwok. Status is accepted on create for Nodes (the kubelet registers the same way); kwok's
 * node-initialize stage keeps capacity/allocatable and only adds conditions, addresses and nodeInfo. */
export function gpuNodeManifest(name: string, o: GpuNodeOptions) {
  if (!/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(name) || name.length > 253) {
    throw new Error(`node name: '${name}' is not a valid DNS subdomain`);
  }
  if (!Number.isInteger(o.gpus) || o.gpus < 0) throw new Error(`gpus: must be a non-negative integer, got ${o.gpus}`);
  const resources = {
    cpu: o.cpu ?? "64",
    memory: o.memory ?? "512Gi",
    pods: String(o.pods ?? 110),
    [GPU_RESOURCE]: String(o.gpus),
  };
  return {
    apiVersion: "v1",
    kind: "Node",
    metadata: {
      name,
      annotations: { [KWOK_NODE_ANNOTATION]: "fake", "node.alpha.kubernetes.io/ttl": "0" },
      labels: <Record<string, string>>{
        type: "kwok",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "nvidia.com/gpu.count": String(o.gpus),
        ...o.labels,
      },
    },
    spec: { taints: o.taints ?? [] },
    status: { capacity: { ...resources }, allocatable: { ...resources } },
  };
}

/** Audit policy: every write (create, update, patch, delete, deletecollection) at Metadata level, nothing else, so
 * "who wrote what" can be counted cheaply (e.g. zero writes by the operator after convergence). */
export const AUDIT_POLICY_YAML = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
  - level: None
`;

/** One line of the audit log (the fields tests use). */
export interface AuditEvent {
  verb: string;
  user: { username: string; groups?: string[] };
  objectRef?: { resource?: string; subresource?: string; namespace?: string; name?: string; apiGroup?: string };
  responseStatus?: { code?: number };
  requestReceivedTimestamp: string;
  stage: string;
}

/** Parses audit log text; only completed requests (stage ResponseComplete) count, so each write appears once. */
export function parseAuditLog(text: string): AuditEvent[] {
  const out: AuditEvent[] = [];
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    const e = JSON.parse(line) as AuditEvent;
    if (e.stage === "ResponseComplete") out.push(e);
  }
  return out;
}

/** Kubeconfig for a bearer token of some other identity (e.g. a ServiceAccount token). */
export function tokenKubeconfigContent(server: string, token: string, user: string): string {
  const k = JSON.parse(kubeconfigContent(server, token));
  k.users[0].name = user;
  k.contexts[0].context.user = user;
  return `${JSON.stringify(k, null, 2)}\n`;
}
