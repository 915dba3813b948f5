"""A minimal caller of sy_moe_forward for Nsight Compute (bench/h200_ncu.sh): one cell, a few calls, no timing.
Same shapes, weights and routing inputs as bench/h200_moe.py (same seed), so the kernels see the same work.
Usage: python3 bench/h200_ncu_driver.py path/to/libsy_moe.so SHAPE T [CALLS]"""

import ctypes
import sys

import torch

from sy_moe_abi import SHAPES, layer_call, load, model_weights

argv = sys.argv
lib = load(argv[1])
name, T = argv[2], int(argv[3])
calls = int(argv[4]) if len(argv) > 4 else 5
s = SHAPES[name]
dev = "cuda"
w13, w2, bias, cfg = model_weights(s, dev)
c = layer_call(lib, cfg, T, w13, w2, bias, dev)
out, ws, wsb, args = c.out, c.ws, c.wsb, c.args
stream = torch.cuda.current_stream().cuda_stream
for _ in range(calls):
    if lib.sy_moe_forward(ctypes.byref(cfg), T, ctypes.byref(args), ws.data_ptr(), wsb.value, stream):
        raise SystemExit(lib.sy_moe_last_error().decode())
torch.cuda.synchronize()
print(f"{name} T={T}: {calls} calls done, out finite: {bool(torch.isfinite(out.float()).all())}")
