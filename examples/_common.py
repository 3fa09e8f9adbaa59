"""Glue shared by the example trainers: command line, run folder, data, evaluation, logging.

Everything here only wires metricface's public pieces together; no training logic lives here.

The command line follows one order, so that a mistake never costs work: parse and check every
flag (types and ranges, flags that do not apply to this run, the ``--output`` folder, the
checkpoint to resume, the ``--data`` folder's identities) before any data is built or any file
is written; a mistake ends in one line, ``<script>: error: <what was wrong>``, with exit status
2 (``METRICFACE_DEBUG=1`` shows the traceback). The run folder is created only when work starts
and is removed again if the run ends without having saved anything. Ctrl-C keeps the last
epoch's checkpoint (a checkpoint being written is finished first) and prints the command that
continues the run.

A script adds a flag in two places: the parser (with ``help=``, so ``--help`` shows it and its
default) and, if it applies only to some runs, :data:`ONLY_FOR`-style rules that refuse it
where it does not apply.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import shlex
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Subset
from torchvision.transforms.v2.functional import resize

from metricface.backbones import available_backbones, build_backbone
from metricface.checkpoint import get_rng_state, load_checkpoint, set_rng_state
from metricface.data import (
    IdentityFolder,
    ImageDecodeError,
    SyntheticFaces,
    eval_transform,
    train_transform,
)
from metricface.inference import embed
from metricface.metrics import (
    VerificationReport,
    all_pair_scores,
    verification_report_from_embeddings,
)

# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


class UsageError(Exception):
    """A user mistake, reported in one line without a traceback (exit status 2)."""


class Interrupted(Exception):
    """Ctrl-C, after what was safe to keep is kept and the way on is printed (status 130)."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default, except where there is none (``None``, off switches)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" not in text
            and default is not None
            and default is not argparse.SUPPRESS
            and default is not False
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``<prog>: error: <message>``."""

    def __init__(self, doc: str, prog: str) -> None:
        summary, _, rest = doc.partition("\n\n")
        super().__init__(
            prog=prog,
            description=summary,
            epilog=rest,
            formatter_class=_HelpFormatter,
            allow_abbrev=False,  # "--out" must not silently mean "--output"
        )

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message)


def flag(dest: str) -> str:
    """The command-line spelling of an argument: ``batch_size`` -> ``--batch-size``."""
    return "--" + dest.replace("_", "-")


def number(kind: type, low: float, *, above: bool = False, what: str = "") -> Callable[[str], Any]:
    """An argparse type: ``kind`` (int or float) at least ``low`` (above it if ``above``)."""
    expected = (
        what or f"{'an integer' if kind is int else 'a number'} {'>' if above else '>='} {low:g}"
    )

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        ok = value is not None and value == value and abs(value) != float("inf")
        if not ok or (value <= low if above else value < low):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value

    return parse


#: argparse types shared by the examples' flags.
POSITIVE_INT = number(int, 1, what="a positive integer")
AT_LEAST_TWO = number(int, 2)
NON_NEGATIVE_INT = number(int, 0)
POSITIVE_FLOAT = number(float, 0, above=True, what="a positive number")
NON_NEGATIVE_FLOAT = number(float, 0)
IMAGE_SIZE = number(int, 16, what="an image side of at least 16 pixels")


def add_common_args(
    p: argparse.ArgumentParser, *, epochs: int, lr: float, folder_data: bool = True
) -> None:
    """The data, model, optimisation and run flags every example shares.

    ``folder_data=False`` leaves out ``--data`` and ``--on-bad-image`` (an example that draws
    its images from the synthetic faces only).
    """
    g = p.add_argument_group("data")
    if folder_data:
        g.add_argument(
            "--data",
            metavar="DIR",
            help="root of an identity-per-folder dataset (default: the built-in synthetic faces)",
        )
    g.add_argument(
        "--identities", type=AT_LEAST_TWO, default=300, help="synthetic training identities"
    )
    g.add_argument(
        "--images-per-identity",
        type=AT_LEAST_TWO,
        default=12,
        help="synthetic images of each training identity",
    )
    g.add_argument(
        "--eval-identities",
        type=AT_LEAST_TWO,
        default=50,
        help="identities held out for evaluation (never trained on)",
    )
    g.add_argument(
        "--eval-images",
        type=AT_LEAST_TWO,
        default=8,
        help="images per held-out identity" + (" (at most this many with --data)" * folder_data),
    )
    g.add_argument(
        "--image-size",
        type=IMAGE_SIZE,
        help="image side in pixels (default: "
        + ("64 for synthetic faces, 112 with --data)" if folder_data else "64)"),
    )
    if folder_data:
        g.add_argument(
            "--on-bad-image",
            choices=("raise", "skip"),
            default="raise",
            help="an undecodable file in --data: stop naming it, or warn and use another image "
            "of the same identity",
        )
    g.add_argument("--workers", type=NON_NEGATIVE_INT, default=0, help="DataLoader processes")
    g = p.add_argument_group("model")
    g.add_argument(
        "--backbone",
        default="iresnet18",
        choices=available_backbones(),
        metavar="NAME",
        help="one of metricface.backbones.available_backbones(): iresnet18/34/50/100/"
        "200, resnet18/34/50/101/152",
    )
    g.add_argument(
        "--width", type=POSITIVE_FLOAT, default=0.25, help="channel multiplier (iresnet)"
    )
    g.add_argument("--embedding-dim", type=POSITIVE_INT, default=128, help="embedding size")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=POSITIVE_INT, default=epochs, help="training epochs")
    g.add_argument("--batch-size", type=AT_LEAST_TWO, default=64, help="images per batch")
    g.add_argument(
        "--optimizer",
        choices=("sgd", "adamw"),
        default="sgd",
        help="SGD with momentum 0.9, or AdamW",
    )
    g.add_argument("--lr", type=POSITIVE_FLOAT, default=lr, help="peak learning rate")
    g.add_argument("--weight-decay", type=NON_NEGATIVE_FLOAT, default=5e-4, help="weight decay")
    g.add_argument(
        "--warmup-epochs",
        type=NON_NEGATIVE_FLOAT,
        default=1.0,
        help="epochs of linear learning-rate warm-up",
    )
    g.add_argument(
        "--seed", type=NON_NEGATIVE_INT, default=0, help="seed of data, sampling and weights"
    )
    g.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to train on",
    )
    g = p.add_argument_group("run")
    g.add_argument(
        "--output", metavar="DIR", help="run folder (default: runs/<script>-<date>-<time>)"
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an --output that holds an earlier run, replacing its files",
    )
    g.add_argument(
        "--tiny",
        action="store_true",
        help="a seconds-long smoke run (CI): "
        + " ".join(f"{flag(k)} {v}" for k, v in TINY.items())
        + "; flags given explicitly still win",
    )
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")


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


def group(p: argparse.ArgumentParser, title: str) -> Any:
    """The argument group of ``p`` with this title (made if there is none)."""
    for g in p._action_groups:
        if g.title == title:
            return g
    return p.add_argument_group(title)


def add_resume_args(g: Any) -> None:
    """``--resume [PATH]`` and ``--stop-after-epoch N`` on an argument parser or group."""
    g.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        metavar="PATH",
        help="continue a run from its checkpoint (default PATH: <output>/checkpoint.pt); "
        "the settings must be those it was started with",
    )
    g.add_argument(
        "--stop-after-epoch",
        type=POSITIVE_INT,
        metavar="N",
        help="stop after epoch N, keeping its checkpoint (resume later)",
    )


_UNSET = object()


def given_flags(p: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations of the flags that ``argv`` sets explicitly (not by a default)."""
    dests = {a.dest for a in p._actions if a.dest is not argparse.SUPPRESS}
    # argparse fills in a default only where the namespace lacks the attribute
    ns = argparse.Namespace(**dict.fromkeys(dests, _UNSET))
    p.parse_args(list(argv), ns)
    return {d for d in dests if getattr(ns, d) is not _UNSET}


