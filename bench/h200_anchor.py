"""What cuBLAS and torch._grouped_mm reach on the expert GEMMs of the compute-side cells with perfectly balanced
experts, beside ours, in the same rounds: an anchor for the issue's 75%-of-floor goal.

The layer's GEMMs with every expert given the same T*k/E rows and no routing, permute or combine:
  bmm   torch.bmm (cuBLAS strided-batched): x_e [E, M, d] @ w13[e]^T, then h_e [E, M, f] @ w2[e]^T
  gmm   torch._grouped_mm (CUTLASS grouped GEMM on sm_90) on the same rows, equal offsets
  gmm-skew  with --skew: torch._grouped_mm on the rows per expert that ours' routing gives the cell (its biased,
        uneven loads), so that CUTLASS and ours' GEMMs are compared on the same tile list's shape
  ours  the whole layer (routing, GEMMs, combine) from the benchmark's random logits: its experts are not balanced
  ours-gemms  ours minus the same call with the GEMMs skipped (sy_moe_debug_skip_gemm): the GEMMs' share
  ceiling  the 8192^3 bf16 matmul of bench/h200_moe.py
  ours+knobs  with --knobs "KNOB=V ...": ours with those library knobs set around each call (the library reads them
        per call), timed the same way as ours in the same rounds: an A/B with long windows
  base  with --base other/libsy_moe.so: ours from another build of the library (e.g. before a change), on the same
        inputs, for an A/B in the same rounds
Each series is timed in every round (order rotated by one each round, same windows), with the SM clock and power
sampled while its windows run. Percentages: the layer's GEMM FLOPs (2 T k 3 d f) over the time, against the median
ceiling of the same rounds. The cuBLAS / CUTLASS kernels the anchors ran are listed (torch.profiler).

A cell "dense:8192" is one expert of d=8192, f=4096 with top-1 routing: GEMM1 is then the 8192^3 ceiling GEMM (plus
SwiGLU), so it compares our GEMM kernels with cuBLAS where there are no tails, no imbalance and no weight re-reads.

Writes $OUT/h200-anchor.json and .md. Usage: python3 bench/h200_anchor.py path/to/libsy_moe.so
  [--cells mixtral-8x7b:1024,qwen3-30b-a3b:8192,deepseek-v3:8192] [--rounds 3] [--base other/libsy_moe.so]
  [--knobs "SY_MOE_CLUSTER=2"] [--skew]
"""

import ctypes
import json
import os
import statistics
import sys
import time

import torch

import gpu_timing
from gpu_timing import timeit
from sy_moe_abi import SHAPES as MODEL_SHAPES, Args, layer_call, load, model_weights, with_knobs

SHAPES = dict(MODEL_SHAPES, dense=dict(d=8192, f=4096, E=1, k=1, score=0, ng=0, tg=0, scale=1.0))

OUT = os.environ.get("OUT", ".")
dev = "cuda"
torch.backends.cuda.matmul.allow_tf32 = False


def opt(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


lib = load(sys.argv[1])
lib.sy_moe_set_tuning(0, 0, 0)
CELLS = [(c.split(":")[0], int(c.split(":")[1])) for c in
         opt("--cells", "mixtral-8x7b:1024,qwen3-30b-a3b:8192,deepseek-v3:8192,mixtral-8x7b:8192").split(",")]
ROUNDS = int(opt("--rounds", "3"))
BASE = opt("--base", None)
KNOBS = opt("--knobs", "") or ""
SKEW = "--skew" in sys.argv
base_lib = None
if BASE:
    base_lib = load(BASE)
    base_lib.sy_moe_set_tuning(0, 0, 0)
T0 = time.time()

a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)


def ceiling_ms():
    return timeit(lambda: a @ b)


CEIL_FLOPS = 2 * 8192 ** 3


