"""The run folder of an example: a used one is refused, an unused one appears only when work
starts, and a run cut short (Ctrl-C, an error) keeps its last checkpoint and says how to go on.

A run folder that already holds files is refused unless the run resumes it (``--resume``) or
replaces it (``--overwrite``). It is created when work starts and removed again if the run ends
without having saved a checkpoint. Ctrl-C keeps the last epoch's checkpoint (one being written
is finished first) and prints the exact command that continues the run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from _cli import Interrupted, UsageError, flag

from metricface.checkpoint import load_checkpoint
from metricface.data import ImageDecodeError


class RunFolder:
    """The ``--output`` folder of a run, checked before any work is done.

    A folder that holds anything is refused unless the run resumes (``--resume``) or replaces
    (``--overwrite``) it. :meth:`create` makes the folder when work starts; :meth:`discard`
    removes the files this run wrote, and the folder if it made it, when the run ends without a
    checkpoint. ``outputs`` are the file names a run writes (what ``--overwrite`` removes).
    """

    def __init__(self, args: argparse.Namespace, script: str, outputs: Sequence[str]) -> None:
        self.outputs = tuple(outputs)
        self.created = False
        self.saved_epoch: int | None = None  # what the checkpoint holds, once there is one
        if args.output:
            self.path = Path(args.output)
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.path = Path("runs") / f"{script}-{stamp}"
            k = 2
            while self.path.exists():
                self.path, k = Path("runs") / f"{script}-{stamp}-{k}", k + 1
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"--output {str(self.path)!r} is a file, not a folder")
        held = sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []
        if held and not getattr(args, "resume", None) and not args.overwrite:
            shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
            continuable = " --resume to continue it," if hasattr(args, "resume") else ""
            raise UsageError(
                f"--output {str(self.path)!r} already holds files ({shown}): pass"
                f"{continuable} --overwrite to replace it, or choose another --output"
            )
        self.overwrite = bool(args.overwrite and held)

    def create(self) -> Path:
        """Make the folder (work starts now); with ``--overwrite``, remove the old outputs."""
        if not self.path.exists():
            self.path.mkdir(parents=True)
            self.created = True
        elif self.overwrite:
            for name in self.outputs:
                _remove(self.path / name)
        return self.path

    def discard(self) -> bool:
        """Remove what this run wrote if it saved no checkpoint; whether it did so."""
        if self.saved_epoch is not None:
            return False
        if self.created or self.overwrite:
            for name in self.outputs:
                _remove(self.path / name)
        if self.created:
            with contextlib.suppress(OSError):  # only if empty
                self.path.rmdir()
        return True


def _remove(path: Path) -> None:
    """Remove a file or a folder (e.g. TensorBoard's), if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def resume_command(argv: Sequence[str], output: Path, world: int = 1) -> str:
    """The command line that continues this run: ``argv`` with ``--output <output> --resume``."""
    kept, skip = [], False
    for i, token in enumerate(argv):
        if skip:
            skip = False
            continue
        if token in ("--output", "--resume"):
            # --output always takes a value; --resume only when one follows, as argparse does
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            skip = token == "--output" or (nxt is not None and not nxt.startswith("-"))
            continue
        if token.startswith(("--output=", "--resume=")) or token == "--overwrite":
            continue
        kept.append(token)
    python = sys.executable
    if shutil.which("python") == python:
        python = "python"
    script = sys.argv[0] if sys.argv[0].endswith(".py") else "<script>"
    launch = [python, script] if world == 1 else ["torchrun", f"--nproc-per-node={world}", script]
    return shlex.join([*launch, *kept, "--output", str(output), "--resume"])


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Finish the block before Ctrl-C takes effect (e.g. a checkpoint being written)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda sig, frame: caught.append(sig))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt


