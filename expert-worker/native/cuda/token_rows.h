// Deduplicated batches on the device (ExpertBatch.token_rows / combine; expert-worker/src/token-rows.ts has the
// host version). The router sends each distinct token once; the worker's GPU expands them to one row per
// (token, expert) and, for `combine`, sums each token's weighted rows back into one fp32 row. So the PCIe copies and
// the host carry the U distinct tokens, not the N = U x (experts per token here) rows: at DeepSeek-V3 on one worker
// 15 tokens instead of 136 rows of 14 KB, each way, per flush.
#ifndef SY_TOKEN_ROWS_H
#define SY_TOKEN_ROWS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// dst row r = src row rows[r], r in [0, n); rows of row_bytes bytes (a multiple of 16; src and dst 16-byte aligned).
// Asynchronous on `stream`. Returns 0, or nonzero for bad arguments / a launch error (sy_token_rows_last_error()).
int sy_gather_rows(const void* src, const int32_t* rows, int32_t n, int32_t row_bytes, void* dst, void* stream);

// out[t] = sum over i in [offsets[t], offsets[t+1]) of weights[order[i]] * x[order[i]], t in [0, u), as fp32 [u, d].
// x: bf16 [n, d], the backend's rows. order lists each token's rows in ascending row order, so the sum adds in row
// order. Each step is computed in double and rounded to fp32, what the host sum (and JavaScript's `acc += w * x`)
// does, so both agree bit for bit. as_f16 = 1 rounds each row element to fp16 first: the rows as a FLOAT16 batch
// hands them back. weights may be NULL (1).
int sy_sum_rows_by_token(const uint16_t* x, int32_t d, const int32_t* offsets, const int32_t* order,
                         const float* weights, int32_t u, int32_t as_f16, float* out, void* stream);

const char* sy_token_rows_last_error(void);

// Tests only: launches a kernel that writes through a bad address on `stream` (the device then holds the sticky
// cudaErrorIllegalAddress a real fault leaves). Returns nonzero if the launch itself failed.
int sy_fault_for_tests(void* stream);

#ifdef __cplusplus
}
#endif
#endif
