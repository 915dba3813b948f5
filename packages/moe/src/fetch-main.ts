#!/usr/bin/env node
// Download an ExpertPool's checkpoint (spec.model.checkpoint.uri) into a directory; runs as a Kubernetes
// initContainer before a worker (whole checkpoint) or the router (--router-tensors: only the tensors it reads).
//   node packages/moe/dist/fetch-main.js --uri URI --dir DIR [--router-tensors]
// Exit status: 0 done (or already there), 1 the fetch failed (one line `fetch-checkpoint: <message>`), 2 bad flags.
// HF_TOKEN and HF_ENDPOINT are read from the environment for hf:// URIs.

import { parseArgs } from "node:util";
import { checkpointSource, fetchCheckpoint, fetchCheckpointTensors, routerTensorNames } from "./fetch-checkpoint.js";

const USAGE = "usage: fetch-checkpoint --uri URI --dir DIR [--router-tensors]";

function flags(argv: string[]): { uri: string; dir: string; routerTensors: boolean } {
  const { values } = parseArgs({
    args: argv,
    options: { uri: { type: "string" }, dir: { type: "string" }, "router-tensors": { type: "boolean" } },
    strict: true,
    allowPositionals: false,
  });
  if (!values.uri) throw new Error("--uri: required");
  if (!values.dir) throw new Error("--dir: required");
  // A URI no fetch can take is a bad flag (exit 2), like a missing one; its message says what is supported.
  checkpointSource(values.uri);
  return { uri: values.uri, dir: values.dir, routerTensors: values["router-tensors"] ?? false };
}

async function main(argv: string[]): Promise<number> {
  let f: ReturnType<typeof flags>;
  try {
    f = flags(argv);
  } catch (e) {
    console.error(`fetch-checkpoint: ${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  // Kubernetes sends SIGTERM before killing: stop the transfers so that no temporary file is left behind.
  const ctrl = new AbortController();
  for (const sig of ["SIGTERM", "SIGINT"] as const) process.once(sig, () => ctrl.abort(new Error(sig)));
  const log = (line: string) => console.log(line);
  const t0 = performance.now();
  try {
    const o = { log, signal: ctrl.signal };
    if (f.routerTensors) {
      const r = await fetchCheckpointTensors(f.uri, f.dir, routerTensorNames, o);
      log(`router tensors of ${f.uri} in ${f.dir}: ${r.tensors} tensors, ${r.bytes} bytes downloaded`);
    } else {
      const r = await fetchCheckpoint(f.uri, f.dir, o);
      log(
        `checkpoint ${f.uri} in ${f.dir}: ${r.fetched.length} file(s) fetched, ${r.skipped.length} skipped, ` +
          `${r.bytes} bytes downloaded`,
      );
    }
    log(`fetch-checkpoint: done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    return 0;
  } catch (e) {
    console.error(`fetch-checkpoint: ${(e as Error).message.replace(/\s*\n\s*/g, " ")}`);
    return 1;
  }
}

// process.exitCode, not exit(): stdout is a pipe in a pod and must drain.
main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
