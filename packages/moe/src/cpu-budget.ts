// How many CPUs this process may keep busy: the cores it may run on (os.availableParallelism, which follows the
// affinity mask), capped by its container's CPU quota. In a Kubernetes pod with a CPU limit the kernel enforces the
// limit as a CFS quota while every core of the node stays visible, so thread pools sized from the core count (the
// worker's native pool, the router's gate threads) would run tens of threads on a quota of a few CPUs and spend their
// time throttled. Read from cgroup v2 (cpu.max) or v1 (cpu.cfs_quota_us / cpu.cfs_period_us); a fractional quota
// rounds down (a pool of 2 threads on 2.5 CPUs is throttled less than one of 3), never below 1, as Go's automaxprocs
// does. The parsers are pure; cpuBudget() reads the files.

import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";

/** cgroup v2 cpu.max ("max 100000" or "<quota> <period>") -> CPUs, or null for no quota / unreadable text. */
export function quotaFromCpuMax(text: string): number | null {
  const [quota, period] = text.trim().split(/\s+/);
  if (quota === undefined || quota === "max") return null;
  return ratio(quota, period ?? "100000");
}

/** cgroup v1 cpu.cfs_quota_us ("-1" = none) and cpu.cfs_period_us -> CPUs, or null. */
export function quotaFromCfs(quota: string, period: string): number | null {
  if (quota.trim() === "-1") return null;
  return ratio(quota.trim(), period.trim());
}

function ratio(quota: string, period: string): number | null {
  const q = Number(quota);
  const p = Number(period);
  if (!Number.isFinite(q) || !Number.isFinite(p) || q <= 0 || p <= 0) return null;
  return q / p;
}

/**
 * The cgroup directories to look in for this process, from /proc/self/cgroup: its own path first (a cgroup namespace
 * that is not private shows the whole hierarchy), then the mount's root (a private namespace, as in a container).
 */
export function cgroupCandidates(procSelfCgroup: string): { v2: string[]; v1: string[] } {
  const v2: string[] = [];
  const v1: string[] = [];
  for (const line of procSelfCgroup.split("\n")) {
    const m = /^\d+:([^:]*):(.*)$/.exec(line.trim());
    if (!m) continue;
    const [, controllers, path] = m;
    const rel = path === "/" ? "" : path;
    if (controllers === "") v2.push(`/sys/fs/cgroup${rel}`);
    else if (controllers.split(",").includes("cpu")) {
      for (const mount of ["cpu,cpuacct", "cpu"]) v1.push(`/sys/fs/cgroup/${mount}${rel}`);
    }
  }
  v2.push("/sys/fs/cgroup");
  v1.push("/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu");
  return { v2: [...new Set(v2)], v1: [...new Set(v1)] };
}

/** The container's CPU quota in CPUs, or null where there is none (or no cgroup to read). */
export function cpuQuota(read: (path: string) => string | null = readText): number | null {
  const { v2, v1 } = cgroupCandidates(read("/proc/self/cgroup") ?? "");
  for (const dir of v2) {
    const text = read(`${dir}/cpu.max`);
    if (text !== null) return quotaFromCpuMax(text);
  }
  for (const dir of v1) {
    const quota = read(`${dir}/cpu.cfs_quota_us`);
    const period = read(`${dir}/cpu.cfs_period_us`);
    if (quota !== null && period !== null) return quotaFromCfs(quota, period);
  }
  return null;
}

/** CPUs this process may keep busy: min(available cores, floor(quota)), at least 1. */
export function cpuBudget(cores = availableParallelism(), quota = cpuQuota()): number {
  const cap = quota === null ? cores : Math.max(1, Math.floor(quota));
  return Math.max(1, Math.min(cores, cap));
}

function readText(path: string): string | null {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return null;
  }
}
