"""The example trainers run end to end, refuse user mistakes in one line before any work, and
an interrupted run resumes exactly."""

from __future__ import annotations

import csv
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _example_runs import (
    EXAMPLES,
    PLOTS,
    ROOT,
    _check_load_backbone,
    _env,
    _example,
    _log_rows,
    _run,
)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    stdout = _run("train_vggface2.py", "--tiny", "--output", str(out), "--no-progress")
    return out, stdout


@pytest.mark.slow
def test_tiny_run_writes_checkpoint_log_and_plots(full_run):
    out, stdout = full_run
    assert "raw-pixel baseline on held-out identities: EER" in stdout
    assert "trained EER" in stdout
    for name in ("checkpoint.pt", "log.csv", "report.txt", *PLOTS):
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.txt").read_text()
    for name in PLOTS:  # every plot is listed, and says what it shows
        assert f"  {name} " in report, name
    assert "t-SNE of 32 embeddings, 8 identities" in report
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and list(rows[0])[:5] == ["epoch", "step", "loss", "lr", "eer"]
    for row in rows:  # every column is filled, the TAR@FAR ones included
        assert all(v != "" for v in row.values()), row
        assert 0 <= float(row["tar@far=0.01"]) <= float(row["tar@far=0.1"]) <= 1
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["step"] > 0
    assert ckpt["extra"]["config"]["tiny"] is True
    assert ckpt["extra"]["config"]["image_size"] == 32  # the size trained at, not None
    assert len(ckpt["extra"]["history"]) == 2
    assert any(k.startswith("backbone.") for k in ckpt["model"])
    _check_load_backbone(out / "checkpoint.pt")


_WAIT_FOR_CTRL_C = """
import os, sys, time
sys.path.insert(0, {examples!r})
sys.argv[0] = {script!r}  # as if started as the example itself
import train_vggface2 as ex

forward = ex.Objective.forward

def waiting(self, images, labels):
    if os.path.exists({checkpoint!r}):  # epoch 1 is saved: wait in epoch 2 for Ctrl-C
        print("waiting for Ctrl-C", flush=True)
        time.sleep(120)
    return forward(self, images, labels)

ex.Objective.forward = waiting
raise SystemExit(ex.cli.run(ex.main, ex.SCRIPT))
"""


@pytest.mark.slow
def test_ctrl_c_keeps_the_last_epoch_and_its_printed_command_resumes_exactly(full_run, tmp_path):
    reference, _ = full_run
    out = tmp_path / "run"
    script = tmp_path / "wait_for_ctrl_c.py"
    script.write_text(
        _WAIT_FOR_CTRL_C.format(
            examples=str(EXAMPLES),
            script=str(EXAMPLES / "train_vggface2.py"),
            checkpoint=str(out / "checkpoint.pt"),
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script), "--tiny", "--output", str(out), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    for line in proc.stdout:
        if line.startswith("waiting for Ctrl-C"):
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert f"{str(out / 'checkpoint.pt')!r} holds epoch 1; continue with:" in err
    command = shlex.split(err.strip().splitlines()[-1])
    assert command[-3:] == ["--output", str(out), "--resume"]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    resumed = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    a = torch.load(reference / "checkpoint.pt", weights_only=True)
    b = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"])
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in _log_rows(out / "log.csv")]
    ref = [{k: v for k, v in r.items() if k != "seconds"} for r in _log_rows(reference / "log.csv")]
    assert rows == ref  # one row per epoch, the same numbers


@pytest.mark.slow
def test_ctrl_c_before_anything_is_saved_leaves_no_run_folder(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "train_vggface2.py"), "--tiny", "--output", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    for line in proc.stdout:
        if line.startswith("train:"):  # the folder exists; the first epoch has not ended
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    assert "nothing was saved yet" in err


