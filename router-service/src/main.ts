#!/usr/bin/env node
// node router-service/dist/main.js --config FILE --port 50051 --metrics-port 9400 [--data-port 50052] [--host ADDR]
// Every flag also as env SWITCHYARD_<FLAG_UPPER_SNAKE>; flags win.

import { startRouterApp } from "./app.js";
import { parseRouterArgs, type RouterArgs } from "./args.js";

async function main() {
  let args: RouterArgs;
  try {
    args = parseRouterArgs(process.argv.slice(2), process.env);
  } catch (e) {
    console.error(`router: ${(e as Error).message}`);
    process.exit(2);
  }
  const app = await startRouterApp(args);
  app.router.metrics.collectProcessMetrics();
  // The gRPC server's shutdown waits for every call to end, and an engine's ForwardStream may never end: as the
  // worker does, a clean exit within 10 s, and a second signal exits at once.
  let stopping = false;
  const stop = async (sig: string) => {
    if (stopping) {
      console.log(`[router] ${sig} again: exiting now`);
      process.exit(1);
    }
    stopping = true;
    setTimeout(() => {
      console.log("[router] shutdown took over 10 s (calls still open): exiting now");
      process.exit(1);
    }, 10_000).unref();
    await app.close();
    process.exit(0);
  };
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));
  process.send?.({
    ready: true,
    port: app.server.port,
    metricsPort: app.server.metricsPort,
    dataPort: app.server.dataPort,
  });
}

main().catch((e) => {
  console.error(`router: ${(e as Error).message}`);
  process.exit(1);
});
