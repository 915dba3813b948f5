"""The C ABI of libsy_moe.so (expert-worker/native/cuda/sy_moe.h) for the Python benchmarks, and the benchmark's
model shapes: one definition for bench/h200_moe.py and bench/h200_ncu_driver.py. The structures must match
sy_moe_config and sy_moe_args field for field."""

import ctypes


class Cfg(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int32) for n in
                ("num_experts", "top_k", "d_model", "d_ff", "score", "renormalize", "n_group", "topk_group")] + [
                   ("routed_scale", ctypes.c_float)]


class Args(ctypes.Structure):
    _fields_ = [(n, ctypes.c_void_p) for n in
                ("x", "logits", "bias", "topk_ids", "topk_weights", "w13", "w2", "expert_slot", "out",
                 "topk_ids_out", "topk_weights_out")] + [("num_slots", ctypes.c_int32)]


def load(path):
    """libsy_moe.so with the argument and result types of the calls the benchmarks make."""
    lib = ctypes.CDLL(path)
    lib.sy_moe_last_error.restype = ctypes.c_char_p
    lib.sy_moe_forward.argtypes = [ctypes.POINTER(Cfg), ctypes.c_int32, ctypes.POINTER(Args), ctypes.c_void_p,
                                   ctypes.c_size_t, ctypes.c_void_p]
    lib.sy_moe_workspace_size.argtypes = [ctypes.POINTER(Cfg), ctypes.c_int32, ctypes.POINTER(ctypes.c_size_t)]
    return lib


def layer_call(lib, cfg, T, w13, w2, bias, dev="cuda"):
    """One cell's routing inputs, outputs, workspace and sy_moe_args, made in the order both benchmarks rely on for
    the same random inputs under the same seed: hidden states x [T, d] then router logits [T, E]."""
    import types

    import torch

    E, k, d = cfg.num_experts, cfg.top_k, cfg.d_model
    c = types.SimpleNamespace()
    c.x = torch.randn(T, d, device=dev, dtype=torch.bfloat16)
    c.logits = torch.randn(T, E, device=dev, dtype=torch.float32)
    c.out = torch.empty(T, d, device=dev, dtype=torch.bfloat16)
    c.ids_out = torch.empty(T, k, device=dev, dtype=torch.int32)
    c.w_out = torch.empty(T, k, device=dev, dtype=torch.float32)
    c.wsb = ctypes.c_size_t()
    assert lib.sy_moe_workspace_size(ctypes.byref(cfg), T, ctypes.byref(c.wsb)) == 0
    c.ws = torch.empty(c.wsb.value, device=dev, dtype=torch.uint8)
    c.args = Args(c.x.data_ptr(), c.logits.data_ptr(), bias.data_ptr() if bias is not None else None, None, None,
                  w13.data_ptr(), w2.data_ptr(), None, c.out.data_ptr(), c.ids_out.data_ptr(), c.w_out.data_ptr())
    return c


# Hugging Face configs: hidden size, expert intermediate size, routed experts, top-k, score (0 softmax, 1 sigmoid),
# expert groups / groups kept, routed scaling factor.
SHAPES = {
    "mixtral-8x7b": dict(d=4096, f=14336, E=8, k=2, score=0, ng=0, tg=0, scale=1.0),
    "qwen3-30b-a3b": dict(d=2048, f=768, E=128, k=8, score=0, ng=0, tg=0, scale=1.0),
    "deepseek-v3": dict(d=7168, f=2048, E=256, k=8, score=1, ng=8, tg=4, scale=2.5),
}
