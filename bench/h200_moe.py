"""Whole-MoE-layer benchmark on one GPU: Switchyard's sy_moe kernels vs a torch._grouped_mm pipeline and a per-expert
cuBLAS loop, against a roofline floor from ceilings measured in the same run.

Each timed variant goes from hidden states + router logits to the combined output (routing, histogram/offsets,
gather, GEMM1 + SwiGLU, GEMM2 + routing weight, combine). Writes $OUT/h200-moe.json and $OUT/h200-moe.md.

Usage: python3 bench/h200_moe.py path/to/libsy_moe.so [--quick] [--shapes a,b] [--ts 16,1024] [--no-tune]
         [--no-loop] [--variants "SY_MOE_PDL=0;SY_MOE_EPI=1"] [--profile]
  --shapes/--ts   bench only these cells (iteration; the committed results are a full run)
  --no-tune       skip the engine/tile sweep (tune_ms); --no-loop skips the per-expert loop baseline
  --variants      also time ours with each library knob (environment variable) set, one at a time (variant_ms);
                  a variant may set several knobs together, space-separated ("SY_MOE_DYN=1 SY_MOE_PERSIST_MASK=2")
  --rounds N      time ours, the torch._grouped_mm pipeline and the variants in N interleaved rounds and report
                  each one's median (default 1). On the H200 the same setting measured up to ~14% apart depending on
                  where in the sequence it ran (clocks settle under sustained load), so comparisons use N >= 3.
                  The variants' order rotates by one each round; a no-op knob ("SY_MOE_NOP=0") among them is the
                  control that is timed the same way (ours is timed first with a longer window).
  --pair-order    alternate (default): at the compute-side cells, ours and the GEMM ceiling are timed back to back
                  in each round, ours first in even rounds and the ceiling first in odd ones, then the grouped_mm
                  pipeline. A series' clock depends on the series before it: in the first runs with this order a
                  cell's share of the floor differed by up to ~4 points between the rounds with ours first and those
                  with the ceiling first, so use an even --rounds (each goes first equally often). fixed: ours, the
                  pipeline, then the ceiling (the order until 2026-11-29 10:13 UTC), where the ceiling always
                  followed the pipeline, which draws less power, and ours the previous round's variants
                  (bench/results/h200-moe.md, "The ceiling and ours timed next to each other").
  --long-variants the variants timed in ours' windows (5 of 30 ms) instead of 3 of 15 ms
  --bias-scale S  DeepSeek-V3's random correction bias is randn * S (default 0.1, the committed runs' inputs, which
                  skew the experts' loads hard); another S is a different workload, named in the results' header
                  and json (bias_scale), not the goal cells
  --profile       per-kernel GPU times of ours (torch.profiler, CUPTI), printed per cell (kernels_us), and the
                  timeline of the profiled calls (each GPU activity's start and end). Slow (tens
                  of seconds a cell here), and with PDL a kernel's span includes its wait for the kernel before it.
                  --profile-calls N: profile N calls (default 5; the timeline only up to 5); --profile-warm-ms M:
                  about M ms of back-to-back calls first, so the profiled ones run at the sustained power limit.
Each compute-side cell (T >= 1024) also times the GEMM ceiling (the same 8192^3 bf16 matmul as at the start) in each
round, with the same windows as ours and next to it (--pair-order), and samples the SM clock and power while each
window runs (NVML through torch.cuda, where available): `peak_rounds_tflops`, `clocks_mhz` and `power_w` per timed
series, and `pct_floor_same_rounds`, the floor from the median of those ceilings. `floor_ms` / `pct_floor` stay as
before (the ceiling measured once at the start), so the two can be told apart: the GPU runs at lower clocks under
sustained load.
The routing share at T <= 128 is measured twice: back-to-back eager calls (includes host launch overhead when the
GPU work is shorter than it) and CUDA-graph replays of the same call (GPU time only; the layer is graph-capturable).
"""

import ctypes
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import gpu_timing
from gpu_timing import graph_of, timeit
from sy_moe_abi import DEFAULT_BIAS_SCALE, SHAPES as ABI_SHAPES, layer_call, load, model_weights, with_knobs

OUT = os.environ.get("OUT", ".")
dev = "cuda"
torch.backends.cuda.matmul.allow_tf32 = False


lib = load(sys.argv[1])
QUICK = "--quick" in sys.argv


def opt(name, default=None):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


