"""The CUDA worker's library call at DeepSeek-V3's full size, as the end to end runs make it, timed on its own: how
close does one worker batch come to streaming its active experts' weights at the copy ceiling?

The worker (expert-worker/native/cuda/addon_cuda.cc) calls sy_moe_forward with the GPU cache's slots as the experts
(num_experts = slots, top_k = 1): each row is one (token, expert) pair, already routed, its slot in topk_ids, rows
grouped by slot. Here: the slots of two DeepSeek-V3 layers plus their shared-expert slices (--slots, default 514),
random bf16 weights; a batch of n tokens routed by DeepSeek-V3's gate (sigmoid, correction bias randn * 0.1, 8
groups keep 4, top-8) to layer 0's experts, plus one row per token for the shared slice (slot 512). For n tokens
(--tokens, default 8,22,44,88,176; 22 is the mean flush of the 05:02 run), the median time of back-to-back calls
(CUDA events), the active experts, their weight bytes and the rate that makes, against a device copy timed in the
same run.

Usage: python3 bench/h200_worker_batch.py path/to/libsy_moe.so [--slots 514] [--tokens 8,22,44] [--calls 40]"""

import ctypes
import statistics
import sys

import torch

from sy_moe_abi import Args, Cfg, load


def opt(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


lib = load(sys.argv[1])
SLOTS = int(opt("--slots", "514"))
TOKENS = [int(t) for t in opt("--tokens", "8,22,44,88,176").split(",")]
CALLS = int(opt("--calls", "40"))
d, f, E = 7168, 2048, 256
dev = "cuda"
torch.manual_seed(1)
w13 = torch.randn(SLOTS, 2 * f, d, device=dev, dtype=torch.bfloat16).mul_(d ** -0.5)
w2 = torch.randn(SLOTS, d, f, device=dev, dtype=torch.bfloat16).mul_(f ** -0.5)
bias = torch.randn(E, device=dev) * 0.1
expert_bytes = 3 * d * f * 2


def events_ms(fn, calls):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(calls):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


src = torch.empty(4 << 30, dtype=torch.uint8, device=dev)
dst = torch.empty_like(src)
copy_ms = events_ms(lambda: dst.copy_(src), 10)
copy_tbs = 2 * src.numel() / copy_ms / 1e9
del src, dst
print(f"device {torch.cuda.get_device_name()}, slots {SLOTS}, copy ceiling (read + write) {copy_tbs:.2f} TB/s")


def route(n):
    """DeepSeek-V3's gate over random logits: expert ids [n, 8] of layer 0."""
    s = torch.sigmoid(torch.randn(n, E, device=dev))
    c = (s + bias).view(n, 8, E // 8)
    group = c.topk(2, dim=-1).values.sum(-1)
    keep = torch.zeros(n, 8, device=dev, dtype=torch.bool).scatter_(1, group.topk(4, dim=-1).indices, True)
    c = c.masked_fill(~keep[:, :, None], float("-inf")).view(n, E)
    return c.topk(8, dim=-1).indices


rows_out = []
for n in TOKENS:
    ids = route(n)
    slots = torch.cat([ids, torch.full((n, 1), 512 % SLOTS, device=dev, dtype=ids.dtype)], dim=1).reshape(-1)
    slots = slots.sort().values.to(torch.int32).contiguous()  # the worker's rows come grouped by expert
    R = slots.numel()
    x = torch.randn(R, d, device=dev, dtype=torch.bfloat16)
    w = torch.ones(R, device=dev, dtype=torch.float32)
    out = torch.empty(R, d, device=dev, dtype=torch.bfloat16)
    cfg = Cfg(SLOTS, 1, d, f, 0, 0, 0, 0, 1.0)
    wsb = ctypes.c_size_t()
    assert lib.sy_moe_workspace_size(ctypes.byref(cfg), R, ctypes.byref(wsb)) == 0
    ws = torch.empty(max(1, wsb.value), device=dev, dtype=torch.uint8)
    args = Args(x.data_ptr(), None, None, slots.data_ptr(), w.data_ptr(), w13.data_ptr(), w2.data_ptr(), None,
                out.data_ptr(), None, None)
    args.num_slots = SLOTS
    stream = torch.cuda.current_stream().cuda_stream

    def call():
        if lib.sy_moe_forward(ctypes.byref(cfg), R, ctypes.byref(args), ws.data_ptr(), wsb.value, stream):
            raise RuntimeError(lib.sy_moe_last_error().decode())

    ms = events_ms(call, CALLS)
    active = int(torch.unique(slots).numel())
    gb = active * expert_bytes / 1e9
    # the weights read once at the copy ceiling, counted as bench/h200_moe.py's floor counts them (the copy's read and
    # written bytes together over its time)
    floor_ms = gb / copy_tbs
    row = dict(tokens=n, rows=R, active_experts=active, weight_gb=round(gb, 3), ms=round(ms, 4),
               weight_tbs=round(gb / ms, 3), floor_ms=round(floor_ms, 4), pct_floor=round(floor_ms / ms, 3))
    rows_out.append(row)
    print(row)
