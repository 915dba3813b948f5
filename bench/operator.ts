// Operator benchmark (issue 5): 500 ExpertPools × 2 workers on 250 fake 8-GPU nodes of a real control plane
// (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok). The operator runs as its own process
// (`node operator/dist/main.js`, the CLI of CONTRACTS.md; the npm script builds it first) so its RSS is its own;
// its request counts come from its /metrics (rest_client_requests_total). Writes bench/results/operator.json.
//
//   npm run bench:operator [-- --pools 500 --nodes 250 --workers 2 --quiet-s 30]
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { Kube } from "@switchyard/operator";
import { repoRoot, startCluster, waitUntil } from "@switchyard/test/cluster";

const { values } = parseArgs({
  options: {
    pools: { type: "string", default: "500" },
    nodes: { type: "string", default: "250" },
    workers: { type: "string", default: "2" },
    "quiet-s": { type: "string", default: "30" },
    out: { type: "string", default: "bench/results/operator.json" },
  },
});
const POOLS = Number(values.pools);
const NODES = Number(values.nodes);
const WORKERS = Number(values.workers);
const QUIET_S = Number(values["quiet-s"]);
const NS = "bench";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const log = (m: string) => console.log(`[bench:operator] ${new Date().toISOString().slice(11, 19)} ${m}`);

/** Parses the Prometheus text format into name{labels} -> value. */
async function scrape(port: number): Promise<Map<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

function requests(m: Map<string, number>): { total: number; writes: number; byMethod: Record<string, number> } {
  let total = 0;
  let writes = 0;
  const byMethod: Record<string, number> = {};
  for (const [k, v] of m) {
    if (!k.startsWith("rest_client_requests_total{")) continue;
    const method = /method="([A-Z]+)"/.exec(k)?.[1] ?? "?";
    total += v;
    byMethod[method] = (byMethod[method] ?? 0) + v;
    if (method !== "GET") writes += v;
  }
  return { total, writes, byMethod };
}

function peakRssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0);
  return Math.round(kb / 1024);
}