ONLY_SHAPES = opt("--shapes")
ONLY_TS = opt("--ts")
NO_TUNE = "--no-tune" in sys.argv
NO_LOOP = "--no-loop" in sys.argv
VARIANTS = [v for v in (opt("--variants", "") or "").split(";") if v]
ROUNDS = int(opt("--rounds", "1"))
PAIR_ORDER = opt("--pair-order", "alternate")
if PAIR_ORDER not in ("alternate", "fixed"):
    sys.exit(f"--pair-order: alternate or fixed, got {PAIR_ORDER}")
# --long-variants: the variants in ours' windows (5 of 30 ms) instead of 3 of 15 ms. At the power limit a longer
# window settles at a lower clock, and more so for a setting that draws more power.
VARIANT_WINDOWS = dict(target_ms=30, batches=5) if "--long-variants" in sys.argv else dict(target_ms=15, batches=3)
PROFILE = "--profile" in sys.argv
PROFILE_CALLS = int(opt("--profile-calls", "5"))  # calls profiled (the timeline is printed up to 5)
PROFILE_WARM_MS = float(opt("--profile-warm-ms", "0"))  # back-to-back calls before them (kernel_profile)
BIAS_SCALE = float(opt("--bias-scale", str(DEFAULT_BIAS_SCALE)))
TRACE = os.environ.get("BENCH_TRACE") == "1"


def trace(msg):
    if TRACE:
        print(f"[{time.time() - T0:.1f}s] {msg}", flush=True)
ENGINE = int(os.environ.get("SY_MOE_ENGINE", "0"))  # default engine for the main timing (0 = library's choice)
lib.sy_moe_set_tuning(0, 0, ENGINE)
T0 = time.time()


print("torch", torch.__version__, "gpu", torch.cuda.get_device_name(0), flush=True)
a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
def gemm_ceiling_tflops():
    return 2 * 8192 ** 3 / (timeit(lambda: a @ b) * 1e-3) / 1e12


PEAK = gemm_ceiling_tflops()
xb = torch.empty(2 * 1024 ** 3, dtype=torch.uint8, device=dev)
yb = torch.empty_like(xb)
BW = 2 * xb.numel() / (timeit(lambda: yb.copy_(xb)) * 1e-3) / 1e12
del xb, yb  # a, b stay: the compute-side cells time the GEMM ceiling again in each round
print(f"ceilings: bf16 GEMM {PEAK:.0f} TFLOP/s, copy {BW:.2f} TB/s", flush=True)

SHAPES = dict(ABI_SHAPES)
TS = [16, 128] if QUICK else [16, 128, 1024, 8192]
if ONLY_TS:
    TS = [int(t) for t in ONLY_TS.split(",")]
if ONLY_SHAPES:
    SHAPES = {k: v for k, v in SHAPES.items() if k in ONLY_SHAPES.split(",")}


def timeline(prof, calls):
    """Prints the GPU activities of the profiled calls in start order (us from the first one's start): where the
    layer's time goes between kernels. With PDL a kernel starts while the one before it runs, so the ends matter."""
    evs = []
    for ev in prof.events():
        tr = getattr(ev, "time_range", None)
        if tr is None or "cuda" not in str(getattr(ev, "device_type", "")).lower():
            continue
        evs.append((tr.start, tr.end, ev.name.replace("(anonymous namespace)::", "").split("(")[0][-40:]))
    if not evs:
        return
    evs.sort()
    t0 = evs[0][0]
    print(f"timeline of {calls} calls: {len(evs)} activities, {evs[-1][1] - t0:.1f} us from first start to last end")
    for a, b, n in evs:
        print(f"   start {a - t0:9.1f}  end {b - t0:9.1f}  dur {b - a:8.1f}  {n}")


