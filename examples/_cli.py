r"""The examples' command line: flags with their defaults in ``--help``, checked before any work.

Every flag is checked when the command line is parsed: types and ranges (argparse types that
say what was expected), and flags that do not apply to this run, refused by :data:`Rule`\ s
instead of being silently ignored (a rule refuses a flag only when it is given explicitly, so
the defaults of ``--tiny`` and of a ``--recipe`` never trip one). Later checks (the ``--output``
folder, the checkpoint to resume, the ``--data`` folder's or pack's identities) raise
:class:`UsageError` too, all before any data is built or any file is written. :func:`run` turns a :class:`UsageError` into one line,
``<script>: error: <what was wrong>``, and exit status 2 (``METRICFACE_DEBUG=1`` shows the
traceback).

A script adds a flag in one or two places: the parser (with ``help=``, so that ``--help`` shows
it with its default) and, if it applies only to some runs, a :data:`Rule` in the rules it passes
to :func:`parse_args`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from metricface.backbones import available_backbones
from metricface.data import ImageDecodeError


class UsageError(Exception):
    """A user mistake, reported in one line without a traceback (exit status 2)."""


class Interrupted(Exception):
    """Ctrl-C, after what was safe to keep is kept and the way on is printed (status 130)."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default, except where there is none (``None``, off switches, an
    empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" not in text
            and default is not None
            and default is not argparse.SUPPRESS
            and default is not False
            and default != []
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


def number(
    kind: type, low: float, high: float | None = None, *, above: bool = False, what: str = ""
) -> Callable[[str], Any]:
    """An argparse type: ``kind`` (int or float) at least ``low`` (above it if ``above``) and
    at most ``high``; ``what`` says in words what is expected."""
    if not what:
        what = f"{'an integer' if kind is int else 'a number'} {'>' if above else '>='} {low:g}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        ok = value is not None and value == value and abs(value) != float("inf")
        if ok and (value <= low if above else value < low):
            ok = False
        if not ok or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
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
            metavar="PATH",
            help="an identity-per-folder dataset root, or an InsightFace pack: a .rec file "
            "beside its .idx, or a folder holding train.rec (default: the built-in synthetic "
            "faces)",
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
            help="an undecodable image in --data: stop naming it, or warn and use another image "
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
    "on_bad_image": ("data", lambda v: v is not None, "--data (a folder or a pack)"),
    "identities": ("data", lambda v: v is None, "the built-in synthetic faces"),
    "images_per_identity": ("data", lambda v: v is None, "the built-in synthetic faces"),
}


def parse_args(
    p: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    rules: Mapping[str, Rule] = DATA_RULES,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    **tiny: Any,
) -> argparse.Namespace:
    """Parse and check ``argv``: types and ranges, flags that do not apply, flag combinations.

    ``--recipe NAME`` replaces the defaults of the flags not given with ``presets[NAME]``;
    then ``--tiny`` replaces them with :data:`TINY` (and ``tiny``), so that ``--recipe NAME
    --tiny`` is the recipe at a smoke-test size. Flags given explicitly always win.
    A flag given explicitly where its rule in ``rules`` says it does not apply is refused.
    The image size is resolved (the saved config records the real one).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    given = given_flags(p, argv)
    if presets and getattr(args, "recipe", None):
        for k, v in presets[args.recipe].items():
            if k not in given:
                setattr(args, k, v)
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
        text += "; pass --on-bad-image skip to use another image of the same identity instead"
        if " of record key " not in text:  # a folder's file, not a pack's record
            text += (
                ", or list every such file first with metricface.data.IdentityFolder(root).verify()"
            )
    return " ".join(text.split("\n"))
