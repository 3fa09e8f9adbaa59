"""``python -m metricface align``: a raw tree + landmark file in, an IdentityFolder tree out."""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metricface import cli
from metricface.cli import align as align_tool
from metricface.cli.support import Progress
from metricface.data import ARCFACE_TEMPLATE, IdentityFolder

HEADER = '"NAME_ID","P1X","P1Y","P2X","P2Y","P3X","P3Y","P4X","P4Y","P5X","P5Y"'


def face_photo(path: Path, rng: np.random.Generator) -> np.ndarray:
    """A grey photo with a bright blob centred on each of five landmarks; returns the landmarks."""
    angle, scale = rng.uniform(-0.3, 0.3), rng.uniform(1.0, 1.3)
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    points = ARCFACE_TEMPLATE @ np.array([[c, s], [-s, c]]) + rng.uniform(10, 25, 2)
    y, x = np.mgrid[:180, :170].astype(np.float64)
    blobs = sum(np.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * 3.0**2)) for px, py in points)
    pixels = (60 + 195 * np.clip(blobs, 0, 1)).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.repeat(pixels[..., None], 3, axis=2)).save(path, quality=98)
    return points


def csv_row(name: str, points) -> str:
    return f'"{name}",' + ",".join(f"{v:.4f}" for v in np.ravel(points))


