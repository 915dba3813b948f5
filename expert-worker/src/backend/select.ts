// Backend choice at start-up: --backend auto|cpu|cuda (env SWITCHYARD_BACKEND).
//   cpu  : the native CPU addon; the TypeScript reference when the addon is not built (logged as such).
//   cuda : the CUDA backend; start fails when it is not available.
//   auto : cuda when built and a device answers, else cpu.
// SWITCHYARD_CPU_BACKEND=reference forces the TypeScript reference (tests, debugging).

import { loadNativeAddon, NativeCpuBackend, nativeLoadError } from "./native-cpu.js";
import { ReferenceBackend } from "./reference.js";
import type { ExpertBackend } from "./types.js";

export type BackendChoice = "auto" | "cpu" | "cuda";

export interface SelectedBackend {
  backend: ExpertBackend;
  /** The start-up log line: what was chosen and why. */
  reason: string;
}

/** Hook for the CUDA backend module (expert-worker/src/backend/cuda*.ts registers itself here). */
export type CudaProbe = () => Promise<ExpertBackend | { unavailable: string }>;
let cudaProbe: CudaProbe | undefined;
export function registerCudaProbe(p: CudaProbe): void {
  cudaProbe = p;
}

async function probeCuda(): Promise<ExpertBackend | { unavailable: string }> {
  if (!cudaProbe) {
    try {
      // Optional module owned by the CUDA backend; absent on CPU-only builds.
      const mod = (await import(/* @vite-ignore */ "./cuda.js" as string)) as { probeCudaBackend?: CudaProbe };
      if (mod.probeCudaBackend) cudaProbe = mod.probeCudaBackend;
    } catch {
      // not built
    }
  }
  if (!cudaProbe) return { unavailable: "no CUDA backend in this build" };
  return cudaProbe();
}

export function cpuBackend(): SelectedBackend {
  if (process.env.SWITCHYARD_CPU_BACKEND === "reference")
    return { backend: new ReferenceBackend(), reason: "SWITCHYARD_CPU_BACKEND=reference" };
  const addon = loadNativeAddon();
  if (addon) {
    const b = new NativeCpuBackend(addon);
    return { backend: b, reason: b.describe() };
  }
  return {
    backend: new ReferenceBackend(),
    reason: `native addon unavailable (${nativeLoadError()}); using the TypeScript reference`,
  };
}

export async function selectBackend(choice: BackendChoice): Promise<SelectedBackend> {
  if (choice === "cpu") return cpuBackend();
  const cuda = await probeCuda();
  if ("unavailable" in cuda) {
    if (choice === "cuda") throw new Error(`--backend cuda: ${cuda.unavailable}`);
    const cpu = cpuBackend();
    return { backend: cpu.backend, reason: `auto: ${cuda.unavailable}; ${cpu.reason}` };
  }
  return { backend: cuda, reason: `${choice}: ${cuda.describe()}` };
}
