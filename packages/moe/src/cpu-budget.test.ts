import { describe, expect, it } from "vitest";
import { cgroupCandidates, cpuBudget, cpuQuota, quotaFromCfs, quotaFromCpuMax } from "./cpu-budget.js";

/** A file system of the given files (everything else unreadable). */
const files =
  (fs: Record<string, string>) =>
  (path: string): string | null =>
    fs[path] ?? null;

describe("the CPU budget", () => {
  it("parses cgroup v2 cpu.max and v1 quotas", () => {
    expect(quotaFromCpuMax("max 100000\n")).toBeNull();
    expect(quotaFromCpuMax("200000 100000\n")).toBe(2);
    expect(quotaFromCpuMax("150000 100000")).toBe(1.5);
    expect(quotaFromCpuMax("50000")).toBe(0.5); // the period defaults to 100 ms
    expect(quotaFromCpuMax("garbage here")).toBeNull();
    expect(quotaFromCpuMax("")).toBeNull();
    expect(quotaFromCfs("-1\n", "100000\n")).toBeNull();
    expect(quotaFromCfs("400000\n", "100000\n")).toBe(4);
    expect(quotaFromCfs("0", "100000")).toBeNull();
  });

  it("looks in the process's own cgroup first, then at the mount's root", () => {
    const c = cgroupCandidates("0::/kubepods.slice/pod1/ctr\n");
    expect(c.v2).toEqual(["/sys/fs/cgroup/kubepods.slice/pod1/ctr", "/sys/fs/cgroup"]);
    expect(cgroupCandidates("0::/\n").v2).toEqual(["/sys/fs/cgroup"]);
    const v1 = cgroupCandidates("4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/\n");
    expect(v1.v1.slice(0, 2)).toEqual(["/sys/fs/cgroup/cpu,cpuacct/docker/abc", "/sys/fs/cgroup/cpu/docker/abc"]);
  });

  it("reads a container's quota: v2 in a private namespace, v2 nested, v1, none", () => {
    expect(cpuQuota(files({ "/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/cpu.max": "300000 100000\n" }))).toBe(3);
    expect(
      cpuQuota(
        files({
          "/proc/self/cgroup": "0::/kubepods/pod1/ctr\n",
          "/sys/fs/cgroup/kubepods/pod1/ctr/cpu.max": "250000 100000\n",
          "/sys/fs/cgroup/cpu.max": "max 100000\n",
        }),
      ),
    ).toBe(2.5);
    expect(
      cpuQuota(
        files({
          "/proc/self/cgroup": "2:cpu,cpuacct:/\n0::/\n",
          "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "200000\n",
          "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        }),
      ),
    ).toBe(2);
    expect(cpuQuota(files({ "/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/cpu.max": "max 100000\n" }))).toBeNull();
    expect(cpuQuota(files({}))).toBeNull();
  });

  it("caps the cores by the quota, rounding down, never below one", () => {
    expect(cpuBudget(64, null)).toBe(64);
    expect(cpuBudget(64, 2.5)).toBe(2);
    expect(cpuBudget(64, 0.5)).toBe(1);
    expect(cpuBudget(4, 16)).toBe(4);
    expect(cpuBudget(0, null)).toBe(1);
  });
});
