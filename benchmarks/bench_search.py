"""Gallery search: metricface.search.search against scikit-learn's brute-force NearestNeighbors.

Both find the exact k nearest gallery rows by cosine similarity. Each (case, library) pair runs
in a fresh subprocess so that peak memory (growth of the resident set on CPU,
``torch.cuda.max_memory_allocated`` on CUDA) is measured per run. Results are checked to agree
before timings are printed.

    python benchmarks/bench_search.py --device cpu [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CASES = [  # (probes, gallery, dim, k)
    (1_000, 10_000, 512, 10),
    (1_000, 100_000, 512, 10),
    (10_000, 100_000, 128, 1),
]
QUICK_CASES = [(200, 5_000, 128, 5), (500, 20_000, 256, 10)]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(impl: str, n_probes: int, n_gallery: int, dim: int, k: int, device: str, reps: int):
    import numpy as np
    import torch

    gen = torch.Generator().manual_seed(0)
    probes = torch.randn(n_probes, dim, generator=gen)
    gallery = torch.randn(n_gallery, dim, generator=gen)
    if impl == "metricface":
        from metricface.search import search

        dev = torch.device(device)
        # inputs sit on the device before timing, as the CPU inputs sit in memory
        probes, gallery = probes.to(dev), gallery.to(dev)

        def run():
            out = search(probes, gallery, k, use_faiss=False)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return out[1].cpu().numpy()
    else:
        from sklearn.neighbors import NearestNeighbors

        p_np, g_np = probes.numpy(), gallery.numpy()

        def run():
            nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="cosine").fit(g_np)
            return nn.kneighbors(p_np, return_distance=False)

    base = _rss_mb()
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated() / 2**20  # the inputs, as in the CPU figure
        torch.cuda.reset_peak_memory_stats()
    idx = run()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _rss_mb()) - base
    first = np.asarray(idx)[:, 0].tolist()
    print(json.dumps({"time": min(times), "peak_mb": peak, "top1": first}))


def measure(impl, case, device, reps):
    cmd = [sys.executable, __file__, "--worker", impl, *map(str, case), device, str(reps)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda requested but CUDA is not available")
    cases = QUICK_CASES if args.quick else CASES
    print("| case (P x G x D, k) | metricface s | sklearn s | ratio | metricface MB | sklearn MB |")
    print("|---|---|---|---|---|---|")
    for case in cases:
        ours = measure("metricface", case, args.device, args.reps)
        peer = measure("sklearn", case, "cpu", args.reps)
        agree = sum(a == b for a, b in zip(ours["top1"], peer["top1"])) / len(ours["top1"])
        name = "{} x {} x {}, k={}".format(*case)
        print(
            f"| {name} | {ours['time']:.3f} | {peer['time']:.3f} | "
            f"{ours['time'] / peer['time']:.2f} | {ours['peak_mb']:.0f} | {peer['peak_mb']:.0f} |"
            + ("" if agree > 0.999 else f" top-1 agreement {agree:.4f}")
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        impl, p, g, d, k, dev, reps = sys.argv[2:9]
        worker(impl, int(p), int(g), int(d), int(k), dev, int(reps))
    else:
        main()
