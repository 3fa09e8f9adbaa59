"""The example trainers' evaluation: every pair of held-out images, scored exactly.

``verification_report_from_embeddings`` (blocked ``(N, N)`` similarities written into the pair
scores) against the peer, the explicit-pairs scoring the examples used before: index the
``(pairs, D)`` rows of both sides, multiply and sum, then ``verification_report``. Both run on
the default run's held-out set (50 synthetic identities x 8 images): its embeddings (each
epoch) and its mean-centred raw pixels at 64x64 (the baseline, once). Each (case, method) runs
in a fresh subprocess, so the growth of its peak resident set is its own; the EERs must agree.

    PYTHONPATH=src python benchmarks/bench_example_eval.py [--quick]

The peer needs ``pairs x D x 4`` bytes several times over: about 12 GB for the raw pixels of the
default set. ``--quick`` uses 20 identities x 8 images instead.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

METHODS = ("blocked", "explicit pairs")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _one(case: str, method: str, identities: int) -> dict:
    import torch
    from torchvision.transforms.v2.functional import resize

    from metricface.data import SyntheticFaces
    from metricface.metrics import verification_report, verification_report_from_embeddings

    held = SyntheticFaces(identities, 8, image_size=64, identity_offset=300)
    labels = torch.tensor([held[i][1] for i in range(len(held))])
    if case == "embeddings":  # what a trained 128-d model gives: clusters around identities
        g = torch.Generator().manual_seed(0)
        x = torch.randn(identities, 128, generator=g)[labels]
        x += 1.5 * torch.randn(len(held), 128, generator=g)
    else:
        x = torch.stack([resize(held[i][0], [64, 64]) for i in range(len(held))]).float()
        x = x.flatten(1)
        x -= x.mean(1, keepdim=True)
    start = _rss_mb()
    best = float("inf")
    for _ in range(3 if case == "embeddings" else 1):
        t0 = time.perf_counter()
        if method == "blocked":
            report = verification_report_from_embeddings(x, labels)
        else:
            e = torch.nn.functional.normalize(x.float(), dim=1)
            i, j = torch.triu_indices(len(labels), len(labels), 1)
            report = verification_report((labels[i] == labels[j]).long(), (e[i] * e[j]).sum(1))
        best = min(best, time.perf_counter() - t0)
    return {
        "seconds": best,
        "mb": _rss_mb() - start,
        "eer": report.eer,
        "n": len(held),
        "d": x.shape[1],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="20 identities instead of 50")
    p.add_argument("--worker", nargs=2, metavar=("CASE", "METHOD"), help=argparse.SUPPRESS)
    args = p.parse_args()
    identities = 20 if args.quick else 50
    if args.worker:
        print(json.dumps(_one(*args.worker, identities)))
        return
    print(
        "| case (N x D) | blocked s | explicit pairs s | ratio | blocked MB | explicit MB | EER |"
    )
    print("|---|---|---|---|---|---|---|")
    for case in ("embeddings", "raw pixels"):
        out = {}
        for method in METHODS:
            cmd = [sys.executable, __file__, "--worker", case, method]
            cmd += ["--quick"] if args.quick else []
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            out[method] = json.loads(proc.stdout.strip().splitlines()[-1])
        a, b = out["blocked"], out["explicit pairs"]
        assert abs(a["eer"] - b["eer"]) < 1e-9, (a["eer"], b["eer"])
        print(
            f"| {case} {a['n']} x {a['d']} | {a['seconds']:.3f} | {b['seconds']:.3f} | "
            f"{a['seconds'] / b['seconds']:.3f} | {a['mb']:.0f} | {b['mb']:.0f} | {a['eer']:.6f} |"
        )


if __name__ == "__main__":
    main()
