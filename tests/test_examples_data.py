"""The example trainer on real data layouts: InsightFace packs (``--data train.rec``),
verification ``.bin`` sets every epoch (``--val-bin``) and the published arcface_torch
configurations (``--recipe``), with Partial FC sharded over the ranks."""

from __future__ import annotations

import io
import math
import re
import shlex
import warnings

import numpy as np
import pytest
import torch
from _example_runs import (
    PLOTS,
    ROOT,
    _check_load_backbone,
    _example,
    _log_rows,
    _run,
    _tiny_bins,
    _tiny_pack,
)

ex = _example("train_vggface2")
C = _example("_common")
recipes = _example("_recipes")


# ------------------------------------------------------------------ recipes
#: The stage depths of arcface_torch's r50 and r100 (backbones/iresnet.py there).
DEPTHS = {"iresnet50": [3, 4, 14, 3], "iresnet100": [3, 13, 30, 3]}


def _arcface_torch_margin(cos: np.ndarray, m1: float, m2: float, m3: float) -> np.ndarray:
    """arcface_torch's CombinedMarginLoss on the target cosine, in float64: its ArcFace branch
    (m1 = 1, m3 = 0) with the fall-back beyond theta = pi - m2, its CosFace branch (m1 = 1,
    m2 = 0)."""
    if m1 == 1.0 and m3 == 0.0:
        theta = np.arccos(cos)
        return np.where(cos > np.cos(np.pi - m2), np.cos(theta + m2), cos - np.sin(m2) * m2)
    assert m1 == 1.0 and m2 == 0.0
    return cos - m3


