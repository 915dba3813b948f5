"""How much the data in the operands costs at the power limit: the layer with random hidden states against the same
layer with zero hidden states (same router logits, so the same routing, tiles and bytes), and the 8192^3 GEMM
ceiling with random operands against one zero operand, timed side by side in rotated rounds.

Why: every compute-side series runs at the H200's ~690 W limit, so the clock follows energy per call. The tensor
cores' energy depends on the operands' bits (KINDS.md: 894 TFLOP/s on zeros against 788 on random data), and our
GEMMs multiply padding rows that hold other experts' rows (the TMA path) where nothing is stored: ~11% of the MMA
rows at DeepSeek-V3 T=8192 (bench/results/moe-tile-model.txt, "MMA rows / rows"). The zero-x series bounds what
zeroing those rows could give: with x = 0 every GEMM1 and GEMM2 row is zero (h = silu(0) * 0 = 0).

Usage: python3 bench/h200_data_power.py path/to/libsy_moe.so [--cells deepseek-v3:8192,mixtral-8x7b:1024]
         [--rounds 4]
Prints per series the median ms, SM clock (MHz) and board power (W); writes $OUT/data-power.json.
"""

import ctypes
import json
import os
import statistics
import sys

import torch

import gpu_timing
from gpu_timing import timeit
from sy_moe_abi import SHAPES, Args, layer_call, load, model_weights


def arg(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


lib = load(sys.argv[1])
CELLS = [(c.split(":")[0], int(c.split(":")[1]))
         for c in arg("--cells", "deepseek-v3:8192,mixtral-8x7b:1024,qwen3-30b-a3b:8192").split(",")]
ROUNDS = int(arg("--rounds", "4"))
OUT = os.environ.get("OUT", ".")

a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
a0 = torch.zeros_like(a)
results = []
for name, T in CELLS:
    w13, w2, bias, cfg = model_weights(SHAPES[name])
    c = layer_call(lib, cfg, T, w13, w2, bias)
    x0 = torch.zeros_like(c.x)
    args0 = Args.from_buffer_copy(c.args)
    args0.x = x0.data_ptr()
    stream = torch.cuda.current_stream().cuda_stream

    def call(args):
        rc = lib.sy_moe_forward(ctypes.byref(cfg), T, ctypes.byref(args), c.ws.data_ptr(), c.wsb.value, stream)
        if rc:
            raise RuntimeError(lib.sy_moe_last_error().decode())

    # the zero-x layer's output must be zero (and the random one's finite): the two calls route alike
    call(args0)
    torch.cuda.synchronize()
    assert c.out.abs().max().item() == 0, "zero hidden states gave a nonzero output"
    call(c.args)
    torch.cuda.synchronize()
    assert torch.isfinite(c.out.float()).all().item()

    flops = 2 * T * cfg.top_k * 3 * cfg.d_model * cfg.d_ff
    series = {
        "ours, random x": lambda: call(c.args),
        "ours, zero x": lambda: call(args0),
        "ceiling, random": lambda: a @ b,
        "ceiling, a = 0": lambda: a0 @ b,
    }
    ms, clocks = {k: [] for k in series}, {}
    keys = list(series)
    for r in range(ROUNDS):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:  # rotated: each series follows each other one
            ms[key].append(gpu_timing.sampled(clocks, key, lambda: timeit(series[key])))
    row = {"cell": f"{name} T={T}", "rounds": ROUNDS}
    for key in keys:
        med = statistics.median(ms[key])
        cl = [s[0] for s in clocks.get(key, [])]
        pw = [s[1] for s in clocks.get(key, [])]
        tf = (flops if key.startswith("ours") else 2 * 8192 ** 3) / (med * 1e-3) / 1e12
        row[key] = dict(ms=med, all_ms=ms[key], tflops=tf, clock_mhz=statistics.median(cl) if cl else None,
                        power_w=statistics.median(pw) if pw else None)
        print(f"{name} T={T} {key:16s} {med:8.4f} ms  {tf:6.0f} TFLOP/s  clock {row[key]['clock_mhz']} MHz  "
              f"power {row[key]['power_w']} W  rounds {[round(v, 4) for v in ms[key]]}", flush=True)
    row["ours_zero_over_random"] = row["ours, random x"]["ms"] / row["ours, zero x"]["ms"]
    row["ceiling_zero_over_random"] = row["ceiling, random"]["ms"] / row["ceiling, a = 0"]["ms"]
    print(f"{name} T={T}: zero x {row['ours_zero_over_random']:.3f}x faster; ceiling with a = 0 "
          f"{row['ceiling_zero_over_random']:.3f}x faster", flush=True)
    results.append(row)
    del c, x0, w13, w2
    torch.cuda.empty_cache()

with open(os.path.join(OUT, "data-power.json"), "w") as fh:
    json.dump({"device": torch.cuda.get_device_name(0), "rows": results}, fh, indent=1)
