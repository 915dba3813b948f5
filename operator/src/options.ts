// Command line of the operator (docs/CONTRACTS.md): node operator/dist/main.js --metrics-port 8080
// --health-port 8081 [--leader-elect] [--namespace NS] ... Every flag also reads SWITCHYARD_<FLAG>. Pure.
import { parseArgs } from "node:util";
import { DNS_SUBDOMAIN, LABEL_VALUE, QUALIFIED_NAME } from "./api/v1alpha1.js";
import type { WorkerPodDefaults } from "./controller/desired.js";
import { isReservedPodKey } from "./controller/names.js";
import { isLogLevel, LOG_LEVELS, type LogLevel } from "./runtime/log.js";

export interface CliOptions {
  metricsPort: number;
  healthPort: number;
  leaderElect: boolean;
  namespace?: string;
  leaseNamespace: string;
  leaseName: string;
  routerConfigMap: { namespace: string; name: string };
  /** --sync-hub-tokens: copy each hf:// pool's checkpoint.tokenSecret into routerHfTokensSecret (hub-tokens.ts). */
  syncHubTokens: boolean;
  routerHfTokensSecret: { namespace: string; name: string };
  /** --owner-deployment: the operator's own Deployment, owner of the router ConfigMap and Secret (manager.ts). */
  ownerDeployment?: { namespace: string; name: string };
  /** --worker-image-pull-secret, --worker-pod-label: what every pool's worker pods get (desired.ts). */
  workerDefaults: WorkerPodDefaults;
  concurrency: number;
  identity?: string;
  logLevel: LogLevel;
}

const FLAGS = {
  "metrics-port": { type: "string" },
  "health-port": { type: "string" },
  "leader-elect": { type: "boolean" },
  namespace: { type: "string" },
  "lease-namespace": { type: "string" },
  "lease-name": { type: "string" },
  "router-configmap": { type: "string" },
  "sync-hub-tokens": { type: "boolean" },
  "router-hf-tokens-secret": { type: "string" },
  "owner-deployment": { type: "string" },
  "worker-image-pull-secret": { type: "string", multiple: true },
  "worker-pod-label": { type: "string", multiple: true },
  concurrency: { type: "string" },
  identity: { type: "string" },
  "log-level": { type: "string" },
  help: { type: "boolean" },
} as const;

export const USAGE = `usage: node operator/dist/main.js [flags]
  --metrics-port N        /metrics (and /healthz, /readyz) port (default 8080)
  --health-port N         /healthz and /readyz port (default 8081)
  --leader-elect          run controllers only while holding the Lease (for more than one replica)
  --namespace NS          watch only NS (default: all namespaces)
  --lease-namespace NS    namespace of the Lease (default: --namespace, POD_NAMESPACE, or default)
  --lease-name NAME       Lease name (default switchyard-operator)
  --router-configmap NS/NAME  where the router config is written (default <lease namespace>/switchyard-router)
  --sync-hub-tokens       read each hf:// pool's checkpoint.tokenSecret and keep the router's Secret of Hub tokens
                          (key <namespace>_<pool>) in step with them; off: the operator reads no Secrets
  --router-hf-tokens-secret NS/NAME  that Secret (default <router config namespace>/switchyard-router-hf-tokens)
  --owner-deployment NS/NAME  the operator's own Deployment (default namespace POD_NAMESPACE): the router ConfigMap and
                          that Secret, where in its namespace, get it as owner and are deleted with it; unset: no owner
  --worker-image-pull-secret NAME  a Secret (in each pool's namespace) for pulling worker images, for pools that set
                          no worker.imagePullSecrets; repeatable (env: comma-separated)
  --worker-pod-label KEY=VALUE  a label on every pool's worker pods, under the pool's own worker.podLabels;
                          repeatable (env: comma-separated); not the operator's own labels
  --concurrency N         reconciles in parallel per controller (default 16)
  --identity ID           leader election identity (default POD_NAME or hostname_pid)
  --log-level LEVEL       debug, info, warn or error: messages below it are dropped (default info)
Every flag can also be given as env SWITCHYARD_<FLAG_UPPER_SNAKE> (a boolean one as true, false, 1 or 0).`;

export class OptionsError extends Error {}

/**
 * A decimal integer, else NaN. Number() alone reads "" and " " as 0 (`--metrics-port=` would bind any free port)
 * and accepts "0x10" and "1e3"; digits only, as the worker reads its flags (expert-worker/src/config.ts).
 */
function decimal(v: string): number {
  return /^\d+$/.test(v) ? Number(v) : Number.NaN;
}

function port(v: string, flag: string): number {
  const n = decimal(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535)
    throw new OptionsError(`--${flag}: must be a port 0-65535, got ${JSON.stringify(v)}`);
  return n;
}

/** A boolean flag's env var: true, false, 1 or 0; anything else (`yes`, `on`, "") is refused, not read as false. */
function envBool(name: string, v: string): boolean {
  if (v === "true" || v === "1") return true;
  if (v === "false" || v === "0") return false;
  throw new OptionsError(`${name}: want true, false, 1 or 0, got ${JSON.stringify(v)}`);
}

const SECRET_NAME = new RegExp(DNS_SUBDOMAIN);
const LABEL_KEY = new RegExp(`^${QUALIFIED_NAME}$`);
const LABEL_VAL = new RegExp(LABEL_VALUE);

/**
 * --worker-* values, checked as the CRD checks a pool's own: a default the API server would refuse on a pod would
 * have every pool's StatefulSet refused, so the operator refuses to start with it instead.
 */