@pytest.mark.slow
def test_trains_on_an_identity_folder_of_mixed_size_jpegs(tmp_path):
    """Real datasets (VGGFace2) are not uniformly sized: the pipeline resizes everywhere."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for ident in range(12):
        (tmp_path / "data" / f"id{ident:02d}").mkdir(parents=True)
        for k in range(4):
            h, w = rng.integers(40, 90, size=2)
            pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / f"id{ident:02d}" / f"{k}.jpg")
    stdout = _run(
        "train_vggface2.py",
        "--tiny",
        "--data",
        str(tmp_path / "data"),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--no-plots",
        "--output",
        str(tmp_path / "run"),
    )
    # --tiny holds out 8 identities with 4 images each
    assert "train: 16 images of 4 identities; held out: 32 images of 8 identities" in stdout
    assert "trained EER" in stdout
    (row,) = _log_rows(tmp_path / "run" / "log.csv")  # --batch-size 8 beats --tiny's 32
    assert int(row["step"]) == 2 and float(row["loss"]) > 0
    # a batch larger than the training set would leave every epoch empty: refused up front
    err = _run(
        "train_vggface2.py",
        "--tiny",
        "--data",
        str(tmp_path / "data"),
        "--output",
        str(tmp_path / "run2"),
        "--batch-size",
        "17",
        fails=True,
    )
    assert "no full batch" in err and "--batch-size 17" in err
    assert not (tmp_path / "run2").exists()
    # the default 50 held-out identities do not fit in 12: the error names the flag
    err = _run(
        "train_vggface2.py",
        "--data",
        str(tmp_path / "data"),
        "--output",
        str(tmp_path / "run3"),
        fails=True,
    )
    assert "--eval-identities 50" in err and "12 identities" in err
    assert not (tmp_path / "run3").exists()


@pytest.mark.slow
def test_pair_loss_with_identity_sampler(tmp_path):
    stdout = _run(
        "train_vggface2.py",
        "--tiny",
        "--epochs",
        "1",
        "--loss",
        "triplet",
        "--miner",
        "semihard",
        "--no-plots",
        "--output",
        str(tmp_path),
    )
    assert "trained EER" in stdout


@pytest.mark.slow
def test_pairs_example_tiny_run_writes_log_report_and_plots(tmp_path):
    stdout = _run(
        "train_pairs.py",
        "--tiny",
        "--arcface-weight",
        "1",
        "--no-progress",
        "--output",
        str(tmp_path),
    )
    assert "raw-pixel baseline EER" in stdout and "trained EER" in stdout
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0] == "epoch,loss,lr,eer,auc" and len(rows) == 3
    for row in rows[1:]:
        loss, eer = float(row.split(",")[1]), float(row.split(",")[3])
        assert loss > 0 and 0 <= eer <= 1
    assert "EER" in (tmp_path / "report.txt").read_text()
    for name in PLOTS:
        assert (tmp_path / name).stat().st_size > 0, name
    _check_load_backbone(tmp_path / "checkpoint.pt")


@pytest.mark.slow
def test_pairs_example_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    common = ("--tiny", "--arcface-weight", "1", "--no-plots", "--no-progress")
    _run("train_pairs.py", *common, "--output", str(tmp_path / "full"))
    part = str(tmp_path / "part")
    _run("train_pairs.py", *common, "--output", part, "--stop-after-epoch", "1")
    assert torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert "resumed from" in _run("train_pairs.py", *common, "--output", part, "--resume")
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    assert a["model"].keys() == b["model"].keys()
    assert any(k.startswith("arcface.") for k in a["model"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert _log_rows(tmp_path / "part" / "log.csv") == _log_rows(tmp_path / "full" / "log.csv")
    refused = _run(
        "train_pairs.py", *common, "--pos-prob", "0.3", "--output", part, "--resume", fails=True
    )
    assert "--pos-prob: 0.5 in the checkpoint, 0.3 now" in refused


@pytest.mark.slow
def test_two_stage_example_reports_both_stages_and_resumes_in_stage_two(tmp_path):
    common = ("--tiny", "--stage2-epochs", "2", "--optimizer", "adamw")
    full = tmp_path / "full"
    stdout = _run("train_two_stage.py", *common, "--output", str(full))
    assert "after stage 1" in stdout and "after stage 2" in stdout
    stages = [r.split(",")[0] for r in (full / "log.csv").read_text().splitlines()[1:]]
    assert stages == ["1", "1", "2", "2"]
    report = (full / "report.txt").read_text()
    accs = [float(line.split()[-1]) for line in report.splitlines() if line.startswith("after")]
    assert len(accs) == 2 and all(0 <= a <= 1 for a in accs)
    one, two = (torch.load(full / f"stage{i}.pt", weights_only=True) for i in (1, 2))
    assert any(k.startswith("arcface.") for k in one["model"])
    assert two["model"].keys() == {k for k in one["model"] if k.startswith("backbone.")}
    assert any(not torch.equal(one["model"][k], v) for k, v in two["model"].items())
    for name in ("stage1.pt", "stage2.pt", "checkpoint.pt"):
        _check_load_backbone(full / name)
    # stopped in stage 2 (after 2 + 1 epochs), then resumed: the same models and report
    part = tmp_path / "part"
    _run("train_two_stage.py", *common, "--output", str(part), "--stop-after-epoch", "3")
    assert not (part / "stage2.pt").exists()
    assert "resumed from" in _run("train_two_stage.py", *common, "--output", str(part), "--resume")
    for name in ("stage1.pt", "stage2.pt"):
        a, b = (torch.load(d / name, weights_only=True)["model"] for d in (full, part))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert (part / "report.txt").read_text() == report
    assert (part / "log.csv").read_text() == (full / "log.csv").read_text()


@pytest.mark.slow
def test_resume_with_another_configuration_is_refused(full_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(full_run[0], out)
    before = (out / "checkpoint.pt").read_bytes()
    common = ("--tiny", "--output", str(out), "--no-plots", "--resume")
    err = _run(
        "train_vggface2.py", *common, "--loss", "arcface", "--optimizer", "adamw", fails=True
    )
    assert "--loss: cosface in the checkpoint, arcface now" in err
    assert "--optimizer: sgd in the checkpoint, adamw now" in err
    err = _run("train_vggface2.py", *common, "--epochs", "3", fails=True)
    assert "--epochs: 2 in the checkpoint, 3 now" in err
    assert (out / "checkpoint.pt").read_bytes() == before
    # what does not change the result may differ: workers, progress bars, plots
    stdout = _run("train_vggface2.py", *common, "--workers", "1", "--no-progress")
    assert "resumed from" in stdout and "nothing left to train" in stdout
    assert (out / "checkpoint.pt").read_bytes() == before  # nothing left to train: not rewritten


@pytest.mark.slow
def test_log_holds_one_row_per_epoch_of_this_run(full_run, tmp_path):
    """A fresh run in a used directory (--overwrite) starts a new log; a resume drops epochs
    it redoes."""
    out = tmp_path / "run"
    shutil.copytree(full_run[0], out)
    fresh = ("--tiny", "--epochs", "1", "--output", str(out), "--no-plots", "--overwrite")
    _run("train_vggface2.py", *fresh)
    assert not (out / "roc.png").exists()  # the earlier run's outputs went with --overwrite
    assert [r["epoch"] for r in _log_rows(out / "log.csv")] == ["1"]
    # a run killed after logging epoch 2 but before its checkpoint: the resume redoes epoch 2
    with open(out / "log.csv", "a") as f:
        f.write("2,99,1.0,0.1,0.5,0.5,0,0,1\n")
    _run(
        "train_vggface2.py",
        "--tiny",
        "--epochs",
        "1",
        "--output",
        str(out),
        "--no-plots",
        "--resume",
    )
    assert [r["epoch"] for r in _log_rows(out / "log.csv")] == ["1"]
    _run("train_pairs.py", *fresh)
    assert [r["epoch"] for r in _log_rows(out / "log.csv")] == ["1"]


def test_margin_reaches_every_loss_or_is_refused():
    ex = _example("train_vggface2")
    loss, miner = ex.build_loss(
        ex.parse_args(["--loss", "contrastive", "--margin", "0.7"]), 5, False
    )
    assert loss.neg_margin == 0.7 and miner is not None
    loss, _ = ex.build_loss(ex.parse_args(["--loss", "triplet", "--margin", "0.3"]), 5, False)
    assert loss.margin == 0.3
    for bad in (
        ["--loss", "normsoftmax", "--margin", "0.3"],
        ["--loss", "triplet", "--scale", "64"],
    ):
        with pytest.raises(ex.cli.UsageError, match="applies only to"):
            ex.parse_args(bad)


def test_unknown_backbone_and_missing_tensorboard_are_refused_before_any_work(monkeypatch):
    import importlib.util

    ex = _example("train_vggface2")
    with pytest.raises(ex.cli.UsageError, match="invalid choice: 'iresnet7'"):
        ex.parse_args(["--backbone", "iresnet7"])
    assert ex.parse_args(["--backbone", "resnet18"]).backbone == "resnet18"
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "tensorboard" else real(n, *a)
    )
    with pytest.raises(ex.cli.UsageError, match="pip install tensorboard"):
        ex.parse_args(["--tensorboard"])
    assert not ex.parse_args([]).tensorboard


def test_tiny_sets_defaults_that_explicit_flags_override():
    ex = _example("train_vggface2")
    args = ex.parse_args(["--tiny"])
    assert (args.batch_size, args.epochs, args.identities, args.P) == (32, 2, 24, 8)
    args = ex.parse_args(["--tiny", "--batch-size", "8", "--epochs", "3"])
    assert (args.batch_size, args.epochs, args.identities, args.P) == (8, 3, 24, 8)
    args = ex.parse_args(["--tiny", "--loss", "triplet", "--P", "4"])
    assert (args.batch_size, args.epochs, args.P, args.K) == (32, 2, 4, 4)


@pytest.mark.slow
def test_undecodable_images_stop_the_run_or_are_skipped_as_asked(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    for ident in range(12):
        folder = tmp_path / "data" / f"id{ident:02d}"
        folder.mkdir(parents=True)
        for k in range(4):
            pixels = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{k}.jpg")
        (folder / "0_truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    args = ("--tiny", "--data", str(tmp_path / "data"), "--epochs", "1", "--batch-size", "8")
    args += ("--no-plots", "--output")
    run = str(tmp_path / "run")
    err = _run("train_vggface2.py", *args, run, fails=True)
    assert "cannot decode image file" in err and "0_truncated.jpg" in err
    assert "--on-bad-image skip" in err and "IdentityFolder(root).verify()" in err
    assert not (tmp_path / "run").exists()  # stopped before its first checkpoint: no folder
    stdout = _run("train_vggface2.py", *args, run, "--on-bad-image", "skip")
    assert "trained EER" in stdout
    stdout = _run("train_pairs.py", *args, run + "-pairs", "--on-bad-image", "skip")
    assert "trained EER" in stdout


@pytest.mark.parametrize(("epochs", "steps_per_epoch"), [(8, 1), (1, 2), (3, 1), (2, 5)])
def test_one_cycle_schedule_runs_for_any_number_of_steps(epochs, steps_per_epoch):
    """One batch per epoch made the warm-up one step long, where OneCycleLR divides by zero."""
    ex = _example("train_pairs")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    args = ex.argparse.Namespace(epochs=epochs, warmup_epochs=1.0, lr=0.1)
    sched = ex.one_cycle(opt, args, steps_per_epoch)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(epochs * steps_per_epoch):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert all(0 <= lr <= 0.1 + 1e-12 for lr in lrs) and max(lrs) > 0.05


_RECORD_FIRST_STEP = """
import os, sys
import torch
sys.path.insert(0, {examples!r})
import train_vggface2 as ex

