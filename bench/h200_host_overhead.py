"""Host time of one eager sy_moe_forward call at the decode cells, and what it does to the routing share measured
from back-to-back eager calls (bench/h200_moe.py's "routing+combine ms (share), eager" column).

The routing part alone (GEMMs skipped: sy_moe_debug_skip_gemm) runs ~11 us on the GPU at Qwen3 T=16, less than the
host takes to issue it, so its eager figure is the host's time per call. This prints, per cell and per setting of
the library knobs given, side by side in rotated rounds (default: two no-op controls, SY_MOE_NOP=0 and =1, whose gap
is the host's noise; logs/h200-map-cache.patch read SY_MOE_MAP_CACHE=1 against =0, the 13:23 log):
  host_us        wall time per call while the host issues them without waiting (the GPU's queue never fills: 100
                 calls), for the whole layer and for the routing part
  eager_ms       event-timed back-to-back calls (gpu_timing.timeit), the benchmark's method, and the share
  graph_ms       the same from CUDA-graph replays (GPU time only)
and the cost of a trivial ctypes call into the library (the Python side of every call). Writes $OUT/host-overhead.json.

Usage: python3 bench/h200_host_overhead.py path/to/libsy_moe.so [--shapes a,b] [--ts 16] [--rounds 6]
         [--variants "SY_MOE_NOP=0;SY_MOE_NOP=1"]
"""

import ctypes
import json
import os
import statistics
import sys
import time

import torch

from gpu_timing import graph_of, timeit
from sy_moe_abi import SHAPES, layer_call, load, model_weights, with_knobs


def arg(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


lib = load(sys.argv[1])
SHAPE_NAMES = arg("--shapes", "qwen3-30b-a3b,deepseek-v3,mixtral-8x7b").split(",")
TS = [int(t) for t in arg("--ts", "16").split(",")]
ROUNDS = int(arg("--rounds", "6"))
VARIANTS = arg("--variants", "SY_MOE_NOP=0;SY_MOE_NOP=1").split(";")
OUT = os.environ.get("OUT", ".")


def host_us(fn, calls=100):
    """Wall time per call while the calls are only queued (synchronised before, not inside the window)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / calls * 1e6


noop_us = statistics.median(host_us(lambda: lib.sy_moe_debug_skip_gemm(0), 2000) for _ in range(5))
print(f"trivial ctypes call into the library: {noop_us:.2f} us")
rows = []
for name in SHAPE_NAMES:
    w13, w2, bias, cfg = model_weights(SHAPES[name])
    for T in TS:
        c = layer_call(lib, cfg, T, w13, w2, bias)

        def ours(c=c, T=T, cfg=cfg):
            rc = lib.sy_moe_forward(ctypes.byref(cfg), T, ctypes.byref(c.args), c.ws.data_ptr(), c.wsb.value,
                                    torch.cuda.current_stream().cuda_stream)
            if rc:
                raise RuntimeError(lib.sy_moe_last_error().decode())

        per = {v: {k: [] for k in ("host_layer_us", "host_route_us", "layer_ms", "route_ms")} for v in VARIANTS}
        for r in range(ROUNDS):
            for v in VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]:
                def measure(p=per[v]):
                    p["host_layer_us"].append(host_us(ours))
                    p["layer_ms"].append(timeit(ours, target_ms=15, batches=3))
                    lib.sy_moe_debug_skip_gemm(1)
                    try:
                        p["host_route_us"].append(host_us(ours))
                        p["route_ms"].append(timeit(ours, target_ms=15, batches=3))
                    finally:
                        lib.sy_moe_debug_skip_gemm(0)
                with_knobs(v, measure)
        for v in VARIANTS:
            med = {k: statistics.median(x) for k, x in per[v].items()}

            def graphs():
                lg = timeit(graph_of(ours).replay)
                lib.sy_moe_debug_skip_gemm(1)
                try:
                    return lg, timeit(graph_of(ours).replay)
                finally:
                    lib.sy_moe_debug_skip_gemm(0)
            lg, rg = with_knobs(v, graphs)
            row = dict(shape=name, T=T, variant=v, **{k: round(x, 4) for k, x in med.items()},
                       share_eager=round(med["route_ms"] / med["layer_ms"], 4), layer_graph_ms=round(lg, 4),
                       route_graph_ms=round(rg, 4), share_graph=round(rg / lg, 4))
            rows.append(row)
            print(f"{name} T={T} {v}: host us/call layer {med['host_layer_us']:.1f}, routing part "
                  f"{med['host_route_us']:.1f} | eager ms layer {med['layer_ms']:.4f}, routing {med['route_ms']:.4f} "
                  f"({100 * row['share_eager']:.1f}%) | graph ms layer {lg:.4f}, routing {rg:.4f} "
                  f"({100 * row['share_graph']:.1f}%)", flush=True)
with open(os.path.join(OUT, "host-overhead.json"), "w") as fh:
    json.dump(dict(device=torch.cuda.get_device_name(0), noop_ctypes_us=noop_us, rounds=ROUNDS, rows=rows), fh,
              indent=1)
