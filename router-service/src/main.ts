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
  const stop = async () => {
    await app.close();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
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
