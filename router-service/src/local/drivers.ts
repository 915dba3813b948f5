// The local mode's load from one or more drivers: drive() on the main thread for one, worker threads
// (drive-thread.ts) for more. The main thread keeps the reference check: a thread sends an answer to check only while
// a shared flag says a reference thread is free, as the single driver asks VerifierPool.accepting.

import { Worker } from "node:worker_threads";
import { type CheckJob, type DriveOptions, DriveStats, dealSequences, drive } from "./drive.js";
import type { DriveThreadData, DriveThreadMessage } from "./drive-thread.js";

export interface CheckSink {
  accepting(): boolean;
  /** false: not taken after all (every reference thread busy by the time it came). */
  offer(job: CheckJob): boolean;
}

export interface LiveCounts {
  tokensDone: number;
  forwards: number;
  errors: number;
  /** The latest latencies (ms), for the progress line's p50. */
  recent: number[];
}

export interface DriverRun {
  /** Every driver's stats once the load is over (rejects if a driver thread fails). */
  done: Promise<DriveStats[]>;
  live(): LiveCounts;
}

export function startDrivers(
  drivers: number,
  base: Omit<DriveOptions, "sequences">,
  concurrency: number,
  sink: CheckSink,
  /**
   * The threads' script and flags: tests that run the sources pass dist's drive-thread.js and no flags (threads do not
   * load TypeScript); by default the compiled script beside this module and the process's own flags.
   */
  thread: { script?: URL; execArgv?: string[] } = {},
): DriverRun {
  const script = thread.script ?? new URL("./drive-thread.js", import.meta.url);
  const shares = dealSequences(concurrency, drivers);
  if (shares.length === 1) {
    const st = new DriveStats();
    const hooks = { wantsCheck: () => sink.accepting(), check: (j: CheckJob) => void sink.offer(j) };
    return {
      done: drive({ ...base, sequences: shares[0] as number[] }, hooks, st).then(() => [st]),
      live: () => ({
        tokensDone: st.tokensDone,
        forwards: st.forwards,
        errors: st.errors,
        recent: st.latencies.slice(-2000),
      }),
    };
  }
  const accepting = new Int32Array(new SharedArrayBuffer(4));
  const sync = () => Atomics.store(accepting, 0, sink.accepting() ? 1 : 0);
  sync();
  const flagTimer = setInterval(sync, 1); // reference threads free up between the threads' answers
  const lost = new DriveStats(); // answers a thread sent that found every reference thread busy after all
  const progress = shares.map(() => ({ tokensDone: 0, forwards: 0, errors: 0, recent: [] as number[] }));
  const workers: Worker[] = [];
  const threads = shares.map((sequences, i) => {
    const data: DriveThreadData = { options: { ...base, sequences }, accepting };
    const w = new Worker(script, { workerData: data, ...(thread.execArgv ? { execArgv: thread.execArgv } : {}) });
    workers.push(w);
    return new Promise<DriveStats>((resolve, reject) => {
      w.on("message", (m: DriveThreadMessage) => {
        if (m.type === "check") {
          if (!sink.offer(m.job)) lost.unchecked++;
          sync();
        } else if (m.type === "progress") progress[i] = m;
        else if (m.type === "done") {
          resolve(m.stats);
          void w.terminate();
        } else reject(new Error(`driver thread ${i}: ${m.message}`));
      });
      w.on("error", (e) => reject(new Error(`driver thread ${i}: ${e.message}`)));
      w.on("exit", (code) => reject(new Error(`driver thread ${i} exited with code ${code} before its stats`)));
    });
  });
  return {
    done: Promise.all(threads)
      .then((all) => [...all, lost])
      .catch((e: unknown) => {
        // one failed: the others would drive on to the end of the run for nothing
        for (const w of workers) void w.terminate();
        throw e;
      })
      .finally(() => clearInterval(flagTimer)),
    live: () => ({
      tokensDone: progress.reduce((a, p) => a + p.tokensDone, 0),
      forwards: progress.reduce((a, p) => a + p.forwards, 0),
      errors: progress.reduce((a, p) => a + p.errors, 0),
      recent: progress.flatMap((p) => p.recent),
    }),
  };
}
