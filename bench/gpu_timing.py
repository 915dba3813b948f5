"""Timing helpers shared by the H200 benchmarks (bench/h200_moe.py, bench/h200_anchor.py): windows of back-to-back
calls between two CUDA events, with the SM clock and board power sampled while a window runs."""

import statistics

import torch

SAMPLES = None  # when a list: timeit appends (SM clock MHz, power W) sampled while each window's calls run


def sample_clock():
    try:
        return torch.cuda.clock_rate(), round(torch.cuda.power_draw() / 1000.0, 1)
    except Exception:  # no NVML binding on this machine: no samples
        return None


def timeit(fn, target_ms=30.0, batches=5):
    """Median per-call time (ms) over batches of back-to-back calls between two events."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    fn()
    e.record()
    torch.cuda.synchronize()
    one = max(s.elapsed_time(e), 1e-3)
    n = max(1, min(200, int(target_ms / one)))
    res = []
    for _ in range(batches):
        s.record()
        for _ in range(n):
            fn()
        e.record()
        if SAMPLES is not None:
            cs = sample_clock()  # the calls are queued; the GPU is still running this window
            if cs:
                SAMPLES.append(cs)
        torch.cuda.synchronize()
        res.append(s.elapsed_time(e) / n)
    return statistics.median(res)


def sampled(clocks, key, fn):
    """Runs fn with clock/power sampling on; the samples go to clocks[key] (a dict of lists)."""
    global SAMPLES
    SAMPLES = []
    try:
        return fn()
    finally:
        clocks.setdefault(key, []).extend(SAMPLES)
        SAMPLES = None


def graph_of(fn):
    """Captures fn (which launches on the current stream) into a CUDA graph and returns the graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    torch.cuda.synchronize()
    return g
