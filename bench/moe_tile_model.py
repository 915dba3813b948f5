"""How many GEMM tiles the benchmark's routing makes, against the rows they hold (no GPU needed).

The compute-side cells of bench/h200_moe.py route random logits: Mixtral and Qwen3 with softmax top-k, DeepSeek-V3
with sigmoid + a random correction bias (randn * 0.1) + group-limited top-k. This draws the same distributions with
numpy (not the same numbers: the benchmark uses torch's CUDA generator) and counts, per cell:

- rows per expert (mean, spread, extremes, experts with any rows);
- 128-row token tiles of the default tile list (an expert's last tile absorbs r <= 32 rows past a multiple of 128
  where d_ff >= 2048, the library's kAbsorbMinDff), against the rows / 128 a perfectly packed list would need: each
  tile streams its whole weight tile through L2, and the GEMMs are bound by L2 throughput at these cells, so this
  ratio is roughly the traffic (and time) they pay for uneven experts;
- the MMA rows issued (a last tile of <= 64 rows runs one consumer warpgroup; an absorbed tail adds 32 rows);
- CTA tiles under kClusterM (256-row tiles, two CTAs each), and with its singles paired (the library's default under
  kClusterM: an expert's last 256-row tile with <= 128 rows runs beside another expert's single on one cluster);
- the L2 bytes one k-step of GEMM1 loads over all its CTA tiles under paired kClusterM, against 128-row tiles without
  a cluster (48 KB each: 16 KB of activations, 32 KB of weights; a pair tile's CTA loads 16 + 16 KB, the weight half
  multicast, a single's 48 KB);
- the tile ratio if the absorption limit were 0, 32, 64 or 96 rows;
- under kClusterM, a balanced absorption not built yet: an expert of 256 P + r rows, 0 < r <= 64 P, spreads the r rows
  over its P pair tiles (<= 32 more rows per CTA, in the tail region) instead of a single or another pair tile. The
  CTA tiles that makes, and the singles whose expert also has pair tiles (such a single runs beside another expert's
  single, away from its own expert's tiles, and reads the expert's weights from DRAM again: DeepSeek-V3 T=8192's
  GEMM1 read ~1.3 GB less with the singles unpaired, h200-moe.md, session of 15:04 UTC), now and balanced.

Usage: python3 bench/moe_tile_model.py [seed]   (prints a table; bench/results/moe-tile-model.txt is its output)
"""

import sys

import numpy as np

SEED = int(sys.argv[1]) if len(sys.argv) > 1 else 1234
CELLS = [  # name, T, E, k, score (0 softmax, 1 sigmoid + groups), n_group, topk_group, d_ff[, bias scale]
    ("mixtral-8x7b T=1024", 1024, 8, 2, 0, 0, 0, 14336),
    ("mixtral-8x7b T=8192", 8192, 8, 2, 0, 0, 0, 14336),
    ("qwen3-30b-a3b T=1024", 1024, 128, 8, 0, 0, 0, 768),
    ("qwen3-30b-a3b T=8192", 8192, 128, 8, 0, 0, 0, 768),
    ("deepseek-v3 T=1024", 1024, 256, 8, 1, 8, 4, 2048),
    ("deepseek-v3 T=8192", 8192, 256, 8, 1, 8, 4, 2048),
    # not goal cells: DeepSeek-V3 with no correction bias (h200_moe.py --bias-scale 0), the loads as even as the
    # random logits make them, as a trained model's bias is meant to keep them
    ("deepseek-v3 T=1024, bias 0", 1024, 256, 8, 1, 8, 4, 2048, 0.0),
    ("deepseek-v3 T=8192, bias 0", 8192, 256, 8, 1, 8, 4, 2048, 0.0),
]
ABSORB_MIN_DFF, ABSORB = 2048, 32


def route_counts(rng, T, E, k, score, ng, tg, bias_scale=0.1):
    """Rows per expert after routing T tokens of random logits (the benchmark's routing semantics)."""
    logits = rng.standard_normal((T, E), dtype=np.float32)
    if score == 0:
        sel = logits  # softmax is monotone: top-k of the logits
    else:
        bias = rng.standard_normal(E).astype(np.float32) * bias_scale
        sel = 1 / (1 + np.exp(-logits)) + bias
        G = E // ng
        group = np.sort(sel.reshape(T, ng, G), axis=2)[:, :, -2:].sum(2)  # sum of each group's best two
        keep = np.argsort(-group, axis=1)[:, :tg]
        mask = np.zeros((T, ng), bool)
        np.put_along_axis(mask, keep, True, 1)
        sel = np.where(np.repeat(mask, G, axis=1), sel, -np.inf)
    ids = np.argpartition(-sel, k - 1, axis=1)[:, :k]
    return np.bincount(ids.ravel(), minlength=E)


