"""End-to-end training throughput: does the data pipeline keep up with the model?

The training step of ``examples/train_vggface2.py`` (an IResNet backbone, a CosFace loss with
its class centers, SGD with momentum, optional autocast and channels_last, ``loss.item()``
every step as the example logs it) is timed in three cases:

``on-device``
    One batch that already sits on the device is trained on again and again: no decoding, no
    augmentation, no copy. The model's own speed, the reference of the ratios.
``data path``
    The real path: JPEG files of an identity-per-folder tree on disk, read by
    :class:`metricface.data.IdentityFolder`, decoded and augmented with
    :func:`metricface.data.train_transform` in ``--workers`` DataLoader processes, copied to
    the device (pinned memory on CUDA), then the same training step.
``loader alone``
    The same DataLoader iterated without training: the most images/s the pipeline can supply.

The ratio ``data path / on-device`` is the share of the model's speed that survives the data
pipeline: 1.0 means the loader keeps up; well below 1.0 means training waits for images (add
workers, or move decoding to the GPU). By default the JPEG tree is written first from
:class:`metricface.data.SyntheticFaces` into a temporary directory, at the training image size
like aligned face crops; ``--root`` measures an existing tree instead. The cases alternate over
``--repeats`` rounds, so a loaded machine slows them alike, and the median is reported.

Examples
--------
CPU smoke run::

    OMP_NUM_THREADS=1 python benchmarks/bench_training.py --device cpu --quick

GPU (the loader should keep up with IResNet-50 at 112x112 in bf16)::

    python benchmarks/bench_training.py --device cuda --backbone iresnet50 --width 1 \
        --image-size 112 --batch-size 256 --workers 8 --amp bf16 --channels-last
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler

from metricface.backbones import build_backbone
from metricface.data import IdentityFolder, SyntheticFaces, train_transform
from metricface.losses import CosFaceLoss


@dataclass
class Result:
    case: str
    images_per_s: float
    peak_mb: float | None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_jpeg_tree(root: Path, identities: int, per_identity: int, size: int) -> float:
    """Render synthetic faces and store them as ``root/<id>/<n>.jpg``; returns seconds taken."""
    t0 = time.perf_counter()
    faces = SyntheticFaces(identities, per_identity, image_size=size, seed=0)
    for index in range(len(faces)):
        image, label = faces[index]
        folder = root / f"id{label:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(
            folder / f"{index % per_identity:03d}.jpg", quality=95
        )
    return time.perf_counter() - t0


class Trainer:
    """The example's training step: backbone + CosFace class centers, SGD, optional AMP."""

    def __init__(self, args: argparse.Namespace, num_classes: int, device: torch.device) -> None:
        kw = {"embedding_dim": args.embedding_dim}
        if args.backbone.startswith("iresnet"):
            kw.update(width=args.width, input_size=args.image_size)
        self.model = build_backbone(args.backbone, **kw).to(device)
        self.loss = CosFaceLoss(num_classes, args.embedding_dim, margin=0.35, scale=32.0)
        self.loss = self.loss.to(device)
        self.channels_last = args.channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if args.compile:
            self.model = torch.compile(self.model)
        params = [*self.model.parameters(), *self.loss.parameters()]
        self.opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
        self.device = device
        self.model.train()

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            emb = self.model(images).float()
        value = self.loss(emb, labels)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(value).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return value.item()


def forever(loader: DataLoader) -> Iterator:
    """Batches of ``loader``, epoch after epoch."""
    return itertools.chain.from_iterable(itertools.repeat(loader))


