// SwiGLU of the GEMM1 epilogues: silu(g) * u = g / (1 + e^-g) * u. Included by sy_moe.cu and sy_moe_wgmma.cuh.
#pragma once

// The division is __fdividef (MUFU.RCP + FMUL), not '/': without fast-math, '/' is the IEEE division, compiled per
// element into a convergence region (FCHK, BSSY/BSYNC, a slow-path CALL) of about 18 instructions, and the regions
// serialise the elements' MUFU.EX2 -> MUFU.RCP latency chains. The 128-row GEMM1 epilogue does 64 of them per
// thread while its warpgroup issues no MMA. __fdividef's error (2 ulp of fp32; 0 once 1 + e^-g >= 2^126, where the
// exact quotient is below 2^-120 anyway) vanishes in the bf16 output.
__device__ __forceinline__ float sy_silu_mul(float g, float u) { return __fdividef(g, 1.f + __expf(-g)) * u; }
