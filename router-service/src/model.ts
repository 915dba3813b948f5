// What the router needs to know about a pool's model: sizes, and the gate. Implemented over a checkpoint with
// the pure MoE library (checkpoint-model.ts); tests and benchmarks may supply their own.

import type { GatingPolicy } from "@switchyard/moe";
import type { DType } from "@switchyard/protocol";
import type { TokenRouting } from "./core/routing.js";

export interface PoolModel {
  readonly family: string;
  readonly layers: number;
  /** Routed experts per layer (E). */
  readonly experts: number;
  readonly hiddenSize: number;
  /** Whether `layer` has experts (DeepSeek's first layers and Qwen's mlp_only_layers are dense). */
  isMoeLayer(layer: number): boolean;
  /** Router logits [tokens, E] from hidden states [tokens, d] (fp32), with the checkpoint's gate weights. */
  logits(layer: number, hidden: Float32Array, tokens: number): Float32Array;
  /**
   * The same from bf16 hidden states as they came (bits in a Uint16Array), with the same result as logits() over
   * them widened; null when the model cannot (the caller then widens and calls logits()).
   */
  logitsBf16?(layer: number, hidden: Uint16Array, tokens: number): Float32Array | null;
  /**
   * logits() / logitsBf16() off the event loop, the same bits; null where that does not pay (no native gate, or a
   * product too small to be worth a hop to a thread): the caller then calls those.
   */
  logitsAsync?(layer: number, hidden: Float32Array | Uint16Array, tokens: number): Promise<Float32Array> | null;
  /**
   * Whether logitsAsync() runs a product of `tokens` tokens off the event loop. The router starts the gate of
   * requests held behind running flushes early only where it does: on the event loop it would only move the cost.
   */
  gatesOffLoop?(tokens: number): boolean;
  /**
   * Rounds logits() / logitsBf16() / logitsAsync()'s product in place to the dtype the family's gate computes in for
   * hidden states of `hidden` (bf16 logits for Mixtral and Qwen from bf16 hidden states, as transformers' F.linear
   * gives them); returns that dtype. Absent: the product is used as it is, as float32.
   */
  roundLogits?(logits: Float32Array, hidden: DType): DType;
  /**
   * The family's gating over logits (softmax top-k, sigmoid + group-limited top-k, top-p ...); `logitsDtype` (default
   * FLOAT32) is what they were rounded to: Qwen rounds its routing weights to it.
   */
  /** `field`: the request field the logits came from, named in a bad-logit error (default "logits"). */
  route(
    layer: number,
    logits: Float32Array,
    tokens: number,
    gating: GatingPolicy,
    logitsDtype?: DType,
    field?: string,
  ): TokenRouting;
  /**
   * The shared-expert contribution [tokens, d] (fp32), gate included (Qwen2-MoE's sigmoid gate), or null when
   * the model has none. The router computes it in-process while the routed experts run on workers: every token
   * needs it (no routing, no batching benefit), and it saves a second trip over the wire. `dtype` (default FLOAT32)
   * is the one the hidden states came in, widened: Qwen2-MoE's gate rounds its logit and its sigmoid to it, as
   * transformers' does in a bf16 model.
   */
  shared(layer: number, hidden: Float32Array, tokens: number, dtype?: DType): Float32Array | null;
  /**
   * The same for the tokens of a whole flush at once, off the event loop (the native kernels); null when the model
   * cannot (the router then calls shared() per request).
   */
  sharedBatch?(layer: number, hidden: Float32Array, tokens: number, dtype?: DType): Promise<Float32Array> | null;
  /**
   * Makes the layer's shared expert ready for shared() / sharedBatch() (a checkpoint read the first time); absent
   * when the model holds it already. The router awaits it in a flush that computes the shared expert itself.
   */
  loadShared?(layer: number): Promise<void>;
  /** Whether the model has shared experts (then the router decodes hidden even for explicit assignments). */
  readonly hasShared: boolean;
  /**
   * The shared expert as routed-expert-shaped slices (packages/moe sharedSlices): a plan that places them has the
   * workers run the shared expert as expert ids [experts, experts + sharedSlices); 0 or absent = it cannot.
   */
  readonly sharedSlices?: number;
  /**
   * The per-token weight of the shared expert's slices when the workers run them: Qwen2-MoE's sigmoid
   * shared-expert gate [tokens], or null for weight 1 (DeepSeek-V3). `hidden` is asked for only where a gate needs
   * it: widening a request's bf16 rows cost DeepSeek-V3's router ~3% of its event loop for a scale it does not have.
   * `dtype` as for shared().
   */
  sharedScale?(layer: number, hidden: () => Float32Array, tokens: number, dtype?: DType): Float32Array | null;
}
