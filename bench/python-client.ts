// npm run bench:python-client — an engine written in Python calling the router: Forward calls per second from one
// Python process through the router's TCP data path (clients/python RouterDataClient) against gRPC (RouterGrpcClient,
// grpcio), side by side in alternating windows on the same router. Writes bench/results/python-client.json.
//
//   data_vs_grpc[T]  calls/s on the data path ÷ calls/s on gRPC, median of the rounds' ratios; d=4096 bf16, T tokens
//                    per call, 8 calls in flight, a router over two no-op (echo) fake workers, batching on.
//
// Needs a python3 with protobuf, numpy and grpcio (Debian: python3-protobuf python3-numpy python3-grpcio).
// Env: BENCH_SECONDS (per window, default 2), BENCH_ROUNDS (default 6), BENCH_TS (default "1,16,256").

import { execFile } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { findPython, PYTHON_CLIENT_DEPS, PYTHON_CLIENT_DIR } from "../router-service/src/testing/python-client.js";
import { startTestRouter } from "../router-service/src/testing/test-router.js";

const run = promisify(execFile);
const HERE = dirname(fileURLToPath(import.meta.url));
const SECONDS = Number(process.env.BENCH_SECONDS ?? 2);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 6);
const TS = (process.env.BENCH_TS ?? "1,16,256").split(",").map(Number);
const D = 4096;
const IN_FLIGHT = 8;
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2
    ? (s[(s.length - 1) >> 1] as number)
    : ((s[s.length / 2 - 1] as number) + (s[s.length / 2] as number)) / 2;
};

const found = await findPython();
if ("why" in found) throw new Error(`no python3 with ${PYTHON_CLIENT_DEPS}: ${found.why}`);
const py = found.python;
const t = await startTestRouter({ hidden: D, experts: 8, expert: (_l, _e, x) => x });
const started = new Date().toISOString();
const load0 = loadavg();
const rows = [];
try {
  for (const T of TS) {
    const { stdout } = await run(
      py,
      [
        "bench/forward_rate.py",
        "127.0.0.1",
        String(t.app.server.dataPort),
        String(t.app.server.port),
        "p",
        String(D),
        String(T),
        String(IN_FLIGHT),
        String(SECONDS),
        String(ROUNDS),
      ],
      { cwd: PYTHON_CLIENT_DIR, timeout: 600_000, maxBuffer: 16 << 20 },
    );
    const rounds = JSON.parse(stdout) as { data: number; grpc: number }[];
    const row = {
      T,
      bytes_per_call: T * D * 2,
      data_calls_per_s: +median(rounds.map((r) => r.data)).toFixed(1),
      grpc_calls_per_s: +median(rounds.map((r) => r.grpc)).toFixed(1),
      data_vs_grpc: +median(rounds.map((r) => r.data / r.grpc)).toFixed(3),
      data_vs_grpc_per_round: rounds.map((r) => +(r.data / r.grpc).toFixed(3)),
    };
    console.log(JSON.stringify(row));
    rows.push(row);
  }
} finally {
  await t.close();
}
const result = {
  bench: "python-client",
  started,
  machine: { cpus: cpus().length, model: cpus()[0]?.model ?? "", loadavg_at_start: load0, node: process.version },
  setup: `one Python process (${py}), d=${D} bf16, ${IN_FLIGHT} calls in flight, ${SECONDS} s windows alternating data path / gRPC over ${ROUNDS} rounds; router over two no-op fake workers (batching on)`,
  rows,
  data_vs_grpc: Object.fromEntries(rows.map((r) => [`T${r.T}`, r.data_vs_grpc])),
};
const out = process.env.BENCH_OUT ?? join(HERE, "results/python-client.json");
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
console.log(`wrote ${out}`);
console.log(JSON.stringify(result.data_vs_grpc));
