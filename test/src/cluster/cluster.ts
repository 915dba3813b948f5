// A real Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
// (fake GPU nodes) on loopback with random ports, in a temp dir, torn down by stop(). See README.md beside this file.

import { generateKeyPairSync, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CoreV1Api, KubeConfig, type V1Node } from "@kubernetes/client-node";
import { type AssetName, findAssets, missingAssetsMessage } from "./assets.js";
import {
  AUDIT_POLICY_YAML,
  type AuditEvent,
  apiServerArgs,
  type ClusterLayout,
  controllerManagerArgs,
  etcdArgs,
  type GpuNodeOptions,
  gpuNodeManifest,
  kubeconfigContent,
  kwokArgs,
  parseAuditLog,
  schedulerArgs,
  tokenFileContent,
  tokenKubeconfigContent,
} from "./config.js";
import { KWOK_STAGES_YAML } from "./kwok-stages.js";
import { ManagedProcess, startWatchdog } from "./process.js";
import { type CommandResult, freePorts, httpGet, type RunOptions, runCommand, waitUntil } from "./util.js";

export interface ClusterOptions {
  /** Fake GPU nodes created (and waited Ready) during start-up. Default 0; add more with createGpuNodes(). */
  nodes?: number;
  /** nvidia.com/gpu per node created at start-up. Default 8. */
  gpusPerNode?: number;
  /** Run kwok, which makes fake nodes Ready and bound pods Running. Default true. */
  withKwok?: boolean;
  /** Run kube-controller-manager (StatefulSets, ReplicaSets, garbage collection, default ServiceAccounts). Default true. */
  withControllerManager?: boolean;
  /** Run kube-scheduler (binds pods to nodes, counts GPUs). Default true. */
  withScheduler?: boolean;
  /** Keep the temp dir (logs, etcd data) after stop(). Default: env SWITCHYARD_KEEP_CLUSTER_LOGS=1, or on failure. */
  keepLogs?: boolean;
  /** Overall start-up limit. Default 120 s (a busy 2-core machine is slow). */
  startTimeoutMs?: number;
  /** Record every write request (who, verb, resource) in an audit log; read it with auditEvents(). Default false. */
  auditLog?: boolean;
  /** @internal Port picker (tests of the port-retry path). */
  pickPorts?: (n: number) => Promise<number[]>;
  /** Extra command-line flags per component, appended last (so they win), e.g. feature gates. */
  extraArgs?: { apiServer?: string[]; controllerManager?: string[]; scheduler?: string[]; kwok?: string[] };
}

export interface TestCluster {
  /** Kubeconfig file (admin, token auth); also what KUBECONFIG is set to for kubectl() and helm(). */
  readonly kubeconfigPath: string;
  /** @kubernetes/client-node config for the same admin user. */
  readonly kubeConfig: KubeConfig;
  /** https://127.0.0.1:PORT */
  readonly server: string;
  /** Admin bearer token (member of system:masters). */
  readonly token: string;
  /** Temp dir holding everything; logs are in `${dir}/logs/<component>.log`. */
  readonly dir: string;
  /** Milliseconds spent in each start-up phase, and `total`. */
  readonly timings: Record<string, number>;
  /** Stops every component (process-group kill) and removes the temp dir unless logs are to be kept. */
  stop(): Promise<void>;
  /** Stops kube-apiserver and starts it again on the same port and etcd; resolves when it is ready again. */
  restartApiServer(): Promise<void>;
  /** Runs kubectl against this cluster. Rejects on a non-zero exit unless `check: false`. */
  kubectl(args: string[], opts?: RunOptions): Promise<CommandResult>;
  /** Runs helm against this cluster (isolated helm config/cache dirs). Rejects on non-zero exit unless `check: false`. */
  helm(args: string[], opts?: RunOptions): Promise<CommandResult>;
  /** Creates `n` kwok-managed nodes with `gpus` nvidia.com/gpu each and waits until they are Ready. Returns names. */
  createGpuNodes(n: number, gpus: number, opts?: Omit<GpuNodeOptions, "gpus"> & { prefix?: string }): Promise<string[]>;
  /** Tails of every component's log, for failure reports. */
  logs(lines?: number): string;
  /** Components that exited without stop(), with how they exited. */
  crashed(): string[];
  /** Marks the run failed so stop() keeps the logs and says where. */
  markFailed(): void;
  /** Completed write requests so far (needs `auditLog: true`). Filter by `user.username`, e.g.
   * "system:serviceaccount:NS:NAME" for a process started with serviceAccountKubeconfig(). */
  auditEvents(): AuditEvent[];
  /** Creates (if needed) ServiceAccount NS/NAME, requests a token for it and writes a kubeconfig using it; returns
   * the file path. Run a process with it to test its RBAC, or to tell its writes apart in auditEvents(). */
  serviceAccountKubeconfig(namespace: string, name: string, opts?: { expirationSeconds?: number }): Promise<string>;
}

