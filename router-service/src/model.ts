// What the router needs to know about a pool's model: sizes, and the gate. Implemented over a checkpoint with
// the pure MoE library (checkpoint-model.ts); tests and benchmarks may supply their own.

import type { GatingPolicy } from "@switchyard/moe";
import type { TokenRouting } from "./core/routing.js";

export interface PoolModel {
  readonly family: string;
  readonly layers: number;
  /** Routed experts per layer (E). Shared expert j travels to workers as expert id E + j. */
  readonly experts: number;
  readonly hiddenSize: number;
  readonly sharedExperts: number;
  /** Router logits [tokens, E] from hidden states [tokens, d] (fp32), with the checkpoint's gate weights. */
  logits(layer: number, hidden: Float32Array, tokens: number): Float32Array;
  /** The family's gating over logits (softmax top-k, sigmoid + group-limited top-k, top-p ...). */
  route(layer: number, logits: Float32Array, tokens: number, gating: GatingPolicy): TokenRouting;
  /** Per-token weights of the shared experts [tokens * sharedExperts] (1, or Qwen2-MoE's sigmoid gate); null if none. */
  sharedWeights(layer: number, hidden: Float32Array, tokens: number): Float32Array | null;
  /** Whether sharedWeights reads the hidden states (then the router decodes them even for explicit assignments). */
  readonly sharedGateNeedsHidden: boolean;
}
