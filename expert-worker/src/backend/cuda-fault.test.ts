// CUDA failures on a real GPU, each in a process of its own (a device fault breaks the whole process's context):
// - an out-of-memory run is CUDA_OOM, and the next, healthy runs on the same libuv thread succeed (the runtime's
//   last error was left set, and the next kernel launch failed with it);
// - a real fault (an illegal address) is CUDA_FATAL, and so is every later run and upload, at once;
// - a worker whose GPU faults answers UNAVAILABLE, stops serving and exits 1, so that it is restarted.
// Skipped, with the reason printed, where there is no GPU or no built addon (CI).

import { execFile, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { credentials } from "@grpc/grpc-js";
import { generateCheckpoint } from "@switchyard/moe";
import { DType, type ExpertResult, ExpertWorkerClient, encodeTensor } from "@switchyard/protocol";
import { afterAll, describe, expect, it } from "vitest";
import { CUDA_ADDON_PATH, loadCudaAddon } from "./cuda.js";

const addon = loadCudaAddon();
const probe = "unavailable" in addon ? addon.unavailable : addon.probe();
const why = typeof probe === "string" ? probe : probe.ok ? "" : (probe.error ?? "no usable CUDA device");
if (why) console.log(`[cuda faults] GPU tests skipped: ${why}`);

const root = mkdtempSync(join(tmpdir(), "sy-cuda-fault-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

// The addon alone: UV_THREADPOOL_SIZE=1 puts every call on one libuv thread, where a stale error would show.
const ADDON_SCRIPT = `
import { createRequire } from "node:module";
const cuda = createRequire(import.meta.url)(process.argv[2]);
const d = 8192, f = 64;
const ctx = cuda.createContext({ d, f, slots: 1, runsInFlight: 1 });
const w = (rows, cols) => ({ dtype: 2, rows, cols, data: new Uint8Array(new Uint16Array(rows * cols).fill(0x3c00).buffer) });
await cuda.upload(ctx, 0, w(f, d), w(f, d), w(d, f));
const bf16 = (n) => new Uint8Array(new Uint16Array(n * d).fill(0x3f80).buffer);
const dedup = () => ({ dtype: 2, tokens: bf16(2), rows: 8, cols: d, rowSlots: new Int32Array(8),
  tokenRows: Uint32Array.from({ length: 8 }, (_, i) => i % 2), sumByToken: true });
const plain = () => ({ dtype: 2, tokens: bf16(100), rows: 100, cols: d, rowSlots: new Int32Array(100) });
// 2^24 rows of one token: the workspace alone is hundreds of GB, so cudaMalloc fails (the output is one fp32 row)
const huge = () => ({ dtype: 2, tokens: bf16(1), rows: 1 << 24, cols: d, rowSlots: new Int32Array(1 << 24),
  tokenRows: new Uint32Array(1 << 24), sumByToken: true });
const out = [];
const go = async (name, call) => {
  try { await call(); out.push([name, "ok"]); } catch (e) { out.push([name, e.code ?? "", e.message]); }
};
await go("dedup", () => cuda.run(ctx, dedup()));
await go("huge", () => cuda.run(ctx, huge()));
await go("dedup after oom", () => cuda.run(ctx, dedup()));
await go("huge again", () => cuda.run(ctx, huge()));
await go("plain after oom", () => cuda.run(ctx, plain()));
out.push(["fault", cuda._faultForTests(ctx)]);
await go("run after fault", () => cuda.run(ctx, plain()));
await go("run again", () => cuda.run(ctx, dedup()));
await go("upload after fault", () => cuda.upload(ctx, 0, w(f, d), w(f, d), w(d, f)));
console.log(JSON.stringify(out));
`;

describe("CUDA failures (each in its own process)", () => {
  it.skipIf(!!why)(
    `out of memory: CUDA_OOM, and the next runs on that thread succeed; a fault: CUDA_FATAL from then on${why ? ` (skipped: ${why})` : ""}`,
    async () => {
      const script = join(root, "addon-faults.mjs");
      writeFileSync(script, ADDON_SCRIPT);
      const r = await promisify(execFile)(process.execPath, [script, CUDA_ADDON_PATH], {
        env: { ...process.env, UV_THREADPOOL_SIZE: "1" },
        timeout: 120_000,
      });
      const steps = JSON.parse(r.stdout.trim().split("\n").at(-1) as string) as string[][];
      console.log(JSON.stringify(steps));
      const at = (name: string) => steps.find((s) => s[0] === name) as string[];
      expect(at("dedup")).toEqual(["dedup", "ok"]);
      expect(at("huge")[1]).toBe("CUDA_OOM");
      expect(at("dedup after oom")).toEqual(["dedup after oom", "ok"]);
      expect(at("huge again")[1]).toBe("CUDA_OOM");
      expect(at("plain after oom")).toEqual(["plain after oom", "ok"]);
      expect(at("fault")[1]).toMatch(/illegal memory access/);
      for (const name of ["run after fault", "run again", "upload after fault"]) {
        expect(at(name)[1], name).toBe("CUDA_FATAL");
        expect(at(name)[2], name).toMatch(/illegal memory access/);
      }
      expect(at("run again")[2]).toMatch(/is broken by an earlier error .*: restart the worker/);
    },
    150_000,
  );

  it.skipIf(!!why)(
    `a worker whose GPU faults answers UNAVAILABLE, stops serving and exits 1${why ? ` (skipped: ${why})` : ""}`,
    async () => {
      const ckpt = join(root, "ckpt");
      const D = 256;
      await generateCheckpoint({
        family: "mixtral",
        dir: ckpt,
        layers: 1,
        experts: 4,
        hiddenSize: D,
        intermediateSize: 128,
      });
      const main = resolve(import.meta.dirname, "../../dist/main.js");
      const args = ["--checkpoint", ckpt, "--pool", "p", "--worker-id", "w", "--backend", "cuda"];
      const child = spawn(
        process.execPath,
        [main, ...args, "--port", "0", "--metrics-port", "0", "--data-port", "-1"],
        {
          env: { ...process.env, SWITCHYARD_CUDA_FAULT_AT_RUN: "2", SWITCHYARD_CUDA_DEVICES: "1" },
          stdio: ["ignore", "pipe", "pipe", "ipc"],
        },
      );
      let log = "";
      child.stdout?.on("data", (c: Buffer) => {
        log += c.toString();
      });
      child.stderr?.on("data", (c: Buffer) => {
        log += c.toString();
      });
      const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
      try {
        const port = await new Promise<number>((res, rej) => {
          child.on("message", (m: { ready?: boolean; port?: number; warmed?: unknown }) => {
            if (m.ready) res(m.port as number);
          });
          child.on("exit", (code) => rej(new Error(`worker exited ${code}: ${log}`)));
        });
        const client = new ExpertWorkerClient(`127.0.0.1:${port}`, credentials.createInsecure());
        const batch = (id: bigint) => ({
          pool: "p",
          layer: 0,
          tokens: encodeTensor(new Float32Array(2 * D).fill(0.5), [2, D], DType.FLOAT32),
          slices: [{ expert: 1, offset: 0, count: 2 }],
          rowWeights: undefined,
          batchId: id,
          timeoutMs: 0,
          tokenRows: [],
          combine: false,
          cancel: [],
        });
        const call = (id: bigint) =>
          new Promise<{ code: number; message: string } | ExpertResult>((res) =>
            client.runExperts(batch(id), (err, r) => res(err ? { code: err.code, message: err.details } : r)),
          );
        const first = await call(1n);
        expect("output" in first && first.output?.shape).toEqual([2, D]);
        const second = (await call(2n)) as { code: number; message: string };
        expect(second.code).toBe(14); // UNAVAILABLE: the router sends the rows to another replica
        expect(second.message).toMatch(/GPU run on CUDA device 0: .*illegal memory access/);
        client.close();
        expect(await exited).toBe(1);
        expect(log).toMatch(/fatal device error, no longer serving: GPU run on CUDA device 0/);
      } finally {
        child.kill("SIGKILL");
      }
    },
    150_000,
  );
});