function workerDefaults(secrets: string[], labels: string[]): WorkerPodDefaults {
  for (const s of secrets)
    if (s.length > 253 || !SECRET_NAME.test(s))
      throw new OptionsError(`--worker-image-pull-secret: want a Secret name, got ${JSON.stringify(s)}`);
  const podLabels: Record<string, string> = {};
  for (const l of labels) {
    const i = l.indexOf("=");
    const [k, v] = i < 0 ? [l, undefined] : [l.slice(0, i), l.slice(i + 1)];
    if (v === undefined || k.length > 317 || !LABEL_KEY.test(k) || v.length > 63 || !LABEL_VAL.test(v))
      throw new OptionsError(`--worker-pod-label: want KEY=VALUE, a label key and value, got ${JSON.stringify(l)}`);
    // the operator's own labels select and own the worker pods (names.ts RESERVED_POD_LABEL_KEYS)
    if (isReservedPodKey(k))
      throw new OptionsError(`--worker-pod-label: ${k} is the operator's own label on worker pods; pick another key`);
    podLabels[k] = v;
  }
  return {
    ...(secrets.length ? { imagePullSecrets: [...new Set(secrets)] } : {}),
    ...(labels.length ? { podLabels } : {}),
  };
}

export function parseOptions(argv: string[], env: Record<string, string | undefined>): CliOptions | "help" {
  const { values } = parseArgs({ args: argv, options: FLAGS, strict: true, allowPositionals: false });
  /** A repeatable flag: its values, else its env var split at commas (neither names nor labels hold one). */
  const list = (k: "worker-image-pull-secret" | "worker-pod-label"): string[] => {
    const v = values[k];
    if (v !== undefined) return v;
    const e = env[`SWITCHYARD_${k.toUpperCase().replace(/-/g, "_")}`];
    return (e ?? "")
      .split(",")
      .map((x) => x.trim())
      .filter((x) => x !== "");
  };
  const get = (k: Exclude<keyof typeof FLAGS, "worker-image-pull-secret" | "worker-pod-label">) => {
    const v = values[k];
    if (v !== undefined) return v;
    const name = `SWITCHYARD_${k.toUpperCase().replace(/-/g, "_")}`;
    const e = env[name];
    if (e === undefined) return undefined;
    return FLAGS[k].type === "boolean" ? envBool(name, e) : e;
  };
  if (get("help")) return "help";
  const namespace = (get("namespace") as string | undefined) || undefined;
  const leaseNamespace = (get("lease-namespace") as string | undefined) ?? namespace ?? env.POD_NAMESPACE ?? "default";
  let routerConfigMap = { namespace: leaseNamespace, name: "switchyard-router" };
  const rc = get("router-configmap") as string | undefined;
  if (rc) {
    const m = /^(?:([a-z0-9-]+)\/)?([a-z0-9.-]+)$/.exec(rc);
    if (!m) throw new OptionsError(`--router-configmap: want NAMESPACE/NAME or NAME, got ${JSON.stringify(rc)}`);
    routerConfigMap = { namespace: m[1] ?? leaseNamespace, name: m[2] };
  }
  // The router's Secret lives beside its ConfigMap (the chart mounts both into the router pods).
  let routerHfTokensSecret = { namespace: routerConfigMap.namespace, name: "switchyard-router-hf-tokens" };
  const rs = get("router-hf-tokens-secret") as string | undefined;
  if (rs) {
    const m = /^(?:([a-z0-9-]+)\/)?([a-z0-9.-]+)$/.exec(rs);
    if (!m) throw new OptionsError(`--router-hf-tokens-secret: want NAMESPACE/NAME or NAME, got ${JSON.stringify(rs)}`);
    routerHfTokensSecret = { namespace: m[1] ?? routerConfigMap.namespace, name: m[2] };
  }
  let ownerDeployment: { namespace: string; name: string } | undefined;
  const od = get("owner-deployment") as string | undefined;
  if (od) {
    const m = /^(?:([a-z0-9-]+)\/)?([a-z0-9.-]+)$/.exec(od);
    if (!m) throw new OptionsError(`--owner-deployment: want NAMESPACE/NAME or NAME, got ${JSON.stringify(od)}`);
    ownerDeployment = { namespace: m[1] ?? env.POD_NAMESPACE ?? leaseNamespace, name: m[2] };
  }
  const concText = String(get("concurrency") ?? "16");
  const conc = decimal(concText);
  if (!Number.isInteger(conc) || conc < 1 || conc > 64)
    throw new OptionsError(`--concurrency: must be 1-64, got ${JSON.stringify(concText)}`);
  const level = String(get("log-level") ?? "info");
  const logLevel = level.toLowerCase();
  if (!isLogLevel(logLevel))
    throw new OptionsError(`--log-level: must be one of ${LOG_LEVELS.join(", ")}, got ${JSON.stringify(level)}`);
  return {
    metricsPort: port(String(get("metrics-port") ?? "8080"), "metrics-port"),
    healthPort: port(String(get("health-port") ?? "8081"), "health-port"),
    leaderElect: Boolean(get("leader-elect")),
    namespace,
    leaseNamespace,
    leaseName: (get("lease-name") as string | undefined) ?? "switchyard-operator",
    routerConfigMap,
    syncHubTokens: Boolean(get("sync-hub-tokens")),
    routerHfTokensSecret,
    ...(ownerDeployment ? { ownerDeployment } : {}),
    workerDefaults: workerDefaults(list("worker-image-pull-secret"), list("worker-pod-label")),
    concurrency: conc,
    identity: (get("identity") as string | undefined) ?? env.POD_NAME,
    logLevel,
  };
}
