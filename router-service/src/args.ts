// Router command line (docs/CONTRACTS.md): --config FILE --port 50051 --metrics-port 9400 [--host ADDR]
// [--data-port 50052] [--worker-transport auto|grpc] [--checkpoint-cache DIR];
// every flag also as env SWITCHYARD_<FLAG_UPPER_SNAKE>, flags win. Pure.

import type { WorkerTransport } from "./dispatch/worker-conn.js";

const FLAGS = ["config", "port", "metrics-port", "data-port", "host", "worker-transport", "checkpoint-cache"] as const;

export interface RouterArgs {
  config: string;
  port: number;
  metricsPort: number;
  /** The engines' TCP data path (data-server.ts); null: off (--data-port -1). */
  dataPort: number | null;
  host: string;
  /** auto: a worker's TCP data path where its Status offers one; grpc: the RunExpertsStream stream only. */
  workerTransport: WorkerTransport;
  /** Where pools whose checkpoint is a URI have the router's tensors downloaded (app.ts); unset: the OS temp dir. */
  checkpointCache?: string;
}

export function parseRouterArgs(argv: string[], env: NodeJS.ProcessEnv): RouterArgs {
  const raw = new Map<string, string>();
  for (const f of FLAGS) {
    const v = env[`SWITCHYARD_${f.replace(/-/g, "_").toUpperCase()}`];
    if (v) raw.set(f, v);
  }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) throw new Error(`unexpected argument "${a}"`);
    const eq = a.indexOf("=");
    const name = eq > 0 ? a.slice(2, eq) : a.slice(2);
    if (!(FLAGS as readonly string[]).includes(name))
      throw new Error(`unknown flag --${name} (known: ${FLAGS.map((f) => `--${f}`).join(" ")})`);
    const v = eq > 0 ? a.slice(eq + 1) : argv[++i];
    if (v === undefined) throw new Error(`--${name}: missing value`);
    raw.set(name, v);
  }
  const config = raw.get("config");
  if (!config) throw new Error("--config: required (router config JSON, see docs/CONTRACTS.md)");
  const port = (f: string, d: number, off = false) => {
    const s = raw.get(f);
    if (s === undefined) return d;
    if (off && s === "-1") return -1;
    // Digits only, as the worker reads its flags (expert-worker/src/config.ts): Number() reads "" and " " as 0
    // (`--port=` would bind any free port) and accepts "0x10" and "1e3".
    const n = /^\d+$/.test(s) ? Number(s) : Number.NaN;
    if (!Number.isInteger(n) || n < 0 || n > 65535)
      throw new Error(`--${f}: must be a port number${off ? " or -1 (off)" : ""}, got "${s}"`);
    return n;
  };
  const dataPort = port("data-port", 50052, true);
  const transport = raw.get("worker-transport") ?? "auto";
  if (transport !== "auto" && transport !== "grpc")
    throw new Error(`--worker-transport: expected auto or grpc, got "${transport}"`);
  return {
    config,
    workerTransport: transport,
    port: port("port", 50051),
    metricsPort: port("metrics-port", 9400),
    dataPort: dataPort === -1 ? null : dataPort,
    host: raw.get("host") ?? "0.0.0.0",
    checkpointCache: raw.get("checkpoint-cache"),
  };
}