@pytest.mark.parametrize("name", list(recipes.RECIPES))
def test_each_recipe_builds_the_model_loss_optimizer_and_schedule_it_publishes(name):
    r = recipes.RECIPES[name]
    args = ex.parse_args(["--recipe", name])
    assert (args.batch_size, args.lr, args.weight_decay) == (r.batch_per_gpu, r.lr, r.weight_decay)
    assert (args.epochs, args.warmup_epochs, args.sample_rate) == (
        r.epochs,
        r.warmup_epochs,
        r.sample_rate,
    )
    assert (args.image_size, args.amp, args.clip_grad_norm, args.augment) == (
        112,
        "fp16",
        5.0,
        "flip",
    )
    # the network: arcface_torch's r50 / r100 at width 1, 512-d embeddings, 112x112 input
    with torch.device("meta"):
        model = C.build_model(args)
    depths = [len(getattr(model, f"layer{k}")) for k in range(1, 5)]
    assert depths == DEPTHS[args.backbone] and {"50": 24, "100": 49}[r.network[1:]] == sum(depths)
    assert model.conv1.out_channels == 64 and model(
        torch.empty(2, 3, 112, 112, device="meta")
    ).shape == (2, 512)
    # the loss: Partial FC at the published rate, scale 64, their combined margin
    loss, miner = ex.build_loss(args, 1000, False)
    preset = {"arcface": ex.losses.ArcFaceLoss, "cosface": ex.losses.CosFaceLoss}[r.loss[0]]
    assert miner is None and type(loss) is preset
    assert (loss.num_classes, loss.embedding_dim, loss.scale) == (1000, 512, 64.0)
    assert loss.sample_rate == r.sample_rate and loss.chunk_size is None
    assert loss.sub_centers == 1 and loss.world_size == 1  # one process: no shards
    cos = np.linspace(-1, 1, 2001)
    ours = loss.margin(torch.tensor(cos, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(ours, _arcface_torch_margin(cos, *r.margins), atol=1e-12)
    # the optimizer: SGD, momentum 0.9, their lr and weight decay on every parameter
    opt = ex.build_optimizer([torch.zeros(3, requires_grad=True)], args)
    assert type(opt) is torch.optim.SGD
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (r.lr, 0.9, r.weight_decay)
    # the schedule: arcface_torch's PolyScheduler, stepped every batch (here 7 per epoch)
    spe = 7
    sched = ex.make_scheduler(opt, args, spe)
    total, warm = r.epochs * spe, r.warmup_epochs * spe
    for k in range(total + 1):
        expected = r.lr * (k / warm if k < warm else (1 - (k - warm) / (total - warm)) ** 2)
        assert group["lr"] == pytest.approx(expected, rel=1e-12, abs=1e-15), k
        opt.step()
        sched.step()


def test_recipe_flags_are_defaults_that_explicit_flags_and_tiny_override():
    args = ex.parse_args(["--recipe", "wf42m_pfc02_8gpus_r50_bs4k", "--tiny", "--lr", "0.05"])
    assert (args.lr, args.loss, args.margin, args.sample_rate, args.schedule) == (
        0.05,
        "cosface",
        0.4,
        0.2,
        "poly",
    )
    assert (args.batch_size, args.image_size, args.width, args.epochs) == (32, 32, 0.125, 2)
    assert args.warmup_epochs == 2.0 and args.backbone == "iresnet50"
    plain = ex.parse_args([])  # no recipe: the default run is unchanged
    assert (plain.sample_rate, plain.schedule, plain.clip_grad_norm, plain.augment) == (
        None,
        "cosine",
        None,
        "mild",
    )
    assert plain.val_bin == [] and plain.recipe is None


def test_docs_list_each_recipe_as_the_code_defines_it():
    text = (ROOT / "docs" / "recipes.rst").read_text()
    assert recipes.docs_tables() in text
    for r in recipes.RECIPES.values():
        assert f"``--recipe {r.name}``" in text or f"--recipe {r.name}" in text, r.name


def test_poly_schedule_resumes_where_it_stopped():
    """The scheduler and optimizer states of a checkpoint continue the schedule exactly."""
    args = ex.parse_args(["--recipe", "wf42m_pfc02_8gpus_r50_bs4k", "--epochs", "3"])
    w = torch.zeros(1, requires_grad=True)

    def run(steps, states=None):
        opt = torch.optim.SGD([w], lr=args.lr)
        sched = ex.make_scheduler(opt, args, 5)
        if states is not None:
            opt.load_state_dict(states[0])
            sched.load_state_dict(states[1])
        lrs = []
        for _ in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        buf = io.BytesIO()
        torch.save((opt.state_dict(), sched.state_dict()), buf)  # as a checkpoint holds them
        buf.seek(0)
        return lrs, torch.load(buf, weights_only=True)

    whole, _ = run(15)
    first, states = run(6)
    rest, _ = run(9, states)
    assert first + rest == whole and whole[0] == 0.0 and max(whole) == pytest.approx(0.4)


# ------------------------------------------------------------------ packs, --val-bin
def test_data_names_a_pack_by_its_rec_file_or_its_folder(tmp_path):
    rec = _tiny_pack(tmp_path / "pack", identities=4, images=2, size=16)
    for given in (str(rec), str(rec.parent)):
        args = ex.parse_args(["--data", given, "--eval-identities", "2", "--on-bad-image", "skip"])
        data = C.open_data(args)
        assert type(data).__name__ == "RecordFaces" and data.on_error == "skip"
        assert len(data) == 8 and data.rec_path == rec
    folder = tmp_path / "tree" / "a"  # a folder without train.rec is an identity folder
    folder.mkdir(parents=True)
    assert C.pack_path(str(folder.parent)) is None


def test_an_undecodable_record_is_named_with_the_way_out():
    from metricface.data import ImageDecodeError

    cli = _example("_cli")
    err = ImageDecodeError(  # as a DataLoader worker re-raises it: the traceback's last line
        "Caught ImageDecodeError in DataLoader worker process 0.\nTraceback ...\n"
        "metricface.data.folder.ImageDecodeError: cannot decode the image of record key 7 at "
        "offset 96 of 'p/train.rec': image file is truncated"
    )
    line = cli._one_line(err)
    assert line.startswith("cannot decode the image of record key 7 at offset 96")
    assert line.endswith(
        "; pass --on-bad-image skip to use another image of the same identity instead"
    )


def test_a_resumed_log_keeps_its_rows_under_other_columns(tmp_path):
    """A resume with other --val-bin sets: kept rows fill the columns they have."""
    path = tmp_path / "log.csv"
    log = C.CsvLog(path, ["epoch", "loss", "lfw/accuracy", "seconds"])
    for epoch in (1, 2):
        log.write({"epoch": epoch, "loss": 3.0 - epoch, "lfw/accuracy": 0.5, "seconds": 1.0})
    log = C.CsvLog(path, ["epoch", "loss", "seconds", "agedb_30/accuracy"], keep=1)
    log.write({"epoch": 2, "loss": 0.5, "seconds": 2.0, "agedb_30/accuracy": 0.75})
    assert _log_rows(path) == [
        {"epoch": "1", "loss": "2.0", "seconds": "1.0", "agedb_30/accuracy": ""},
        {"epoch": "2", "loss": "0.5", "seconds": "2.0", "agedb_30/accuracy": "0.75"},
    ]


def _train(argv):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ex.main(shlex.split(argv) if isinstance(argv, str) else argv)


def _same_weights(a, b):
    a = torch.load(a / "checkpoint.pt", weights_only=True)
    b = torch.load(b / "checkpoint.pt", weights_only=True)
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"])
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, v in a["optimizer"]["state"].items():
        for name, value in v.items():
            assert torch.equal(value, b["optimizer"]["state"][k][name]), (k, name)


@pytest.mark.slow
def test_a_pack_trains_as_its_unpacked_folder_evaluates_bins_and_resumes_exactly(tmp_path, capsys):
    """One pack, three ways: with --val-bin (logged, printed, plotted, reported), as the
    folder tree `unpack-rec` writes (the same weights: the same split, images and order, and
    --val-bin draws nothing from the training's random streams), and stopped after epoch 1
    then resumed (the same weights again)."""
    from metricface.cli import main as tools

    rec = _tiny_pack(tmp_path / "pack")
    assert tools(["unpack-rec", str(rec), str(tmp_path / "tree"), "--quiet"]) == 0
    bins = [str(p) for p in _tiny_bins(tmp_path / "bins")]
    common = "--tiny --epochs 2 --batch-size 8 --no-progress --seed 1 --sample-rate 0.5"
    full = tmp_path / "full"
    result = _train(f"{common} --data {rec.parent} --output {full} --val-bin {' '.join(bins)}")
    out = capsys.readouterr().out
    # --val-bin: per epoch, a table on stdout and columns in log.csv; at the end in report.txt
    assert out.count("lfw        20") == 2 and out.count("cfp_fp     20") == 2
    rows = _log_rows(full / "log.csv")
    assert len(rows) == 2
    for row in rows:
        for s in ("lfw", "cfp_fp"):
            acc, std, eer = (float(row[f"{s}/{m}"]) for m in ("accuracy", "std", "eer"))
            assert 0 <= acc <= 1 and 0 <= std <= 0.5 and 0 <= eer <= 1
            assert 0 <= float(row[f"{s}/tar@far=0.001"]) <= float(row[f"{s}/tar@far=0.01"]) <= 1
    last = rows[-1]
    assert result["val_bin"]["lfw/accuracy"] == pytest.approx(float(last["lfw/accuracy"]))
    report = (full / "report.txt").read_text()
    assert "Verification sets (--val-bin" in report and "  val_roc.png " in report
    lfw_line = next(line for line in report.splitlines() if line.strip().startswith("lfw "))
    assert f"{100 * float(last['lfw/accuracy']):.2f} +- " in lfw_line
    for name in (*PLOTS, "val_roc.png"):
        assert (full / name).stat().st_size > 0, name
    _check_load_backbone(full / "checkpoint.pt")
    # the unpacked tree, without --val-bin: the same weights
    tree = tmp_path / "from-tree"
    _train(f"{common} --data {tmp_path / 'tree'} --output {tree} --no-plots")
    _same_weights(full, tree)
    # the .rec path, stopped after epoch 1 and resumed: the same weights
    part = tmp_path / "part"
    _train(f"{common} --data {rec} --output {part} --no-plots --stop-after-epoch 1")
    assert torch.load(part / "checkpoint.pt", weights_only=True)["epoch"] == 1
    _train(f"{common} --data {rec} --output {part} --no-plots --resume")
    _same_weights(full, part)
    assert [r["loss"] for r in _log_rows(part / "log.csv")] == [r["loss"] for r in rows]


@pytest.mark.slow
def test_a_recipe_trains_at_tiny_size(tmp_path):
    """``--recipe NAME --tiny``: the recipe's network, loss and schedule, at a smoke size
    (bfloat16: float16 autocast is slow on a CPU)."""
    name = "wf42m_pfc02_8gpus_r50_bs4k"  # warm-up, Partial FC 0.2, CosFace, clipping
    argv = f"--recipe {name} --tiny --amp bf16 --epochs 1 --identities 8 --images-per-identity 2"
    result = _train(f"{argv} --batch-size 8 --no-plots --no-progress --output {tmp_path / 'r'}")
    (row,) = result["history"]
    assert row["step"] == 2 and math.isfinite(row["loss"])
    assert row["lr"] == 0.0  # the polynomial decay ends at 0 with the last step


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_run_from_a_pack_with_sharded_partial_fc_resumed_equals_uninterrupted(tmp_path):
    """Two gloo ranks on a pack, class centers sharded (Partial FC, 3 sub-centers per class):
    each rank's RNG state and its shard of the centers and their momentum come back from the
    one checkpoint."""
    rec = _tiny_pack(tmp_path / "pack")
    (bin_path,) = _tiny_bins(tmp_path / "bins", names=("lfw",))
    common = ("--tiny", "--device", "cpu", "--no-plots", "--no-progress", "--data", str(rec))
    common += ("--batch-size", "8", "--sample-rate", "0.5", "--loss", "subcenter")
    full = tmp_path / "full"
    stdout = _run(
        "train_vggface2.py", *common, "--output", str(full), "--val-bin", bin_path, nproc=2
    )
    assert len(re.findall(r"^ +lfw +20 ", stdout, re.M)) == 2  # rank 0 alone evaluates, prints
    assert "lfw/accuracy" in (full / "log.csv").read_text()
    part = str(tmp_path / "part")
    _run("train_vggface2.py", *common, "--output", part, "--stop-after-epoch", "1", nproc=2)
    _run("train_vggface2.py", *common, "--output", part, "--resume", nproc=2)
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert len(b["extra"]["rng_per_rank"]) == 2
    assert a["model"]["loss.weight"].shape == (4 * 3, 32)  # all 4 training identities
    _same_weights(full, tmp_path / "part")
    # the one-file checkpoint loads into one process: the centers of both ranks, in order
    args = ex.parse_args(["--tiny", "--sample-rate", "0.5", "--loss", "subcenter"])
    objective = ex.Objective(C.build_model(args), ex.build_loss(args, 4, False)[0], None)
    params = [q for q in objective.parameters() if q.requires_grad]
    opt = ex.build_optimizer(params, args)
    _example("_partial_fc").load_states(a, objective, opt, params)
    assert torch.equal(objective.loss.weight, a["model"]["loss.weight"])
