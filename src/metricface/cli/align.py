"""``python -m metricface align``: align a whole face dataset with its landmark file.

::

    python -m metricface align SRC_ROOT LANDMARKS DST_ROOT [--size 112] [--quality 95]
                               [--workers N] [--format auto|vggface2|ijb] [--no-progress]

Every image under ``SRC_ROOT`` that has a row in ``LANDMARKS`` is warped onto the 5-point
template with :func:`~metricface.data.align.align_face` and written as a JPEG to the same
relative path under ``DST_ROOT``, with the extension ``.jpg``: VGGFace2's
``train/n000002/0001_01.jpg`` becomes ``DST_ROOT/n000002/0001_01.jpg``, the tree that
:class:`~metricface.data.folder.IdentityFolder` reads. A row matches the image whose path relative
to ``SRC_ROOT``, without its extension, equals the row's name without extension
(``n000002/0001_01`` in VGGFace2's CSV, ``1.jpg`` in IJB's ``*_name_5pts_score.txt``; the format
is recognised from the file's first line, or set with ``--format``).

Worker processes do the decoding, warping and encoding. Each crop is written to a hidden
temporary file and renamed into place, so a file with the final name is always complete: a
re-run skips them and continues with the rest, and Ctrl-C (or a killed run) never leaves a
partial crop behind (stale temporary files are removed by the next run). A crash of the whole
machine can still lose data the file system had not written; check such a tree with
:meth:`IdentityFolder.verify <metricface.data.folder.IdentityFolder.verify>`.

The summary counts images written, skipped (already done), without a landmark row (listed in
``DST_ROOT/missing_landmarks.txt``), and failed (undecodable files and landmarks that cannot be
aligned: NaN, coincident or collinear points; listed with the reason in
``DST_ROOT/failed_images.txt``). The exit status is 0, or 1 when some image failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from metricface.cli import CommandError
from metricface.cli.support import Progress, default_workers

HELP = {
    "align": "write 5-point aligned face crops of a dataset, given its landmark file "
    "(VGGFace2 CSV or IJB txt); resumable"
}

MISSING_FILE = "missing_landmarks.txt"
FAILED_FILE = "failed_images.txt"
SETTINGS_FILE = ".align.json"  # what made the crops in DST_ROOT: a resumed run must match it
_CHUNK = 32  # images per task: small, so that Ctrl-C returns within a fraction of a second
_TMP = re.compile(r"^\..+\.jpg\.\d+\.tmp$")
_UNDECODABLE = "cannot decode"


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.epilog = (
        "Every image under SRC_ROOT with a landmark row is written to\n"
        "DST_ROOT/<its path without extension>.jpg; a re-run skips finished crops and\n"
        f"continues. Images with no row are listed in DST_ROOT/{MISSING_FILE}, images\n"
        f"that fail in DST_ROOT/{FAILED_FILE}; the exit status is 1 if any failed."
    )
    parser.add_argument("src_root", metavar="SRC_ROOT", help="folder of the source images")
    parser.add_argument(
        "landmarks",
        metavar="LANDMARKS",
        help="landmark file: VGGFace2 loose_landmark_*.csv or IJB *_name_5pts_score.txt",
    )
    parser.add_argument(
        "dst_root", metavar="DST_ROOT", help="folder for the aligned crops (created if needed)"
    )
    parser.add_argument(
        "--size", type=int, default=112, help="side of the square crop (224: same crop, denser)"
    )
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality, 1-100")
    parser.add_argument(
        "--workers", type=int, default=default_workers(), help="worker processes (1: none)"
    )
    parser.add_argument(
        "--format",
        choices=("auto", "vggface2", "ijb"),
        default="auto",
        help="landmark file format; auto: a first line naming NAME_ID is VGGFace2's CSV",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# ---------------------------------------------------------------------------- workers
def _init_worker() -> None:
    import signal

    import torch

    # Ctrl-C goes to the whole process group: the parent decides, workers finish their task
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


def _align_file(src: str, dst: str, points: Any, size: int, quality: int) -> str | None:
    """Write one aligned crop atomically; the reason it failed, or None."""
    import numpy as np
    from PIL import Image

    from metricface.data import ImageDecodeError, align_face, decode_image_file

    try:
        image = decode_image_file(src)
    except ImageDecodeError as exc:
        return f"{_UNDECODABLE}: {exc.__cause__ or exc}"
    try:
        crop = align_face(image, points, size)
    except ValueError as exc:
        return f"unusable landmarks: {exc}"
    path = Path(dst)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(np.ascontiguousarray(crop.permute(1, 2, 0).numpy())).save(
            tmp, format="JPEG", quality=quality
        )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return None


def _align_chunk(chunk: Sequence[tuple[str, str, Any]], size: int, quality: int) -> list:
    return [(src, _align_file(src, dst, points, size, quality)) for src, dst, points in chunk]


# ---------------------------------------------------------------------------- planning
def _scan(root: Path) -> Iterator[str]:
    """Relative POSIX paths of the non-hidden files under ``root``, in sorted order."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(folder).relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        for name in sorted(files):
            if not name.startswith("."):
                yield prefix + name


