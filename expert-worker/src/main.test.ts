// The worker process as a user starts it: an error that stops it starting is one line on stderr, exit 2 when it is
// about a flag's value (found while parsing or once the checkpoint is open), 1 otherwise; no stack for either.

import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { generateCheckpoint } from "@switchyard/moe";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const run = promisify(execFile);
const MAIN = join(import.meta.dirname, "main.ts");
const root = mkdtempSync(join(tmpdir(), "sy-worker-main-"));
const ckpt = join(root, "ckpt");

beforeAll(async () => {
  await generateCheckpoint({
    family: "mixtral",
    dir: ckpt,
    layers: 2,
    experts: 4,
    hiddenSize: 16,
    intermediateSize: 8,
  });
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** Starts the worker with `args`, expecting it to fail; its exit status and stderr. */
async function fails(args: string[]): Promise<{ code: number; stderr: string }> {
  const flags = ["--pool", "p", "--worker-id", "w", "--backend", "cpu", "--warm", "false"];
  const ports = ["--port", "0", "--metrics-port", "0", "--data-port", "-1"];
  const err = await run(
    process.execPath,
    ["--import", "tsx", "--conditions=switchyard-source", MAIN, ...flags, ...ports, ...args],
    { timeout: 30_000 },
  ).then(
    (r) => expect.fail(`the worker started: ${r.stdout}`),
    (e) => e,
  );
  return { code: err.code, stderr: err.stderr };
}

describe("expert-worker main", () => {
  it("a port beyond 65535 exits 2 naming the flag, before anything binds", async () => {
    expect(await fails(["--checkpoint", ckpt, "--port", "70000"])).toEqual({
      code: 2,
      stderr: 'expert-worker: --port: expected a port 0-65535, got "70000"\n',
    });
  });

  it("--experts or --plan beyond the model exits 2 with one line naming the flag", async () => {
    expect(await fails(["--checkpoint", ckpt, "--experts", "0-9"])).toEqual({
      code: 2,
      stderr: 'expert-worker: --experts: expert range "0-9" out of range (experts 0-3)\n',
    });
    const plan = join(root, "plan.json");
    writeFileSync(plan, JSON.stringify({ version: 1, pool: "p", workers: ["w"], replicas: [[[0], [0], [0], [0]]] }));
    expect(await fails(["--checkpoint", ckpt, "--plan", plan])).toEqual({
      code: 2,
      stderr: `expert-worker: --plan ${plan}: plan.replicas: has 1 layers, the model has 2\n`,
    });
  });

  it("a missing checkpoint exits 1 with one line", async () => {
    const missing = join(root, "missing");
    expect(await fails(["--checkpoint", missing])).toEqual({
      code: 1,
      stderr: `expert-worker: ${missing}/config.json: no such file\n`,
    });
  });
});
