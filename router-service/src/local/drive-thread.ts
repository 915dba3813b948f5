// A driver thread of the local mode (--drivers N > 1): runs drive() over its share of the sequences and reports to
// the main thread, which owns the reference check and the summary. Messages out: "check" (an answer to check, when
// the shared flag says a reference thread is free), "progress" (its counters, every 500 ms) and "done" (its stats).

import { parentPort, workerData } from "node:worker_threads";
import { type CheckJob, type DriveOptions, DriveStats, drive } from "./drive.js";

export interface DriveThreadData {
  options: DriveOptions;
  /** [0]: 1 while the main thread's reference check would take an answer (VerifierPool.accepting). */
  accepting: Int32Array;
}

export type DriveThreadMessage =
  | { type: "check"; job: CheckJob }
  | { type: "progress"; tokensDone: number; forwards: number; errors: number; recent: number[] }
  | { type: "done"; stats: DriveStats }
  | { type: "error"; message: string };

const port = parentPort;
if (!port) throw new Error("drive-thread.js runs as a worker thread");
const { options, accepting } = workerData as DriveThreadData;
const stats = new DriveStats();
const post = (m: DriveThreadMessage) => port.postMessage(m);
const progress = setInterval(() => {
  post({
    type: "progress",
    tokensDone: stats.tokensDone,
    forwards: stats.forwards,
    errors: stats.errors,
    recent: stats.latencies.slice(-500),
  });
}, 500);
drive(
  options,
  { wantsCheck: () => Atomics.load(accepting, 0) === 1, check: (job) => post({ type: "check", job }) },
  stats,
)
  .then(() => post({ type: "done", stats }))
  .catch((e: unknown) => post({ type: "error", message: e instanceof Error ? e.message : String(e) }))
  .finally(() => clearInterval(progress));
