// Switchyard grouped MoE expert compute on NVIDIA GPUs (bf16, sm_90a).
//
// One C API shared by the standalone test/bench drivers and the Node addon. A call runs one MoE layer's routed
// experts on one stream: routing (or pre-routed ids/weights), per-expert histogram and offsets, gather, GEMM1 with
// SwiGLU fused, GEMM2 with the routing weight fused, and the weighted combine. All metadata stays on the device;
// nothing synchronises with the host, so a call can be captured in a CUDA graph (one graph per token count).
#ifndef SY_MOE_H
#define SY_MOE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  SY_MOE_OK = 0,
  SY_MOE_ERR_INVALID = 1,   // a config field or argument is out of range (see sy_moe_last_error())
  SY_MOE_ERR_WORKSPACE = 2, // workspace too small
  SY_MOE_ERR_CUDA = 3,      // a CUDA call failed (see sy_moe_last_error())
} sy_moe_status;

typedef enum { SY_MOE_SCORE_SOFTMAX = 0, SY_MOE_SCORE_SIGMOID = 1 } sy_moe_score;

typedef struct {
  int32_t num_experts;   // E, 1..1024
  int32_t top_k;         // 1..16
  int32_t d_model;       // hidden size, multiple of 8
  int32_t d_ff;          // expert intermediate size, multiple of 8
  int32_t score;         // sy_moe_score
  int32_t renormalize;   // 1: divide the chosen weights by their sum (Mixtral, Qwen3, DeepSeek-V3)
  int32_t n_group;       // group-limited routing (DeepSeek-V3: 8); 0 or 1 = off. E % n_group == 0
  int32_t topk_group;    // groups kept (DeepSeek-V3: 4)
  float routed_scale;    // final multiplier on the weights (DeepSeek-V3: 2.5); 0 means 1
} sy_moe_config;

// Weights (bf16, row-major, nn.Linear layout [out, in]):
//   w13: per expert slot [2*d_ff, d_model] = concat(gate_proj.weight, up_proj.weight)
//   w2:  per expert slot [d_model, d_ff]   = down_proj.weight
// expert_slot (device, int32[E], may be NULL = identity) maps an expert id to its slot in w13/w2; -1 marks an
// expert that is not resident here: its assignments contribute nothing (the caller makes experts resident first).
typedef struct {
  const void* x;            // bf16 [T, d_model]
  const float* logits;      // fp32 [T, E] router logits, or NULL when topk_ids/topk_weights are given
  const float* bias;        // fp32 [E] score correction bias (sigmoid routing), or NULL
  const int32_t* topk_ids;  // int32 [T, top_k] pre-routed ids (used when logits is NULL)
  const float* topk_weights;// fp32 [T, top_k] pre-routed weights (used when logits is NULL)
  const void* w13;
  const void* w2;
  const int32_t* expert_slot;
  void* out;                // bf16 [T, d_model]
  int32_t* topk_ids_out;    // optional int32 [T, top_k]: the routing decisions made from logits
  float* topk_weights_out;  // optional fp32 [T, top_k]
  int32_t num_slots;        // slots held in w13/w2 (0 = num_experts); bounds the TMA descriptors
} sy_moe_args;

// Bytes of device workspace needed for up to max_tokens tokens.
int sy_moe_workspace_size(const sy_moe_config* cfg, int32_t max_tokens, size_t* bytes);

// Runs one layer for T tokens (T >= 0) on `stream` (a cudaStream_t). Asynchronous; returns after enqueueing.
int sy_moe_forward(const sy_moe_config* cfg, int32_t T, const sy_moe_args* args, void* workspace,
                   size_t workspace_bytes, void* stream);

// Routing only: logits -> ids/weights (for tests and for callers that route separately).
int sy_moe_route(const sy_moe_config* cfg, int32_t T, const float* logits, const float* bias, int32_t* ids,
                 float* weights, void* stream);

// Kernel-configuration override for benchmarks and tests: 0 = automatic; otherwise the token tile (16/32/64/128,
// 256 with wgmma only), GEMM2 split-K (>=1, mma.sync path only) and the GEMM engine (1 = wgmma/TMA, -1 = mma.sync).
// Process-wide; not thread-safe, meant for drivers.
void sy_moe_set_tuning(int32_t block_m, int32_t split_k, int32_t use_wgmma);

// Benchmark aid: 1 = skip both GEMMs (times routing + histogram + scatter + combine alone). Process-wide.
void sy_moe_debug_skip_gemm(int32_t skip);

// Test aid: how the last sy_moe_forward combined the k rows of each token: 0 = the combine kernel (fixed order, repeats
// bit for bit), 1 = bf16 reductions in GEMM2's epilogue, 2 = fp32 reductions + convert (the order of the adds varies
// between runs). Process-wide.
int32_t sy_moe_debug_last_combine(void);

// Message for the last error on this thread (names the offending field).
const char* sy_moe_last_error(void);

#ifdef __cplusplus
}
#endif
#endif
