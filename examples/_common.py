"""Glue shared by the example trainers: data, model, evaluation, logs, plots, DDP helpers.

Everything here only wires metricface's public pieces together; no training logic lives here.
The command line is in ``_cli.py``, the run folder (resuming, Ctrl-C) in ``_runs.py``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from _cli import UsageError
from torch.utils.data import DataLoader, Subset
from torchvision.transforms.v2.functional import resize

from metricface.backbones import build_backbone
from metricface.checkpoint import get_rng_state, set_rng_state
from metricface.data import IdentityFolder, SyntheticFaces, eval_transform, train_transform
from metricface.inference import embed
from metricface.metrics import (
    VerificationReport,
    all_pair_scores,
    verification_report_from_embeddings,
)


def check_batches(loader: DataLoader, what: str) -> int:
    """Batches per epoch of ``loader``; an error if ``drop_last`` leaves none."""
    n = len(loader)
    if n == 0:
        raise UsageError(
            f"an epoch holds no full batch: {len(loader.sampler)} {what} and --batch-size "
            f"{loader.batch_size} (the last partial batch is dropped); lower --batch-size"
        )
    return n


def open_folder(args: argparse.Namespace) -> IdentityFolder:
    """The ``--data`` folder's index (file names only: nothing is decoded), checked against
    the flags: enough identities to hold ``--eval-identities`` out and train on the rest."""
    root = Path(args.data)
    if not root.exists():
        raise UsageError(f"--data {str(root)!r} does not exist")
    if not root.is_dir():
        raise UsageError(f"--data {str(root)!r} is not a folder of identity folders")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            folder = IdentityFolder(root, on_error=args.on_bad_image)
    except ValueError as exc:  # no identity folders, no images
        raise UsageError(f"--data: {exc}") from None
    for w in caught:  # e.g. identity folders without images: one line each
        print(f"warning: --data: {w.message}", file=sys.stderr)
    n = len(folder.label_map)
    if n < 2:
        raise UsageError(
            f"--data {str(root)!r} holds {n} identity with images: need >= 2 identities "
            "(some to train on, --eval-identities to hold out)"
        )
    if args.eval_identities >= n:
        raise UsageError(
            f"--eval-identities {args.eval_identities} must leave identities to train on: "
            f"{str(root)!r} has {n} identities with images; lower --eval-identities"
        )
    return folder


def build_datasets(
    args: argparse.Namespace, folder: IdentityFolder | None = None, *, distortions=()
) -> tuple[Any, Any, Any]:
    """(train set with augmentation, held-out set, held-out set without transform).

    ``folder`` is the index :func:`open_folder` returned for ``--data``.
    """
    size = args.image_size
    if folder is None:
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
    folder.transform = train_transform(size)
    train, held = folder.split_by_identity(args.eval_identities, seed=args.seed)
    per: dict[int, int] = {}
    keep = []
    for i, lab in enumerate(held.labels.tolist()):
        if per.get(lab, 0) < args.eval_images:
            per[lab] = per.get(lab, 0) + 1
            keep.append(i)
    if not any(c >= 2 for c in per.values()):
        raise UsageError(
            f"the {args.eval_identities} held-out identities of --data have one image each: "
            "no genuine pair to evaluate; hold out more identities (--eval-identities)"
        )
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


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    kw: dict[str, Any] = {"embedding_dim": args.embedding_dim}
    if args.backbone.startswith("iresnet"):
        kw.update(width=args.width, input_size=args.image_size)
    return build_backbone(args.backbone, **kw)


def evaluate(model, held, args, device) -> tuple[VerificationReport, torch.Tensor, torch.Tensor]:
    """Verification over every pair of held-out images, from their embeddings."""
    loader = DataLoader(held, batch_size=128, num_workers=args.workers)  # activations bound memory
    emb, labels = embed(model, loader, device=device)
    return verification_report_from_embeddings(emb, labels), emb, labels


def raw_pixel_report(held_raw, size: int) -> VerificationReport:
    """The baseline: cosine similarity of mean-centred raw pixels, resized to ``size``.

    Memory: the ``(N, pixels)`` images and the ``N (N - 1) / 2`` pair scores, never a
    ``(pairs, pixels)`` tensor.
    """
    n = len(held_raw)
    x = None
    labels = torch.empty(n, dtype=torch.int64)
    for i in range(n):
        image, labels[i] = held_raw[i]
        row = resize(image, [size, size]).flatten().float()
        if x is None:
            x = torch.empty(n, row.numel())
        x[i] = row
    assert x is not None
    x -= x.mean(1, keepdim=True)
    return verification_report_from_embeddings(x, labels)


# ---------------------------------------------------------------------------------------------
# Logs, plots, distributed helpers
# ---------------------------------------------------------------------------------------------


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


#: The plots :func:`save_plots` writes, and what each shows (listed in report.txt).
PLOTS = {
    "roc.png": "ROC (TAR against FAR, log axis) with the EER point",
    "det.png": "DET curve (FRR against FAR, normal-deviate axes) with the EER point",
    "scores.png": "genuine and impostor score histograms with the EER threshold",
    "embeddings.png": "2-D projection of held-out embeddings, coloured by identity",
}


def save_plots(
    out: Path, report: VerificationReport, emb: torch.Tensor, labels: torch.Tensor, max_ids=20
) -> dict[str, str]:
    """Write the :data:`PLOTS` (nothing, with a note, without matplotlib): name -> what."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from metricface.plots import plot_embeddings, plot_report, plot_score_histogram
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'metricface[plot]')")
        return {}
    y_true, y_score = all_pair_scores(emb, labels)
    keep = labels < max_ids
    axes = {
        "roc.png": lambda: plot_report(report, "roc", label="held-out pairs"),
        "det.png": lambda: plot_report(report, "det", label="held-out pairs"),
        "scores.png": lambda: plot_score_histogram(y_true, y_score),
        "embeddings.png": lambda: plot_embeddings(emb[keep], labels[keep]),
    }
    written = {}
    for name, draw in axes.items():
        ax = draw()
        ax.figure.savefig(out / name, dpi=100, bbox_inches="tight")
        what = PLOTS[name]
        if name == "embeddings.png":
            what = f"{ax.get_title()}, coloured by identity"
        plt.close(ax.figure)
        written[name] = what
    return written


