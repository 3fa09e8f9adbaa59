"""Identity (P x K) batch sampling: metricface vs pytorch-metric-learning's MPerClassSampler.

For each label set, both samplers produce one epoch of batches of P=64 identities x K=4 images
(256 indices). Reported per sampler: seconds to construct it and produce the whole epoch as
lists of indices, as wall-clock and as this process's CPU time (the CPU figure is the one to
trust on a shared, loaded machine; ours: best of --repeats, the peer, whose time is a long
Python loop, timed once), and the fraction of the dataset's images the epoch visits.
The peer is given ``length_before_new_iter = N`` (one epoch = N indices) and the same batch size.

Sampling runs on the CPU whatever ``--device`` says (label arrays never go to the GPU); the flag
is accepted for a uniform command line.

    python benchmarks/bench_samplers.py [--quick] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from metricface.samplers import IdentityBatchSampler

P, K = 64, 4


def _labels(num_images: int, num_ids: int, seed: int = 0) -> np.ndarray:
    """A long-tailed label set: log-normal images per identity, at least 2 each."""
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(0.0, 0.8, size=num_ids)
    counts = 2 + np.floor(weights / weights.sum() * (num_images - 2 * num_ids)).astype(np.int64)
    counts[: num_images - counts.sum()] += 1
    return rng.permutation(np.repeat(np.arange(num_ids), counts))


def _ours(labels: np.ndarray) -> list[list[int]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampler = IdentityBatchSampler(labels, P, K, seed=0, num_replicas=1, rank=0)
    sampler.set_epoch(1)
    return list(sampler)


def _peer(labels: np.ndarray) -> list[int]:
    from pytorch_metric_learning.samplers import MPerClassSampler

    sampler = MPerClassSampler(labels, K, batch_size=P * K, length_before_new_iter=len(labels))
    return list(iter(sampler))


def _time(fn, labels: np.ndarray, repeats: int) -> tuple[float, float, object]:
    """Best wall-clock and CPU seconds over ``repeats`` calls, and the last output."""
    wall, cpu, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn(labels)
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return wall, cpu, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="smallest case only, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cases = [("100k images / 2k ids", 100_000, 2_000)]
    if not args.quick:
        cases += [
            ("1M images / 20k ids", 1_000_000, 20_000),
            ("3M images / 9k ids", 3_000_000, 9_000),
            ("3M images / 100k ids", 3_000_000, 100_000),
        ]
    repeats = 1 if args.quick else args.repeats
    print(f"P={P} K={K}; sampling on cpu (device flag: {args.device})")
    print(
        "| case | metricface wall s | peer wall s | ratio | metricface CPU s | peer CPU s | "
        "ratio | metricface coverage | peer coverage |"
    )
    print("| --- " * 9 + "|")
    for name, n, c in cases:
        labels = _labels(n, c)
        ours_s, ours_cpu, ours = _time(_ours, labels, repeats)
        peer_s, peer_cpu, peer = _time(_peer, labels, 1)
        ours_cov = np.unique(np.asarray(ours).ravel()).size / n
        peer_cov = np.unique(np.asarray(peer)).size / n
        print(
            f"| {name} | {ours_s:.2f} | {peer_s:.2f} | {ours_s / peer_s:.3f} | "
            f"{ours_cpu:.2f} | {peer_cpu:.2f} | {ours_cpu / peer_cpu:.3f} | "
            f"{ours_cov:.1%} | {peer_cov:.1%} |"
        )


if __name__ == "__main__":
    main()
