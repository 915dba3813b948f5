// Helpers for tests and benchmarks: random experts and token matrices in any dtype (not used by the server).

import { credentials, makeGenericClientConstructor } from "@grpc/grpc-js";
import type { ExpertWeights, WeightDType } from "@switchyard/moe";
import { DType, valuesToBytes } from "@switchyard/protocol";
import { service as healthService } from "grpc-health-check";

/** Seeded PRNG so a failing case can be replayed from its printed seed. */
export { mulberry32 as rng } from "@switchyard/moe";

export function uniform(n: number, scale: number, next: () => number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (next() * 2 - 1) * scale;
  return a;
}

export const PROTO_OF: Record<WeightDType, DType> = {
  float32: DType.FLOAT32,
  bfloat16: DType.BFLOAT16,
  float16: DType.FLOAT16,
};

/** Random SwiGLU expert weights, HF layout, encoded as `dtype` (scaled like a real init: ~1/sqrt(fan_in)). */
export function randomExpert(d: number, f: number, dtype: WeightDType, next: () => number): ExpertWeights {
  const m = (rows: number, cols: number) => ({
    dtype,
    rows,
    cols,
    data: new Uint8Array(valuesToBytes(uniform(rows * cols, 1 / Math.sqrt(cols), next), PROTO_OF[dtype])),
  });
  return { gate: m(f, d), up: m(f, d), down: m(d, f) };
}

type HealthClient = {
  check(req: { service: string }, cb: (e: Error | null, r: { status: string }) => void): void;
  close(): void;
};

/** grpc.health.v1's answer for `service` on the worker at `port` (tests of liveness and readiness). */
export async function health(port: number, service: string): Promise<string> {
  const Health = makeGenericClientConstructor(healthService, "Health");
  const h = new Health(`127.0.0.1:${port}`, credentials.createInsecure()) as unknown as HealthClient;
  try {
    return (await new Promise<{ status: string }>((res, rej) => h.check({ service }, (e, x) => (e ? rej(e) : res(x)))))
      .status;
  } finally {
    h.close();
  }
}
