// Small I/O helpers for the cluster harness: free ports, health probes, polling, running CLI tools.
import { spawn } from "node:child_process";
import http from "node:http";
import https from "node:https";
import { createServer } from "node:net";

/** `n` distinct free loopback ports. All are held open until every one is picked, so none repeats. */
export async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<ReturnType<typeof createServer>>((resolve, reject) => {
          const s = createServer();
          s.once("error", reject);
          s.listen(0, "127.0.0.1", () => resolve(s));
        }),
    ),
  );
  const ports = servers.map((s) => {
    const addr = s.address();
    if (addr === null || typeof addr === "string") throw new Error("freePorts: no TCP address");
    return addr.port;
  });
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

/** GET with a short timeout; never throws (a refused connection is status 0). TLS is not verified: the test
 * API server's cert is self-signed. */
export function httpGet(url: string, token?: string, timeoutMs = 2000): Promise<{ status: number; body: string }> {
  return new Promise((resolve) => {
    const lib = url.startsWith("https:") ? https : http;
    const req = lib.get(
      url,
      {
        timeout: timeoutMs,
        rejectUnauthorized: false,
        headers: token ? { authorization: `Bearer ${token}` } : {},
      },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c) => {
          body += c;
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
        res.on("error", () => resolve({ status: 0, body }));
      },
    );
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", (e) => resolve({ status: 0, body: String(e) }));
  });
}

export interface WaitOptions {
  /** What is awaited, for the timeout message. */
  what: string;
  timeoutMs: number;
  intervalMs?: number;
  /** Checked before every attempt; a returned string aborts the wait with that reason. */
  abortIf?: () => string | undefined;
}

/** Polls `check` until it returns true. Errors thrown by `check` count as "not yet" (the last one is reported). */
export async function waitUntil(check: () => Promise<boolean> | boolean, o: WaitOptions): Promise<void> {
  const end = Date.now() + o.timeoutMs;
  let lastError: unknown;
  for (;;) {
    const abort = o.abortIf?.();
    if (abort) throw new Error(`gave up waiting for ${o.what}: ${abort}`);
    try {
      if (await check()) return;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= end) {
      const detail = lastError ? ` (last error: ${(lastError as Error).message ?? lastError})` : "";
      throw new Error(`timed out after ${o.timeoutMs} ms waiting for ${o.what}${detail}`);
    }
    await new Promise((r) => setTimeout(r, o.intervalMs ?? 200));
  }
}

export interface RunOptions {
  /** Written to stdin (e.g. a manifest for `kubectl apply -f -`). */
  input?: string;
  /** Reject on a non-zero exit (default true). With false, inspect `code` yourself. */
  check?: boolean;
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function runCommand(command: string, args: string[], o: RunOptions = {}): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env: o.env ?? process.env, cwd: o.cwd, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (c) => {
      stdout += c;
    });
    child.stderr.setEncoding("utf8").on("data", (c) => {
      stderr += c;
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), o.timeoutMs ?? 60_000);
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(new Error(`${command}: ${e.message}`));
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      const result = { code: code ?? (signal ? 128 : 1), stdout, stderr };
      const shown = `${command.split("/").pop()} ${args.join(" ")}`;
      if (signal) reject(new Error(`${shown}: killed by ${signal} (timeout ${o.timeoutMs ?? 60_000} ms?)\n${stderr}`));
      else if (code !== 0 && o.check !== false) reject(new Error(`${shown}: exit ${code}\n${stderr || stdout}`));
      else resolve(result);
    });
    child.stdin.on("error", () => {}); // the tool may exit before reading stdin; its exit code says why
    child.stdin.end(o.input ?? "");
  });
}
