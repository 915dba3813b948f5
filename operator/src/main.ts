// Operator entry point: node operator/dist/main.js --metrics-port 8080 --health-port 8081 [--leader-elect] [--namespace NS]
// [--log-level debug|info|warn|error]
import { KubeConfig } from "@kubernetes/client-node";
import { Manager } from "./manager.js";
import { OptionsError, parseOptions, USAGE } from "./options.js";
import { createLogger, writeLine } from "./runtime/log.js";

async function main(): Promise<void> {
  let opts: ReturnType<typeof parseOptions>;
  try {
    opts = parseOptions(process.argv.slice(2), process.env);
  } catch (e) {
    console.error(`${(e as Error).message}\n${USAGE}`);
    process.exit(2);
  }
  if (opts === "help") {
    console.log(USAGE);
    return;
  }
  const kc = new KubeConfig();
  kc.loadFromDefault(); // $KUBECONFIG, ~/.kube/config, or the in-cluster service account
  const log = createLogger(opts.logLevel);
  const manager = new Manager({ kubeConfig: kc, ...opts });
  let stopping = false;
  const shutdown = (sig: string) => {
    if (stopping) return;
    stopping = true;
    log.info(`${sig}: shutting down`);
    manager.stop().then(
      () => process.exit(0),
      (e) => {
        log.error(`shutdown failed: ${(e as Error)?.message ?? String(e)}`);
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => shutdown("SIGTERM"));
  process.on("SIGINT", () => shutdown("SIGINT"));
  await manager.start();
  // A parent with an IPC channel (tests) learns the bound ports here, so it can pass --metrics-port 0.
  process.send?.({ ready: true, metricsPort: manager.ports.metrics, healthPort: manager.ports.health });
}

main().catch((e) => {
  // bad flags: the usage as it is (several lines, for a person); a failed start: one log line
  if (e instanceof OptionsError) console.error(e.message);
  else writeLine("error", `start failed: ${(e as Error)?.message ?? String(e)}`);
  process.exit(1);
});