const requiredAssets = (o: Required<Pick<ClusterOptions, "withKwok" | "withControllerManager" | "withScheduler">>) => {
  const names: AssetName[] = ["etcd", "kube-apiserver", "kubectl"];
  if (o.withControllerManager) names.push("kube-controller-manager");
  if (o.withScheduler) names.push("kube-scheduler");
  if (o.withKwok) names.push("kwok");
  return names;
};

/** Which binaries `opts` needs and whether they are all there (for skip/fail decisions before starting). */
export function clusterAssets(opts: ClusterOptions = {}) {
  return findAssets(
    requiredAssets({
      withKwok: opts.withKwok ?? true,
      withControllerManager: opts.withControllerManager ?? true,
      withScheduler: opts.withScheduler ?? true,
    }),
  );
}

export async function startCluster(opts: ClusterOptions = {}): Promise<TestCluster> {
  // The free ports are picked before the components bind them; in between, another process (often an outgoing
  // connection's ephemeral port) can take one. That is rare and harmless to retry with new ports.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startClusterOnce(opts);
    } catch (err) {
      if (!(err instanceof PortTakenError) || attempt >= 3) throw err;
      console.warn(`[test-cluster] a port was taken before use, retrying with new ports (attempt ${attempt + 1})`);
    }
  }
}

class PortTakenError extends Error {}

