"""Glue shared by the example trainers: argument groups, data, evaluation, logging.

Everything here only wires metricface's public pieces together; no training logic lives here.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset
from torchvision.transforms.v2.functional import resize

from metricface.backbones import available_backbones, build_backbone
from metricface.checkpoint import get_rng_state, load_checkpoint, set_rng_state
from metricface.data import IdentityFolder, SyntheticFaces, eval_transform, train_transform
from metricface.inference import embed
from metricface.metrics import verification_report


def add_common_args(p: argparse.ArgumentParser, *, epochs: int, lr: float) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", help="root of an identity-per-folder dataset (default: synthetic)")
    g.add_argument("--identities", type=int, default=300, help="synthetic training identities")
    g.add_argument("--images-per-identity", type=int, default=12, help="synthetic images each")
    g.add_argument("--eval-identities", type=int, default=50, help="held-out identities")
    g.add_argument("--eval-images", type=int, default=8, help="images per held-out identity")
    g.add_argument("--image-size", type=int, default=None, help="default 64 synthetic, 112 data")
    g.add_argument(
        "--on-bad-image",
        choices=("raise", "skip"),
        default="raise",
        help="an undecodable file in --data: stop naming it, or warn and use another image "
        "of the same identity",
    )
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    g = p.add_argument_group("model")
    g.add_argument(
        "--backbone",
        default="iresnet18",
        choices=available_backbones(),
        metavar="NAME",
        help="one of metricface.backbones.available_backbones(): iresnet18/34/50/100/"
        "200, resnet18/34/50/101/152",
    )
    g.add_argument("--width", type=float, default=0.25, help="channel multiplier (iresnet)")
    g.add_argument("--embedding-dim", type=int, default=128)
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    g.add_argument("--lr", type=float, default=lr)
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--warmup-epochs", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--output", help="output directory (default runs/<script>-<time>)")
    g.add_argument(
        "--tiny", action="store_true", help="small defaults for a seconds-long smoke run (CI)"
    )


#: What ``--tiny`` shrinks (a seconds-long smoke run); flags given explicitly still win.
TINY = dict(
    identities=24,
    images_per_identity=4,
    eval_identities=8,
    eval_images=4,
    image_size=32,
    width=0.125,
    embedding_dim=32,
    epochs=2,
    batch_size=32,
)


def parse_args(
    p: argparse.ArgumentParser, argv: list[str] | None = None, **tiny: Any
) -> argparse.Namespace:
    """Parse ``argv``; with ``--tiny``, :data:`TINY` (and ``tiny``) replace the defaults."""
    args = p.parse_args(argv)
    if args.tiny:
        p.set_defaults(**TINY, **tiny)
        args = p.parse_args(argv)
    return args


def check_batches(loader: DataLoader, what: str) -> int:
    """Batches per epoch of ``loader``; an error if ``drop_last`` leaves none."""
    n = len(loader)
    if n == 0:
        raise ValueError(
            f"an epoch holds no full batch: {len(loader.sampler)} {what} and --batch-size "
            f"{loader.batch_size} (the last partial batch is dropped); lower --batch-size"
        )
    return n


#: Settings a resumed run must share with its checkpoint: they define the data, the model, the
#: loss, the sampling and the whole learning-rate schedule (``--epochs`` included).
RESUME_KEYS = (
    "data",
    "identities",
    "images_per_identity",
    "eval_identities",
    "eval_images",
    "image_size",
    "backbone",
    "width",
    "embedding_dim",
    "loss",
    "margin",
    "scale",
    "miner",
    "P",
    "K",
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "weight_decay",
    "warmup_epochs",
    "seed",
    "amp",
)


def add_resume_args(g: Any) -> None:
    """``--resume [PATH]`` and ``--stop-after-epoch N`` on an argument parser or group."""
    g.add_argument(
        "--resume", nargs="?", const="auto", help="checkpoint (default: <output>/checkpoint.pt)"
    )
    g.add_argument("--stop-after-epoch", type=int, help="exit after this epoch (tests resume)")


def check_resume_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.resume == "auto" and not args.output:
        p.error("--resume without a path needs --output (the run directory to continue)")


def check_resume_config(
    saved: dict[str, Any], args: argparse.Namespace, path: Path, keys: tuple[str, ...] = RESUME_KEYS
) -> None:
    """Refuse to resume a checkpoint written with other ``keys`` settings."""
    now = vars(args)
    diff = [
        f"--{k.replace('_', '-')}: {saved[k]} in the checkpoint, {now[k]} now"
        for k in keys
        if k in saved and saved[k] != now.get(k)
    ]
    if diff:
        raise ValueError(
            f"cannot resume {str(path)!r} with other settings than it was trained with:\n  "
            + "\n  ".join(diff)
            + "\nrun with the checkpoint's settings, or start a new run in another --output"
        )


def resume(
    args: argparse.Namespace, keys: tuple[str, ...] = RESUME_KEYS, **restore: Any
) -> dict[str, Any] | None:
    """Load ``--resume``'s checkpoint into the objects in ``restore`` (``model=``, ...).

    ``None`` without ``--resume``; an error naming each setting that differs from the
    checkpoint's ``keys``, before anything is restored.
    """
    if not args.resume:
        return None
    path = Path(args.output) / "checkpoint.pt" if args.resume == "auto" else Path(args.resume)
    saved = load_checkpoint(path, restore_rng=False)["extra"].get("config", {})
    check_resume_config(saved, args, path, keys)
    ckpt = load_checkpoint(path, **restore)
    ckpt["path"] = path
    return ckpt


def output_dir(args: argparse.Namespace, script: str) -> Path:
    out = Path(args.output or f"runs/{script}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    return out


def build_datasets(args: argparse.Namespace, *, distortions=()) -> tuple[Any, Any, Any]:
    """(train set with augmentation, held-out set, held-out set without transform)."""
    if args.data is None:
        size = args.image_size or 64
        kw = dict(image_size=size, seed=args.seed, cache=True, distortions=distortions)
        train = SyntheticFaces(
            args.identities, args.images_per_identity, transform=train_transform(size), **kw
        )
        held_raw = SyntheticFaces(
            args.eval_identities, args.eval_images, identity_offset=args.identities, **kw
        )
        held = SyntheticFaces(
            args.eval_identities,
            args.eval_images,
            identity_offset=args.identities,
            transform=eval_transform(size),
            **kw,
        )
        return train, held, held_raw
    size = args.image_size or 112
    full = IdentityFolder(args.data, transform=train_transform(size), on_error=args.on_bad_image)
    if not 0 < args.eval_identities < len(full.label_map):
        raise ValueError(
            f"--eval-identities {args.eval_identities} must leave identities both to train on "
            f"and to hold out: {args.data!r} has {len(full.label_map)} identities with images"
        )
    train, held = full.split_by_identity(args.eval_identities, seed=args.seed)
    per: dict[int, int] = {}
    keep = []
    for i, lab in enumerate(held.labels.tolist()):
        if per.get(lab, 0) < args.eval_images:
            per[lab] = per.get(lab, 0) + 1
            keep.append(i)
    held.transform = None
    held_raw = Subset(held, keep)
    held_raw.labels = held.labels[keep]
    held_eval = IdentityFolder.from_samples(
        [held.samples[i] for i in keep],
        held.label_map,
        transform=eval_transform(size),
        on_error=args.on_bad_image,
    )
    return train, held_eval, held_raw


def build_model(args: argparse.Namespace, image_size: int) -> torch.nn.Module:
    kw: dict[str, Any] = {"embedding_dim": args.embedding_dim}
    if args.backbone.startswith("iresnet"):
        kw.update(width=args.width, input_size=image_size)
    return build_backbone(args.backbone, **kw)


def pair_scores(embeddings: torch.Tensor, labels: torch.Tensor):
    """Every unordered pair of held-out images: (y_true, cosine similarity)."""
    e = torch.nn.functional.normalize(embeddings.float(), dim=1)
    i, j = torch.triu_indices(len(labels), len(labels), 1)
    return (labels[i] == labels[j]).long(), (e[i] * e[j]).sum(1)


def evaluate(model, held, args, device) -> tuple[Any, torch.Tensor, torch.Tensor]:
    loader = DataLoader(held, batch_size=256, num_workers=args.workers)
    emb, labels = embed(model, loader, device=device)
    return verification_report(*pair_scores(emb, labels)), emb, labels


def raw_pixel_report(held_raw, size: int) -> Any:
    """The baseline: cosine similarity of mean-centred raw pixels, resized to ``size``."""
    images = (resize(held_raw[i][0], [size, size]) for i in range(len(held_raw)))
    x = torch.stack(list(images)).float().flatten(1)
    labels = torch.as_tensor([held_raw[i][1] for i in range(len(held_raw))])
    return verification_report(*pair_scores(x - x.mean(1, keepdim=True), labels))


class CsvLog:
    """One row per epoch of this run.

    The file is started afresh, keeping the first ``keep`` rows of an existing one: a resumed
    run keeps the epochs its checkpoint holds and drops any later ones, which it redoes.
    """

    def __init__(self, path: Path, fields: list[str], keep: int = 0) -> None:
        self.path, self.fields = path, fields
        rows: list[list[str]] = []
        if keep > 0 and path.exists():
            with open(path, newline="") as f:
                rows = list(csv.reader(f))[1 : keep + 1]
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(fields)
            w.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields, extrasaction="ignore").writerow(row)


def progress(iterable, total: int, desc: str, enabled: bool):
    if enabled and sys.stderr.isatty():
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return iterable
        return tqdm(iterable, total=total, desc=desc, leave=False)
    return iterable


def save_plots(out: Path, report, emb, labels, *, max_ids: int = 20) -> list[str]:
    """ROC and embedding scatter PNGs (skipped with a note when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from metricface.plots import plot_embeddings
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'metricface[plot]')")
        return []
    written = []
    ax = report.plot()
    ax.figure.savefig(out / "roc.png", dpi=100)
    plt.close(ax.figure)
    written.append("roc.png")
    keep = labels < max_ids
    ax = plot_embeddings(emb[keep], labels[keep], method="pca")
    ax.figure.savefig(out / "embeddings.png", dpi=100)
    plt.close(ax.figure)
    written.append("embeddings.png")
    return written


def env_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment, or (0, 1, 0)."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def gather_rank_rng() -> list[dict[str, Any]]:
    """Every rank's RNG states (torch, CUDA, NumPy, Python), gathered on every rank."""
    import torch.distributed as dist

    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, get_rng_state())
    return states


def restore_rank_rng(states: list[dict[str, Any]] | None, rank: int, world: int) -> None:
    """Restore this rank's RNG states saved by :func:`gather_rank_rng`, if the world matches."""
    if states is None or len(states) != world:
        saved = "none" if states is None else f"{len(states)} ranks"
        print(f"rank {rank}: checkpoint has RNG states for {saved}, not {world}; not restored")
        return
    set_rng_state(states[rank])
