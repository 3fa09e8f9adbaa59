"""Scanning an identity-per-folder tree: metricface's IdentityFolder vs torchvision's ImageFolder.

Builds a tree of ``--identities`` folders with ``--images`` empty ``.jpg`` files each (scanning
never opens a file, so empty files measure exactly the listing work), then times constructing
each dataset over it. Both are given the same extensions; both end with the same sorted list of
``(path, label)`` samples, which the script checks. Times are the best of ``--repeats`` after one
untimed pass that warms the file-system cache (a cold network file system is slower for both).

Scanning runs on the CPU; ``--device`` is accepted for a uniform command line.

    python benchmarks/bench_folder_scan.py [--quick] [--identities N] [--images K] [--root DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from torchvision.datasets import ImageFolder

from metricface.data import IdentityFolder


def build_tree(root: Path, identities: int, images: int) -> None:
    for i in range(identities):
        folder = root / f"n{i:07d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(images):
            (folder / f"{k:04d}_01.jpg").touch()


def best_time(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm the directory cache
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--identities", type=int, default=20_000)
    p.add_argument("--images", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--threads", type=int, nargs="+", default=[1, 8], help="IdentityFolder num_threads values"
    )
    p.add_argument("--root", help="an existing tree to scan instead of a generated one")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="2,000 identities x 20 images")
    args = p.parse_args()
    if args.quick:
        args.identities, args.images = 2_000, 20

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else Path(tmp) / "tree"
        if not args.root:
            t0 = time.perf_counter()
            build_tree(root, args.identities, args.images)
            print(
                f"built {args.identities * args.images:,} files in {time.perf_counter() - t0:.1f} s"
            )
        exts = (".jpg", ".jpeg", ".png", ".webp")
        peer_s, peer = best_time(lambda: ImageFolder(str(root)), args.repeats)
        peer_samples = sorted((os.fspath(s), t) for s, t in peer.samples)
        n = len(peer.samples)
        print(f"\n{n:,} files in {len(peer.classes):,} identity folders")
        print("| case | metricface s | torchvision s | ratio | metricface files/s | same samples |")
        print("|---|---|---|---|---|---|")
        for threads in args.threads:
            ours_s, ours = best_time(
                lambda t=threads: IdentityFolder(root, extensions=exts, num_threads=t),
                args.repeats,
            )
            same = sorted(ours.samples) == peer_samples
            print(
                f"| scan {n:,} files, num_threads={threads} | {ours_s:.3f} | {peer_s:.3f} "
                f"| {ours_s / peer_s:.3f} | {n / ours_s:,.0f} | {same} |"
            )
            if not same:
                raise SystemExit("the two datasets disagree on the samples")


if __name__ == "__main__":
    main()
