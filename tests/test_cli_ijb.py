"""``python -m metricface eval-ijb``: a tiny IJB-C copy in the official layout, end to end.

The copy holds 48 loose crops: synthetic faces pasted, at two scales and random places, into
larger photos whose five landmarks are known, with the meta files laid out as InsightFace's
``IJB_release`` and the NIST 1:N lists. The tool's table is checked against a direct
computation on the same files (decode, align, flip-summed network outputs, template pooling,
cosine scores, TAR@FAR and rank-1 by counting).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from metricface import cli, inference
from metricface.backbones import iresnet18
from metricface.checkpoint import save_checkpoint
from metricface.cli import ijb as ijb_tool
from metricface.data import SyntheticFaces, align_face, decode_image_file, face_template
from metricface.metrics import IJB_FAR_TARGETS, tar_at_far, template_features

SIZE = 32  # aligned crop side: the tiny model's input
SUBJECTS = 8
BATCH = 8
CONFIG = {  # what the example trainers record (cli.config(args)), abridged
    "backbone": "iresnet18",
    "width": 0.125,
    "embedding_dim": 16,
    "image_size": SIZE,
    "loss": "arcface",
    "epochs": 3,
    "seed": 0,
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny forward passes: one thread is fastest, and threads of a loaded machine stall."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return iresnet18(embedding_dim=16, width=0.125, input_size=SIZE).eval()


def save_example_checkpoint(path: Path, model: nn.Module) -> Path:
    """As examples/train_vggface2.py saves it: backbone beside the loss's centers, config."""
    objective = nn.ModuleDict({"backbone": model, "head": nn.Linear(16, SUBJECTS)})
    return save_checkpoint(path, model=objective, epoch=3, step=30, extra={"config": CONFIG})


def write_benchmark(root: Path) -> dict:
    """An IJB-C-like copy under ``root``; returns what the files say, for the direct check."""
    rng = np.random.default_rng(0)
    faces = SyntheticFaces(SUBJECTS, 6, image_size=SIZE, seed=5)
    crops, meta = root / "loose_crop", root / "meta"
    crops.mkdir(parents=True)
    meta.mkdir()
    media, landmarks, templates, medias, subjects = [], {}, [], [], []

    def photo(index: int, template: int, media_id: int, subject: int) -> None:
        face = faces[index][0]
        scale = int(rng.integers(1, 3))
        face = face.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        canvas = torch.full((3, 80, 72), 90, dtype=torch.uint8)
        x, y = (
            int(rng.integers(0, 72 - face.shape[2] + 1)),
            int(rng.integers(0, 80 - face.shape[1] + 1)),
        )
        canvas[:, y : y + face.shape[1], x : x + face.shape[2]] = face
        name = f"{len(media) + 1}.jpg"
        Image.fromarray(canvas.permute(1, 2, 0).numpy()).save(crops / name, quality=95)
        landmarks[name] = (face_template(SIZE) + 0.5) * scale - 0.5 + [x, y]
        media.append(f"{name} {template} {media_id}")
        templates.append(template)
        medias.append(media_id)
        subjects.append(subject)

    for s in range(SUBJECTS):  # gallery template s+1: two stills; probes: still + 2-frame video
        k = 6 * s
        photo(k, s + 1, 1000 + 10 * s, s)
        photo(k + 1, s + 1, 1001 + 10 * s, s)
        photo(k + 2, 101 + 2 * s, 1002 + 10 * s, s)
        photo(k + 3, 101 + 2 * s, 1003 + 10 * s, s)
        photo(k + 4, 101 + 2 * s, 1003 + 10 * s, s)
        photo(k + 5, 102 + 2 * s, 1000 + 10 * s, s)  # a media id shared with another template
    scores = {name: float(rng.uniform(0.6, 1.0)) for name in landmarks}
    lines = [
        f"{name} " + " ".join(f"{v:.4f}" for v in points.ravel()) + f" {scores[name]:.4f}"
        for name, points in landmarks.items()
    ]
    shuffled = [lines[i] for i in rng.permutation(len(lines))]  # matched by name, not by line
    (meta / "ijbc_name_5pts_score.txt").write_text("\n".join(shuffled) + "\n")
    (meta / "ijbc_face_tid_mid.txt").write_text("\n".join(media) + "\n")
    gallery = list(range(1, SUBJECTS + 1))
    probes = list(range(101, 101 + 2 * SUBJECTS))
    subject_of = dict(zip(templates, subjects))
    pairs = [(g, p, int(subject_of[g] == subject_of[p])) for g in gallery for p in probes]
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    (meta / "ijbc_template_pair_label.txt").write_text(
        "".join(f"{a} {b} {y}\n" for a, b, y in pairs)
    )

    def subject_csv(chosen: list[int]) -> str:
        rows = [
            f"{t},{subject_of[t]},img/{i}.jpg,{i},0,0,{SIZE},{SIZE}\n"
            for i, t in enumerate(templates)
            if t in chosen
        ]
        return (
            "TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID,FACE_X,FACE_Y,FACE_WIDTH,FACE_HEIGHT\n"
            + "".join(rows)
        )

    (meta / "ijbc_1N_gallery_G1.csv").write_text(subject_csv(gallery[:4]))
    (meta / "ijbc_1N_gallery_G2.csv").write_text(subject_csv(gallery[4:]))
    (meta / "ijbc_1N_probe_mixed.csv").write_text(subject_csv(probes))
    names = [line.split()[0] for line in media]
    written = {line.split()[0]: np.array(line.split()[1:], dtype=np.float32) for line in lines}
    return dict(  # landmarks and scores as the file gives them (4 decimals, read as float32)
        names=names,
        landmarks=np.stack([written[n][:10].reshape(5, 2) for n in names]),
        scores=np.array([written[n][10] for n in names]),
        templates=np.array(templates),
        medias=np.array(medias),
        subject_of=subject_of,
        pairs=np.array(pairs),
        galleries={"G1": gallery[:4], "G2": gallery[4:]},
        probes=probes,
    )


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    base = tmp_path_factory.mktemp("ijb")
    truth = write_benchmark(base / "IJBC")
    ckpt = save_example_checkpoint(base / "checkpoint.pt", tiny_model(0))
    return base / "IJBC", ckpt, truth


