"""The ``python -m metricface`` dispatcher: help, one-line errors, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from metricface import cli

SRC = Path(__file__).resolve().parents[1] / "src"


def test_help_lists_every_tool():
    env = dict(os.environ, PYTHONPATH=str(SRC))
    out = subprocess.run(
        [sys.executable, "-m", "metricface", "--help"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    for name in cli.COMMANDS:
        assert name in out.stdout


def test_a_user_mistake_is_one_line_and_exit_2(monkeypatch, capsys):
    def fail(args):
        raise FileNotFoundError("no such file: 'x.rec'")

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    p = sub.add_parser("broken")
    p.set_defaults(_run=fail)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.delenv("METRICFACE_DEBUG", raising=False)
    assert cli.main(["broken"]) == 2
    err = capsys.readouterr().err
    assert err == "metricface broken: error: no such file: 'x.rec'\n"
    monkeypatch.setenv("METRICFACE_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        cli.main(["broken"])
