"""``benchmarks/run_cuda.sh --quick``, checked on the CPU through its ``--dry-run`` mode.

The quick mode is what a short GPU loan runs, once: its argument parsing, its table, its
per-part time limits and its reporting of a part that failed or ran out of time must already
work when the GPU arrives. The dry run executes every part at tiny sizes on the CPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "run_cuda.sh"
PARTS = ("tests", "arcface", "largest_c", "all_pairs", "eer", "training")

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None,
    reason="needs bash and coreutils timeout",
)


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def rows(table: str) -> list[list[str]]:
    """The table's body rows, as lists of cells."""
    out = []
    for line in table.splitlines():
        if line.startswith("| ") and not line.startswith("| part |"):
            out.append([c.strip() for c in line.strip().strip("|").split("|")])
    return out


@pytest.mark.slow
def test_dry_run_reports_every_part_and_survives_a_part_over_its_limit(tmp_path):
    out = tmp_path / "out"
    # all_pairs is made to overrun a 3 s limit; the parts after it must still run
    res = run("--quick", "--dry-run", "--limit", "all_pairs=3", "--stall", "all_pairs", str(out))
    assert res.returncode == 1, res.stdout + res.stderr  # one part timed out
    table = (out / "results.md").read_text()

    header = table.split("| part |")[0]
    assert "DRY RUN" in header
    assert re.search(r"^device: CPU", header, re.M)
    assert re.search(r"^torch \d+\.\d+", header, re.M)
    assert re.search(r"^date: \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", header, re.M)
    assert "| part | figure | metricface | peer | ratio | notes |" in table

    body = rows(table)
    assert all(len(r) == 6 for r in body), body
    by_part = {p: [r for r in body if r[0] == p] for p in PARTS}
    for part in PARTS:
        assert by_part[part], f"no row for {part}"
    for part in set(PARTS) - {"all_pairs"}:
        assert not any(r[2] in ("TIMEOUT", "SKIPPED") or r[2].startswith("FAILED")
                       for r in by_part[part]), by_part[part]  # fmt: skip
    # the stalled part: the row it wrote before the cut is kept, then the timeout is reported
    stalled = by_part["all_pairs"]
    assert stalled[0][1] == "--stall"
    assert stalled[-1][2] == "TIMEOUT" and "after 3 s, its limit" in stalled[-1][5]
    # parts that ran after it measured something: numbers with units in the metricface column
    assert re.match(r"[\d.,]+ (ms|s)$", by_part["eer"][0][2]), by_part["eer"]
    assert any(r[2].endswith("img/s") for r in by_part["training"])
    assert any(r[2].endswith("%") for r in by_part["training"])
    assert re.match(r"\d+ passed, \d+ failed, \d+ skipped$", by_part["tests"][0][2])
    peer_time = next(r for r in by_part["arcface"] if "time" in r[1])
    assert re.match(r"[\d.]+ (ms|s)$", peer_time[3]) and float(peer_time[4]) > 0
    chunked = next(r for r in by_part["largest_c"] if "PartialFCLoss" in r[1])
    assert chunked[2] != "none fits" and chunked[3] != "-"

    footer = table.splitlines()[-1]
    assert footer.startswith("Parts: ") and "all_pairs TIMEOUT" in footer
    for part in PARTS:
        assert (out / f"{part}.log").is_file()
    assert (out / "setup.log").is_file()
    assert len(list(out.iterdir())) <= 8  # what a GPU runner hands back at most

    # a second run into the same folder is refused before anything runs: no work is lost
    again = run("--quick", "--dry-run", str(out), "tests")
    assert again.returncode == 2
    assert again.stderr.startswith("error: ") and len(again.stderr.splitlines()) == 1
    assert (out / "results.md").read_text() == table


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quick"], "OUTDIR is missing"),
        (["--quick", "--limit", "eer", "OUT"], "--limit takes PART=SECONDS"),
        (["--quick", "--limit", "eer=soon", "OUT"], "--limit eer: seconds must be"),
        (["--quick", "--limit", "gpu=3", "OUT"], "--limit: unknown part 'gpu'"),
        (["--quick", "--budget", "0", "OUT"], "--budget must be a positive number"),
        (["--quick", "--stall", "gpu", "OUT"], "--stall: unknown part 'gpu'"),
        (["--quick", "--fast", "OUT"], "unknown option '--fast'"),
        (["--quick", "OUT", "gpu"], "unknown part 'gpu'"),
        (["--dry-run", "OUT"], "--dry-run needs --quick"),
        (["OUT", "gpu"], "unknown step 'gpu'"),
    ],
)
def test_usage_errors_are_one_line_and_run_nothing(tmp_path, args, message):
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    res = run(*args, timeout=30)
    assert res.returncode == 2
    assert res.stderr.startswith("error: ") and message in res.stderr
    assert len(res.stderr.splitlines()) == 1
    assert not (tmp_path / "out" / "results.md").exists()


def test_scale_accepts_fractions_and_rejects_words(tmp_path):
    env = {**os.environ, "PYTHON": "true", "SCALE": "1.5"}  # `true` stands in for python
    res = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path), "tests"], env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert "tests: ok" in res.stdout and "(limit 150s)" in res.stdout  # 100 s x 1.5
    env["SCALE"] = "fast"
    res = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path), "tests"], env=env, capture_output=True, text=True
    )
    assert res.returncode == 2 and res.stderr.startswith("error: SCALE must be")


def test_a_failing_part_gets_a_row_and_the_run_goes_on(tmp_path):
    env = {**os.environ, "PYTHON": "false"}  # every Python step fails at once
    res = subprocess.run(
        ["bash", str(SCRIPT), "--quick", "--dry-run", str(tmp_path), "eer", "training"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1
    table = (tmp_path / "results.md").read_text()
    assert "the device header failed" in table  # a header all the same, with the date
    failed = [r for r in rows(table) if r[2] == "FAILED (exit 1)"]
    assert [r[0] for r in failed] == ["eer", "training"]
    assert "log: eer.log" in failed[0][5]