def kernel_profile(fn, calls=5, warm_ms=0.0):
    """Per-kernel GPU time (us per call) of fn, from CUPTI through torch.profiler. warm_ms > 0: first about that
    long of back-to-back calls, so that the profiled ones run in the sustained (power-limited) state the timed
    windows see, not right after the GPU idled."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    if warm_ms > 0:
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        for _ in range(max(1, int(warm_ms / max(s.elapsed_time(e), 1e-3)))):
            fn()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    if calls <= 5:
        timeline(prof, calls)
    out = {}
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None)
        if t is None:
            t = getattr(ev, "cuda_time_total", 0)
        if t > 0:
            name = ev.key.replace("(anonymous namespace)::", "").split("(")[0][-48:]
            out[name] = round(t / calls, 2)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def torch_route(logits, bias, s):
    """Routing in torch ops, same semantics as the kernels (renormalized top-k; DeepSeek-V3 group-limited)."""
    k = s["k"]
    if s["score"] == 0:
        p = torch.softmax(logits, -1)
        w, ids = torch.topk(p, k, dim=-1)
    else:
        sc = torch.sigmoid(logits)
        sel = sc + bias
        T, E = sel.shape
        g = sel.view(T, s["ng"], E // s["ng"]).topk(2, dim=-1).values.sum(-1)
        gi = g.topk(s["tg"], dim=-1).indices
        mask = torch.zeros_like(g).scatter_(1, gi, 1.0).repeat_interleave(E // s["ng"], dim=1)
        sel = sel.masked_fill(mask == 0, float("-inf"))
        ids = sel.topk(k, dim=-1).indices
        w = sc.gather(1, ids)
    w = w / w.sum(-1, keepdim=True) * s["scale"]
    return w, ids


rows = []


def write_results(final):
    """Writes $OUT/h200-moe.json and .md (after every cell too, so a run cut short still leaves its cells)."""
    if not rows:
        return
    sp = [r["speedup_vs_gmm"] for r in rows]
    summary = dict(median_speedup_vs_gmm=statistics.median(sp), min_speedup_vs_gmm=min(sp),
                   cells_slower_than_gmm=sum(1 for v in sp if v < 1.0), complete=final)
    res = dict(device=torch.cuda.get_device_name(0), torch=torch.__version__, peak_tflops=PEAK, bw_tbs=BW,
               date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), argv=sys.argv[2:], pair_order=PAIR_ORDER,
               bias_scale=BIAS_SCALE, summary=summary, rows=rows)
    with open(os.path.join(OUT, "h200-moe.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    lines = [f"# sy_moe whole-layer benchmark on {res['device']} ({res['date']})", "",
             f"Ceilings measured in the same run: bf16 GEMM {PEAK:.0f} TFLOP/s, copy {BW:.2f} TB/s. torch {torch.__version__}.",
             *(["", f"DeepSeek-V3's correction bias drawn as randn * {BIAS_SCALE} (--bias-scale), not the default "
                    f"{DEFAULT_BIAS_SCALE}: "
                    "a different workload from the goal cells."] if BIAS_SCALE != DEFAULT_BIAS_SCALE else []),
             "", "| shape | T | ours ms | torch._grouped_mm ms | loop ms | floor ms | % of floor | % of floor, ceiling "
                 "per round | speedup vs gmm | relerr | routing+combine ms (share), eager | same, CUDA graph |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rc = f"{r['route_combine_ms']:.4f} ({100 * r['route_share_eager']:.1f}%)" if r["route_combine_ms"] else "-"
        rg = (f"{r['route_combine_graph_ms']:.4f} of {r['layer_graph_ms']:.4f} ({100 * r['route_share_graph']:.1f}%)"
              if r["route_combine_graph_ms"] else "-")
        lp = f"{r['loop_ms']:.4f}" if r["loop_ms"] is not None else "-"
        pr = (f"{100 * r['pct_floor_same_rounds']:.1f}% ({statistics.median(r['peak_rounds_tflops']):.0f} TFLOP/s)"
              if r.get("pct_floor_same_rounds") else "-")
        lines.append(f"| {r['shape']} | {r['T']} | {r['ms']:.4f} | {r['torch_grouped_mm_ms']:.4f} | {lp} | "
                     f"{r['floor_ms']:.4f} | {100 * r['pct_floor']:.1f}% | {pr} | {r['speedup_vs_gmm']:.2f}x | "
                     f"{r['relerr']:.2e} | {rc} | {rg} |")
    lines += ["", "% of floor: the bf16 GEMM ceiling measured once at the start of the run. Ceiling per round "
                  "(compute-side cells): the same GEMM timed again in each round beside ours, with the same windows "
                  + ("and right before or after ours, in turn (--pair-order alternate), "
                     if PAIR_ORDER == "alternate" else "after the grouped_mm pipeline (--pair-order fixed), ")
                  + "and the floor from the median of those ceilings.",
              "", f"Median speedup vs torch._grouped_mm pipeline: {summary['median_speedup_vs_gmm']:.2f}x; "
                  f"min {summary['min_speedup_vs_gmm']:.2f}x; cells slower: {summary['cells_slower_than_gmm']}"
                  + ("" if final else " (INCOMPLETE RUN)")]
    with open(os.path.join(OUT, "h200-moe.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return lines


for name, s in SHAPES.items():
    d, f, E, k = s["d"], s["f"], s["E"], s["k"]
    w13, w2, bias, cfg = model_weights(s, dev, BIAS_SCALE)
    w13_kn = w13.transpose(1, 2)  # [E, d, 2f] logical (K, N) view for torch._grouped_mm
    w2_kn = w2.transpose(1, 2)
    for T in TS:
        c = layer_call(lib, cfg, T, w13, w2, bias, dev)
        x, logits, out, ids_out, w_out, ws, wsb, args = (c.x, c.logits, c.out, c.ids_out, c.w_out, c.ws, c.wsb,
                                                          c.args)
        stream = torch.cuda.current_stream().cuda_stream

        def ours(st=None):
            rc = lib.sy_moe_forward(ctypes.byref(cfg), T, ctypes.byref(args), ws.data_ptr(), wsb.value,
                                    stream if st is None else st)
            if rc:
                raise RuntimeError(lib.sy_moe_last_error().decode())

        def ours_cur():
            ours(torch.cuda.current_stream().cuda_stream)

        def gmm_layer():
            w, ids = torch_route(logits, bias, s)
            flat = ids.reshape(-1)
            order = torch.argsort(flat, stable=True)
            counts = torch.zeros(E, device=dev, dtype=torch.int32).index_add_(
                0, flat, torch.ones_like(flat, dtype=torch.int32))
            offs = torch.cumsum(counts, 0, dtype=torch.int32)
            tok = order // k
            xs = x[tok]
            h = torch._grouped_mm(xs, w13_kn, offs=offs)
            h = F.silu(h[:, :f]) * h[:, f:]
            y = torch._grouped_mm(h, w2_kn, offs=offs)
            y = y * w.reshape(-1)[order].unsqueeze(1).to(y.dtype)
            return torch.zeros(T, d, device=dev, dtype=torch.float32).index_add_(0, tok, y.float()).to(torch.bfloat16)

        def loop_layer():
            w, ids = torch_route(logits, bias, s)
            flat = ids.reshape(-1)
            order = torch.argsort(flat, stable=True)
            cl = torch.bincount(flat, minlength=E).tolist()  # host sync: the loop needs sizes on the host
            tok = order // k
            xs = x[tok]
            outs, st = [], 0
            for e in range(E):
                c = cl[e]
                if c == 0:
                    continue
                hh = F.linear(xs[st:st + c], w13[e])
                outs.append(F.linear(F.silu(hh[:, :f]) * hh[:, f:], w2[e]))
                st += c
            y = torch.cat(outs) * w.reshape(-1)[order].unsqueeze(1).to(torch.bfloat16)
            return torch.zeros(T, d, device=dev, dtype=torch.float32).index_add_(0, tok, y.float()).to(torch.bfloat16)

        # correctness: poison, run, compare with an fp32 reference that uses our routing decisions
        trace(f"{name} T={T}: first call")
        out.fill_(float("nan"))
        ours()
        torch.cuda.synchronize()
        trace("first call done")
        ref = torch.zeros(T, d, device=dev, dtype=torch.float32)
        ids_l, w_l = ids_out.long(), w_out
        xf = x.float()
        for e in torch.unique(ids_l).tolist():
            tt, jj = (ids_l == e).nonzero(as_tuple=True)
            hh = xf[tt] @ w13[e].float().t()
            hh = F.silu(hh[:, :f]) * hh[:, f:]
            ref.index_add_(0, tt, (hh @ w2[e].float().t()) * w_l[tt, jj].unsqueeze(1))
        relerr = ((out.float() - ref).norm() / ref.norm()).item()
        rw, rid = torch_route(logits, bias, s)
        route_agree = (rid.sort(-1).values == ids_l.sort(-1).values).all(-1).float().mean().item()
        g_out = gmm_layer()
        torch_relerr = ((g_out.float() - ref).norm() / ref.norm()).item()

        active = int(torch.unique(ids_l).numel())
        flops = 2 * T * k * 3 * d * f
        bytes_ = active * 3 * d * f * 2 + T * d * 2 * 2 + T * E * 4
        floor_ms = max(flops / (PEAK * 1e12), bytes_ / (BW * 1e12)) * 1e3

        trace("reference done")

        # ours, the grouped_mm pipeline and the variants, interleaved in ROUNDS rounds; medians
        per = {"ours": [], "gmm": [], **{v: [] for v in VARIANTS}}
        same_rounds = T >= 1024  # compute-side: the ceiling again in each round, and clock samples
        peaks, clocks = [], {}

        def sampled(key, fn):
            return gpu_timing.sampled(clocks, key, fn) if same_rounds else fn()

        def time_ours():
            per["ours"].append(sampled("ours", lambda: timeit(ours)))

        def time_ceiling():
            peaks.append(sampled("ceiling", gemm_ceiling_tflops))

        for r in range(ROUNDS):
            if same_rounds and PAIR_ORDER == "alternate":
                # ours and the ceiling back to back, in turn first: each series' clock depends on what ran before it
                # (see --pair-order), so the pair shares one state and neither always follows the same neighbour
                for fn in (time_ours, time_ceiling) if r % 2 == 0 else (time_ceiling, time_ours):
                    fn()
            else:
                time_ours()
            per["gmm"].append(sampled("gmm", lambda: timeit(gmm_layer)))
            if same_rounds and PAIR_ORDER == "fixed":
                time_ceiling()
            # the variants in an order rotated by one each round: a series timed right after a slow, low-power one
            # runs at a higher clock (measured 2026-11-29: up to +600 MHz), so a fixed order biases the comparison
            # between variants; rotated, each variant takes each place equally often over len(VARIANTS) rounds
            r = len(per["ours"]) - 1
            for v in VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)] if VARIANTS else []:
                per[v].append(sampled(v, lambda: with_knobs(v, lambda: timeit(ours, **VARIANT_WINDOWS))))
        t_ours, t_gmm = statistics.median(per["ours"]), statistics.median(per["gmm"])
        trace("ours, gmm and variants timed")
        t_loop = None if NO_LOOP else timeit(loop_layer, target_ms=20, batches=3)
        tune = {}
        if not NO_TUNE:
            for eng, bm in (("mma", 16), ("wgpersist", 64), ("wgpersist", 128), ("wg1tile", 64), ("wg1tile", 128),
                            ("wg1tile", 256)):
                lib.sy_moe_set_tuning(bm, 0, {"mma": -1, "wgpersist": 3, "wg1tile": 2}[eng])
                tune[f"{eng}{bm}"] = round(timeit(ours, target_ms=15, batches=3), 4)
            lib.sy_moe_set_tuning(0, 0, ENGINE)
        variant_ms = {v: round(statistics.median(per[v]), 4) for v in VARIANTS}
        rounds_ms = {kk: [round(t, 4) for t in ts] for kk, ts in per.items()} if ROUNDS > 1 else None
        route_ms = route_graph_ms = layer_graph_ms = None
        if T <= 128:
            layer_graph_ms = timeit(graph_of(ours_cur).replay)
            lib.sy_moe_debug_skip_gemm(1)
            route_ms = timeit(ours)
            route_graph_ms = timeit(graph_of(ours_cur).replay)
            lib.sy_moe_debug_skip_gemm(0)
        kernels = kernel_profile(ours, PROFILE_CALLS, PROFILE_WARM_MS) if PROFILE else None
        row = dict(shape=name, T=T, ms=t_ours, torch_grouped_mm_ms=t_gmm, loop_ms=t_loop, floor_ms=floor_ms,
                   relerr=relerr, torch_relerr=torch_relerr, route_agree=route_agree, active=active,
                   pct_floor=floor_ms / t_ours, speedup_vs_gmm=t_gmm / t_ours, route_combine_ms=route_ms,
                   layer_graph_ms=layer_graph_ms, route_combine_graph_ms=route_graph_ms,
                   route_share_graph=(route_graph_ms / layer_graph_ms) if route_graph_ms else None,
                   route_share_eager=(route_ms / t_ours) if route_ms else None,
                   tflops=flops / (t_ours * 1e-3) / 1e12, weight_tbs=active * 3 * d * f * 2 / (t_ours * 1e-3) / 1e12,
                   tune_ms=tune, variant_ms=variant_ms, rounds_ms=rounds_ms, kernels_us=kernels)
        if same_rounds:
            peak_r = statistics.median(peaks)
            floor_r = max(flops / (peak_r * 1e12), bytes_ / (BW * 1e12)) * 1e3
            row.update(peak_rounds_tflops=[round(p_, 1) for p_ in peaks], pct_floor_same_rounds=floor_r / t_ours,
                       clocks_mhz={kk: [c_[0] for c_ in v_] for kk, v_ in clocks.items()},
                       power_w={kk: [c_[1] for c_ in v_] for kk, v_ in clocks.items()})
        row["wall_s"] = round(time.time() - T0, 1)
        rows.append(row)
        print(json.dumps({kk: (round(v, 5) if isinstance(v, float) else v) for kk, v in row.items()}), flush=True)
        write_results(final=False)
        del ws
    del w13, w2, w13_kn, w2_kn
    torch.cuda.empty_cache()

lines = write_results(final=True)
print("\n".join(lines))
