"""``python -m metricface eval-ijb``: the IJB-B / IJB-C table of a checkpoint, from the raw benchmark.

::

    python -m metricface eval-ijb --root IJBC --checkpoint run/checkpoint.pt [--target IJBC]
        [--output DIR] [--device cuda] [--batch-size 256] [--workers N] [--amp none|bf16|fp16]
        [--backbone NAME --width W --embedding-dim D --image-size S] [--overwrite]

``--root`` is one benchmark of the evaluation package most face-recognition work uses
(InsightFace's ``IJB_release``): ``loose_crop/`` holds the face images (IJB-C: 469,375 files,
IJB-B: 227,630), ``meta/`` the protocol files named after ``--target`` (``ijbc_`` or ``ijbb_``):
``*_face_tid_mid.txt``, ``*_template_pair_label.txt`` and ``*_name_5pts_score.txt`` are required;
the 1:N lists ``*_1N_gallery_<name>.csv`` and ``*_1N_probe_mixed.csv`` of the official protocol
(not part of every copy) are scored when they are there too (:func:`~metricface.data.load_ijb_meta`).

Every image of the media file is warped onto the 5-point template with its landmarks
(:func:`~metricface.data.align_face`), normalised as the example trainers train
(:func:`~metricface.data.eval_transform`), and embedded with its mirror image; the two network
outputs are summed and *not* normalised (:func:`~metricface.inference.embed` with
``flip_tta=True, normalize=False``). :func:`~metricface.evaluation.evaluate_ijb` then pools the
templates with the detector scores as weights and scores them: the published protocol
(InsightFace's evaluation keeps each feature's norm and multiplies in the detector score).

The model comes from ``--checkpoint``: a checkpoint of the example trainers (architecture, width,
embedding size and image size from its saved ``config``) or of
:func:`~metricface.checkpoint.save_checkpoint`, or a bare state dict with ``--backbone`` (and
``--width``, ``--embedding-dim``, ``--image-size`` as it was trained). It is read with
``torch.load(..., weights_only=True)``.

Everything cheap is checked before the first image is decoded, and a mistake ends in one line
with nothing written: the layout and the protocol files, that every image of the media file has
a landmark row, usable landmarks and a file in ``loose_crop/``, the checkpoint (loaded, and run
once on a blank image), the options, and any features already in ``OUTPUT``.

The features are the expensive part (hours on one GPU for IJB-C). They go into
``OUTPUT/features.npy``, one float32 row per line of the media file, written in place through a
memory map; ``OUTPUT/features.json`` records what produced them (a hash of the weights, of the
image list and landmarks, the architecture, image size, flip and AMP settings) and how many rows
are done, rewritten atomically every few thousand images, on Ctrl-C and on any error. A second
run with the same settings continues after the last recorded row (Ctrl-C loses nothing; a killed
process at most the images since the last record) and, once all are done, reuses them: scoring
again takes seconds. Features computed with other settings are refused, not overwritten, unless
``--overwrite`` is given.

Outputs, in ``OUTPUT`` (default ``./ijb-<target>-<checkpoint stem>``): ``report.txt`` (the table,
as printed), ``metrics.json`` (:meth:`IJBReport.as_dict <metricface.metrics.IJBReport.as_dict>`;
``null`` for a rate that does not exist), ``scores.npy`` (the 1:1 pair scores in pair-file
order), ``roc.png`` (with matplotlib) and the features.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from metricface.cli import CommandError
from metricface.cli.support import Progress, default_workers

HELP = {
    "eval-ijb": "IJB-B / IJB-C 1:1 and 1:N table of a checkpoint from the loose crops and their "
    "landmarks (align, flip-TTA features, pooling, scores); resumable"
}

TARGETS = ("IJBB", "IJBC")
FEATURES = "features.npy"
FEATURES_INFO = "features.json"
_FORMAT = "metricface.eval-ijb.features"
_SAVE_EVERY = 8192  # images between two records of the rows done: what a killed run can lose
_AMP = ("none", "bf16", "fp16")
_TMP = re.compile(r"^\.[\w.]+\.\d+\.tmp$")  # _write_atomic's temporary files
# fingerprint entry -> how a user recognises it in a refusal
_SETTINGS = {
    "weights_sha256": "the model's weights",
    "images_sha256": "the image list or its landmarks",
    "images": "the number of images",
    "dim": "the feature size",
    "backbone": "--backbone",
    "width": "--width",
    "embedding_dim": "--embedding-dim",
    "image_size": "--image-size",
    "amp": "--amp",
    "flip_tta": "flip TTA",
    "normalize": "normalisation",
    "mean": "normalisation mean",
    "std": "normalisation std",
}


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.epilog = (
        "Writes OUTPUT/report.txt, metrics.json, scores.npy, roc.png and the features\n"
        f"(OUTPUT/{FEATURES}, {FEATURES_INFO}). An interrupted run continues where it\n"
        "stopped when run again; finished features are reused."
    )
    parser.add_argument(
        "--root",
        required=True,
        metavar="DIR",
        help="benchmark folder holding loose_crop/ and meta/",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="model: an example trainer's checkpoint.pt, a save_checkpoint file or a state dict",
    )
    parser.add_argument(
        "--target",
        help="IJBC or IJBB, the meta files' prefix (default: from the one *_face_tid_mid.txt)",
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        help="folder of the results (default: ./ijb-<target>-<checkpoint stem>)",
    )
    model = parser.add_argument_group("model (default: the checkpoint's saved config)")
    model.add_argument(
        "--backbone", metavar="NAME", help="architecture, e.g. iresnet100 (needed for a state dict)"
    )
    model.add_argument(
        "--width", type=float, metavar="W", help="channel multiplier of an IResNet (else 1)"
    )
    model.add_argument("--embedding-dim", type=int, metavar="D", help="embedding size (else 512)")
    model.add_argument(
        "--image-size", type=int, metavar="S", help="side of the aligned crops (else 112)"
    )
    run_group = parser.add_argument_group("inference")
    run_group.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    run_group.add_argument(
        "--batch-size", type=int, default=256, metavar="N", help="images per forward pass"
    )
    run_group.add_argument(
        "--workers",
        type=int,
        default=default_workers(16),
        metavar="N",
        help="processes decoding and aligning images (0: in the main process)",
    )
    run_group.add_argument(
        "--amp", choices=_AMP, default="none", help="autocast dtype of the forward passes"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="recompute features made with other settings"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress output")


# ---------------------------------------------------------------------------- cheap checks
def _check_options(args: argparse.Namespace) -> Any:
    """The torch device; errors for options out of range."""
    import torch

    for flag, value, low in (
        ("--batch-size", args.batch_size, 1),
        ("--workers", args.workers, 0),
        ("--embedding-dim", args.embedding_dim, 1),
        ("--image-size", args.image_size, 1),
    ):
        if value is not None and value < low:
            raise CommandError(f"{flag} must be at least {low}, got {value}")
    if args.width is not None and not (math.isfinite(args.width) and args.width > 0):
        raise CommandError(f"--width must be a positive number, got {args.width}")
    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise CommandError(f"--device {name!r} is not a torch device ({exc})") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise CommandError(
                f"--device {name!r}: this machine has {count} usable CUDA device(s); use "
                "--device cpu or another index"
            )
    return device


class _Layout:
    """Where a benchmark's files are: ``root/loose_crop`` and the protocol files in
    ``root/meta`` (matched without regard to case, as :func:`load_ijb_meta` does)."""

    def __init__(self, root: str, target: str | None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise CommandError(f"--root {root!r} is not a directory")
        self.crops, self.meta = self.root / "loose_crop", self.root / "meta"
        for folder, what in ((self.crops, "the face images"), (self.meta, "the protocol files")):
            if not folder.is_dir():
                raise CommandError(f"--root {root!r} has no {folder.name}/ folder ({what})")
        files = {p.name.lower(): p for p in self.meta.iterdir() if p.is_file()}
        if target is None:
            found = sorted(
                n[: -len("_face_tid_mid.txt")].upper()
                for n in files
                if n.endswith("_face_tid_mid.txt")
            )
            if len(found) != 1:
                raise CommandError(
                    f"{str(self.meta)!r} holds {len(found)} *_face_tid_mid.txt files "
                    f"({', '.join(found) or 'none'}): pass --target IJBC or IJBB"
                )
            target = found[0]
        self.target = target.upper()
        if self.target not in TARGETS:
            raise CommandError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
        prefix = self.target.lower()
        names = [f"{prefix}_face_tid_mid.txt", f"{prefix}_template_pair_label.txt"]
        names.append(f"{prefix}_name_5pts_score.txt")
        missing = [n for n in names if n not in files]
        if missing:
            raise CommandError(
                f"{str(self.meta)!r} lacks {', '.join(missing)} (the {self.target} protocol files "
                f"eval-ijb needs: {', '.join(names)})"
            )
        self.landmarks = files[names[2]]


def _saved_config(path: Path) -> dict[str, Any]:
    """The training ``config`` a checkpoint records (``{}`` for a bare state dict), read
    safely and without reading the tensors (a memory map)."""
    import pickle
    import zipfile

    import torch

    try:
        ckpt = torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        raise CommandError(
            f"refusing to load --checkpoint {str(path)!r}: it holds objects other than tensors "
            "and plain values"
            + (f" (the global {found.group(1)})" if found else "")
            + ", which torch.load(weights_only=True) does not run"
        ) from None
    except Exception as exc:  # torch raises many kinds for a damaged file
        first = str(exc).split(". ")[0].splitlines()[0] if str(exc) else ""
        raise CommandError(
            f"cannot read --checkpoint {str(path)!r}: truncated, corrupt or not written by "
            f"torch.save ({type(exc).__name__}: {first})"
        ) from None
    extra = ckpt.get("extra") if isinstance(ckpt, dict) else None
    config = extra.get("config") if isinstance(extra, dict) else None
    return dict(config) if isinstance(config, dict) else {}


def _load_model(args: argparse.Namespace, device: Any) -> tuple[Any, dict[str, Any], dict]:
    """The network of ``--checkpoint`` on ``device``, its architecture, and the checkpoint's
    other entries (epoch, ...); run once on a blank batch, so that a wrong size fails here."""
    import torch

    from metricface.backbones import build_backbone
    from metricface.checkpoint import load_backbone

    path = Path(args.checkpoint)
    if not path.is_file():
        raise CommandError(f"--checkpoint {args.checkpoint!r} is not a file")
    saved = _saved_config(path)
    arch: dict[str, Any] = {}
    for key, default in (("backbone", None), ("width", 1.0), ("embedding_dim", 512)):
        value = getattr(args, key)
        arch[key] = saved.get(key, default) if value is None else value
    arch["image_size"] = args.image_size or saved.get("image_size") or 112
    if not arch["backbone"]:
        raise CommandError(
            f"--checkpoint {args.checkpoint!r} records no training config (a bare state dict?): "
            "pass --backbone, and --width, --embedding-dim and --image-size as it was trained"
        )
    kw: dict[str, Any] = {"embedding_dim": int(arch["embedding_dim"])}
    if str(arch["backbone"]).startswith("iresnet"):
        kw.update(width=float(arch["width"]), input_size=int(arch["image_size"]))
    try:
        model = build_backbone(str(arch["backbone"]), **kw)
    except (TypeError, ValueError) as exc:
        raise CommandError(f"cannot build the model {arch}: {exc}") from None
    try:
        info = load_backbone(path, model)
    except ValueError as exc:  # names the weights that do not fit
        given = [
            f for f in ("backbone", "width", "embedding_dim", "image_size") if getattr(args, f)
        ]
        source = "the flags " + ", ".join(given) if given else "the checkpoint's config"
        raise CommandError(
            f"{exc}; the model was built as {arch['backbone']} (width {arch['width']}, "
            f"{arch['embedding_dim']}-d, {arch['image_size']}x{arch['image_size']} input) from "
            f"{source}: pass --backbone, --width, --embedding-dim, --image-size as it was trained"
        ) from None
    model.to(device).eval()
    size = int(arch["image_size"])
    try:
        with torch.inference_mode():
            out = model(torch.zeros(2, 3, size, size, device=device))
    except (RuntimeError, ValueError) as exc:
        raise CommandError(
            f"the model of --checkpoint {args.checkpoint!r} fails on {size}x{size} images "
            f"(--image-size?): {str(exc).splitlines()[0]}"
        ) from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise CommandError(
            f"the model of --checkpoint {args.checkpoint!r} must map images to (batch, dim) "
            f"embeddings, got {getattr(out, 'shape', type(out).__name__)}"
        )
    arch["dim"] = int(out.shape[1])
    return model, arch, info


def _weights_hash(model: Any) -> str:
    """SHA-256 of a model's state: names, dtypes, shapes and bytes of every tensor."""
    import torch

    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        t = value.detach().cpu().contiguous()
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


