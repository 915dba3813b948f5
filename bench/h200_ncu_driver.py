"""A minimal caller of sy_moe_forward for Nsight Compute (bench/h200_ncu.sh): one cell, a few calls, no timing.
Same shapes, weights and routing inputs as bench/h200_moe.py (same seed), so the kernels see the same work.
Usage: python3 bench/h200_ncu_driver.py path/to/libsy_moe.so SHAPE T [CALLS]"""

import ctypes
import sys

import torch

from sy_moe_abi import SHAPES, Args, Cfg, load

argv = sys.argv
lib = load(argv[1])
name, T = argv[2], int(argv[3])
calls = int(argv[4]) if len(argv) > 4 else 5
s = SHAPES[name]
d, f, E, k = s["d"], s["f"], s["E"], s["k"]
dev = "cuda"
torch.manual_seed(1234)
w13 = torch.randn(E, 2 * f, d, device=dev, dtype=torch.bfloat16) * (d ** -0.5)
w2 = torch.randn(E, d, f, device=dev, dtype=torch.bfloat16) * (f ** -0.5)
bias = (torch.randn(E, device=dev) * 0.1) if s["score"] == 1 else None
cfg = Cfg(E, k, d, f, s["score"], 1, s["ng"], s["tg"], s["scale"])
x = torch.randn(T, d, device=dev, dtype=torch.bfloat16)
logits = torch.randn(T, E, device=dev, dtype=torch.float32)
out = torch.empty(T, d, device=dev, dtype=torch.bfloat16)
ids_out = torch.empty(T, k, device=dev, dtype=torch.int32)
w_out = torch.empty(T, k, device=dev, dtype=torch.float32)
wsb = ctypes.c_size_t()
assert lib.sy_moe_workspace_size(ctypes.byref(cfg), T, ctypes.byref(wsb)) == 0
ws = torch.empty(wsb.value, device=dev, dtype=torch.uint8)
args = Args(x.data_ptr(), logits.data_ptr(), bias.data_ptr() if bias is not None else None, None, None,
            w13.data_ptr(), w2.data_ptr(), None, out.data_ptr(), ids_out.data_ptr(), w_out.data_ptr())
stream = torch.cuda.current_stream().cuda_stream
for _ in range(calls):
    if lib.sy_moe_forward(ctypes.byref(cfg), T, ctypes.byref(args), ws.data_ptr(), wsb.value, stream):
        raise SystemExit(lib.sy_moe_last_error().decode())
torch.cuda.synchronize()
print(f"{name} T={T}: {calls} calls done, out finite: {bool(torch.isfinite(out.float()).all())}")
