import { describe, expect, it } from "vitest";
import { loadCudaAddon, probeCudaBackend, slotCount } from "./cuda.js";
import { cudaParity } from "./cuda-parity.js";

describe("slotCount", () => {
  it("takes SWITCHYARD_GPU_CACHE_SLOTS, then SWITCHYARD_CACHE_CAPACITY, capped at 1024", () => {
    expect(slotCount({ SWITCHYARD_GPU_CACHE_SLOTS: "8", SWITCHYARD_CACHE_CAPACITY: "3" }, 1e12, 1e6)).toBe(8);
    expect(slotCount({ SWITCHYARD_CACHE_CAPACITY: "3" }, 1e12, 1e6)).toBe(3);
    expect(slotCount({ SWITCHYARD_CACHE_CAPACITY: "5000" }, 1e12, 1e6)).toBe(1024);
  });
  it("the worker's --cache-capacity comes after the GPU override and before the env capacity", () => {
    expect(slotCount({ SWITCHYARD_CACHE_CAPACITY: "3" }, 1e12, 1e6, 6)).toBe(6);
    expect(slotCount({ SWITCHYARD_GPU_CACHE_SLOTS: "8" }, 1e12, 1e6, 6)).toBe(8);
    expect(slotCount({}, 100e9, 352e6, 12)).toBe(12);
    expect(slotCount({}, 1e12, 1e6, 5000)).toBe(1024);
  });
  it("otherwise fits 80% of device memory", () => {
    expect(slotCount({}, 100e9, 352e6)).toBe(227);
    expect(slotCount({}, 1e6, 1e9)).toBe(1);
  });
  it("names the variable on bad input", () => {
    expect(() => slotCount({ SWITCHYARD_CACHE_CAPACITY: "x" }, 1e9, 1e6)).toThrow(/SWITCHYARD_CACHE_CAPACITY/);
  });
});

// GPU tests: need the built switchyard_cuda.node and an sm_90 GPU. On CPU-only machines (CI) they skip and say why.
const addon = loadCudaAddon();
const probe = "unavailable" in addon ? addon.unavailable : addon.probe();
const why = typeof probe === "string" ? probe : probe.ok ? "" : (probe.error ?? "no usable CUDA device");
if (why) console.log(`[cuda backend] GPU tests skipped: ${why}`);

describe("cuda backend", () => {
  it("probe reports unavailability with a reason instead of throwing", async () => {
    const b = await probeCudaBackend();
    if (why) expect(b).toEqual({ unavailable: expect.stringMatching(/\S/) });
    else expect("name" in b && b.name).toBe("cuda");
  });

  it.skipIf(!!why)(`matches the TypeScript reference on the GPU${why ? ` (skipped: ${why})` : ""}`, async () => {
    process.env.SWITCHYARD_GPU_CACHE_SLOTS = "5"; // fewer slots than the 8 experts: evictions and re-uploads
    const b = await probeCudaBackend();
    if ("unavailable" in b) throw new Error(b.unavailable);
    const r = await cudaParity(b);
    console.log(JSON.stringify(r));
    expect(r.ok).toBe(true);
  });
});
