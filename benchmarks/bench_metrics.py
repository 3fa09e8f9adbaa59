"""Benchmark verification metrics against scikit-learn and explicit pair enumeration.

Inputs (``n`` scores, ``--genuine-fraction`` of them genuine, seeded):

* ``continuous``: cosine-like float32 scores as real embeddings give them, all distinct in
  practice: genuine ~ N(0.5, 0.15), impostor ~ N(0.05, 0.1), clipped to [-1, 1];
* ``tied``: N(2, 1) vs N(0, 1) rounded to 4 decimals (float64): ~1e5 distinct values, so at
  n = 1e7 every value repeats ~100 times (sorting such input is much cheaper).

Cases
-----
* ``eer <input> n=...``: ``equal_error_rate`` (``O(n)``, no sort) against
  ``sklearn.metrics.roc_curve(drop_intermediate=False)`` + ``scipy.optimize.brentq`` over
  ``np.interp`` (the EER definition). Both EERs are printed; they must agree to 1e-9.
* ``tar@far <input> n=...``: ``tar_at_far`` at FAR 1e-4, 1e-3, 1e-2, 1e-1 against
  scikit-learn's ROC + ``np.searchsorted`` (the largest TAR with FAR <= target); the TARs
  must be identical.
* ``roc+eer <input> n=...``: ``roc_curve`` + ``equal_error_rate`` (two public calls; the curve
  needs a sort) against the same scikit-learn pipeline.
* ``eer first call <input> n=...``: each side's first call in a fresh Python process (the
  libraries imported and the data made before the clock starts), at the largest size.
* ``all-pairs N=...``: ``all_pairs_histogram`` (blockwise, never materialising the pairs)
  against materialising every pair score of the upper triangle and ``np.histogram`` per class.
  Throughput in pairs/s. The peer is skipped where its pair matrix would not fit.

Repeated timings alternate the two sides and report medians (the machine may be shared).
With ``--device cuda`` our functions get CUDA tensors; scikit-learn gets the same data on the
host.

Usage::

    python benchmarks/bench_metrics.py --device cpu
    python benchmarks/bench_metrics.py --device cuda --pairs-n 100000
    python benchmarks/bench_metrics.py --quick
    python benchmarks/bench_metrics.py --device cuda --sizes 1e8 --inputs continuous \
        --cases eer first --repeats 0 --first-call-runs 1     # EER of 1e8 scores, one call each
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np
import torch
from scipy.optimize import brentq
from sklearn.metrics import roc_curve as sk_roc_curve

from metricface.metrics import all_pairs_histogram, equal_error_rate, roc_curve, tar_at_far

FAR_TARGETS = [1e-4, 1e-3, 1e-2, 1e-1]


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


def alternated(fns, repeats: int, device: str = "cpu"):
    """Median wall time of each function over ``repeats`` rounds that alternate them, after
    one warm-up call each (``repeats=0``: one timed call each, no warm-up); returns
    ``[(median, last output), ...]``."""
    outs = [fn() for fn in fns] if repeats > 0 else [None] * len(fns)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(max(1, repeats)):
        for k, fn in enumerate(fns):
            gc.collect()
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            outs[k] = fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t0)
    return [(statistics.median(t), o) for t, o in zip(times, outs)]


def make_scores(kind: str, n: int, genuine_fraction: float, seed: int = 0):
    """Labels and scores of one input kind (see the module docstring)."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < genuine_fraction
    if kind == "continuous":
        s = np.where(y, rng.normal(0.5, 0.15, n), rng.normal(0.05, 0.1, n))
        return y, np.clip(s, -1.0, 1.0).astype(np.float32)
    return y, np.round(rng.normal(size=n) + 2.0 * y, 4)


def sklearn_eer(y, s):
    fpr, tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    return brentq(lambda x: 1 - x - np.interp(x, fpr, tpr), 0, 1, xtol=1e-14)


def sklearn_tar(y, s):
    fpr, tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    return tpr[np.searchsorted(fpr, FAR_TARGETS, side="right") - 1]


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


def on_device(y, s, device: str):
    if device == "cpu":
        return y, s
    return torch.from_numpy(y).to(device), torch.from_numpy(s).to(device)