def run(root: Path, ckpt: Path, out: Path | None, *extra: object) -> int:
    args = ["eval-ijb", "--root", root, "--checkpoint", ckpt, "--device", "cpu"]
    args += ["--workers", 0, "--batch-size", BATCH, "--no-progress"]
    args += ["--output", out] if out is not None else []
    return cli.main([str(a) for a in [*args, *extra]])


@pytest.fixture(scope="module")
def reference(bench, tmp_path_factory):
    """One uninterrupted run: its output folder, what it printed and its stderr."""
    root, ckpt, _ = bench
    out = tmp_path_factory.mktemp("ref") / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        assert run(root, ckpt, out) == 0
    return out, stdout.getvalue(), stderr.getvalue()


def copy_output(reference, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    return out


def direct_table(bench) -> dict:
    """The 1:1 and 1:N numbers computed here, image by image, from the files."""
    root, _, truth = bench
    model = tiny_model(0)
    crops = torch.stack(
        [
            align_face(decode_image_file(root / "loose_crop" / name), points, SIZE)
            for name, points in zip(truth["names"], truth["landmarks"])
        ]
    )
    x = (crops.float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        features = model(x) + model(x.flip(-1))  # flip TTA: the sum, not normalised
    pooled, ids = template_features(features, truth["templates"], truth["medias"], truth["scores"])
    unit = pooled.double().numpy()
    row = {int(t): i for i, t in enumerate(ids)}
    t1, t2, labels = truth["pairs"].T
    scores = np.array([unit[row[a]] @ unit[row[b]] for a, b in zip(t1, t2)])
    out = {"features": features.numpy(), "scores": scores}
    out.update(
        {
            f"tar@far={a:g}": t
            for a, t in zip(IJB_FAR_TARGETS, tar_at_far(labels, scores, IJB_FAR_TARGETS))
        }
    )
    subject_of = truth["subject_of"]
    for name, gallery in truth["galleries"].items():
        enrolled = {subject_of[g] for g in gallery}
        mated = [p for p in truth["probes"] if subject_of[p] in enrolled]
        hits = [
            subject_of[max(gallery, key=lambda g: unit[row[p]] @ unit[row[g]])] == subject_of[p]
            for p in mated
        ]
        out[f"{name}/rank-1"] = float(np.mean(hits))
    return out


# ---------------------------------------------------------------------------- the table
@pytest.mark.slow
def test_the_table_equals_a_direct_computation(bench, reference):
    out, printed, notes = reference
    with pytest.warns(UserWarning, match="below 1 / n_impostor"):  # 112 impostor pairs
        expected = direct_table(bench)
    # the library's warnings are one line each: no source line, no file name
    assert "eval-ijb: note: fpir target 0.01 is below the resolution of 8 non-mated" in notes
    assert "UserWarning" not in notes
    metrics = json.loads((out / "metrics.json").read_text())
    for key in [f"tar@far={a:g}" for a in IJB_FAR_TARGETS] + ["G1/rank-1", "G2/rank-1"]:
        assert metrics[key] == pytest.approx(expected[key], abs=1e-12), key
    assert 0 < metrics["tar@far=0.1"] < 1  # the table says something
    np.testing.assert_allclose(np.load(out / "scores.npy"), expected["scores"], atol=2e-6)
    np.testing.assert_allclose(
        np.load(out / "features.npy"), expected["features"], rtol=1e-4, atol=1e-5
    )
    # printed = report.txt; the report names the checkpoint's architecture and settings
    report = (out / "report.txt").read_text()
    assert printed.startswith(report)
    assert "iresnet18, width 0.125, 16-d, epoch 3), 32x32 aligned crops, flip TTA" in report
    assert "IJBC: 48 images in 24 templates" in report
    assert "1:1 verification: 128 pairs (16 genuine)" in report
    assert re.search(r"^G1 +[\d.-]+ +[\d.-]+ +[\d.]+", report, re.M)
    assert f"wrote report.txt, metrics.json, scores.npy, roc.png to {str(out)!r}" in printed
    assert Image.open(out / "roc.png").format == "PNG"
    info = json.loads((out / "features.json").read_text())
    assert info["done"] == 48 and info["fingerprint"]["image_size"] == SIZE
    assert sorted(p.name for p in out.iterdir()) == [
        "features.json", "features.npy", "metrics.json", "report.txt", "roc.png", "scores.npy"
    ]  # fmt: skip


# ---------------------------------------------------------------------------- resuming
def embed_counting(
    monkeypatch, fail_at: int | None = None, error: type = KeyboardInterrupt, check=None
):
    """Patch ``inference.embed``: count the calls, raise ``error`` at call ``fail_at``."""
    calls = []
    real = inference.embed

    def embed(*args, **kwargs):
        calls.append(1)
        if check is not None:
            check(len(calls))
        if fail_at is not None and len(calls) == fail_at:
            raise error()
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "embed", embed)
    return calls


@pytest.mark.slow
def test_an_interrupted_feature_pass_resumes_bit_for_bit(
    bench, reference, tmp_path, monkeypatch, capsys
):
    root, ckpt, _ = bench
    out = tmp_path / "out"
    monkeypatch.setattr(ijb_tool, "_SAVE_EVERY", 2 * BATCH)
    recorded = []

    def check(call: int) -> None:  # what a killed process would leave: the last record
        if (out / "features.json").exists():
            recorded.append(json.loads((out / "features.json").read_text())["done"])

    embed_counting(monkeypatch, fail_at=4, check=check)  # Ctrl-C during the 4th batch
    assert run(root, ckpt, out) == 130
    err = capsys.readouterr().err
    assert "interrupted after 24 of 48 images" in err and "run the same command again" in err
    assert recorded == [0, 0, 16, 16]  # a record every 2 batches: a kill loses at most 2
    assert json.loads((out / "features.json").read_text())["done"] == 24  # Ctrl-C loses none
    assert not (out / "report.txt").exists()

    calls = embed_counting(monkeypatch, fail_at=2, error=RuntimeError)  # a crash: a traceback
    with pytest.raises(RuntimeError):
        run(root, ckpt, out)
    assert json.loads((out / "features.json").read_text())["done"] == 32

    (out / ".features.json.4321.tmp").write_text("{")  # as a run killed while writing leaves
    calls = embed_counting(monkeypatch)
    assert run(root, ckpt, out) == 0
    assert len(calls) == 2  # only the 16 images left
    assert not (out / ".features.json.4321.tmp").exists()
    assert "continuing after 32 of 48 images" in capsys.readouterr().err
    for name in ("features.npy", "scores.npy", "metrics.json"):
        assert (out / name).read_bytes() == (reference[0] / name).read_bytes(), name


@pytest.mark.slow
def test_complete_features_are_reused(bench, reference, tmp_path, monkeypatch, capsys):
    root, ckpt, _ = bench
    out = copy_output(reference, tmp_path)
    calls = embed_counting(monkeypatch)
    (out / "metrics.json").unlink()
    assert run(root, ckpt, out) == 0
    assert not calls
    printed = capsys.readouterr().out
    assert "features reused (complete, same settings)" in printed
    assert (out / "metrics.json").read_bytes() == (reference[0] / "metrics.json").read_bytes()
    # the weights are what counts, not the file: the same network as a bare state dict
    bare = tmp_path / "bare.pt"
    torch.save(tiny_model(0).state_dict(), bare)
    flags = [
        "--backbone",
        "iresnet18",
        "--width",
        0.125,
        "--embedding-dim",
        16,
        "--image-size",
        SIZE,
    ]
    assert run(root, bare, out, *flags) == 0
    assert not calls
    assert (out / "scores.npy").read_bytes() == (reference[0] / "scores.npy").read_bytes()


@pytest.mark.slow
def test_worker_processes_give_the_same_features(bench, reference, tmp_path):
    root, ckpt, _ = bench
    with contextlib.redirect_stdout(io.StringIO()):
        assert run(root, ckpt, tmp_path / "out", "--workers", 2) == 0
    for name in ("features.npy", "scores.npy"):
        assert (tmp_path / "out" / name).read_bytes() == (reference[0] / name).read_bytes()


def test_roc_is_skipped_without_matplotlib(bench, reference, tmp_path, monkeypatch, capsys):
    root, ckpt, _ = bench
    out = copy_output(reference, tmp_path)
    (out / "roc.png").unlink()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert run(root, ckpt, out) == 0
    assert "roc.png skipped: matplotlib is not installed" in capsys.readouterr().out
    assert not (out / "roc.png").exists() and (out / "report.txt").exists()


@pytest.mark.slow
def test_features_of_other_settings_are_refused_unless_overwrite(
    bench, reference, tmp_path, monkeypatch, capsys
):
    root, ckpt, _ = bench
    out = copy_output(reference, tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = save_example_checkpoint(tmp_path / "other.pt", tiny_model(1))
    assert run(root, other, out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds features computed with other settings" in err
    assert "the model's weights" in err and "--overwrite" in err
    assert run(root, ckpt, out, "--amp", "bf16") == 2
    assert "--amp ('none' there, 'bf16' now)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    assert run(root, other, out, "--overwrite") == 0
    assert (out / "features.npy").read_bytes() != before["features.npy"]


def test_a_bad_image_is_named_and_the_work_before_it_kept(bench, tmp_path, capsys):
    root, ckpt, _ = bench
    copy = tmp_path / "IJBC"
    shutil.copytree(root, copy)
    good = (copy / "loose_crop" / "20.jpg").read_bytes()
    (copy / "loose_crop" / "20.jpg").write_bytes(good[:50])  # cut short: image 20, batch 3
    out = tmp_path / "out"
    assert run(copy, ckpt, out) == 2
    status, err = capsys.readouterr().err.splitlines()  # what started, then one line
    assert status.startswith("eval-ijb: embedding 48 images of IJBC on cpu")
    assert err.startswith("metricface eval-ijb: error: cannot decode image file")
    assert "20.jpg" in err and "the features of the first 16 images are kept" in err
    assert json.loads((out / "features.json").read_text())["done"] == 16


# ---------------------------------------------------------------------------- refusals
# Each case changes a copy of the benchmark (or the command line): (root, checkpoint, tmp) ->
# (root, checkpoint, extra flags); the refusal must match the message.
CASES: dict = {}


def case(message: str):
    def add(change):
        CASES[change.__name__] = (change, message)
        return change

    return add


@case(r"--root '.*absent' is not a directory")
def no_root(root, ckpt, tmp):
    return tmp / "absent", ckpt, []


@case(r"has no loose_crop/ folder \(the face images\)")
def no_loose_crop(root, ckpt, tmp):
    shutil.rmtree(root / "loose_crop")
    return root, ckpt, []


@case(r"--target must be one of IJBB, IJBC, got 'IJBA'")
def unknown_target(root, ckpt, tmp):
    return root, ckpt, ["--target", "IJBA"]


@case(r"meta' lacks ijbc_template_pair_label.txt \(the IJBC protocol files")
def no_pair_file(root, ckpt, tmp):
    (root / "meta" / "ijbc_template_pair_label.txt").unlink()
    return root, ckpt, []


@case(
    r"ijbc_name_5pts_score.txt has no landmarks for '7.jpg' \(line 7 of "
    r"ijbc_face_tid_mid.txt\); 1 of its 48"
)
def landmarks_of_an_image_missing(root, ckpt, tmp):
    path = root / "meta" / "ijbc_name_5pts_score.txt"
    path.write_text("".join(line for line in path.open() if not line.startswith("7.jpg ")))
    return root, ckpt, []


@case(r"loose_crop' lacks '5.jpg', and 1 images")
def image_file_missing(root, ckpt, tmp):
    (root / "loose_crop" / "5.jpg").unlink()
    return root, ckpt, []


@case(
    r"cannot align '9.jpg' with its landmarks in ijbc_name_5pts_score.txt: the set is "
    r"degenerate: all its points coincide: \[\[40"
)
def degenerate_landmarks(root, ckpt, tmp):
    path = root / "meta" / "ijbc_name_5pts_score.txt"
    lines = [
        "9.jpg " + " ".join(["40"] * 10) + " 0.9" if line.startswith("9.jpg ") else line
        for line in path.read_text().splitlines()
    ]
    path.write_text("\n".join(lines) + "\n")
    return root, ckpt, []


@case(r"the protocol files do not fit together \(.*\): pairs t2 names template 999")
def a_pair_naming_a_template_without_images(root, ckpt, tmp):
    with open(root / "meta" / "ijbc_template_pair_label.txt", "a") as f:
        f.write("1 999 0\n")
    return root, ckpt, []


@case(r"--checkpoint '.*absent.pt' is not a file")
def no_checkpoint(root, ckpt, tmp):
    return root, tmp / "absent.pt", []


class Unsafe:
    def __reduce__(self):
        return (print, ("this must never run",))


@case(
    r"refusing to load --checkpoint '.*evil.pt': it holds objects other than tensors and plain "
    r"values \(the global print\), which torch.load\(weights_only=True\) does not run$"
)
def unsafe_checkpoint(root, ckpt, tmp):
    torch.save({"model": Unsafe()}, tmp / "evil.pt")
    return root, tmp / "evil.pt", []


@case(r"cannot read --checkpoint '.*cut.pt': truncated, corrupt")
def truncated_checkpoint(root, ckpt, tmp):
    (tmp / "cut.pt").write_bytes(ckpt.read_bytes()[:1000])
    return root, tmp / "cut.pt", []


@case(r"records no training config \(a bare state dict\?\): pass --backbone")
def state_dict_without_backbone(root, ckpt, tmp):
    torch.save(tiny_model(0).state_dict(), tmp / "bare.pt")
    return root, tmp / "bare.pt", []


@case(
    r"holds weights of other shapes than this IResNet .*; the model was built as iresnet18 "
    r"\(width 0.125, 16-d, 64x64 input\) from the flags image_size: pass --backbone"
)
def another_image_size(root, ckpt, tmp):
    return root, ckpt, ["--image-size", 64]


@case(r"--batch-size must be at least 1, got 0")
def batch_size_zero(root, ckpt, tmp):
    return root, ckpt, ["--batch-size", 0]


@case(r"--output '.*out' exists and is not a directory")
def output_is_a_file(root, ckpt, tmp):
    (tmp / "out").write_text("x")
    return root, ckpt, []


@case(r"features.npy' exists without features.json, so what made it is unknown: pass --overwrite")
def foreign_features(root, ckpt, tmp):
    (tmp / "out").mkdir()
    (tmp / "out" / "features.npy").write_bytes(b"x")
    return root, ckpt, []


@case(r"features.json' is not a record of eval-ijb features: pass --overwrite")
def damaged_feature_record(root, ckpt, tmp):
    (tmp / "out").mkdir()
    (tmp / "out" / "features.json").write_text("{")
    return root, ckpt, []


if not torch.cuda.is_available():

    @case(r"--device 'cuda': this machine has 0 usable CUDA")
    def no_cuda(root, ckpt, tmp):
        return root, ckpt, ["--device", "cuda"]


@pytest.mark.parametrize("case", list(CASES))
def test_mistakes_are_one_line_refusals_before_any_work(bench, tmp_path, monkeypatch, capsys, case):
    root, ckpt, _ = bench
    copy = tmp_path / "IJBC"
    shutil.copytree(root, copy)
    change, message = CASES[case]
    new_root, new_ckpt, extra = change(copy, ckpt, tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    calls = embed_counting(monkeypatch)
    monkeypatch.delenv("METRICFACE_DEBUG", raising=False)
    assert run(new_root, new_ckpt, tmp_path / "out", *extra) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("metricface eval-ijb: error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert "this must never run" not in captured.out
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    assert not calls


def test_the_default_output_is_named_after_target_and_checkpoint(
    bench, tmp_path, monkeypatch, capsys
):
    root, ckpt, _ = bench
    monkeypatch.chdir(tmp_path)
    Path("ijb-ijbc-checkpoint").write_text("in the way")
    assert run(root, ckpt, None, "--target", "ijbc") == 2
    assert "--output 'ijb-ijbc-checkpoint' exists and is not a directory" in capsys.readouterr().err
