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


# DeepSeek-V3's correction bias scale in every committed run (model_weights)
DEFAULT_BIAS_SCALE = 0.1


def model_weights(s, dev="cuda", bias_scale=DEFAULT_BIAS_SCALE):
    """A model shape's expert weights (w13 [E, 2f, d], w2 [E, d, f], bf16, ~N(0, 1/fan_in)), DeepSeek-V3's
    correction bias (or None) and its Cfg, drawn in this order under seed 1234: the benchmarks' common inputs.
    The bias is randn * bias_scale; the default 0.1 (every committed run) skews the experts' loads hard (at T=8192
    ~33 of 256 idle, the busiest ~10x the mean: bench/results/moe-tile-model.txt), 0 leaves them as even as the
    random logits make them, closer to a trained model, whose bias is there to balance them."""
    import torch

    d, f, E, k = s["d"], s["f"], s["E"], s["k"]
    torch.manual_seed(1234)
    w13 = torch.randn(E, 2 * f, d, device=dev, dtype=torch.bfloat16) * (d ** -0.5)
    w2 = torch.randn(E, d, f, device=dev, dtype=torch.bfloat16) * (f ** -0.5)
    bias = (torch.randn(E, device=dev) * bias_scale) if s["score"] == 1 else None
    return w13, w2, bias, Cfg(E, k, d, f, s["score"], 1, s["ng"], s["tg"], s["scale"])


def with_knobs(spec, fn):
    """fn() with the library knobs of spec ("KNOB=V ...", space-separated) set in the environment, then restored
    (the library reads them per call)."""
    import os

    kvs = [kv.split("=", 1) for kv in spec.split()]
    old = {k_: os.environ.get(k_) for k_, _ in kvs}
    os.environ.update(dict(kvs))
    try:
        return fn()
    finally:
        for k_, v_ in old.items():
            if v_ is None:
                del os.environ[k_]
            else:
                os.environ[k_] = v_


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
