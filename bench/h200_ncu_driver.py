"""A minimal caller of sy_moe_forward for Nsight Compute (bench/h200_ncu.sh): one cell, a few calls, no timing.
Same shapes, weights and routing inputs as bench/h200_moe.py (same seed), so the kernels see the same work.
Usage: python3 bench/h200_ncu_driver.py path/to/libsy_moe.so SHAPE T [CALLS]"""

import ctypes
import sys

import torch

from sy_moe_abi import SHAPES, Cfg, layer_call, load

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
c = layer_call(lib, cfg, T, w13, w2, bias, dev)
out, ws, wsb, args = c.out, c.ws, c.wsb, c.args
stream = torch.cuda.current_stream().cuda_stream
for _ in range(calls):
    if lib.sy_moe_forward(ctypes.byref(cfg), T, ctypes.byref(args), ws.data_ptr(), wsb.value, stream):
        raise SystemExit(lib.sy_moe_last_error().decode())
torch.cuda.synchronize()
print(f"{name} T={T}: {calls} calls done, out finite: {bool(torch.isfinite(out.float()).all())}")
