"""The GEMM ceiling of bench/h200_moe.py (cuBLAS bf16 8192^3, random inputs) a few times, for Nsight Compute: its
kernel name (tile and cluster shape), L2 and DRAM bytes per FLOP, beside the MoE GEMMs' (bench/h200_dram.sh).
With E M K N: instead the balanced-expert anchor of bench/h200_anchor.py, torch.bmm of [E, M, K] by K-major weights
[E, N, K]^T (cuBLAS strided-batched), e.g. 8 256 4096 28672 for Mixtral T=1024's GEMM1.
Usage: ncu --metrics ... python3 bench/h200_ncu_ceiling.py [E M K N]"""

import sys

import torch

if len(sys.argv) == 5:
    E, M, K, N = (int(v) for v in sys.argv[1:])
    a = torch.randn(E, M, K, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(E, N, K, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    run = lambda: torch.bmm(a, b)  # noqa: E731
else:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    run = lambda: a @ b  # noqa: E731
for _ in range(4):
    c = run()
torch.cuda.synchronize()
print("ceiling GEMM done:", tuple(c.shape))