def tile_counts(counts, absorb):
    """(128-row tiles, MMA rows issued, kClusterM CTA tiles) of a tile list with this absorption limit."""
    tiles = mma = pair_ctas = 0
    for c in (int(x) for x in counts if x > 0):
        q, r = divmod(c, 128)
        if absorb and q >= 1 and r <= absorb:
            tiles += q
            mma += q * 128 + (32 if r else 0)
        else:
            tiles += q + (1 if r else 0)
            mma += q * 128 + (0 if r == 0 else 64 if r <= 64 else 128)
        q2, r2 = divmod(c, 256)
        pair_ctas += 2 * (q2 if absorb and q2 >= 1 and r2 <= absorb else q2 + (1 if r2 else 0))
    return tiles, mma, pair_ctas


def paired_singles(counts, absorb):
    """(CTA tiles, GEMM1 L2 KB per k-step) under kClusterM with paired singles, the list built as the library's scan
    does (expert_tiles / expert_single over 256-row tiles)."""
    pair_tiles = singles = 0
    for c in (int(x) for x in counts if x > 0):
        q2, r2 = divmod(c, 256)
        mt = q2 if absorb and q2 >= 1 and r2 <= absorb else q2 + (1 if r2 else 0)
        single = 1 if c - (mt - 1) * 256 <= 128 else 0
        pair_tiles += mt - single
        singles += single
    return 2 * pair_tiles + 2 * ((singles + 1) // 2), pair_tiles * 2 * 32 + singles * 48


def balanced_absorb(counts):
    """kClusterM CTA tiles and singles-with-pair-tiles, (now, balanced): now as paired_singles (absorb 32 into the
    last 256-row tile); balanced: P pair tiles take r <= 64 P remainder rows between them."""
    out = []
    for balanced in (False, True):
        ctas = singles = with_pairs = 0
        for c in (int(x) for x in counts if x > 0):
            p, r = divmod(c, 256)
            if balanced:
                n_p, s = (p, 0) if r == 0 or (p >= 1 and r <= 64 * p) else (p, 1) if r <= 128 else (p + 1, 0)
            else:
                mt = p if p >= 1 and 0 < r <= ABSORB else p + (1 if r else 0)
                s = 1 if c - (mt - 1) * 256 <= 128 else 0
                n_p = mt - s
            ctas += 2 * n_p
            singles += s
            with_pairs += 1 if s and n_p > 0 else 0
        out.append((ctas + 2 * ((singles + 1) // 2), with_pairs))
    return out


def main():
    rng = np.random.default_rng(SEED)
    print(f"seed {SEED}; tiles and CTA tiles against rows / 128 (a perfectly packed list)")
    print("| cell | rows/expert mean (sd) min..max | experts with rows | 128-row tiles | MMA rows / rows | "
          "kClusterM CTA tiles | paired singles: CTA tiles, GEMM1 L2 bytes | absorb 0 / 32 / 64 / 96 | "
          "kClusterM balanced absorb: CTA tiles, singles with pair tiles (now -> balanced) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, T, E, k, score, ng, tg, dff, *bias_scale in CELLS:
        c = route_counts(rng, T, E, k, score, ng, tg, *bias_scale)
        rows = int(c.sum())
        packed = rows / 128
        absorb = ABSORB if dff >= ABSORB_MIN_DFF else 0
        tiles, mma, pairs = tile_counts(c, absorb)
        sweep = " / ".join(f"{tile_counts(c, a)[0] / packed:.3f}" for a in (0, 32, 64, 96))
        ps_ctas, ps_kb = paired_singles(c, absorb)
        bal = balanced_absorb(c)
        print(f"| {name} | {c.mean():.0f} ({c.std():.0f}) {c.min()}..{c.max()} | {np.count_nonzero(c)} of {E} | "
              f"{tiles} ({tiles / packed:.3f}x) | {mma / rows:.3f} | {pairs} ({pairs / packed:.3f}x) | "
              f"{ps_ctas} ({ps_ctas / packed:.3f}x), {ps_kb / (48 * tiles):.3f}x | {sweep} | "
              f"{bal[0][0]} -> {bal[1][0]} ({bal[1][0] / packed:.3f}x), {bal[0][1]} -> {bal[1][1]} |")


if __name__ == "__main__":
    main()
