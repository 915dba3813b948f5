#!/usr/bin/env node
// Expert worker process: `node expert-worker/dist/main.js --checkpoint DIR --pool NAME --worker-id ID ...`
// (flags in config.ts and docs/CONTRACTS.md). An error that stops it starting is reported on stderr (startFailure):
// a bad flag value exits 2 with one line naming the flag, whether parsing finds it (a port beyond 65535) or starting
// does (--experts or --plan beyond the model); a SwitchyardError (a missing or malformed checkpoint) or a system
// call's error (the metrics or data port in use) exits 1 with one line; anything else exits 1 with its stack.

import { parseWorkerArgs, startFailure } from "./config.js";
import { startWorker } from "./worker.js";

async function main(): Promise<void> {
  let flags: ReturnType<typeof parseWorkerArgs>;
  try {
    flags = parseWorkerArgs(process.argv.slice(2), process.env);
  } catch (err) {
    console.error(`expert-worker: ${(err as Error).message}`);
    process.exit(2);
  }
  let fatal = false;
  const worker = await startWorker({
    checkpoint: flags.checkpoint,
    pool: flags.pool,
    metricsPool: flags.metricsPool,
    workerId: flags.workerId,
    port: flags.port,
    metricsPort: flags.metricsPort,
    dataPort: flags.dataPort,
    host: flags.host,
    experts: flags.experts,
    plan: flags.plan,
    cacheCapacity: flags.cacheCapacity,
    hostCacheCapacity: flags.hostCacheCapacity,
    cachePolicy: flags.cachePolicy,
    backend: flags.backend,
    queueCapacity: flags.queueCapacity,
    maxMessageBytes: flags.maxMessageBytes,
    maxRows: flags.maxRows,
    warm: flags.warm,
    // A broken GPU fails every batch from now on and cannot be repaired in this process: exit non-zero, so that
    // Kubernetes restarts it (the local launcher reports it). The batches in flight are answered first, within
    // close()'s grace; a signal meanwhile waits for the same close and keeps the exit status 1.
    onFatal: () => {
      fatal = true;
      setTimeout(() => process.exit(1), 10_000).unref();
      void worker.close().finally(() => process.exit(1));
    },
  });
  worker.metrics.collectProcessMetrics();
  // A parent that spawned this worker with an IPC channel (the local launcher) learns the bound ports here, so it can
  // pass --port 0 rather than pick a free port and hand it over (another socket can take it in between).
  process.send?.({ ready: true, port: worker.port, dataPort: worker.dataPort, metricsPort: worker.metricsPort });
  // Then, once its experts are loaded, `{ warmed: WarmResult | null }`. A served expert that cannot be loaded is a
  // checkpoint this worker cannot serve: it exits non-zero naming the expert rather than stay up half-able.
  worker.warmed.then(
    (r) => process.send?.({ warmed: r }),
    (err: Error) => {
      console.error(`[worker ${flags.workerId}] ${err.message}`);
      process.exit(1);
    },
  );
  // A clean exit (a CPU profile, --cpu-prof, is written only by one) within 10 s; a second signal, or a close that
  // hangs (a stream that never ends), exits at once instead, so a stuck worker is never left behind.
  let stopping = false;
  const stop = async (sig: string) => {
    if (stopping) {
      console.log(`[worker ${flags.workerId}] ${sig} again: exiting now`);
      process.exit(1);
    }
    stopping = true;
    console.log(`[worker ${flags.workerId}] ${sig}: shutting down`);
    setTimeout(() => {
      console.log(`[worker ${flags.workerId}] shutdown took over 10 s: exiting now`);
      process.exit(1);
    }, 10_000).unref();
    await worker.close();
    process.exit(fatal ? 1 : 0);
  };
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));
}

main().catch((err) => {
  const { line, status } = startFailure(err);
  console.error(`expert-worker: ${line}`);
  process.exit(status);
});