async function main(): Promise<void> {
  const root = repoRoot();
  const t0 = Date.now();
  const loadAtStart = Math.round(loadavg()[0] * 100) / 100;
  const cluster = await startCluster({ nodes: 0, startTimeoutMs: 300_000 });
  let operator: ChildProcess | undefined;
  try {
    log(`cluster up in ${(cluster.timings.total / 1000).toFixed(1)} s; creating ${NODES} nodes`);
    const tn = Date.now();
    for (let i = 0; i < NODES; i += 50) {
      await cluster.createGpuNodes(Math.min(50, NODES - i), 8, { prefix: `gpu-${i / 50}-` });
    }
    const nodesS = (Date.now() - tn) / 1000;
    log(`${NODES} nodes Ready in ${nodesS.toFixed(1)} s`);
    await cluster.kubectl(["apply", "-f", join(root, "crds")]);
    await cluster.kubectl(["wait", "--for=condition=Established", "crd/expertpools.switchyard.dev"]);
    await cluster.kubectl(["create", "namespace", NS]);

    const metricsPort = 18000 + Math.floor(Math.random() * 1000);
    operator = spawn(
      process.execPath,
      [
        join(root, "operator/dist/main.js"),
        "--metrics-port",
        String(metricsPort),
        "--health-port",
        String(metricsPort + 1),
        "--namespace",
        NS,
      ],
      { cwd: root, env: { ...process.env, KUBECONFIG: cluster.kubeconfigPath }, stdio: ["ignore", "pipe", "pipe"] },
    );
    const opLog: string[] = [];
    operator.stdout?.on("data", (d) => opLog.push(String(d)));
    operator.stderr?.on("data", (d) => opLog.push(String(d)));
    const pid = operator.pid as number;
    await waitUntil(
      async () => (await fetch(`http://127.0.0.1:${metricsPort + 1}/readyz`).catch(() => undefined))?.status === 200,
      { timeoutMs: 60_000, what: `operator /readyz (log: ${opLog.join("").slice(-500)})` },
    );
    log("operator ready; creating pools");

    const admin = new Kube(cluster.kubeConfig, "bench");
    const path = `/apis/switchyard.dev/v1alpha1/namespaces/${NS}/expertpools`;
    const start = Date.now();
    const names = Array.from({ length: POOLS }, (_, i) => `pool-${String(i).padStart(3, "0")}`);
    for (let i = 0; i < names.length; i += 25) {
      await Promise.all(
        names.slice(i, i + 25).map((name) =>
          admin.create(path, {
            apiVersion: "switchyard.dev/v1alpha1",
            kind: "ExpertPool",
            metadata: { name, namespace: NS },
            spec: {
              model: {
                architecture: "mixtral",
                layers: 4,
                experts: 8,
                topK: 2,
                hiddenSize: 64,
                intermediateSize: 128,
                checkpoint: { hostPath: { path: "/models/tiny" } },
              },
              replicas: WORKERS,
              worker: { gpusPerWorker: 1 },
            },
          }),
        ),
      );
    }
    log(`${POOLS} pools created in ${((Date.now() - start) / 1000).toFixed(1)} s; waiting for Ready`);
    let ready = 0;
    let lastLog = 0;
    let maxDepth = 0;
    // When the operator has done its part (every pool has its StatefulSet); the rest is the cluster's
    // controllers, scheduler and kwok bringing pods up, which the operator then reports.
    let secondsToChildren: number | undefined;
    await waitUntil(
      async () => {
        const l = await admin.list<{ status?: { conditions?: { type: string; status: string }[] } }>(path);
        ready = l.items.filter((p) =>
          p.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True"),
        ).length;
        if (secondsToChildren === undefined) {
          const sts = await admin.list(`/apis/apps/v1/namespaces/${NS}/statefulsets`);
          if (sts.items.length === POOLS) secondsToChildren = (Date.now() - start) / 1000;
        }
        const m = await scrape(metricsPort);
        maxDepth = Math.max(maxDepth, m.get('workqueue_depth{name="expertpool",controller="expertpool"}') ?? 0);
        if (Date.now() - lastLog > 10_000) {
          lastLog = Date.now();
          log(`${ready}/${POOLS} Ready`);
        }
        return ready === POOLS;
      },
      { timeoutMs: 1_500_000, intervalMs: 1000, what: `all ${POOLS} pools Ready (${ready} so far)` },
    );
    const secondsToReady = (Date.now() - start) / 1000;
    log(`all Ready in ${secondsToReady.toFixed(1)} s`);

    // Converged: the operator's queues are empty and its writes have stopped.
    let prevWrites = -1;
    await waitUntil(
      async () => {
        const m = await scrape(metricsPort);
        const depth = [...m].filter(([k]) => k.startsWith("workqueue_depth{")).reduce((s, [, v]) => s + v, 0);
        const { writes } = requests(m);
        const stable = writes === prevWrites && depth === 0;
        prevWrites = writes;
        return stable;
      },
      { timeoutMs: 120_000, intervalMs: 3000, what: "operator writes to stop" },
    );
    const atConverge = requests(await scrape(metricsPort));
    await sleep(QUIET_S * 1000);
    const afterQuiet = requests(await scrape(metricsPort));
    const m = await scrape(metricsPort);
    const result = {
      pools: POOLS,
      nodes: NODES,
      workers_per_pool: WORKERS,
      gpus_per_node: 8,
      seconds_to_ready: Math.round(secondsToReady * 10) / 10,
      seconds_to_all_statefulsets: secondsToChildren === undefined ? null : Math.round(secondsToChildren * 10) / 10,
      max_queue_depth: maxDepth,
      requests_per_pool: Math.round((atConverge.total / POOLS) * 100) / 100,
      writes_per_pool: Math.round((atConverge.writes / POOLS) * 100) / 100,
      writes_after_converge: afterQuiet.writes - atConverge.writes,
      requests_after_converge: afterQuiet.total - atConverge.total,
      quiet_window_s: QUIET_S,
      peak_rss_mb: peakRssMb(pid),
      requests_by_method: atConverge.byMethod,
      reconciles: Object.fromEntries(
        [...m].filter(([k]) => k.startsWith("controller_runtime_reconcile_total{")).map(([k, v]) => [k.slice(34), v]),
      ),
      cluster: {
        kubernetes: "v1.34.4 (built from source; kube-apiserver, kube-controller-manager, kube-scheduler)",
        kwok: "v0.8.0",
        etcd: "v3.6.16",
        startup_s: Math.round(cluster.timings.total / 100) / 10,
        nodes_ready_s: Math.round(nodesS * 10) / 10,
      },
      machine: {
        cpus: cpus().length,
        memory_gb: Math.round(totalmem() / 2 ** 30),
        node: process.version,
        // The build machine is shared: the load average says how much of it this run had.
        loadavg_1m_at_start: loadAtStart,
      },
      command: "npm run bench:operator",
      date: new Date().toISOString(),
      total_s: Math.round((Date.now() - t0) / 1000),
    };
    writeFileSync(resolve(root, values.out as string), `${JSON.stringify(result, null, 2)}\n`);
    console.log(JSON.stringify(result, null, 2));
  } finally {
    if (operator && operator.exitCode === null) {
      operator.kill("SIGTERM");
      await new Promise((r) => operator?.once("exit", r));
    }
    await cluster.stop();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