#: A rule that refuses a flag where it does not apply: flag -> (the flag it depends on, whether
#: that flag's value allows it, what it applies to).
Rule = tuple[str, Callable[[Any], bool], str]

#: Rules every example with --data shares.
DATA_RULES: dict[str, Rule] = {
    "on_bad_image": ("data", lambda v: v is not None, "--data folders"),
    "identities": ("data", lambda v: v is None, "the built-in synthetic faces"),
    "images_per_identity": ("data", lambda v: v is None, "the built-in synthetic faces"),
}


def parse_args(
    p: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    rules: Mapping[str, Rule] = DATA_RULES,
    **tiny: Any,
) -> argparse.Namespace:
    """Parse and check ``argv``: types and ranges, flags that do not apply, flag combinations.

    With ``--tiny``, :data:`TINY` (and ``tiny``) replace the defaults of the flags not given.
    A flag given explicitly where its rule in ``rules`` says it does not apply is refused.
    The image size is resolved (the saved config records the real one).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    given = given_flags(p, argv)
    if args.tiny:
        for k, v in {**TINY, **tiny}.items():
            if k not in given:
                setattr(args, k, v)
    for dest, (on, allows, what) in rules.items():
        if dest in given and not allows(getattr(args, on, None)):
            value = getattr(args, on, None)
            now = (
                f"and this run has no {flag(on)}" if value is None else f"not to {flag(on)} {value}"
            )
            p.error(f"{flag(dest)} applies only to {what}, {now}")
    if getattr(args, "resume", None) and args.overwrite:
        p.error("--resume continues the run in --output and --overwrite replaces it: pick one")
    if getattr(args, "resume", None) == "auto" and not args.output:
        p.error("--resume without a PATH needs --output (the run folder to continue)")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        p.error(f"--device: not a torch device: {args.device!r} (e.g. cpu, cuda, cuda:1)")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available here; use --device cpu")
    if args.image_size is None:
        args.image_size = 112 if getattr(args, "data", None) is not None else 64
    args.argv = argv  # to print the command that continues this run
    return args


def config(args: argparse.Namespace) -> dict[str, Any]:
    """The settings a checkpoint records (what a resumed run is checked against)."""
    return {k: v for k, v in vars(args).items() if k != "argv"}


def check_batches(loader: DataLoader, what: str) -> int:
    """Batches per epoch of ``loader``; an error if ``drop_last`` leaves none."""
    n = len(loader)
    if n == 0:
        raise UsageError(
            f"an epoch holds no full batch: {len(loader.sampler)} {what} and --batch-size "
            f"{loader.batch_size} (the last partial batch is dropped); lower --batch-size"
        )
    return n


def run(
    main: Callable[[list[str] | None], Any], prog: str, argv: Sequence[str] | None = None
) -> int:
    """Run an example's ``main``; a user mistake ends in one line. Returns the exit status."""
    quiet = int(os.environ.get("RANK", "0")) != 0  # one message per run, not one per rank
    debug = os.environ.get("METRICFACE_DEBUG", "") not in ("", "0")
    try:
        main(None if argv is None else list(argv))
    except Interrupted:
        return 130
    except KeyboardInterrupt:  # before the run folder was made: nothing to keep
        if not quiet:
            print(f"\n{prog}: interrupted before anything was saved", file=sys.stderr)
        return 130
    except (UsageError, ImageDecodeError) as err:
        if debug:
            raise
        if not quiet:
            print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
            if hasattr(err, "continuation"):
                print(err.continuation, file=sys.stderr)
        return 2
    return 0


