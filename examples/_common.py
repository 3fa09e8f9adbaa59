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
from metricface.data import (
    IdentityFolder,
    RecordFaces,
    SyntheticFaces,
    eval_transform,
    train_transform,
)
from metricface.evaluation import VerificationSets, VerificationTable
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


def pack_path(data: str) -> Path | None:
    """The ``.rec`` file ``--data`` names (a ``.rec`` path, or a folder holding
    ``train.rec``), or ``None`` for an identity folder."""
    path = Path(data)
    if path.suffix == ".rec":
        return path
    if path.is_dir() and (path / "train.rec").is_file():
        return path / "train.rec"
    return None


def open_data(args: argparse.Namespace) -> IdentityFolder | RecordFaces:
    """The ``--data`` folder's index (file names only: nothing is decoded) or pack (its index
    and record headers), checked against the flags: enough identities to hold
    ``--eval-identities`` out and train on the rest."""
    root, rec = Path(args.data), pack_path(args.data)
    if not root.exists():
        raise UsageError(f"--data {str(root)!r} does not exist")
    if rec is not None and not rec.with_suffix(".idx").is_file():
        raise UsageError(
            f"--data {str(rec)!r} has no index {str(rec.with_suffix('.idx'))!r} beside it (a "
            "pack is a .rec file with its .idx of the same name)"
        )
    if rec is None and not root.is_dir():
        raise UsageError(
            f"--data {str(root)!r} is neither a folder of identity folders nor a .rec pack"
        )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if rec is None:
                data: IdentityFolder | RecordFaces = IdentityFolder(
                    root, on_error=args.on_bad_image
                )
            else:
                data = RecordFaces(rec, on_error=args.on_bad_image)
    except (ValueError, OSError) as exc:  # no images, a missing .idx, a damaged pack
        raise UsageError(f"--data: {exc}") from None
    for w in caught:  # e.g. identity folders without images: one line each
        print(f"warning: --data: {w.message}", file=sys.stderr)
    n = len(data.label_map)
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
    return data


def train_augmentation(args: argparse.Namespace):
    """``--augment``: the default mild augmentation, or horizontal flips only."""
    if getattr(args, "augment", "mild") == "flip":
        return train_transform(args.image_size, crop_scale=(1.0, 1.0), color_jitter=0.0)
    return train_transform(args.image_size)


