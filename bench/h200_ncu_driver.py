"""A minimal caller of sy_moe_forward for Nsight Compute (bench/h200_ncu.sh): one cell, a few calls, no timing.
Same shapes, weights and routing inputs as bench/h200_moe.py (same seed), so the kernels see the same work.
Usage: python3 bench/h200_ncu_driver.py path/to/libsy_moe.so SHAPE T [CALLS]"""

import ctypes
import sys

import torch

SHAPES = {
    "mixtral-8x7b": dict(d=4096, f=14336, E=8, k=2, score=0, ng=0, tg=0, scale=1.0),
    "qwen3-30b-a3b": dict(d=2048, f=768, E=128, k=8, score=0, ng=0, tg=0, scale=1.0),
    "deepseek-v3": dict(d=7168, f=2048, E=256, k=8, score=1, ng=8, tg=4, scale=2.5),
}


class Cfg(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int32) for n in
                ("num_experts", "top_k", "d_model", "d_ff", "score", "renormalize", "n_group", "topk_group")] + [
                   ("routed_scale", ctypes.c_float)]


class Args(ctypes.Structure):
    _fields_ = [(n, ctypes.c_void_p) for n in
                ("x", "logits", "bias", "topk_ids", "topk_weights", "w13", "w2", "expert_slot", "out",
                 "topk_ids_out", "topk_weights_out")] + [("num_slots", ctypes.c_int32)]


argv = sys.argv
lib = ctypes.CDLL(argv[1])
lib.sy_moe_last_error.restype = ctypes.c_char_p
lib.sy_moe_forward.argtypes = [ctypes.POINTER(Cfg), ctypes.c_int32, ctypes.POINTER(Args), ctypes.c_void_p,
                               ctypes.c_size_t, ctypes.c_void_p]
lib.sy_moe_workspace_size.argtypes = [ctypes.POINTER(Cfg), ctypes.c_int32, ctypes.POINTER(ctypes.c_size_t)]
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