def finish(
    out: Path,
    args: argparse.Namespace,
    report: VerificationReport,
    emb: torch.Tensor,
    labels: torch.Tensor,
    baseline: VerificationReport,
) -> dict[str, Any]:
    """Print the final report, draw the plots and write ``report.txt`` listing them."""
    print(report)
    plots = {} if args.no_plots else save_plots(out, report, emb, labels)
    text = f"{report}\n\nraw-pixel baseline: EER {baseline.eer:.4f} (AUC {baseline.auc:.4f})"
    if plots:
        text += "\n\nPlots:\n" + "\n".join(f"  {n:<15} {w}" for n, w in plots.items())
    (out / "report.txt").write_text(text + "\n")
    print(f"raw-pixel EER {baseline.eer:.4f} -> trained EER {report.eer:.4f}; outputs in {out}")
    return {"eer": report.eer, "baseline_eer": baseline.eer, "output": str(out)}


def env_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment, or (0, 1, 0)."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed(args: argparse.Namespace) -> tuple[int, int, torch.device]:
    """Join torchrun's process group, if launched by it: (rank, world size, device)."""
    import torch.distributed as dist

    rank, world, local_rank = env_rank()
    if world > 1:
        dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
        if args.device.startswith("cuda"):
            args.device = f"cuda:{local_rank}"
            torch.cuda.set_device(local_rank)
    return rank, world, torch.device(args.device)


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
