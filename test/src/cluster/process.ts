// Child processes of the test cluster: each runs in its own process group (so a kill takes its children too), writes
// stdout+stderr to a log file, and is killed when this Node process exits even if nobody called stop().
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";

const live = new Set<ManagedProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Last resort (a crashed test worker, a forgotten stop()): 'exit' handlers must be synchronous, so SIGKILL.
  process.on("exit", () => {
    for (const p of live) p.signal("SIGKILL");
  });
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class ManagedProcess {
  readonly name: string;
  readonly logFile: string;
  private child: ChildProcess;
  private exitInfo: ExitInfo | undefined;
  private exitPromise: Promise<ExitInfo>;
  private stopping = false;
  private spawnError: Error | undefined;
  private messagePromise: Promise<unknown>;

  /**
   * `ipc`: the child gets a Node IPC channel; firstMessage() resolves with the first message it sends (our workers and
   * router send their bound ports once they listen, so they can start with --port 0).
   */
  constructor(
    name: string,
    command: string,
    args: string[],
    logFile: string,
    env?: NodeJS.ProcessEnv,
    opts: { ipc?: boolean } = {},
  ) {
    this.name = name;
    this.logFile = logFile;
    const fd = openSync(logFile, "a");
    try {
      this.child = spawn(command, args, {
        detached: true,
        stdio: opts.ipc ? ["ignore", fd, fd, "ipc"] : ["ignore", fd, fd],
        env: env ?? process.env,
      });
    } finally {
      closeSync(fd); // the child holds its own copy
    }
    this.messagePromise = new Promise((resolve, reject) => {
      if (!opts.ipc) return;
      const onExit = () => reject(new Error(`${name} exited before its first message:\n${this.tail(20)}`));
      this.child.once("exit", onExit);
      this.child.once("message", (m) => {
        this.child.off("exit", onExit);
        this.child.channel?.unref(); // the channel must not keep the test process alive
        resolve(m);
      });
    });
    this.messagePromise.catch(() => {}); // observed through firstMessage()
    this.exitPromise = new Promise((resolve) => {
      this.child.once("exit", (code, signal) => {
        this.exitInfo = { code, signal };
        live.delete(this);
        resolve(this.exitInfo);
      });
      this.child.once("error", (err) => {
        // spawn failures (ENOENT, EACCES) never reach the log file; tail() reports them instead.
        this.spawnError = err;
        this.exitInfo = { code: null, signal: null };
        live.delete(this);
        resolve(this.exitInfo);
      });
    });
    live.add(this);
    installExitHook();
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Set once the process has exited. */
  get exited(): ExitInfo | undefined {
    return this.exitInfo;
  }

  /** True when it exited without stop() being called. */
  get crashed(): boolean {
    return this.exitInfo !== undefined && !this.stopping;
  }

  signal(sig: NodeJS.Signals): void {
    const pid = this.child.pid;
    if (pid === undefined || this.exitInfo) return;
    try {
      process.kill(-pid, sig); // the whole group: detached made the child a group leader
    } catch {
      try {
        this.child.kill(sig);
      } catch {}
    }
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the process is gone. */
  async stop(graceMs = 3000): Promise<ExitInfo> {
    this.stopping = true;
    if (this.exitInfo) return this.exitInfo;
    this.signal("SIGTERM");
    const timer = setTimeout(() => this.signal("SIGKILL"), graceMs);
    try {
      return await this.exitPromise;
    } finally {
      clearTimeout(timer);
    }
  }

  wait(): Promise<ExitInfo> {
    return this.exitPromise;
  }

  /** The first IPC message (opts.ipc), or a rejection if it exits first; `timeoutMs` bounds the wait. */
  firstMessage(timeoutMs: number): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`${this.name}: no message after ${timeoutMs} ms`)), timeoutMs);
      this.messagePromise.then(
        (m) => {
          clearTimeout(t);
          resolve(m);
        },
        (e) => {
          clearTimeout(t);
          reject(e);
        },
      );
    });
  }

  /** The last `lines` lines of its log. */
  tail(lines = 40): string {
    let text = "";
    try {
      text = readFileSync(this.logFile, "utf8");
    } catch {
      return "(no log)";
    }
    const all = text.trimEnd().split("\n");
    const out = all.slice(-lines).join("\n");
    return this.spawnError ? `spawn failed: ${this.spawnError.message}\n${out}` : out;
  }

  describeExit(): string {
    if (this.spawnError) return `${this.name} could not start: ${this.spawnError.message}`;
    if (!this.exitInfo) return `${this.name} is running`;
    const { code, signal } = this.exitInfo;
    return `${this.name} exited (${signal ? `signal ${signal}` : `code ${code}`})`;
  }
}

/** The 'exit' hook above cannot run when the test process is SIGKILLed or dies on a signal; this tiny shell
 * loop can. When the Node process is gone it kills every component's process group and drops the etcd data, so a
 * crashed test run never leaves an API server eating the shared CPU. stop() kills the watchdog first. */
export function startWatchdog(parentPid: number, pgidFile: string, dir: string): number {
  const script = `
    while kill -0 "$1" 2>/dev/null; do sleep 1; done
    for g in $(cat "$2" 2>/dev/null); do kill -9 "-$g" 2>/dev/null; done
    rm -rf "$3/etcd"`;
  const child = spawn("sh", ["-c", script, "test-cluster-watchdog", String(parentPid), pgidFile, dir], {
    detached: true,
    stdio: "ignore",
  });
  child.unref();
  if (child.pid === undefined) throw new Error("could not start the test cluster watchdog (sh)");
  return child.pid;
}