@pytest.fixture
def raw_tree(tmp_path):
    """VGGFace2-like tree: 5 good images, one without a row, one undecodable, one degenerate."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    rows = []
    for name in [
        "n000001/0001_01",
        "n000001/0002_01",
        "n000001/0003_01",
        "n000002/0001_01",
        "n000002/0002_01",
    ]:
        rows.append(csv_row(name, face_photo(raw / f"{name}.jpg", rng)))
    face_photo(raw / "n000001/0004_01.png", rng)  # no row
    (raw / "n000002/0003_01.jpg").write_bytes(b"\xff\xd8 truncated")
    rows.append(csv_row("n000002/0003_01", ARCFACE_TEMPLATE))
    face_photo(raw / "n000002/0004_01.jpg", rng)
    rows.append(csv_row("n000002/0004_01", np.full((5, 2), 80.0)))  # all points in one place
    rows.append(csv_row("n000009/0001_01", ARCFACE_TEMPLATE))  # a row without an image
    landmarks = tmp_path / "loose_landmark_train.csv"
    landmarks.write_text("\n".join([HEADER, *rows]) + "\n")
    return raw, landmarks, tmp_path / "aligned"


def run(*args: object) -> int:
    return cli.main(["align", *map(str, args)])


def counts(out: str) -> dict[str, int]:
    found = {}
    for line in out.splitlines():
        label, _, rest = line.strip().partition(":")
        if rest.split() and rest.split()[0].replace(",", "").isdigit():
            found[label] = int(rest.split()[0].replace(",", ""))
    return found


def dot_centroids(path: Path) -> np.ndarray:
    grey = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    weight = np.clip(grey - 60, 0, None)
    y, x = np.mgrid[: grey.shape[0], : grey.shape[1]]
    out = []
    for tx, ty in ARCFACE_TEMPLATE:
        near = weight * ((x - tx) ** 2 + (y - ty) ** 2 < 8**2)
        out.append([(near * x).sum() / near.sum(), (near * y).sum() / near.sum()])
    return np.array(out)


def test_a_raw_tree_becomes_an_aligned_identity_folder(raw_tree, capsys):
    raw, landmarks, out = raw_tree
    assert run(raw, landmarks, out, "--workers", 1, "--no-progress") == 1  # some images failed
    stdout = capsys.readouterr().out
    assert counts(stdout) == {
        "written": 5,
        "skipped (already done)": 0,
        "without landmarks": 1,
        "failed to decode": 1,
        "unusable landmarks": 1,
    }
    assert "1 landmark rows name no image under SRC_ROOT" in stdout
    faces = IdentityFolder(out)
    assert faces.classes == ["n000001", "n000002"] and len(faces) == 5
    assert [Path(p).relative_to(out).as_posix() for p, _ in faces.samples][
        -1
    ] == "n000002/0002_01.jpg"
    assert all(image.shape == (3, 112, 112) for image, _ in faces)
    for path, _ in faces.samples:  # the dots drawn at the landmarks sit on the template
        np.testing.assert_allclose(dot_centroids(Path(path)), ARCFACE_TEMPLATE, atol=0.1)
    assert (out / "missing_landmarks.txt").read_text() == "n000001/0004_01.png\n"
    failed = (out / "failed_images.txt").read_text().splitlines()
    assert failed[0].startswith("n000002/0003_01.jpg\tcannot decode: ")
    assert failed[1].startswith("n000002/0004_01.jpg\tunusable landmarks: landmarks ")
    assert "coincide" in failed[1] and len(failed) == 2


def test_an_interrupted_run_leaves_no_partial_file_and_resumes(raw_tree, capsys, monkeypatch):
    raw, landmarks, out = raw_tree
    real_replace, calls = os.replace, []

    def ctrl_c_on_the_third_rename(src, dst):  # the worst moment: the crop is encoded
        calls.append(dst)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(align_tool.os, "replace", ctrl_c_on_the_third_rename)
    assert run(raw, landmarks, out, "--workers", 1, "--no-progress") == 130
    monkeypatch.setattr(align_tool.os, "replace", real_replace)
    err = capsys.readouterr().err
    assert "interrupted after 2 crops written" in err and "run the same command again" in err
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == [  # no temporary file, no list; the settings the crops were made with
        align_tool.SETTINGS_FILE,
        "n000001/0001_01.jpg",
        "n000001/0002_01.jpg",
    ]
    # a run killed outright leaves its hidden temporary file: never taken for a finished crop
    stale = out / "n000001" / ".0003_01.jpg.4242.tmp"
    stale.write_bytes(b"half a jpeg")

    assert run(raw, landmarks, out, "--workers", 1, "--no-progress") == 1
    assert counts(capsys.readouterr().out)["written"] == 3
    assert not stale.exists()
    faces = IdentityFolder(out)
    assert len(faces) == 5 and faces.verify() == []

    assert run(raw, landmarks, out, "--workers", 1, "--no-progress") == 1  # nothing left to do
    found = counts(capsys.readouterr().out)
    assert found["written"] == 0 and found["skipped (already done)"] == 5


def test_worker_processes_write_the_same_crops(tmp_path, capsys):
    rng = np.random.default_rng(1)
    raw = tmp_path / "raw"
    rows = [
        csv_row(f"id{i % 3}/{i:04d}", face_photo(raw / f"id{i % 3}/{i:04d}.jpg", rng))
        for i in range(40)
    ]
    landmarks = tmp_path / "lm.csv"
    landmarks.write_text("\n".join([HEADER, *rows]) + "\n")
    assert run(raw, landmarks, tmp_path / "pool", "--workers", 2) == 0  # with a progress bar
    assert counts(capsys.readouterr().out)["written"] == 40
    assert run(raw, landmarks, tmp_path / "inline", "--workers", 1, "--no-progress") == 0
    for path in sorted((tmp_path / "inline").rglob("*.jpg")):
        other = tmp_path / "pool" / path.relative_to(tmp_path / "inline")
        np.testing.assert_array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(other)))
    assert len(list((tmp_path / "pool").rglob("*.jpg"))) == 40


def test_ijb_landmarks_and_a_flat_folder_are_recognised(tmp_path, capsys):
    rng = np.random.default_rng(2)
    crops = tmp_path / "loose_crop"
    lines = []
    for name in ["1.jpg", "2.jpg", "10.jpg"]:
        points = face_photo(crops / name, rng)
        lines.append(f"{name} " + " ".join(f"{v:.3f}" for v in points.ravel()) + " 0.99")
    meta = tmp_path / "ijbc_name_5pts_score.txt"
    meta.write_text("\n".join(lines) + "\n")
    assert run(crops, meta, tmp_path / "out", "--workers", 1, "--size", 224) == 0
    assert counts(capsys.readouterr().out)["written"] == 3
    out = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert out == [align_tool.SETTINGS_FILE, "1.jpg", "10.jpg", "2.jpg"]
    assert Image.open(tmp_path / "out" / "10.jpg").size == (224, 224)


def test_progress_lines_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # as if not installed
    progress = Progress(8, "align", enabled=True, every=0.0)
    progress.update(2)
    progress.update(6)
    progress.close()
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("align: 2/8 images (25%)") and err[1].startswith("align: 8/8 images")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda raw, lm, out: (raw / "absent", lm, out), "SRC_ROOT .* is not a directory"),
        (lambda raw, lm, out: (raw, lm.with_name("absent.csv"), out), "LANDMARKS .* is not a file"),
        (
            lambda raw, lm, out: (raw, lm, raw / "aligned"),
            "must not be SRC_ROOT or a folder inside",
        ),
        (lambda raw, lm, out: (raw, lm, raw), "must not be SRC_ROOT"),
        (lambda raw, lm, out: (raw, lm, out, "--quality", 0), r"--quality must be in \[1, 100\]"),
        (lambda raw, lm, out: (raw, lm, out, "--size", 0), "--size must be a positive"),
        (lambda raw, lm, out: (raw, lm, out, "--workers", 0), "--workers must be at least 1"),
        (lambda raw, lm, out: (raw, lm, out, "--format", "ijb"), "line 1: expected 12 fields"),
    ],
)
def test_user_mistakes_are_one_line_errors_before_any_work(raw_tree, capsys, change, message):
    raw, landmarks, out = raw_tree
    assert run(*change(raw, landmarks, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("metricface align: error: ") and err.count("\n") == 1
    assert re.search(message, err), err
    assert not out.exists() and not (raw / "aligned").exists()


def test_a_malformed_landmark_file_is_named_with_its_line(raw_tree, capsys):
    raw, landmarks, out = raw_tree
    lines = landmarks.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0]  # a coordinate short
    landmarks.write_text("\n".join(lines) + "\n")
    assert run(raw, landmarks, out) == 2
    assert "loose_landmark_train.csv' line 3: expected 11 fields" in capsys.readouterr().err


def test_a_landmark_file_of_another_split_is_refused(raw_tree, tmp_path, capsys):
    raw, _, out = raw_tree
    other = tmp_path / "loose_landmark_test.csv"
    other.write_text("\n".join([HEADER, csv_row("n009999/0001_01", ARCFACE_TEMPLATE)]) + "\n")
    assert run(raw, other, out) == 2
    err = capsys.readouterr().err
    assert "none of the 8 images under" in err and "'n009999/0001_01'" in err


def test_a_rerun_with_other_settings_is_refused_instead_of_mixing_crops(raw_tree, capsys):
    raw, landmarks, out = raw_tree
    run(raw, landmarks, out, "--workers", 1, "--no-progress")
    capsys.readouterr()
    crops = {p: p.read_bytes() for p in out.rglob("*.jpg")}
    assert run(raw, landmarks, out, "--workers", 1, "--no-progress", "--size", 224) == 2
    err = capsys.readouterr().err
    assert err.startswith("metricface align: error: ") and err.count("\n") == 1
    assert "--size 112 (this run: 224)" in err
    other = landmarks.with_name("other.csv")
    other.write_text(landmarks.read_text() + "\n")  # the same rows, but not the same file
    assert run(raw, other, out, "--workers", 1, "--no-progress") == 2
    assert "another LANDMARKS file" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*.jpg")} == crops  # nothing rewritten
    # the same settings resume as before
    assert run(raw, landmarks, out, "--workers", 1, "--no-progress") == 1
    assert counts(capsys.readouterr().out)["skipped (already done)"] == 5