def bench_scores(kind: str, n: int, args) -> None:
    y, s = make_scores(kind, n, args.genuine_fraction)
    yd, sd = on_device(y, s, args.device)
    repeats = args.repeats
    (t_peer, eer_peer), (t_eer, eer_ours) = alternated(
        [lambda: sklearn_eer(y, s), lambda: equal_error_rate(yd, sd)], repeats, args.device
    )
    diff = abs(eer_ours - eer_peer)
    row(
        f"eer {kind} n={n:.0e}",
        t_eer,
        t_peer,
        f"speed-up {t_peer / t_eer:.1f}x, EER {eer_ours:.10f} vs {eer_peer:.10f}",
    )
    if diff > 1e-9:
        raise SystemExit(f"EER mismatch at n={n}: {eer_ours} vs {eer_peer}")
    if "tar" in args.cases:
        bench_tar(kind, n, y, s, yd, sd, args)
    if "roc" in args.cases:
        (t_peer, _), (t_roc, _) = alternated(
            [lambda: sklearn_eer(y, s), lambda: ours_roc_eer(yd, sd)], repeats, args.device
        )
        row(f"roc+eer {kind} n={n:.0e}", t_roc, t_peer, f"speed-up {t_peer / t_roc:.1f}x")


def bench_tar(kind, n, y, s, yd, sd, args) -> None:
    repeats = args.repeats
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FAR 1e-4 is below the resolution of small inputs
        (t_peer, tar_peer), (t_tar, tar_ours) = alternated(
            [lambda: sklearn_tar(y, s), lambda: tar_at_far(yd, sd, FAR_TARGETS)],
            repeats,
            args.device,
        )
    if not np.array_equal(tar_ours, tar_peer):
        raise SystemExit(f"TAR@FAR mismatch at n={n}: {tar_ours} vs {tar_peer}")
    row(f"tar@far {kind} n={n:.0e}", t_tar, t_peer, f"speed-up {t_peer / t_tar:.1f}x, 4 targets")


FIRST_CALL = """
import json, sys, time
sys.path.insert(0, {bench_dir!r})
import bench_metrics as b  # imports torch, numpy, metricface, scikit-learn and scipy
y, s = b.make_scores({kind!r}, {n}, {gf})
if {side!r} == "ours":
    y, s = b.on_device(y, s, {device!r})
    fn = lambda: b.equal_error_rate(y, s)
else:
    fn = lambda: b.sklearn_eer(y, s)
if {device!r} == "cuda":
    b.torch.cuda.synchronize()
t0 = time.perf_counter()
eer = fn()
if {device!r} == "cuda":
    b.torch.cuda.synchronize()
print(json.dumps({{"first": time.perf_counter() - t0, "eer": eer}}))
"""


def first_call(kind: str, n: int, side: str, args) -> dict:
    """One side's first call in a fresh interpreter; the libraries are imported and the data
    made (and moved to the device) before the clock starts."""
    import os

    code = FIRST_CALL.format(
        bench_dir=os.path.dirname(os.path.abspath(__file__)),
        kind=kind,
        n=n,
        gf=args.genuine_fraction,
        device=args.device,
        side=side,
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_first_call(kind: str, n: int, args) -> None:
    runs: dict[str, list[dict]] = {"ours": [], "peer": []}
    for _ in range(args.first_call_runs):  # fresh processes, alternated
        for side, out in runs.items():
            out.append(first_call(kind, n, side, args))
    med = {side: statistics.median(r["first"] for r in out) for side, out in runs.items()}
    if abs(runs["ours"][0]["eer"] - runs["peer"][0]["eer"]) > 1e-9:
        raise SystemExit(f"first-call EER mismatch: {runs['ours'][0]} vs {runs['peer'][0]}")
    row(
        f"eer first call {kind} n={n:.0e}",
        med["ours"],
        med["peer"],
        f"speed-up {med['peer'] / med['ours']:.1f}x; median over {args.first_call_runs} fresh "
        "processes per side",
    )


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
    parser.add_argument("--inputs", nargs="+", default=["continuous", "tied"])
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=["eer", "tar", "roc", "first", "all-pairs"],
        default=["eer", "tar", "roc", "first", "all-pairs"],
        help="rows to measure (eer always runs: it checks the EERs agree)",
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="alternated timed rounds (0: one call, no warm-up)"
    )
    parser.add_argument("--first-call-runs", type=int, default=3, help="fresh processes each")
    parser.add_argument("--pairs-n", type=int, default=None, help="embeddings for all-pairs")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--bins", type=int, default=2000)
    parser.add_argument("--genuine-fraction", type=float, default=0.1)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    sizes = [1e4, 1e5] if args.quick else args.sizes
    if args.quick:
        args.repeats, args.first_call_runs = 1, 1
    pairs_n = args.pairs_n or (1000 if args.quick else 8000 if args.device == "cpu" else 100_000)

    print(f"torch {torch.__version__}, numpy {np.__version__}, threads {torch.get_num_threads()}")
    print("| case | metricface | peer | ratio (ours/peer) | note |")
    print("|---|---|---|---|---|")
    for n in (int(v) for v in sizes):
        for kind in args.inputs:
            bench_scores(kind, n, args)
            gc.collect()
    for kind in args.inputs:
        if "first" in args.cases and args.first_call_runs > 0:
            bench_first_call(kind, int(sizes[-1]), args)
    if "all-pairs" not in args.cases:
        return

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
