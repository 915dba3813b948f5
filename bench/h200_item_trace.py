"""Where the persistent GEMMs' time goes, work item by work item (reads the dumps of a diagnostic build; no GPU).

The diagnostic build is `bench/results/logs/h200-item-trace.patch` applied to the library. With
SY_MOE_DIAG_TRACE=PATH, calls SY_MOE_DIAG_TRACE_CALL .. +2 of `sy_moe_forward` each write PATH.<call>.bin: for every
work item of the persistent wgmma GEMMs, consumer warp 0 of warpgroup 0 records the global timer when it takes the
item from the tile queue, when its last MMA has completed and when its epilogue is done, the clock cycles it spent
waiting for stages to land (summed over the item's k-steps), the SM, the rows its CTA holds, whether the item is a
single (kClusterM: no weight multicast), an absorbed tail, the CTA's rank and the k-steps. The build also has
SY_MOE_DIAG_NOEPI (bit 0 GEMM1, bit 1 GEMM2: skip the tile's epilogue; the output is then wrong).

File layout: two uint32 counts (GEMM1's items, GEMM2's), then 32 bytes per item: uint64 start, MMA end and end (ns),
and uint64 info = wait cycles (bits 0-31) | SM << 32 | rows << 40 (10 bits) | single << 50 | tail << 51 | rank << 52 |
k-steps << 53.

Per GEMM it prints the span, per-SM idle time, and per class of item (full 128-row pair tiles, absorbed tails, partial
halves, singles by rows): count, share of the summed item time, mean duration, its MMA and epilogue parts, mean wait,
and the MMA-bound duration at 1.5 GHz (1024 cycles per k-step for a 128-row CTA tile, 512 when one warpgroup holds
rows) against the measured one.

Usage: python3 bench/h200_item_trace.py DUMP.bin [DUMP.bin ...]
"""

import sys

import numpy as np

CLOCK_GHZ = 1.5  # for the MMA-bound reference only; the SM clock under load is 1.4-1.6 GHz


def load(path):
    """(GEMM1 items, GEMM2 items) as uint64 arrays of shape (n, 4)."""
    raw = open(path, "rb").read()
    n1, n2 = np.frombuffer(raw[:8], np.uint32)
    items = np.frombuffer(raw[8:], np.uint64).reshape(-1, 4)
    return items[:n1], items[n1 : n1 + n2]


def fields(items):
    start, mma_end, end = (items[:, i].astype(np.int64) for i in range(3))
    info = items[:, 3]
    bits = lambda shift, width: ((info >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)
    tail = bits(51, 1).astype(bool)
    rows = bits(40, 10)
    # rank 1 of a pair tile records rows up to its expert's end: a CTA holds at most 128 rows past an absorbed tail
    rows = np.where(tail, rows, np.minimum(rows, 128))
    return dict(start=start, mma_end=mma_end, end=end, wait=bits(0, 32), sm=bits(32, 8), rows=rows,
                single=bits(50, 1).astype(bool), tail=tail, ksteps=bits(53, 11))


def report(items, name):
    f = fields(items)
    t0, t1 = f["start"].min(), f["end"].max()
    dur = f["end"] - f["start"]
    print(f"== {name}: {len(items)} items, span {(t1 - t0) / 1e3:.0f} us, summed item time / 132 SMs "
          f"{dur.sum() / 132 / 1e3:.0f} us")
    busy = np.bincount(f["sm"], weights=dur, minlength=132)
    first = np.full(132, np.inf)
    last = np.zeros(132)
    np.minimum.at(first, f["sm"], f["start"])
    np.maximum.at(last, f["sm"], f["end"])
    seen = np.isfinite(first)
    print(f"   per SM: first item {np.mean(first[seen] - t0) / 1e3:.1f} us after the first SM's, last item done "
          f"{np.mean(t1 - last[seen]) / 1e3:.1f} us before the end (max {np.max(t1 - last[seen]) / 1e3:.1f}), gaps "
          f"between items {np.mean((last - first)[seen] - busy[seen]) / 1e3:.1f} us")
    single, tail, rows = f["single"], f["tail"], f["rows"]
    classes = {
        "pair, 128 rows": ~single & ~tail & (rows == 128),
        "pair, absorbed tail": ~single & tail,
        "pair, 65-127 rows": ~single & ~tail & (rows > 64) & (rows < 128),
        "pair, <= 64 rows": ~single & (rows <= 64),
        "single, 65-128 rows": single & ~tail & (rows > 64),
        "single, <= 64 rows": single & (rows <= 64),
    }
    bound = f["ksteps"] * np.where(rows > 64, 1024, 512) / CLOCK_GHZ  # ns
    print(f"   {'class':20s} {'items':>6s} {'rows':>6s} {'share':>6s} {'us':>7s} {'mma':>7s} {'epi':>5s} "
          f"{'wait kcyc':>9s} {'bound us':>8s} {'bound/us':>8s}")
    for label, m in classes.items():
        if not m.any():
            continue
        print(f"   {label:20s} {m.sum():6d} {rows[m].mean():6.1f} {dur[m].sum() / dur.sum() * 100:5.1f}% "
              f"{dur[m].mean() / 1e3:7.1f} {(f['mma_end'] - f['start'])[m].mean() / 1e3:7.1f} "
              f"{(f['end'] - f['mma_end'])[m].mean() / 1e3:5.2f} {f['wait'][m].mean() / 1e3:9.1f} "
              f"{bound[m].mean() / 1e3:8.1f} {bound[m].sum() / dur[m].sum() * 100:7.1f}%")
    print(f"   MMA-bound time per SM {bound.sum() / 132 / 1e3:.0f} us against the span {(t1 - t0) / 1e3:.0f} us")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for path in sys.argv[1:]:
        g1, g2 = load(path)
        report(g1, f"{path} GEMM1")
        report(g2, f"{path} GEMM2")