def build_datasets(
    args: argparse.Namespace, data: IdentityFolder | RecordFaces | None = None, *, distortions=()
) -> tuple[Any, Any, Any]:
    """(train set with augmentation, held-out set, held-out set without transform).

    ``data`` is the folder index or pack :func:`open_data` returned for ``--data``; the
    held-out identities are chosen alike in a pack and in its unpacked folder tree.
    """
    size = args.image_size
    if data is None:
        kw = dict(image_size=size, seed=args.seed, cache=True, distortions=distortions)
        train = SyntheticFaces(
            args.identities, args.images_per_identity, transform=train_augmentation(args), **kw
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
    data.transform = train_augmentation(args)
    train, held = data.split_by_identity(args.eval_identities, seed=args.seed)
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
    if isinstance(held, RecordFaces):
        held_raw, held_eval = held.subset(keep), held.subset(keep)
        held_eval.transform = eval_transform(size)
        return train, held_eval, held_raw
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
    run keeps the epochs its checkpoint holds and drops any later ones, which it redoes. Kept
    rows are matched to ``fields`` by column name (a resumed run may log other columns, e.g.
    other ``--val-bin`` sets; a column a row lacks stays empty).
    """

    def __init__(self, path: Path, fields: list[str], keep: int = 0) -> None:
        self.path, self.fields = path, fields
        rows: list[dict[str, str]] = []
        if keep > 0 and path.exists():
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))[:keep]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fields, extrasaction="ignore")
            w.writeheader()
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


# ---------------------------------------------------------------------------------------------
# Verification .bin sets (--val-bin)
# ---------------------------------------------------------------------------------------------


def open_val_bins(args: argparse.Namespace) -> VerificationSets | None:
    """The ``--val-bin`` sets, each file read and checked now (a missing, unreadable or unsafe
    file is a one-line error before any work); ``None`` without ``--val-bin``."""
    if not getattr(args, "val_bin", None):
        return None
    try:
        sets = VerificationSets(args.val_bin, image_size=args.image_size, num_workers=args.workers)
        for name in sets.names:
            sets.dataset(name)  # reads the file: a damaged or unsafe pickle fails here
    except (ValueError, OSError) as exc:
        raise UsageError(f"--val-bin: {exc}") from None
    return sets


def val_bin_columns(sets: VerificationSets | None) -> list[str]:
    """The ``log.csv`` columns of the ``--val-bin`` sets: accuracy, std, EER, TAR@FAR."""
    if sets is None:
        return []
    metrics = ["accuracy", "std", "eer", *(f"tar@far={a:g}" for a in sets.far_targets)]
    return [f"{name}/{m}" for name in sets.names for m in metrics]


def format_val_table(table: VerificationTable, indent: str = "  ") -> str:
    """The table of :meth:`VerificationTable.format`, indented."""
    return "\n".join(indent + line for line in table.format().splitlines())


#: The plots :func:`save_plots` writes, and what each shows (listed in report.txt).
PLOTS = {
    "roc.png": "ROC (TAR against FAR, log axis) with the EER point",
    "det.png": "DET curve (FRR against FAR, normal-deviate axes) with the EER point",
    "scores.png": "genuine and impostor score histograms with the EER threshold",
    "embeddings.png": "2-D projection of held-out embeddings, coloured by identity",
    "val_roc.png": "ROC of each --val-bin set (all its pairs), with their EER points",
}


def save_plots(
    out: Path,
    report: VerificationReport,
    emb: torch.Tensor,
    labels: torch.Tensor,
    max_ids=20,
    val_table: VerificationTable | None = None,
) -> dict[str, str]:
    """Write the :data:`PLOTS` (nothing, with a note, without matplotlib): name -> what.

    ``val_roc.png`` only with a ``val_table`` (``--val-bin``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from metricface.plots import plot_embeddings, plot_report, plot_roc, plot_score_histogram
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'metricface[plot]')")
        return {}
    y_true, y_score = all_pair_scores(emb, labels)
    keep = labels < max_ids

    def val_roc():
        ax = None
        for row in val_table:
            ax = plot_roc(row.issame, row.scores, ax=ax, label=row.name)
        return ax

    axes = {
        "roc.png": lambda: plot_report(report, "roc", label="held-out pairs"),
        "det.png": lambda: plot_report(report, "det", label="held-out pairs"),
        "scores.png": lambda: plot_score_histogram(y_true, y_score),
        "embeddings.png": lambda: plot_embeddings(emb[keep], labels[keep]),
    }
    if val_table is not None:
        axes["val_roc.png"] = val_roc
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
    val_table: VerificationTable | None = None,
) -> dict[str, Any]:
    """Print the final report, draw the plots and write ``report.txt`` listing them (with the
    ``--val-bin`` table when there is one)."""
    print(report)
    plots = {} if args.no_plots else save_plots(out, report, emb, labels, val_table=val_table)
    text = f"{report}\n\nraw-pixel baseline: EER {baseline.eer:.4f} (AUC {baseline.auc:.4f})"
    if val_table is not None:
        text += (
            "\n\nVerification sets (--val-bin; LFW protocol: 10-fold accuracy with flip TTA, "
            "rates in %):\n" + format_val_table(val_table)
        )
    if plots:
        text += "\n\nPlots:\n" + "\n".join(f"  {n:<15} {w}" for n, w in plots.items())
    (out / "report.txt").write_text(text + "\n")
    print(f"raw-pixel EER {baseline.eer:.4f} -> trained EER {report.eer:.4f}; outputs in {out}")
    result = {"eer": report.eer, "baseline_eer": baseline.eer, "output": str(out)}
    if val_table is not None:
        result["val_bin"] = val_table.as_dict()
    return result


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