class _Images:
    """The benchmark's images in media-file order: paths, landmarks and detector scores."""

    def __init__(self, layout: _Layout, size: int) -> None:
        import numpy as np

        from metricface.data import (
            estimate_similarity,
            face_template,
            load_ijb_meta,
            read_ijb_landmarks,
        )

        self.meta = load_ijb_meta(layout.meta, layout.target)
        names = self.meta.media.names.tolist()
        table = read_ijb_landmarks(layout.landmarks)
        row_of = {name: i for i, name in enumerate(table.names)}
        rows = [row_of.get(name, -1) for name in names]
        lacking = [i for i, r in enumerate(rows) if r < 0]
        if lacking:
            i = lacking[0]
            raise CommandError(
                f"{layout.landmarks.name} has no landmarks for {names[i]!r} (line {i + 1} of "
                f"{Path(self.meta.files['media']).name}); {len(lacking):,} of its "
                f"{len(names):,} images have none: are the two files of the same copy?"
            )
        present = {e.name for e in os.scandir(layout.crops)}
        absent = [n for n in names if n not in present and not (layout.crops / n).is_file()]
        if absent:
            raise CommandError(
                f"{str(layout.crops)!r} lacks {absent[0]!r}, and {len(absent):,} images of "
                f"{Path(self.meta.files['media']).name} in all (is the copy complete?)"
            )
        index = np.asarray(rows, dtype=np.int64)
        self.points = np.ascontiguousarray(table.points[index])
        self.scores = table.scores[index].astype(np.float64)
        try:  # every landmark set must be usable before hours of work start
            estimate_similarity(self.points, face_template(size))
        except ValueError as exc:  # "src[i] is degenerate: ...", i in media-file order
            found = re.match(r"src\[(\d+)\] (.*)", str(exc), re.S)
            if not found:
                raise
            raise CommandError(
                f"cannot align {names[int(found.group(1))]!r} with its landmarks in "
                f"{layout.landmarks.name}: the set {found.group(2)}"
            ) from None
        self.paths = [str(layout.crops / n) for n in names]
        # the usual ranks 1, 5, 10, as far as the smallest gallery has subjects to rank
        smallest = min(
            (np.unique(g.subjects).size for g in self.meta.galleries.values()), default=10
        )
        self.ranks = tuple(r for r in (1, 5, 10) if r <= smallest)
        digest = hashlib.sha256("\n".join(names).encode())
        digest.update(self.points.astype(np.float32).tobytes())
        self.sha256 = digest.hexdigest()

    def __len__(self) -> int:
        return len(self.paths)

    def score(self, features: Any, device: Any = None) -> Any:
        """The :class:`~metricface.metrics.IJBReport` of per-image ``features``."""
        from metricface.evaluation import evaluate_ijb

        return evaluate_ijb(
            features, self.meta, weights=self.scores, ranks=self.ranks, device=device
        )

    def check(self) -> None:
        """Score constant features: every check of the protocol files that scoring makes
        (templates named by pairs and 1:N lists have images, labels, subjects), in seconds,
        before hours of features."""
        import numpy as np

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # FAR targets below the resolution of a toy set
                self.score(np.ones((len(self), 1), dtype=np.float32))
        except ValueError as exc:
            files = ", ".join(Path(p).name for p in self.meta.files.values())
            raise CommandError(f"the protocol files do not fit together ({files}): {exc}") from None