async function startClusterOnce(opts: ClusterOptions): Promise<TestCluster> {
  const o = {
    nodes: opts.nodes ?? 0,
    gpusPerNode: opts.gpusPerNode ?? 8,
    withKwok: opts.withKwok ?? true,
    withControllerManager: opts.withControllerManager ?? true,
    withScheduler: opts.withScheduler ?? true,
    keepLogs: opts.keepLogs ?? process.env.SWITCHYARD_KEEP_CLUSTER_LOGS === "1",
    startTimeoutMs: opts.startTimeoutMs ?? 120_000,
    auditLog: opts.auditLog ?? false,
    extraArgs: opts.extraArgs ?? {},
  };
  if (!Number.isInteger(o.nodes) || o.nodes < 0)
    throw new Error(`nodes: must be a non-negative integer, got ${o.nodes}`);
  if (o.nodes > 0 && !o.withKwok) throw new Error("nodes: fake nodes need withKwok (nothing would make them Ready)");
  const lookup = findAssets(requiredAssets(o));
  if (lookup.missing.length > 0) throw new Error(missingAssetsMessage(lookup));
  const bin = lookup.found as Record<AssetName, string>;

  const t0 = Date.now();
  const timings: Record<string, number> = {};
  let mark = t0;
  const phase = (name: string) => {
    const now = Date.now();
    timings[name] = now - mark;
    mark = now;
  };
  const deadline = t0 + o.startTimeoutMs;
  const remaining = () => Math.max(1000, deadline - Date.now());

  const dir = mkdtempSync(join(tmpdir(), "switchyard-cluster-"));
  const logDir = join(dir, "logs");
  mkdirSync(logDir);
  const [etcdClientPort, etcdPeerPort, apiServerPort, controllerManagerPort, schedulerPort, kwokPort] = await (
    opts.pickPorts ?? freePorts
  )(6);
  const layout: ClusterLayout = {
    dir,
    etcdDataDir: join(dir, "etcd"),
    etcdClientPort,
    etcdPeerPort,
    apiServerPort,
    controllerManagerPort,
    schedulerPort,
    kwokPort,
    certDir: join(dir, "certs"),
    tokenFile: join(dir, "tokens.csv"),
    saPublicKeyFile: join(dir, "sa.pub"),
    saPrivateKeyFile: join(dir, "sa.key"),
    kubeconfigPath: join(dir, "kubeconfig"),
    kwokConfigFile: join(dir, "kwok.yaml"),
    ...(o.auditLog ? { auditPolicyFile: join(dir, "audit-policy.yaml"), auditLogFile: join(logDir, "audit.log") } : {}),
  };
  if (layout.auditPolicyFile) writeFileSync(layout.auditPolicyFile, AUDIT_POLICY_YAML);
  const token = randomBytes(24).toString("hex");
  const server = `https://127.0.0.1:${apiServerPort}`;
  const sa = generateKeyPairSync("rsa", {
    modulusLength: 2048,
    publicKeyEncoding: { type: "spki", format: "pem" },
    privateKeyEncoding: { type: "pkcs8", format: "pem" },
  });
  mkdirSync(layout.certDir);
  writeFileSync(layout.saPublicKeyFile, sa.publicKey);
  writeFileSync(layout.saPrivateKeyFile, sa.privateKey, { mode: 0o600 });
  writeFileSync(layout.tokenFile, tokenFileContent(token), { mode: 0o600 });
  writeFileSync(layout.kubeconfigPath, kubeconfigContent(server, token), { mode: 0o600 });
  writeFileSync(layout.kwokConfigFile, KWOK_STAGES_YAML);
  const helmHome = join(dir, "helm");
  phase("prepare");

  const procs = new Map<string, ManagedProcess>();
  const pgidFile = join(dir, "pgids");
  const watchdog = startWatchdog(process.pid, pgidFile, dir);
  const launch = (name: string, args: string[]) => {
    const p = new ManagedProcess(name, bin[name as AssetName], args, join(logDir, `${name}.log`));
    procs.set(name, p);
    writeFileSync(pgidFile, `${[...procs.values()].map((q) => q.pid ?? "").join("\n")}\n`);
    return p;
  };
  const crashed = () => [...procs.values()].filter((p) => p.crashed).map((p) => p.describeExit());
  const logs = (lines = 40) =>
    [...procs.values()].map((p) => `----- ${p.name} (${p.logFile}) -----\n${p.tail(lines)}`).join("\n");
  /** Aborts a wait as soon as a component dies, instead of waiting for the timeout. */
  const abortIfCrashed = () => {
    const c = crashed();
    return c.length > 0 ? c.join("; ") : undefined;
  };
  let failed = false;
  let discardLogs = false;
  let stopped = false;

  const stop = async () => {
    if (stopped) return;
    stopped = true;
    // Clients first (they would log connection errors otherwise), then the API server, then etcd.
    const clients = ["kwok", "kube-scheduler", "kube-controller-manager"].map((n) => procs.get(n)).filter((p) => !!p);
    await Promise.all(clients.map((p) => p.stop(2000)));
    await procs.get("kube-apiserver")?.stop(5000);
    await procs.get("etcd")?.stop(2000);
    try {
      process.kill(watchdog, "SIGKILL");
    } catch {}
    const c = crashed();
    if (!discardLogs && (o.keepLogs || failed || c.length > 0)) {
      rmSync(layout.etcdDataDir, { recursive: true, force: true });
      console.error(`[test-cluster] logs kept in ${logDir}${c.length ? ` (${c.join("; ")})` : ""}`);
    } else {
      rmSync(dir, { recursive: true, force: true });
    }
  };

  const apiServerReady = async () => {
    await waitUntil(async () => (await httpGet(`${server}/readyz`, token)).status === 200, {
      what: "kube-apiserver /readyz",
      timeoutMs: remaining(),
      intervalMs: 100,
      abortIf: abortIfCrashed,
    });
  };
  const startApiServer = () =>
    launch("kube-apiserver", [
      ...apiServerArgs(layout, { serviceAccountAdmission: o.withControllerManager }),
      ...(o.extraArgs.apiServer ?? []),
    ]);

  try {
    launch("etcd", etcdArgs(layout));
    await waitUntil(async () => (await httpGet(`http://127.0.0.1:${etcdClientPort}/health`)).status === 200, {
      what: "etcd /health",
      timeoutMs: remaining(),
      intervalMs: 50,
      abortIf: abortIfCrashed,
    });
    phase("etcd");
    startApiServer();
    await apiServerReady();
    phase("apiserver");

    const kc = new KubeConfig();
    kc.loadFromFile(layout.kubeconfigPath);
    const core = kc.makeApiClient(CoreV1Api);

    const waits: Promise<void>[] = [];
    if (o.withControllerManager) {
      launch("kube-controller-manager", [...controllerManagerArgs(layout), ...(o.extraArgs.controllerManager ?? [])]);
      // /healthz answers before the controllers run; the default ServiceAccount proves they do.
      waits.push(
        waitUntil(
          async () => {
            const list = await core.listNamespacedServiceAccount({ namespace: "default" });
            return list.items.some((s) => s.metadata?.name === "default");
          },
          {
            what: "kube-controller-manager (default ServiceAccount)",
            timeoutMs: remaining(),
            intervalMs: 200,
            abortIf: abortIfCrashed,
          },
        ),
      );
    }
    if (o.withScheduler) {
      launch("kube-scheduler", [...schedulerArgs(layout), ...(o.extraArgs.scheduler ?? [])]);
      waits.push(
        waitUntil(async () => (await httpGet(`https://127.0.0.1:${schedulerPort}/healthz`)).status === 200, {
          what: "kube-scheduler /healthz",
          timeoutMs: remaining(),
          intervalMs: 200,
          abortIf: abortIfCrashed,
        }),
      );
    }
    if (o.withKwok) {
      launch("kwok", [...kwokArgs(layout), ...(o.extraArgs.kwok ?? [])]);
      waits.push(
        waitUntil(async () => (await httpGet(`http://127.0.0.1:${kwokPort}/healthz`)).status === 200, {
          what: "kwok /healthz",
          timeoutMs: remaining(),
          intervalMs: 200,
          abortIf: abortIfCrashed,
        }),
      );
    }
    await Promise.all(waits);
    phase("controllers");

    let nodeCounter = 0;
    const createGpuNodes: TestCluster["createGpuNodes"] = async (n, gpus, nodeOpts = {}) => {
      if (!Number.isInteger(n) || n < 0) throw new Error(`n: must be a non-negative integer, got ${n}`);
      if (!procs.has("kwok")) throw new Error("createGpuNodes: this cluster runs without kwok (withKwok: false)");
      const { prefix = "gpu-node", ...rest } = nodeOpts;
      const names = Array.from({ length: n }, () => `${prefix}-${nodeCounter++}`);
      // Bounded concurrency: hundreds of nodes (the operator benchmark) without flooding a 2-core machine.
      for (let i = 0; i < names.length; i += 25) {
        await Promise.all(
          names
            .slice(i, i + 25)
            .map((name) => core.createNode({ body: gpuNodeManifest(name, { gpus, ...rest }) as V1Node })),
        );
      }
      const want = new Set(names);
      await waitUntil(
        async () => {
          const list = await core.listNode();
          let ready = 0;
          for (const node of list.items) {
            if (!want.has(node.metadata?.name ?? "")) continue;
            if (node.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True")) ready++;
          }
          return ready === want.size;
        },
        {
          what: `${n} fake GPU node(s) Ready (kwok)`,
          timeoutMs: 60_000 + 200 * n,
          intervalMs: 200,
          abortIf: abortIfCrashed,
        },
      );
      return names;
    };

    if (o.nodes > 0) await createGpuNodes(o.nodes, o.gpusPerNode);
    phase("nodes");
    timings.total = Date.now() - t0;

    const commandEnv = {
      ...process.env,
      KUBECONFIG: layout.kubeconfigPath,
      HELM_CACHE_HOME: join(helmHome, "cache"),
      HELM_CONFIG_HOME: join(helmHome, "config"),
      HELM_DATA_HOME: join(helmHome, "data"),
    };
    const tool =
      (name: "kubectl" | "helm") =>
      (args: string[], runOpts: RunOptions = {}) => {
        const found = findAssets([name]);
        if (!found.found[name]) return Promise.reject(new Error(missingAssetsMessage(found)));
        return runCommand(found.found[name], args, { ...runOpts, env: { ...commandEnv, ...runOpts.env } });
      };

    return {
      kubeconfigPath: layout.kubeconfigPath,
      kubeConfig: kc,
      server,
      token,
      dir,
      timings,
      stop,
      async restartApiServer() {
        // With clients still connected, kube-apiserver's graceful shutdown hangs for a long time after it stopped
        // listening (observed >10 s); clients see the same dropped connections either way, so cut it short.
        await procs.get("kube-apiserver")?.stop(1500);
        startApiServer();
        await waitUntil(async () => (await httpGet(`${server}/readyz`, token)).status === 200, {
          what: "kube-apiserver /readyz after restart",
          timeoutMs: 90_000,
          intervalMs: 100,
          abortIf: abortIfCrashed,
        });
      },
      kubectl: tool("kubectl"),
      helm: tool("helm"),
      createGpuNodes,
      logs,
      crashed,
      markFailed() {
        failed = true;
      },
      auditEvents() {
        if (!layout.auditLogFile) throw new Error("auditEvents: start the cluster with auditLog: true");
        return existsSync(layout.auditLogFile) ? parseAuditLog(readFileSync(layout.auditLogFile, "utf8")) : [];
      },
      async serviceAccountKubeconfig(namespace, name, saOpts = {}) {
        const exists = (await core.listNamespacedServiceAccount({ namespace })).items.some(
          (a) => a.metadata?.name === name,
        );
        if (!exists) await core.createNamespacedServiceAccount({ namespace, body: { metadata: { name } } });
        const tr = await core.createNamespacedServiceAccountToken({
          name,
          namespace,
          body: { spec: { audiences: [], expirationSeconds: saOpts.expirationSeconds ?? 24 * 3600 } },
        });
        const saToken = tr.status?.token;
        if (!saToken) throw new Error(`serviceAccountKubeconfig: no token returned for ${namespace}/${name}`);
        const path = join(dir, `kubeconfig-${namespace}-${name}`);
        writeFileSync(path, tokenKubeconfigContent(server, saToken, `${namespace}-${name}`), { mode: 0o600 });
        return path;
      },
    };
  } catch (err) {
    const message = `test cluster failed to start: ${(err as Error).message}\n${logs(30)}`;
    const portTaken = /address already in use/.test(logs(200));
    failed = true;
    discardLogs = portTaken; // it will be retried: these logs are noise
    await stop();
    throw portTaken ? new PortTakenError(message, { cause: err }) : new Error(message, { cause: err });
  }
}
