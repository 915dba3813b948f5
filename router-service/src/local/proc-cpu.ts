// CPU time of the local mode's processes (driver, router, workers) over the load, to show which one a run is bound
// by. Linux /proc only; elsewhere the figures are reported as unknown.

import { readdir, readFile } from "node:fs/promises";

/** Clock ticks per second of /proc/<pid>/stat's times (USER_HZ: 100 on every Linux architecture Node runs on). */
const USER_HZ = 100;

/** utime + stime of a /proc/<pid>/stat line, in seconds. The command (field 2) may hold spaces and parentheses. */
export function parseProcStatCpu(stat: string): number {
  const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // rest[0] is field 3 (state): utime and stime are fields 14 and 15
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) throw new Error(`unexpected /proc stat line: ${stat}`);
  return (utime + stime) / USER_HZ;
}

/**
 * CPU seconds used so far by a process (all its threads), or by its main thread only (the JavaScript thread; the
 * driver's reference threads and every process's GC and libuv threads are the rest). null when /proc cannot tell.
 */
export async function cpuSeconds(pid: number, mainThread = false): Promise<number | null> {
  try {
    return parseProcStatCpu(await readFile(mainThread ? `/proc/${pid}/task/${pid}/stat` : `/proc/${pid}/stat`, "utf8"));
  } catch {
    return null;
  }
}

/** One thread's name and CPU seconds so far. */
export interface ThreadCpu {
  name: string;
  seconds: number;
}

/**
 * CPU seconds so far per thread id, with its name (/proc/<pid>/task/<tid>/comm: V8's, libuv's, the CUDA driver's,
 * the addons' sy-*), the JavaScript thread named "main" (Node 20's libuv pool threads keep the name "node"): where a
 * process's cores go beyond its JavaScript thread. null when /proc cannot tell; threads that exit in between are
 * missed.
 */
export async function cpuByThread(pid: number): Promise<Map<string, ThreadCpu> | null> {
  try {
    const tids = await readdir(`/proc/${pid}/task`);
    const out = new Map<string, ThreadCpu>();
    await Promise.all(
      tids.map(async (tid) => {
        try {
          const [comm, stat] = await Promise.all([
            readFile(`/proc/${pid}/task/${tid}/comm`, "utf8"),
            readFile(`/proc/${pid}/task/${tid}/stat`, "utf8"),
          ]);
          out.set(tid, { name: tid === String(pid) ? "main" : comm.trim(), seconds: parseProcStatCpu(stat) });
        } catch {
          // the thread exited while we read
        }
      }),
    );
    return out;
  } catch {
    return null;
  }
}

/**
 * The busiest thread names between two cpuByThread readings, as cores over `seconds`: "sy-cuda-run 0.61, ...".
 * Deltas are taken per thread id and summed under the thread's later name: the addons rename libuv's pool threads
 * for the work they run, so a thread's CPU from before the window must not count under its new name.
 */
export function threadCpuLine(
  before: Map<string, ThreadCpu> | null,
  after: Map<string, ThreadCpu> | null,
  seconds: number,
  top = 4,
): string {
  if (!before || !after || seconds <= 0) return "?";
  const byName = new Map<string, number>();
  for (const [tid, t] of after)
    byName.set(t.name, (byName.get(t.name) ?? 0) + t.seconds - (before.get(tid)?.seconds ?? 0));
  return [...byName]
    .map(([name, s]) => [name, s / seconds] as const)
    .filter(([, cores]) => cores >= 0.005)
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .slice(0, top)
    .map(([name, cores]) => `${name} ${cores.toFixed(2)}`)
    .join(", ");
}