class _AlignedCrops:
    """Map-style dataset: image ``i`` decoded, aligned, normalised; with the decoding error
    (``""`` if none), so that a bad file is reported by name in one line, not as a worker
    traceback."""

    def __init__(self, paths: list[str], points: Any, size: int) -> None:
        from metricface.data import FACE_MEAN, FACE_STD, eval_transform

        self.paths, self.points, self.size = paths, points, size
        self.transform = eval_transform(size, mean=FACE_MEAN, std=FACE_STD)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, str]:
        import torch

        from metricface.data import ImageDecodeError, align_face, decode_image_file

        try:
            image = decode_image_file(self.paths[i])
        except ImageDecodeError as exc:
            return torch.zeros(3, self.size, self.size), str(exc).splitlines()[0]
        return self.transform(align_face(image, self.points[i], self.size)), ""


# ---------------------------------------------------------------------------- feature cache
def _write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through a hidden temporary file, flushed to disk and renamed into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_json(path: Path, value: Any) -> None:
    _write_atomic(path, lambda f: f.write((json.dumps(value, indent=2) + "\n").encode()))


def _cached_rows(out: Path, fingerprint: dict[str, Any], overwrite: bool) -> int:
    """Rows of ``out/features.npy`` already computed with ``fingerprint`` (0: start afresh);
    a refusal for features made otherwise, unless ``overwrite``."""
    import numpy as np

    info_path, path = out / FEATURES_INFO, out / FEATURES
    if overwrite:
        return 0
    again = "pass --overwrite to compute them again, or choose another --output"
    if not info_path.exists():
        if path.exists():
            raise CommandError(
                f"{str(path)!r} exists without {FEATURES_INFO}, so what made it is unknown: {again}"
            )
        return 0
    try:
        info = json.loads(info_path.read_text())
        saved, done = dict(info["fingerprint"]), int(info["done"])
        ours = info["format"] == _FORMAT
    except (ValueError, KeyError, TypeError):
        ours = False
    if not ours:
        raise CommandError(f"{str(info_path)!r} is not a record of eval-ijb features: {again}")
    diff = [
        f"{_SETTINGS.get(k, k)} ({saved.get(k)!r} there, {v!r} now)"
        if not k.endswith("sha256")
        else _SETTINGS.get(k, k)
        for k, v in fingerprint.items()
        if saved.get(k) != v
    ]
    if diff:
        raise CommandError(
            f"{str(path)!r} holds features computed with other settings: {'; '.join(diff)} "
            f"differ; {again}"
        )
    if done == 0:
        return 0
    try:
        stored = np.load(path, mmap_mode="r")
        ok = (
            stored.shape == (fingerprint["images"], fingerprint["dim"])
            and stored.dtype == np.float32
        )
    except (OSError, ValueError):
        ok = False
    if not ok or not 0 <= done <= fingerprint["images"]:
        raise CommandError(
            f"{str(path)!r} is missing or damaged although {FEATURES_INFO} records {done:,} rows "
            f"done: {again}"
        )
    return done


