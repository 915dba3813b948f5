// CPU time of the local mode's processes (driver, router, workers) over the load, to show which one a run is bound
// by. Linux /proc only; elsewhere the figures are reported as unknown.

import { readFile } from "node:fs/promises";

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