def _one_line(err: Exception) -> str:
    """The message of ``err``; a decode error gets the two ways out of it."""
    text = str(err).strip()
    if isinstance(err, ImageDecodeError):  # from a DataLoader worker: its traceback's last line
        text = text.splitlines()[-1].split("ImageDecodeError: ", 1)[-1]
        text += (
            "; pass --on-bad-image skip to use another image of the same identity instead, or "
            "list every such file first with metricface.data.IdentityFolder(root).verify()"
        )
    return " ".join(text.split("\n"))


# ---------------------------------------------------------------------------------------------
# The run folder, resuming, Ctrl-C
# ---------------------------------------------------------------------------------------------


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
                with contextlib.suppress(FileNotFoundError):
                    (self.path / name).unlink()
        return self.path

    def discard(self) -> bool:
        """Remove what this run wrote if it saved no checkpoint; whether it did so."""
        if self.saved_epoch is not None:
            return False
        for name in self.outputs:
            if self.created or self.overwrite:
                with contextlib.suppress(FileNotFoundError):
                    (self.path / name).unlink()
        if self.created:
            with contextlib.suppress(OSError):  # only if empty
                self.path.rmdir()
        return True


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
    import threading

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


# ---------------------------------------------------------------------------------------------
# Data, model, evaluation
# ---------------------------------------------------------------------------------------------


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
    loader = DataLoader(held, batch_size=256, num_workers=args.workers)
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


def write_report(out: Path, text: str, plots: Mapping[str, str]) -> None:
    """``report.txt``: the results, then the plots written beside it."""
    if plots:
        text += "\n\nPlots:\n" + "\n".join(f"  {n:<15} {w}" for n, w in plots.items())
    (out / "report.txt").write_text(text + "\n")


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