class _Interrupted(Exception):
    def __init__(self, done: int) -> None:
        self.done = done


def _compute_features(
    out: Path,
    model: Any,
    images: _Images,
    start: int,
    fingerprint: dict[str, Any],
    record: dict[str, Any],
    args: argparse.Namespace,
    device: Any,
) -> None:
    """Embed images ``start ..`` into ``out/features.npy``, recording progress as it goes."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from metricface import inference

    n, path, info_path = len(images), out / FEATURES, out / FEATURES_INFO
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]

    def save(done: int) -> None:
        features.flush()
        _write_json(info_path, {**record, "done": done, "fingerprint": fingerprint})

    if start == 0:
        path.unlink(missing_ok=True)
        _write_json(info_path, {**record, "done": 0, "fingerprint": fingerprint})
        features = np.lib.format.open_memmap(
            path, mode="w+", dtype=np.float32, shape=(n, fingerprint["dim"])
        )
    else:
        features = np.load(path, mmap_mode="r+")
    loader = DataLoader(
        _AlignedCrops(images.paths, images.points, fingerprint["image_size"]),
        batch_size=args.batch_size,
        sampler=range(start, n),
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
    )
    done = saved = start
    progress = Progress(n, "eval-ijb", initial=start, enabled=not args.no_progress, every=30.0)
    try:
        for batch, errors in loader:
            bad = next((e for e in errors if e), None)
            if bad:
                raise CommandError(
                    f"{bad}; the features of the first {done:,} images are kept: replace the "
                    "file and run the same command again to continue"
                )
            emb, _ = inference.embed(
                model, [batch], device=device, amp_dtype=amp, flip_tta=True, normalize=False
            )
            features[done : done + emb.shape[0]] = emb.numpy()
            done += emb.shape[0]
            progress.update(emb.shape[0])
            if done - saved >= _SAVE_EVERY:
                save(done)
                saved = done
    except KeyboardInterrupt:
        save(done)
        raise _Interrupted(done) from None
    except BaseException:
        if done != saved:
            save(done)
        raise
    finally:
        progress.close()
    save(done)


# ---------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> int:
    from metricface.data import FACE_MEAN, FACE_STD

    started = time.monotonic()
    device = _check_options(args)
    layout = _Layout(args.root, args.target)
    model, arch, info = _load_model(args, device)
    images = _Images(layout, int(arch["image_size"]))
    out = Path(args.output or f"ijb-{layout.target.lower()}-{Path(args.checkpoint).stem}")
    if out.exists() and not out.is_dir():
        raise CommandError(f"--output {str(out)!r} exists and is not a directory")
    fingerprint = {
        "images": len(images),
        "dim": arch["dim"],
        "images_sha256": images.sha256,
        "weights_sha256": _weights_hash(model),
        "backbone": arch["backbone"],
        "width": arch["width"],
        "embedding_dim": arch["embedding_dim"],
        "image_size": int(arch["image_size"]),
        "flip_tta": True,
        "normalize": False,
        "mean": list(FACE_MEAN),  # the example trainers' normalisation (_AlignedCrops)
        "std": list(FACE_STD),
        "amp": args.amp,
    }
    start = _cached_rows(out, fingerprint, args.overwrite)
    if start < len(images):
        images.check()
    # ---- every check passed: from here on, work is written and kept
    n = len(images)
    ckpt = Path(args.checkpoint)
    stat = ckpt.stat()
    record = {
        "format": _FORMAT,
        "checkpoint": str(ckpt.resolve()),
        "checkpoint_size": stat.st_size,
        "checkpoint_mtime": stat.st_mtime,
        "epoch": info.get("epoch"),
        "root": str(layout.root.resolve()),
        "target": layout.target,
        "rows": n,
    }
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():  # temporary files of a run killed while writing one
        if _TMP.match(stale.name):
            stale.unlink(missing_ok=True)
    t0 = time.monotonic()
    if start < n:
        print(
            f"eval-ijb: {'continuing after' if start else 'embedding'} "
            + (f"{start:,} of " if start else "")
            + f"{n:,} images of {layout.target} on {device} "
            f"({arch['image_size']}x{arch['image_size']}, flip TTA, --amp {args.amp})",
            file=sys.stderr,
            flush=True,
        )
        try:
            _compute_features(out, model, images, start, fingerprint, record, args, device)
        except _Interrupted as stop:
            print(
                f"\nmetricface eval-ijb: interrupted after {stop.done:,} of {n:,} images; their "
                f"features are kept in {str(out / FEATURES)!r}: run the same command again to "
                "continue",
                file=sys.stderr,
            )
            return 130
        features_note = f"computed in {time.monotonic() - t0:.1f} s"
    else:
        features_note = "reused (complete, same settings)"
    try:
        return _score(args, out, layout, images, arch, info, device, features_note, started)
    except KeyboardInterrupt:
        print(
            f"\nmetricface eval-ijb: interrupted while scoring; the features are complete in "
            f"{str(out / FEATURES)!r}: run the same command again to score them",
            file=sys.stderr,
        )
        return 130


def _score(
    args: argparse.Namespace,
    out: Path,
    layout: _Layout,
    images: _Images,
    arch: dict[str, Any],
    info: dict,
    device: Any,
    features_note: str,
    started: float,
) -> int:
    import numpy as np

    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = images.score(np.load(out / FEATURES), device)
    seconds = time.monotonic() - t0
    for message in dict.fromkeys(str(w.message) for w in caught):  # one line each, no source
        print(f"eval-ijb: note: {message}", file=sys.stderr)
    epoch = f", epoch {info['epoch']}" if info.get("epoch") is not None else ""
    width = f" width {arch['width']:g}," if str(arch["backbone"]).startswith("iresnet") else ""
    header = (
        f"checkpoint {args.checkpoint} ({arch['backbone']},{width} {arch['dim']}-d"
        f"{epoch}), {arch['image_size']}x{arch['image_size']} aligned crops, flip TTA (sum), "
        f"detector-score weights, --amp {args.amp}"
    )
    text = f"{header}\n{report.format()}\n"
    print(text, end="")
    _write_atomic(out / "report.txt", lambda f: f.write(text.encode()))
    metrics = {
        k: (None if isinstance(v, float) and math.isnan(v) else v)
        for k, v in report.as_dict().items()
    }
    _write_json(out / "metrics.json", metrics)
    _write_atomic(out / "scores.npy", lambda f: np.save(f, report.scores))
    written = ["report.txt", "metrics.json", "scores.npy"]
    plot = _save_roc(out / "roc.png", report, layout.target)
    if plot is None:
        written.append("roc.png")
    print(
        f"wrote {', '.join(written)} to {str(out)!r}"
        + (f" ({plot})" if plot else "")
        + f"; features {features_note}; scoring {seconds:.1f} s; total "
        f"{time.monotonic() - started:.1f} s"
    )
    return 0


def _save_roc(path: Path, report: Any, target: str) -> str | None:
    """Draw the 1:1 ROC into ``path``; ``None``, or why it was skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from metricface.plots import plot_report
    except ImportError:
        return "roc.png skipped: matplotlib is not installed (pip install 'metricface[plot]')"
    ax = plot_report(report.verification, "roc", label=f"{target} 1:1")
    try:
        _write_atomic(
            path, lambda f: ax.figure.savefig(f, format="png", dpi=100, bbox_inches="tight")
        )
    finally:
        plt.close(ax.figure)
    return None
