"""The GEMM ceiling of bench/h200_moe.py (cuBLAS bf16 8192^3, random inputs) a few times, for Nsight Compute: its
kernel name (tile and cluster shape), L2 and DRAM bytes per FLOP, beside the MoE GEMMs' (bench/h200_dram.sh).
Usage: ncu --metrics ... python3 bench/h200_ncu_ceiling.py"""

import torch

a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
for _ in range(4):
    c = a @ b
torch.cuda.synchronize()
print("ceiling GEMM done:", tuple(c.shape))