def timed(fn, n_steps: int, batch_size: int, device: torch.device) -> tuple[float, float | None]:
    """Images/s over ``n_steps`` calls of ``fn`` and the peak CUDA memory (MB) during them."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        fn()
    _sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return n_steps * batch_size / seconds, peak


def run(args: argparse.Namespace, root: Path) -> list[Result]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    dataset = IdentityFolder(root, transform=train_transform(args.image_size))
    shape = dataset[0][0].shape
    if tuple(shape[-2:]) != (args.image_size, args.image_size):
        raise ValueError(f"transform gave {tuple(shape)}, expected size {args.image_size}")
    if len(dataset) < args.batch_size:
        raise ValueError(f"{len(dataset)} images are fewer than one batch ({args.batch_size})")
    depth = 2 * args.workers  # batches the loader prefetches (prefetch_factor 2)
    # One loader "epoch" spans a whole timed window: a small synthetic tree (2,048 images are
    # 8 batches of 256) would otherwise restart the workers' queue every few steps, a stall a
    # real training set of millions of images does not have.
    sampler = RandomSampler(dataset, num_samples=args.batch_size * (args.steps + depth + 1))
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )
    trainer = Trainer(args, dataset.num_classes, device)

    fixed = next(iter(loader))
    fixed = (fixed[0].to(device), fixed[1].to(device))
    for _ in range(args.warmup):  # kernels, allocator, autotuning
        trainer.step(*fixed)

    def loading(train: bool):
        def go() -> None:
            batch = next(batches)
            if train:
                trainer.step(*batch)

        return go

    cases = {
        "on-device (no loading)": (None, lambda: trainer.step(*fixed)),
        f"data path (JPEG, {args.workers} workers)": (True, loading(True)),
        f"loader alone ({args.workers} workers)": (False, loading(False)),
    }
    rates: dict[str, list[float]] = {c: [] for c in cases}
    peaks: dict[str, list[float]] = {c: [] for c in cases}
    for r in range(args.repeats):
        for case, (loads, fn) in cases.items():
            if loads is not None:
                # a fresh epoch iterator (persistent workers, empty queue), run until the
                # pipeline is in motion; at most `depth` batches are then queued ahead
                batches = forever(loader)
                for _ in range(max(1, depth)):
                    fn()
            rate, peak = timed(fn, args.steps, args.batch_size, device)
            rates[case].append(rate)
            if peak is not None:
                peaks[case].append(peak)
            print(f"  repeat {r + 1}/{args.repeats}  {case:<32} {rate:10.1f} images/s", flush=True)
    return [
        Result(c, statistics.median(rates[c]), max(peaks[c]) if peaks[c] else None) for c in cases
    ]


def print_table(results: list[Result]) -> None:
    reference = results[0].images_per_s
    print()
    print("| case | images/s | ratio (case / on-device) | peak CUDA MB |")
    print("|---|---|---|---|")
    for r in results:
        peak = f"{r.peak_mb:.0f}" if r.peak_mb is not None else "-"
        print(f"| {r.case} | {r.images_per_s:.1f} | {r.images_per_s / reference:.3f} | {peak} |")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes, a seconds-long smoke run")
    p.add_argument("--backbone", default="iresnet18")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (iresnet)")
    p.add_argument("--embedding-dim", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    p.add_argument("--steps", type=int, default=50, help="timed steps per case and repeat")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps of each kind first")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--identities", type=int, default=256, help="identities in the JPEG tree")
    p.add_argument("--images-per-identity", type=int, default=8)
    p.add_argument("--root", help="measure this identity-folder tree instead of synthetic JPEGs")
    args = p.parse_args(argv)
    if args.quick:
        args.width, args.embedding_dim, args.image_size = min(args.width, 0.125), 64, 32
        args.batch_size, args.steps, args.warmup, args.repeats = 16, 3, 1, 1
        args.identities, args.images_per_identity = 16, 4
        args.workers = min(args.workers, 1)
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1 or args.workers < 0:
        p.error("--steps and --repeats must be >= 1, --warmup and --workers >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda needs a CUDA build of torch and a GPU")
    return args


def main(argv=None) -> list[Result]:
    args = parse_args(argv)
    dev = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(
        f"torch {torch.__version__}, {dev}, {torch.get_num_threads()} threads; {args.backbone} "
        f"width {args.width}, {args.image_size}x{args.image_size}, batch {args.batch_size}, "
        f"amp {args.amp}, channels_last {args.channels_last}, {args.workers} workers"
    )
    with tempfile.TemporaryDirectory(prefix="bench_training_") as tmp:
        if args.root is None:
            root = Path(tmp)
            n = args.identities * args.images_per_identity
            seconds = write_jpeg_tree(
                root, args.identities, args.images_per_identity, args.image_size
            )
            print(f"wrote {n} JPEGs ({args.image_size}x{args.image_size}) in {seconds:.1f} s")
        else:
            root = Path(args.root)
        results = run(args, root)
    print_table(results)
    depth = 2 * args.workers
    if depth:
        print(
            f"\nloader cases: up to {depth} prefetched batches may be ready when timing starts, "
            f"so their images/s may be high by up to {depth / args.steps:.0%} "
            "(raise --steps to shrink)"
        )
    return results


if __name__ == "__main__":
    main()