def _split_ext(name: str, extensions: tuple[str, ...]) -> tuple[str, str]:
    stem, ext = os.path.splitext(name)
    return (stem, ext) if ext.lower() in extensions else (name, "")


def _read_landmarks(path: Path, fmt: str):
    from metricface.data import read_ijb_landmarks, read_vggface2_landmarks

    if fmt == "auto":
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            first = next((line for line in f if line.strip()), "")
        fmt = "vggface2" if "NAME_ID" in first else "ijb"
    return (read_vggface2_landmarks if fmt == "vggface2" else read_ijb_landmarks)(path)


def _write_list(path: Path, lines: Iterable[str]) -> None:
    """Write (or, for no lines, remove) a report file atomically."""
    lines = list(lines)
    if not lines:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, path)


def _check_args(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    if args.size < 1:
        raise CommandError(f"--size must be a positive number of pixels, got {args.size}")
    if not 1 <= args.quality <= 100:
        raise CommandError(f"--quality must be in [1, 100], got {args.quality}")
    if args.workers < 1:
        raise CommandError(f"--workers must be at least 1, got {args.workers}")
    src, landmarks, dst = Path(args.src_root), Path(args.landmarks), Path(args.dst_root)
    if not src.is_dir():
        raise CommandError(f"SRC_ROOT {str(src)!r} is not a directory")
    if not landmarks.is_file():
        raise CommandError(f"LANDMARKS {str(landmarks)!r} is not a file")
    src_abs, dst_abs = src.resolve(), dst.resolve()
    if dst_abs == src_abs or src_abs in dst_abs.parents:
        raise CommandError(f"DST_ROOT {str(dst)!r} must not be SRC_ROOT or a folder inside it")
    if dst.exists() and not dst.is_dir():
        raise CommandError(f"DST_ROOT {str(dst)!r} exists and is not a directory")
    return src, landmarks, dst


def _settings(args: argparse.Namespace, landmarks: Path) -> dict[str, Any]:
    """What decides the crops: their size, JPEG quality and the landmark file's content."""
    digest = hashlib.sha256()
    with open(landmarks, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"size": args.size, "quality": args.quality, "landmarks_sha256": digest.hexdigest()}


def _check_settings(dst: Path, settings: dict[str, Any]) -> bool:
    """Refuse to add crops to ``dst`` made otherwise than those there (before any work).

    Returns whether ``dst`` already records these settings.
    """
    path = dst / SETTINGS_FILE
    try:
        before = json.loads(path.read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        raise CommandError(
            f"{str(path)!r} is unreadable; remove it to align into DST_ROOT"
        ) from None
    if before != settings:
        names = {"size": "--size", "quality": "--quality", "landmarks_sha256": "LANDMARKS"}
        changed = [
            f"{names.get(key, key)} {before.get(key)} (this run: {settings[key]})"
            if key != "landmarks_sha256"
            else "another LANDMARKS file"
            for key in settings
            if before.get(key) != settings[key]
        ]
        raise CommandError(
            f"DST_ROOT {str(dst)!r} holds crops made with {', '.join(changed)}; this run would "
            f"mix them with others: use another DST_ROOT (or delete {str(path)!r} to mix them)"
        )
    return True


def _record_settings(dst: Path, settings: dict[str, Any]) -> None:
    path = dst / SETTINGS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(settings))
    tmp.rename(path)  # atomic; there is no file to replace


def _finished(dst: Path) -> set[str]:
    """Crops already under ``dst`` (paths without ``.jpg``); removes stale temporary files."""
    finished = set()
    for folder, dirs, files in os.walk(dst):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(folder).relative_to(dst).as_posix()
        prefix = "" if rel == "." else rel + "/"
        for name in files:
            if _TMP.match(name):  # left by a run that was killed while writing
                (Path(folder) / name).unlink(missing_ok=True)
            elif name.endswith(".jpg") and not name.startswith("."):
                finished.add(prefix + name[:-4])
    return finished


def run(args: argparse.Namespace) -> int:
    from metricface.data import IMAGE_EXTENSIONS

    started = time.monotonic()
    src, landmarks_path, dst = _check_args(args)
    settings = _settings(args, landmarks_path)
    recorded = _check_settings(dst, settings)  # before scanning SRC_ROOT and parsing landmarks
    table = _read_landmarks(landmarks_path, args.format)

    images: dict[str, str] = {}  # path without extension -> extension
    for rel in _scan(src):
        stem, ext = _split_ext(rel, IMAGE_EXTENSIONS)
        if not ext:
            continue
        if stem in images:
            raise CommandError(
                f"SRC_ROOT holds two images that would be written to {stem + '.jpg'!r}: "
                f"{stem + images[stem]!r} and {rel!r}"
            )
        images[stem] = ext
    if not images:
        raise CommandError(f"SRC_ROOT {str(src)!r} holds no image ({', '.join(IMAGE_EXTENSIONS)})")

    rows: dict[str, int] = {}  # image path without extension -> landmark row
    for i, name in enumerate(table.names):
        stem = _split_ext(name.replace("\\", "/").removeprefix("./"), IMAGE_EXTENSIONS)[0]
        if stem in images:
            rows[stem] = i
    if not rows:
        image = next(iter(images))
        row = repr(table.names[0]) if table.names else "none: the file has no rows"
        raise CommandError(
            f"none of the {len(images):,} images under {str(src)!r} has a row in "
            f"{str(landmarks_path)!r} (e.g. image {image + images[image]!r}, row {row}): are they "
            "the same dataset and split?"
        )
    missing = [stem + ext for stem, ext in images.items() if stem not in rows]

    dst.mkdir(parents=True, exist_ok=True)
    finished = _finished(dst)
    if not recorded:
        _record_settings(dst, settings)
    todo = [stem for stem in rows if stem not in finished]
    skipped = len(rows) - len(todo)

    def chunks() -> Iterator[list]:
        for i in range(0, len(todo), _CHUNK):
            yield [
                (str(src / (s + images[s])), str(dst / (s + ".jpg")), table.points[rows[s]])
                for s in todo[i : i + _CHUNK]
            ]

    written, failed = 0, []
    progress = Progress(len(todo), "align", enabled=not args.no_progress)

    def record(results: list) -> None:
        nonlocal written
        for src_path, error in results:
            if error is None:
                written += 1
            else:
                failed.append((Path(src_path).relative_to(src).as_posix(), error))
        progress.update(len(results))

    import torch

    interrupted, threads = False, torch.get_num_threads()
    try:
        if args.workers == 1 or len(todo) <= _CHUNK:
            torch.set_num_threads(1)  # one small image at a time: threads only cost here
            for chunk in chunks():
                for item in chunk:  # one by one: an interruption counts every finished crop
                    record(_align_chunk([item], args.size, args.quality))
        else:
            interrupted = _run_pool(chunks(), args, record)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        torch.set_num_threads(threads)
        progress.close()

    if interrupted:
        print(
            f"metricface align: interrupted after {written:,} crops written this run "
            f"({written + skipped:,} of {len(rows):,} done); no partial file is left: run the "
            "same command again to continue",
            file=sys.stderr,
        )
        return 130
    _write_list(dst / MISSING_FILE, missing)
    _write_list(dst / FAILED_FILE, (f"{path}\t{error}" for path, error in failed))
    undecodable = sum(error.startswith(_UNDECODABLE) for _, error in failed)
    counts = [
        ("written", written, None),
        ("skipped (already done)", skipped, None),
        ("without landmarks", len(missing), MISSING_FILE),
        ("failed to decode", undecodable, FAILED_FILE),
        ("unusable landmarks", len(failed) - undecodable, FAILED_FILE),
    ]
    print(
        f"metricface align: {str(src)!r} -> {str(dst)!r} ({args.size}x{args.size}, JPEG quality "
        f"{args.quality}), {len(images):,} images, {time.monotonic() - started:.1f} s"
    )
    for label, count, listed in counts:
        where = f"  (listed in {str(dst / listed)!r})" if listed and count else ""
        print(f"  {label + ':':<24}{count:>10,}{where}")
    unmatched = len(table.names) - len(rows)
    if unmatched:
        print(f"  ({unmatched:,} landmark rows name no image under SRC_ROOT)")
    return 1 if failed else 0


def _run_pool(chunks: Iterator[list], args: argparse.Namespace, record) -> bool:
    """Run the chunks in worker processes; True if Ctrl-C stopped it."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    pending: set = set()
    with ProcessPoolExecutor(args.workers, initializer=_init_worker) as pool:

        def fill() -> None:  # a bounded number of tasks in flight: Ctrl-C drains quickly
            while len(pending) < 2 * args.workers:
                chunk = next(chunks, None)
                if chunk is None:
                    return
                pending.add(pool.submit(_align_chunk, chunk, args.size, args.quality))

        try:
            fill()
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    pending.discard(future)
                    record(future.result())
                fill()
        except KeyboardInterrupt:
            # the workers ignore SIGINT: let them finish (and record) what they hold
            for future in pending:
                future.cancel()
            for future in wait(pending).done:
                if not future.cancelled() and future.exception() is None:
                    record(future.result())
            return True
        except BrokenProcessPool:
            raise CommandError(
                "a worker process died (out of memory?); the crops written so far are kept: "
                "run the same command again to continue"
            ) from None
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return False
