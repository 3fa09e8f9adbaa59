"""The ``python -m metricface`` command-line tools.

Each tool is one module of this package that defines ``HELP`` (tool name -> one-line
summary, for the tools it serves), ``add_arguments(parser, name)`` and ``run(args) -> int``
(``args.command`` is the tool's name). Modules import only :mod:`argparse` at the
top, so ``python -m metricface --help`` stays instant; the work (and torch) is imported inside
``run``.

User mistakes (a missing file, a malformed record, a bad option value) end in one line,
``metricface <tool>: error: <message>``, and exit status 2; set ``METRICFACE_DEBUG=1`` for the
full traceback. Ctrl-C ends with status 130 and the tools say how to continue where that is
possible.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "CommandError", "build_parser", "main"]

#: Tool name -> module of this package that implements it.
COMMANDS: dict[str, str] = {
    "pack-rec": "metricface.cli.records",
    "unpack-rec": "metricface.cli.records",
    "align": "metricface.cli.align",
    "eval-ijb": "metricface.cli.ijb",
}


class CommandError(Exception):
    """A user mistake a tool reports in one line (no traceback)."""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, except where there is none (``None``, off switches)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m metricface`` parser with one sub-command per tool."""
    parser = argparse.ArgumentParser(
        prog="python -m metricface", description="metricface command-line tools."
    )
    sub = parser.add_subparsers(dest="command", metavar="TOOL", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        summary = module.HELP[name]
        p = sub.add_parser(name, help=summary, description=summary, formatter_class=_Formatter)
        module.add_arguments(p, name)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one tool; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"metricface {args.command}"
    debug = os.environ.get("METRICFACE_DEBUG", "") not in ("", "0")
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return 130
    except (CommandError, ValueError, OSError) as err:
        if debug:
            raise
        message = str(err) or type(err).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