@contextlib.contextmanager
def guarded(folder: RunFolder, args: argparse.Namespace, world: int = 1) -> Iterator[None]:
    """Keep what is safe and say how to go on when the run inside ends early.

    Ctrl-C: the last epoch's checkpoint stays; the command that continues the run is printed
    (or, with nothing saved yet, the empty run folder is removed). Any other error: the same
    clean-up, and a note of what the checkpoint holds.
    """
    main_proc = int(os.environ.get("RANK", "0")) == 0
    try:
        yield
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        if not folder.discard() and main_proc:
            note = (
                f"{str(folder.path / 'checkpoint.pt')!r} holds epoch {folder.saved_epoch}; "
                "continue with:\n  " + resume_command(args.argv, folder.path, world)
            )
            if isinstance(exc, (UsageError, ImageDecodeError)):
                exc.continuation = note  # type: ignore[union-attr]  # printed after the error
            else:
                print(f"\n{'interrupted' if interrupted else 'stopped'}: {note}", file=sys.stderr)
        elif interrupted and main_proc:
            removed = f"; removed {str(folder.path)!r}" if folder.created else ""
            print(f"\ninterrupted: nothing was saved yet{removed}", file=sys.stderr)
        if interrupted:
            raise Interrupted from None
        raise


class Resume(NamedTuple):
    """The checkpoint ``--resume`` names: its path, finished epochs and extra entries."""

    path: Path
    epoch: int
    extra: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return self.extra.get("config", {})

    def into(self, folder: RunFolder) -> bool:
        """Whether it is the run folder's own checkpoint (which the run then replaces)."""
        return self.path.resolve() == (folder.path / "checkpoint.pt").resolve()


def read_resume(args: argparse.Namespace, folder: RunFolder) -> Resume | None:
    """The checkpoint ``--resume`` names, read safely (weights only, no RNG touched), or
    ``None`` without ``--resume``. Errors name the flag."""
    if not getattr(args, "resume", None):
        return None
    path = folder.path / "checkpoint.pt" if args.resume == "auto" else Path(args.resume)
    if not path.is_file():
        raise UsageError(f"--resume: no checkpoint at {str(path)!r} to continue")
    try:
        ckpt = load_checkpoint(path)
    except ValueError as exc:  # corrupt, unsafe or not a checkpoint
        raise UsageError(f"--resume: {exc}") from None
    return Resume(path, int(ckpt["epoch"]), dict(ckpt["extra"]))


#: Settings a resumed run must share with its checkpoint: they define the data, the model, the
#: loss, the sampling and the whole learning-rate schedule (``--epochs`` included). They are
#: compared as the run resolved them, so the values a ``--recipe`` or ``--tiny`` set count as
#: if given explicitly.
RESUME_KEYS = (
    "recipe",
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
    "schedule",
    "clip_grad_norm",
    "augment",
    "sample_rate",
    "chunk_size",
    "seed",
    "amp",
)


def check_resume(resume: Resume | None, args: argparse.Namespace, keys: Sequence[str]) -> None:
    """Refuse to resume a checkpoint written with other ``keys`` settings (one line)."""
    if resume is None:
        return
    saved, path, now = resume.config, resume.path, vars(args)
    diff = [
        f"{flag(k)}: {saved[k]} in the checkpoint, {now[k]} now"
        for k in keys
        if k in saved and saved[k] != now.get(k)
    ]
    if diff:
        raise UsageError(
            f"cannot resume {str(path)!r} with other settings than it was trained with ("
            + "; ".join(diff)
            + "): run with the checkpoint's settings, or start a new run in another --output"
        )


def restore(resume: Resume, folder: RunFolder, **objects: Any) -> dict[str, Any]:
    """Load the checkpoint :func:`read_resume` checked into ``objects`` (``model=``, ...)."""
    ckpt = load_checkpoint(resume.path, **objects)
    if resume.into(folder):
        folder.saved_epoch = resume.epoch
    return ckpt


def stop_requested(args: argparse.Namespace, done: int, main_proc: bool = True) -> bool:
    """Whether ``--stop-after-epoch`` asks to stop after ``done`` epochs (said on rank 0)."""
    if args.stop_after_epoch is None or done < args.stop_after_epoch:
        return False
    if main_proc:
        print(f"stopping after epoch {done} as asked (--stop-after-epoch)")
    return True
