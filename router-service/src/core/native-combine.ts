// The router's optional native addon (router-service/native, built by `npm run build`): the weighted combine, the
// router logits and the gate's top-k in C++, giving the same bits as the TypeScript combine in combine.ts and
// packages/moe routerLogits / softmaxTopK / sigmoidGroupTopK (which stay the fallbacks and the oracles their tests
// compare against). SWITCHYARD_ROUTER_NATIVE=0 turns it off.

import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { GateKernel } from "@switchyard/moe";

export interface RouterAddon {
  /**
   * See native/src/combine_addon.cc. type: 1 = FLOAT32, 2 = BFLOAT16. Returns whether it wrote an Inf or NaN; an addon
   * built before that returns undefined.
   */
  combine(
    dst: Uint8Array | Uint16Array | Float32Array,
    type: 1 | 2,
    tokens: number,
    d: number,
    slots: number,
    weights: Float32Array,
    locations: Int32Array,
    results: readonly (Float32Array | Uint16Array | Uint8Array)[],
    base: Float32Array | null,
  ): boolean | undefined;
  /**
   * out[t, e] = the gate's product, the same bits as packages/moe routerLogits over the fp32 hidden states; hidden is
   * fp32 or bf16 bits (Uint16Array), gateT the gate transposed [d, E].
   */
  routerLogits(
    hidden: Float32Array | Uint16Array,
    gateT: Float32Array,
    tokens: number,
    d: number,
    experts: number,
    out: Float32Array,
  ): void;
  /**
   * routerLogits on a libuv pool thread and up to threads - 1 more (ranges of the gate's panels), into a new
   * Float32Array [tokens * experts] of the addon's (no caller buffer is written from another thread). hidden and gateT
   * are read in place until the promise settles: resizable or detached buffers are refused (asyncLogitsArgs), and the
   * caller must not transfer them before then.
   */
  routerLogitsAsync(
    hidden: Float32Array | Uint16Array,
    gateT: Float32Array,
    tokens: number,
    d: number,
    experts: number,
    threads: number,
  ): Promise<Float32Array>;
  /** Present (true) where routerLogitsAsync allocates its output; an older build took an `out` argument. */
  asyncLogitsOut(): boolean;
  /**
   * The gate's selection over logits, the same ids and weights as packages/moe softmaxTopK / sigmoidGroupTopK
   * (native/src/gate.h); returns -1 or the flat index of the first NaN / +Infinity logit. Absent from an addon built
   * before it (the router then gates in TypeScript).
   */
  routerGate?: GateKernel;
  isa(): string;
  /** The gateT layout routerLogits expects: GATE_LAYOUT. */
  gateLayout(): string;
}

/**
 * The gate layout of this source (checkpoint-model.ts transposeGate: 32-expert panels). An addon built from an older
 * source reads the gate in another layout and would give wrong logits: routerAddon() refuses it.
 */
export const GATE_LAYOUT = "panel32";

/** Why a loaded addon cannot serve this source (built before its gate layout), or null when it can. */
export function staleAddon(addon: Partial<RouterAddon>): string | null {
  const layout = typeof addon.gateLayout === "function" ? addon.gateLayout() : "none";
  if (layout !== GATE_LAYOUT) return `gate layout "${layout}", this source "${GATE_LAYOUT}"`;
  if (typeof addon.routerLogitsAsync !== "function") return "no routerLogitsAsync";
  if (typeof addon.asyncLogitsOut !== "function") return "routerLogitsAsync takes an out argument (an older build)";
  return null;
}

/**
 * Throws unless every array can be read in place by the addon's threads until its promise settles: a resizable
 * ArrayBuffer could shrink under them (the addon refuses it too; this says which input of the caller's it was).
 */
export function refuseResizable(arrays: Record<string, ArrayBufferView>): void {
  for (const [name, a] of Object.entries(arrays))
    if ((a.buffer as { resizable?: boolean }).resizable === true)
      throw new TypeError(
        `${name}: backed by a resizable ArrayBuffer, which could shrink while the native gate reads it; pass a fixed-length copy`,
      );
}

const here = dirname(fileURLToPath(import.meta.url));
/** build/ sits next to src/ and dist/ (this file is src/core/ or dist/core/). */
export const ROUTER_ADDON_PATH = resolve(here, "../../build/switchyard_router.node");

let cached: RouterAddon | null | undefined;
let why = "";

/** The addon, or null (not built, failed to load, or turned off); nativeCombineStatus() says which. */
export function routerAddon(): RouterAddon | null {
  if (cached !== undefined) return cached;
  cached = null;
  if (process.env.SWITCHYARD_ROUTER_NATIVE === "0") why = "turned off (SWITCHYARD_ROUTER_NATIVE=0)";
  else if (!existsSync(ROUTER_ADDON_PATH)) why = `not built: ${ROUTER_ADDON_PATH} (npm run build)`;
  else {
    try {
      const addon = createRequire(import.meta.url)(ROUTER_ADDON_PATH) as Partial<RouterAddon>;
      const stale = staleAddon(addon);
      if (stale) why = `stale build: ${ROUTER_ADDON_PATH}: ${stale} (npm run build)`;
      else cached = addon as RouterAddon;
    } catch (e) {
      why = `failed to load: ${(e as Error).message}`;
    }
  }
  return cached;
}

/** One line for the router's start-up log. */
export function nativeCombineStatus(): string {
  const a = routerAddon();
  return a ? `native (${a.isa()})` : `TypeScript (${why})`;
}