forward = ex.Objective.forward

def recording(self, images, labels):
    path = os.path.join({folder!r}, "rank" + os.environ["RANK"] + ".pt")
    if not os.path.exists(path):  # the random state the first batch was augmented with
        torch.save(torch.get_rng_state(), path)
    return forward(self, images, labels)

ex.Objective.forward = recording
ex.main()
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_pair_loss_run_evaluates_and_saves_on_rank_zero_only(tmp_path):
    out, record = tmp_path / "run", tmp_path / "record"
    record.mkdir()
    script = tmp_path / "record_first_step.py"
    script.write_text(_RECORD_FIRST_STEP.format(examples=str(EXAMPLES), folder=str(record)))
    stdout = _run(
        str(script),
        *("--tiny", "--device", "cpu", "--no-progress", "--loss", "triplet"),
        *("--miner", "semihard", "--output", str(out)),
        nproc=2,
    )
    assert stdout.count("trained EER") == 1 and stdout.count("epoch   2") == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["checkpoint.pt", "log.csv", "report.txt", *PLOTS]
    )
    assert len(_log_rows(out / "log.csv")) == 2
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and len(ckpt["extra"]["rng_per_rank"]) == 2
    # each rank draws its own random augmentations (a shared seed would flip and crop the
    # i-th image of every rank's batch alike)
    states = [torch.load(record / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert not torch.equal(*states)


_FAIL_ON_RANK_ONE = """
import os, sys
sys.path.insert(0, {examples!r})
import train_vggface2 as ex

forward, calls = ex.Objective.forward, []

def failing(self, images, labels):
    calls.append(1)
    if os.environ["RANK"] == "1" and len(calls) == 2:
        raise RuntimeError("rank 1 fails at its second step")
    return forward(self, images, labels)

ex.Objective.forward = failing
ex.main()
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_run_stops_when_one_rank_fails(tmp_path):
    """The other rank, blocked in a collective, is stopped too instead of waiting forever."""
    script = tmp_path / "fail_on_rank_one.py"
    script.write_text(_FAIL_ON_RANK_ONE.format(examples=str(EXAMPLES)))
    err = _run(
        str(script),
        *("--tiny", "--device", "cpu", "--no-progress", "--no-plots"),
        *("--output", str(tmp_path / "run")),
        nproc=2,
        crash=True,
    )
    assert "rank 1 fails at its second step" in err


@pytest.mark.slow
def test_tiny_run_outputs_agree_and_plots_are_images(full_run):
    """The printed, logged and reported final EERs are one number, and the plots decode."""
    from PIL import Image

    out, stdout = full_run
    last = _log_rows(out / "log.csv")[-1]
    final = stdout.strip().splitlines()[-1]
    assert final.startswith("raw-pixel EER ") and f"trained EER {float(last['eer']):.4f}" in final
    report = (out / "report.txt").read_text()
    eer_line = next(line for line in report.splitlines() if line.startswith("EER"))
    assert float(eer_line.split()[1]) == pytest.approx(100 * float(last["eer"]), abs=5e-5)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["extra"]["history"][-1]["eer"] == pytest.approx(float(last["eer"]), abs=1e-12)
    for name in PLOTS:
        with Image.open(out / name) as img:
            assert img.format == "PNG" and min(img.size) >= 200, name


def test_readme_quick_start_runs_the_vggface2_example_on_its_defaults():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    command = quick.split("```bash\n", 1)[1].split("```", 1)[0].strip()
    assert command.split(" && ")[-1] == "python examples/train_vggface2.py"
    # its defaults: no --data, so the built-in synthetic faces, and the full (not tiny) run
    args = _example("train_vggface2").parse_args([])
    assert args.data is None and not args.tiny and not args.resume


def test_docs_use_only_flags_the_examples_and_tools_have():
    import argparse

    from metricface.cli import build_parser

    options = set()
    for script in ("train_vggface2", "train_pairs", "train_two_stage"):
        help_text = _example(script).build_parser().format_help()
        options |= set(re.findall(r"--[a-z][a-z0-9-]*", help_text))
    for action in build_parser()._actions:  # the `python -m metricface` tools
        if isinstance(action, argparse._SubParsersAction):
            for tool in action.choices.values():
                options |= {o for o in tool._option_string_actions if o.startswith("--")}
    others = {"--nproc-per-node", "--standalone", "--index-url"}  # torchrun's and pip's
    docs = ("quickstart", "tutorial", "datasets", "recipes")
    for doc in (*(f"docs/{d}.rst" for d in docs), "README.md"):
        used = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", (ROOT / doc).read_text()))
        assert used - others <= options, (doc, sorted(used - others - options))


def test_tutorial_states_the_defaults_of_the_vggface2_example():
    text = (ROOT / "docs" / "tutorial.rst").read_text()
    args = _example("train_vggface2").parse_args([])
    stated = {  # the tutorial's words -> the parsed default they describe
        "identities ``0 .. 299``": args.identities == 300,
        "identities ``300 .. 349``": args.eval_identities == 50,
        "8 images each": args.eval_images == 8,
        "``--batch-size 64``": args.batch_size == 64,
        "(``iresnet18``, ``--width 0.25``, ``--embedding-dim 128``": (
            args.backbone,
            args.width,
            args.embedding_dim,
        )
        == ("iresnet18", 0.25, 128),
        "``--loss cosface``": args.loss == "cosface",
        "learning rate 0.1 and weight decay 5e-4": (args.lr, args.weight_decay) == (0.1, 5e-4),
        "SGD with momentum": args.optimizer == "sgd",
    }
    for words, holds in stated.items():
        assert " ".join(words.split()) in " ".join(text.split()), words
        assert holds, words


class _WritesAFile:
    """Unpickling this runs a shell command: only an unsafe ``torch.load`` would create it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_resume_loads_the_checkpoint_with_weights_only(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "code-was-run"
    torch.save(
        {"format": "metricface.checkpoint", "model": _WritesAFile(marker)}, out / "checkpoint.pt"
    )
    err = _run(
        "train_vggface2.py", "--tiny", "--output", str(out), "--no-plots", "--resume", fails=True
    )
    assert "refusing to load" in err and "checkpoint.pt" in err
    assert not marker.exists()


def _image_folder(root: Path, identities: int, images: int = 3) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(identities):
        (root / f"id{i}").mkdir(parents=True)
        for k in range(images):
            pixels = rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"id{i}" / f"{k}.png")
    return root


REFUSALS = [  # (script, arguments, words of the one-line error)
    ("train_vggface2.py", "--data missing", "--data 'missing' does not exist"),
    ("train_vggface2.py", "--data empty", "holds no identity sub-directories"),
    ("train_vggface2.py", "--data no-images", "holds no image with extensions"),
    ("train_vggface2.py", "--data one-identity", "holds 1 identity with images: need >= 2"),
    ("train_vggface2.py", "--data three --eval-identities 3", "must leave identities to train"),
    ("train_vggface2.py", "--eval-identities 1", "--eval-identities: must be an integer >= 2"),
    ("train_vggface2.py", "--eval-images 1", "--eval-images: must be an integer >= 2"),
    ("train_vggface2.py", "--epochs 0", "--epochs: must be a positive integer, got '0'"),
    ("train_vggface2.py", "--lr nan", "--lr: must be a positive number, got 'nan'"),
    ("train_vggface2.py", "--output used", "already holds files (log.csv): pass --resume"),
    ("train_vggface2.py", "--output used --resume", "no checkpoint at 'used/checkpoint.pt'"),
    ("train_vggface2.py", "--resume", "--resume without a PATH needs --output"),
    ("train_vggface2.py", "--output x --resume --overwrite", "pick one"),
    ("train_vggface2.py", "--miner semihard", "--miner applies only to pair losses"),
    ("train_vggface2.py", "--P 4 --loss arcface", "not to --loss arcface"),
    ("train_vggface2.py", "--loss triplet --batch-size 8", "--batch-size applies only to class"),
    ("train_vggface2.py", "--loss triplet --scale 30", "--scale applies only to margin-softmax"),
    ("train_vggface2.py", "--on-bad-image skip", "and this run has no --data"),
    ("train_vggface2.py", "--data three --identities 5", "--identities applies only to the"),
    ("train_vggface2.py", "--loss triplet --P 400", "--P 400 --K 4: identities_per_batch must"),
    ("train_vggface2.py", "--device cuda:7", "not available here"),
    ("train_vggface2.py", "--data no-idx/train.rec", "has no index 'no-idx/train.idx' beside it"),
    ("train_vggface2.py", "--data no-idx", "has no index 'no-idx/train.idx' beside it"),
    ("train_vggface2.py", "--data damaged.rec", "--data: index 'damaged.idx' line 1: expected"),
    ("train_vggface2.py", "--val-bin missing.bin", "--val-bin: no such verification .bin file"),
    ("train_vggface2.py", "--val-bin damaged.bin", "--val-bin: damaged.bin"),
    ("train_vggface2.py", "--recipe ms1mv3_r50 --loss triplet", "--recipe applies only to margin"),
    ("train_vggface2.py", "--recipe r50", "argument --recipe: invalid choice: 'r50'"),
    ("train_vggface2.py", "--loss triplet --chunk-size 64", "--chunk-size applies only to"),
    ("train_vggface2.py", "--loss triplet --sample-rate 0.5", "not to --loss triplet"),
    ("train_vggface2.py", "--sample-rate 0", "--sample-rate: must be a fraction in (0, 1]"),
    ("train_vggface2.py", "--out x", "unrecognized arguments: --out x"),
    ("train_pairs.py", "--pos-prob 1.5", "--pos-prob: must be a probability in [0, 1]"),
    ("train_pairs.py", "--miner batchhard", "unrecognized arguments: --miner"),
    ("train_pairs.py", "--output used", "pass --resume to continue it, --overwrite"),
    ("train_two_stage.py", "--data three", "unrecognized arguments: --data"),
    ("train_two_stage.py", "--stage2-epochs 0", "--stage2-epochs: must be a positive integer"),
]


@pytest.mark.parametrize(("script", "argv", "words"), REFUSALS)
def test_user_mistakes_end_in_one_line_before_any_work(
    script, argv, words, tmp_path, monkeypatch, capsys
):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("a CUDA device exists here")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "no-images" / "a").mkdir(parents=True)
    (tmp_path / "no-images" / "a" / "notes.txt").write_text("not an image")
    _image_folder(tmp_path / "one-identity", 1)
    _image_folder(tmp_path / "three", 3)
    (tmp_path / "no-idx").mkdir()
    (tmp_path / "no-idx" / "train.rec").write_bytes(b"\x0a\x23\xd7\xce")
    (tmp_path / "damaged.rec").write_bytes(b"\x0a\x23\xd7\xce")
    (tmp_path / "damaged.idx").write_text("not an index\n")
    (tmp_path / "damaged.bin").write_bytes(b"not a pickle")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "log.csv").write_text("epoch\n")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    ex = _example(script.removesuffix(".py"))

    def no_work(self):
        raise AssertionError("the mistake was not caught: work started")

    monkeypatch.setattr(ex.runs.RunFolder, "create", no_work)
    assert ex.cli.run(ex.main, ex.SCRIPT, shlex.split(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{script}: error: "), err
    assert words in err, err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing written


def test_two_stage_example_refuses_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    ex = _example("train_two_stage")
    assert ex.cli.run(ex.main, ex.SCRIPT, ["--tiny"]) == 2
    assert "trains in one process: start it with python, not torchrun" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["train_vggface2", "train_pairs", "train_two_stage"])
def test_help_explains_every_flag_with_its_default_and_lists_only_accepted_flags(script):
    help_text = _example(script).build_parser().format_help()
    assert "(default: 64)" in help_text.replace("\n", " ")  # --batch-size
    body = help_text.split("\noptions:", 1)[1]  # past the usage line
    flags = re.findall(r"^  (--[a-zA-Z][\w-]*)", body, re.M)  # the options' own lines
    assert len(flags) > 20
    helps = {f: " ".join(body.split(f"\n  {f}", 1)[1].split("\n  -", 1)[0].split()) for f in flags}
    for f, text in helps.items():  # every flag has a help text beyond its metavar
        assert len(text.split()) > 2, (f, text)
    if script == "train_two_stage":
        assert "--data" not in flags and "--on-bad-image" not in flags
        assert "contrastive" in helps["--stage2-epochs"]
        assert "learning rate of stage 2" in helps["--stage2-lr"]
    assert body.count("\nrun:") == 1  # one group per topic


@pytest.mark.slow
@pytest.mark.distributed
def test_pairs_example_trains_with_ddp_on_two_ranks(tmp_path):
    """Each rank draws half of the pairs; rank 0 alone evaluates and writes the folder."""
    out = tmp_path / "run"
    common = ("--tiny", "--device", "cpu", "--no-progress", "--no-plots", "--arcface-weight", "1")
    stdout = _run("train_pairs.py", *common, "--output", str(out), nproc=2)
    assert stdout.count("trained EER") == 1 and stdout.count("epoch 2 ") == 1
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "log.csv", "report.txt"]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and len(ckpt["extra"]["rng_per_rank"]) == 2
    # 96 pairs per epoch, 48 on each rank: one full batch of 32 per rank and epoch
    assert ckpt["step"] == 2 * (96 // 2 // 32)
    _check_load_backbone(out / "checkpoint.pt")


_EVALUATION_MEMORY = """
import resource, sys
import torch
sys.path.insert(0, {examples!r})
import _common as C
import train_vggface2 as ex

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux

args = ex.parse_args([])  # the default run's held-out set: 50 identities x 8 images, 64 px
_, held, held_raw = C.build_datasets(args)
model = C.build_model(args)
for i in range(len(held)):  # draw (and cache) the images first: they are not evaluation's
    held[i], held_raw[i]
start = peak_mb()
baseline = C.raw_pixel_report(held_raw, args.image_size)
after_baseline = peak_mb()
report, emb, labels = C.evaluate(model, held, args, torch.device("cpu"))
pixels = held_raw[0][0].numel()
print(len(held), pixels, baseline.n_genuine + baseline.n_impostor, report.n_genuine + report.n_impostor,
      after_baseline - start, peak_mb() - start)
"""


@pytest.mark.slow
def test_evaluation_memory_does_not_grow_with_pixels_times_pairs(tmp_path):
    """The default held-out set has 79 800 pairs of 12 288-pixel images: a (pairs, pixels)
    float32 tensor would be 3.7 GB. The raw-pixel baseline must stay within a few copies of
    the (images, pixels) array, and the whole evaluation far below pairs x pixels."""
    script = tmp_path / "evaluation_memory.py"
    script.write_text(_EVALUATION_MEMORY.format(examples=str(EXAMPLES)))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=_env(), timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    n, pixels, pairs, pairs_again, baseline_mb, total_mb = proc.stdout.split()
    n, pixels, pairs = int(n), int(pixels), int(pairs)
    assert (n, pixels, pairs, int(pairs_again)) == (400, 3 * 64 * 64, 79_800, 79_800)
    images_mb = n * pixels * 4 / 2**20  # 19 MB
    pairs_by_pixels_mb = pairs * pixels * 4 / 2**20  # 3 741 MB
    assert float(baseline_mb) < 10 * images_mb, (baseline_mb, images_mb)
    assert float(total_mb) < pairs_by_pixels_mb / 5, (total_mb, pairs_by_pixels_mb)


def test_resume_command_keeps_every_flag_and_continues_in_the_run_folder():
    runs = _example("_runs")
    argv = ["--tiny", "--output=old", "--resume", "x/ckpt.pt", "--lr", "0.1", "--overwrite"]
    command = shlex.split(runs.resume_command(argv, Path("runs/new dir")))
    assert command[2:] == ["--tiny", "--lr", "0.1", "--output", "runs/new dir", "--resume"]
    command = shlex.split(runs.resume_command(["--resume", "--epochs", "3"], Path("o"), world=2))
    assert command[:2] == ["torchrun", "--nproc-per-node=2"]
    assert command[3:] == ["--epochs", "3", "--output", "o", "--resume"]
