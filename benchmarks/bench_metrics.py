"""Benchmark verification metrics against scikit-learn and explicit pair enumeration.

Cases
-----
* ``roc+eer n=...``: ``roc_curve`` + ``equal_error_rate`` (two public calls) against
  ``sklearn.metrics.roc_curve(drop_intermediate=False)`` + ``scipy.optimize.brentq`` over
  ``np.interp`` (the EER definition). Both EERs are printed; they must agree to 1e-9.
* ``eer n=...``: ``equal_error_rate`` alone against the same scikit-learn + brentq pipeline.
* ``all-pairs N=...``: ``all_pairs_histogram`` (blockwise, never materialising the pairs)
  against materialising every pair score of the upper triangle and ``np.histogram`` per class.
  Throughput in pairs/s. The peer is skipped where its pair matrix would not fit.

Usage::

    python benchmarks/bench_metrics.py --device cpu
    python benchmarks/bench_metrics.py --device cuda --pairs-n 100000
    python benchmarks/bench_metrics.py --quick
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np
import torch
from scipy.optimize import brentq
from sklearn.metrics import roc_curve as sk_roc_curve

from metricface.metrics import all_pairs_histogram, equal_error_rate, roc_curve


def timed(fn, repeats: int, device: str = "cpu"):
    """Best wall time of ``repeats`` runs (after one warm-up when repeats > 1)."""
    out = None
    if repeats > 1:
        out = fn()
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def sklearn_eer(y, s):
    fpr, tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    return brentq(lambda x: 1 - x - np.interp(x, fpr, tpr), 0, 1, xtol=1e-14)


def ours_roc_eer(y, s):
    roc_curve(y, s)
    return equal_error_rate(y, s)


def peer_all_pairs(emb, labels, bins):
    e = torch.nn.functional.normalize(emb, dim=1)
    sim = e @ e.T
    upper = torch.ones_like(sim, dtype=torch.bool).triu_(1)
    same = (labels[:, None] == labels[None, :])[upper].cpu().numpy()
    scores = sim[upper].cpu().numpy()
    g, _ = np.histogram(scores[same], bins=bins, range=(-1, 1))
    i, _ = np.histogram(scores[~same], bins=bins, range=(-1, 1))
    return g, i


def row(case, ours, peer, note=""):
    ours_s = f"{ours:.3f} s"
    peer_s = "n/a" if peer is None else f"{peer:.3f} s"
    ratio = "n/a" if peer is None else f"{ours / peer:.3f}"
    print(f"| {case} | {ours_s} | {peer_s} | {ratio} | {note} |", flush=True)


def bench_scores(n: int, genuine_fraction: float, repeats: int, rng) -> None:
    y = rng.random(n) < genuine_fraction
    # scores rounded to 4 decimals: realistic ties between genuine and impostor scores
    s = np.round(rng.normal(size=n) + 2.0 * y, 4)
    t_peer, eer_peer = timed(lambda: sklearn_eer(y, s), repeats)
    t_ours, eer_ours = timed(lambda: ours_roc_eer(y, s), repeats)
    t_eer, _ = timed(lambda: equal_error_rate(y, s), repeats)
    diff = abs(eer_ours - eer_peer)
    row(f"roc+eer n={n:.0e}", t_ours, t_peer, f"EER {eer_ours:.10f} vs {eer_peer:.10f}")
    row(f"eer n={n:.0e}", t_eer, t_peer, f"speed-up {t_peer / t_eer:.1f}x, dEER={diff:.1e}")
    if diff > 1e-9:
        raise SystemExit(f"EER mismatch at n={n}: {eer_ours} vs {eer_peer}")


def bench_all_pairs(
    pairs_n: int, dim: int, bins: int, dev: str, quick: bool = False, peer_max: int = 20_000
) -> dict:
    """Time ``all_pairs_histogram`` on ``pairs_n`` random embeddings, and the peer if it fits.

    ``pairs_n // 20`` identities, ``randn`` embeddings of ``dim`` (seeded). One run, after a
    warm-up on 1,000 embeddings, when there are over 1e9 pairs (or ``quick``); else the best
    of two after a warm-up. The peer materialises the pair matrix and runs only up to
    ``peer_max`` embeddings. Returns seconds ``ours`` and ``peer`` (None when skipped), the
    number of ``pairs``, the ``mismatch`` of the two histograms and, on CUDA, ``peak_gib``:
    our peak memory beyond the inputs.
    """
    g = torch.Generator().manual_seed(0)
    n_ids = max(2, pairs_n // 20)
    labels = torch.randint(0, n_ids, (pairs_n,), generator=g).to(dev)
    emb = torch.randn(pairs_n, dim, generator=g).to(dev)
    n_pairs = pairs_n * (pairs_n - 1) // 2
    repeats = 1 if quick or n_pairs > 10**9 else 2
    if repeats == 1:  # timed() warms up only when repeating: first calls pay for CUDA/BLAS setup
        all_pairs_histogram(emb[:1000], labels[:1000], bins)
    base = 0
    if dev == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()  # the embeddings and labels themselves
        torch.cuda.reset_peak_memory_stats()
    t_ours, hist = timed(lambda: all_pairs_histogram(emb, labels, bins), repeats, dev)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if dev == "cuda" else None
    t_peer = mismatch = None
    if pairs_n <= peer_max:
        t_peer, (gp, ip) = timed(lambda: peer_all_pairs(emb, labels, bins), repeats, dev)
        mismatch = int(np.abs(gp - hist.genuine).sum() + np.abs(ip - hist.impostor).sum())
    return {
        "ours": t_ours,
        "peer": t_peer,
        "pairs": n_pairs,
        "mismatch": mismatch,
        "peak_gib": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--sizes", type=float, nargs="*", default=[1e5, 1e6, 1e7])
    parser.add_argument("--pairs-n", type=int, default=None, help="embeddings for all-pairs")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--bins", type=int, default=2000)
    parser.add_argument("--genuine-fraction", type=float, default=0.1)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    sizes = [1e4, 1e5] if args.quick else args.sizes
    pairs_n = args.pairs_n or (1000 if args.quick else 8000 if args.device == "cpu" else 100_000)

    print(f"torch {torch.__version__}, numpy {np.__version__}, threads {torch.get_num_threads()}")
    print("| case | metricface | peer | ratio (ours/peer) | note |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for n in (int(v) for v in sizes):
        bench_scores(n, args.genuine_fraction, 1 if (args.quick or n >= 10**7) else 3, rng)
        gc.collect()

    r = bench_all_pairs(pairs_n, args.dim, args.bins, args.device, quick=args.quick)
    if r["peer"] is not None:
        note_peer = (
            f", peer {r['pairs'] / r['peer']:.3g} pairs/s, {r['mismatch']} pairs binned "
            "differently (float32 rounding at edges)"
        )
    else:
        note_peer = ", peer skipped (pair matrix too large)"
    row(
        f"all-pairs N={pairs_n} D={args.dim} ({args.device})",
        r["ours"],
        r["peer"],
        f"{r['pairs'] / r['ours']:.3g} pairs/s{note_peer}",
    )
    if r["peak_gib"] is not None:
        print(f"metricface all-pairs peak CUDA memory beyond the inputs {r['peak_gib']:.2f} GiB")


if __name__ == "__main__":
    main()