def kernel_names(fn):
    """GPU kernels fn launches, with their time per call (us)."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
    out = {}
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if t > 0:
            out[ev.key.split("(")[0][-90:]] = round(t / 3, 1)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


rows = []
print("torch", torch.__version__, "gpu", torch.cuda.get_device_name(0), flush=True)
for name, T in CELLS:
    s = SHAPES[name]
    d, f, E, k = s["d"], s["f"], s["E"], s["k"]
    w13, w2, bias, cfg = model_weights(s, dev)  # the same weights and inputs as bench/h200_moe.py's cell
    c = layer_call(lib, cfg, T, w13, w2, bias, dev)
    stream = torch.cuda.current_stream().cuda_stream

    def ours():
        if lib.sy_moe_forward(ctypes.byref(cfg), T, ctypes.byref(c.args), c.ws.data_ptr(), c.wsb.value, stream):
            raise RuntimeError(lib.sy_moe_last_error().decode())

    def call_base(ws, args):
        if base_lib.sy_moe_forward(ctypes.byref(cfg), T, ctypes.byref(args), ws.data_ptr(), ws.numel(), stream):
            raise RuntimeError(base_lib.sy_moe_last_error().decode())

    def ours_no_gemm():
        lib.sy_moe_debug_skip_gemm(1)
        try:
            return timeit(ours)
        finally:
            lib.sy_moe_debug_skip_gemm(0)

    M = T * k // E  # rows per expert, balanced
    xe = torch.randn(E, M, d, device=dev, dtype=torch.bfloat16)
    he = torch.randn(E, M, f, device=dev, dtype=torch.bfloat16)
    w13t, w2t = w13.transpose(1, 2), w2.transpose(1, 2)  # [E, d, 2f], [E, f, d]: K-major weights, as ours reads them
    offs = torch.arange(1, E + 1, device=dev, dtype=torch.int32) * M
    xf, hf = xe.reshape(E * M, d), he.reshape(E * M, f)
    series = {
        "ceiling": ceiling_ms,
        "ours": lambda: timeit(ours),
        "ours-no-gemm": ours_no_gemm,
        "bmm1": lambda: timeit(lambda: torch.bmm(xe, w13t)),
        "bmm2": lambda: timeit(lambda: torch.bmm(he, w2t)),
        "gmm1": lambda: timeit(lambda: torch._grouped_mm(xf, w13t, offs=offs)),
        "gmm2": lambda: timeit(lambda: torch._grouped_mm(hf, w2t, offs=offs)),
    }
    if SKEW:
        ours()
        counts = torch.bincount(c.ids_out.reshape(-1).long(), minlength=E)
        offs_skew = torch.cumsum(counts, 0).to(torch.int32)
        xs_skew = torch.randn(T * k, d, device=dev, dtype=torch.bfloat16)
        hs_skew = torch.randn(T * k, f, device=dev, dtype=torch.bfloat16)
        series["gmm1s"] = lambda: timeit(lambda: torch._grouped_mm(xs_skew, w13t, offs=offs_skew))
        series["gmm2s"] = lambda: timeit(lambda: torch._grouped_mm(hs_skew, w2t, offs=offs_skew))
        print(f"skew: rows per expert max {int(counts.max())}, idle {int((counts == 0).sum())}", flush=True)
    if KNOBS:
        series["ours+knobs"] = lambda: with_knobs(KNOBS, lambda: timeit(ours))
    if base_lib is not None:
        wsb = ctypes.c_size_t()
        assert base_lib.sy_moe_workspace_size(ctypes.byref(cfg), T, ctypes.byref(wsb)) == 0
        base_ws = torch.empty(wsb.value, device=dev, dtype=torch.uint8)
        base_out = torch.empty_like(c.out)
        base_args = Args(*[getattr(c.args, n) for n, _ in Args._fields_])
        base_args.out = base_out.data_ptr()
        series["base"] = lambda: timeit(lambda: call_base(base_ws, base_args))
    # the anchors compute what ours does: check them once against fp32
    ref1 = torch.bmm(xe[:2].float(), w13t[:2].float())
    for key, y in (("bmm1", torch.bmm(xe, w13t)[:2]), ("gmm1", torch._grouped_mm(xf, w13t, offs=offs)[:2 * M])):
        err = ((y.float().reshape(ref1.shape) - ref1).norm() / ref1.norm()).item()
        assert err < 1e-2, f"{key} relerr {err}"
    per, clocks = {key: [] for key in series}, {}
    order = list(series)
    for r in range(ROUNDS):
        for key in order[r % len(order):] + order[:r % len(order)]:
            per[key].append(gpu_timing.sampled(clocks, key, series[key]))
    med = {key: statistics.median(v) for key, v in per.items()}
    flops = 2 * T * k * 3 * d * f
    peak = CEIL_FLOPS / (med["ceiling"] * 1e-3) / 1e12
    t = dict(ours=med["ours"], ours_gemms=med["ours"] - med["ours-no-gemm"], bmm=med["bmm1"] + med["bmm2"],
             gmm=med["gmm1"] + med["gmm2"], **({"base": med["base"]} if "base" in med else {}),
             **({"ours_knobs": med["ours+knobs"]} if "ours+knobs" in med else {}),
             **({"gmm_skew": med["gmm1s"] + med["gmm2s"]} if "gmm1s" in med else {}))
    pct = {key: flops / (v * 1e-3) / 1e12 / peak for key, v in t.items()}
    row = dict(shape=name, T=T, rows_per_expert=M, ceiling_tflops=round(peak, 1),
               ms={key: round(v, 4) for key, v in med.items()}, rounds_ms={key: [round(x, 4) for x in v]
                                                                        for key, v in per.items()},
               pct_of_ceiling={key: round(100 * v, 1) for key, v in pct.items()},
               clocks_mhz={key: [c_[0] for c_ in v] for key, v in clocks.items()},
               power_w={key: [c_[1] for c_ in v] for key, v in clocks.items()},
               kernels={"bmm1": kernel_names(lambda: torch.bmm(xe, w13t)),
                        "bmm2": kernel_names(lambda: torch.bmm(he, w2t)),
                        "gmm1": kernel_names(lambda: torch._grouped_mm(xf, w13t, offs=offs))},
               wall_s=round(time.time() - T0, 1))
    if base_lib is not None:
        # both builds on the same inputs: the outputs should agree closely (not bit for bit across a change)
        ours()
        call_base(base_ws, base_args)
        torch.cuda.synchronize()
        row["base_vs_ours_relerr"] = ((base_out.float() - c.out.float()).norm() / c.out.float().norm()).item()
        del base_ws, base_out
    rows.append(row)
    print(json.dumps(row), flush=True)
    del w13, w2, w13t, w2t, xe, he, xf, hf, c
    if SKEW:
        del xs_skew, hs_skew
    torch.cuda.empty_cache()

res = dict(device=torch.cuda.get_device_name(0), torch=torch.__version__,
           date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), argv=sys.argv[2:], rounds=ROUNDS, knobs=KNOBS,
           rows=rows)
with open(os.path.join(OUT, "h200-anchor.json"), "w") as fh:
    json.dump(res, fh, indent=1)


def clk(r, key):
    v = r["clocks_mhz"].get(key) or []
    return f"{statistics.median(v):.0f}" if v else "-"


lines = [f"# Balanced-expert anchors on {res['device']} ({res['date']}, {ROUNDS} rounds, medians)", "",
         "GEMM FLOPs of the layer over the time, % of the 8192^3 ceiling timed in the same rounds. bmm / gmm: both "
         "GEMMs with every expert given T*k/E rows (no routing, permute or combine); ours: the whole layer; ours "
         "GEMMs: ours minus ours with the GEMMs skipped. Clocks: median SM MHz while the series ran.", "",
         "| cell | rows/expert | ceiling TFLOP/s | ours ms (%) | ours GEMMs ms (%) | bmm ms (%) | grouped_mm ms (%) | "
         "MHz ceiling / ours / bmm1 / gmm1 | base ms (%) | ours+knobs ms (%) | grouped_mm, ours' loads ms (%) |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    ms, p = r["ms"], r["pct_of_ceiling"]
    cells = [f"{v:.4f} ({p[key]:.1f}%)" for key, v in (
        ("ours", ms["ours"]), ("ours_gemms", ms["ours"] - ms["ours-no-gemm"]), ("bmm", ms["bmm1"] + ms["bmm2"]),
        ("gmm", ms["gmm1"] + ms["gmm2"]))]
    lines.append(f"| {r['shape']} T={r['T']} | {r['rows_per_expert']} | {r['ceiling_tflops']:.0f} | "
                 + " | ".join(cells) + f" | {clk(r, 'ceiling')} / {clk(r, 'ours')} / {clk(r, 'bmm1')} / "
                 f"{clk(r, 'gmm1')} | "
                 + (f"{ms['base']:.4f} ({p['base']:.1f}%) |" if "base" in ms else "- |")
                 + (f" {ms['ours+knobs']:.4f} ({p['ours_knobs']:.1f}%) |" if "ours+knobs" in ms else " - |")
                 + (f" {ms['gmm1s'] + ms['gmm2s']:.4f} ({p['gmm_skew']:.1f}%) |" if "gmm1s" in ms else " - |"))
lines += ["", "Kernels (us per call):"]
for r in rows:
    for key, ks in r["kernels"].items():
        lines.append(f"- {r['shape']} T={r['T']} {key}: " + "; ".join(f"{n} {v}" for n, v in list(ks.items())[:2]))
with open(os.path.join(OUT, "h200-anchor.md"), "w") as fh:
    fh.write("\n".join(lines) + "\n")
print("\n".join(lines))
