#!/usr/bin/env node
// `node router-service/dist/smoke/main.js --router HOST:PORT --http URL ...`: the router smoke check (smoke.ts).
// Exit 0: every check passed; 1: one failed (each failure printed, naming what); 2: bad arguments.

import { parseSmokeArgs, SMOKE_USAGE, type SmokeArgs } from "./checks.js";
import { runSmoke } from "./smoke.js";

if (process.argv.includes("--help") || process.argv.includes("-h")) {
  console.log(SMOKE_USAGE);
  process.exit(0);
}
let args: SmokeArgs;
try {
  args = parseSmokeArgs(process.argv.slice(2));
} catch (e) {
  console.error(`smoke: ${(e as Error).message}\n${SMOKE_USAGE}`);
  process.exit(2);
}
// each line as its check finishes: a check that waits out --timeout-ms shows which one it is while it waits no more
const { ok } = await runSmoke(args, (l) => console.log(l));
process.exit(ok ? 0 : 1);
