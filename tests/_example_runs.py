"""Running the example trainers from tests: as a subprocess (optionally under torchrun on
gloo), or imported as modules; tiny InsightFace packs and verification .bin files for them."""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PLOTS = ("roc.png", "det.png", "scores.png", "embeddings.png")


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def _run(script: str, *args: str, nproc: int = 1, fails: bool = False, crash: bool = False) -> str:
    env = _env()
    launcher = [sys.executable]
    if nproc > 1:  # as torchrun, on the gloo backend
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    proc = subprocess.run(
        [*launcher, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if crash:  # the run must fail (not a user mistake); its messages are returned
        assert proc.returncode != 0, proc.stdout[-3000:]
        return proc.stderr
    if fails:  # the run must stop with a one-line error (status 2); its message is returned
        assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
        if nproc == 1:
            assert "Traceback" not in proc.stderr, proc.stderr
            assert proc.stderr.strip().splitlines()[-1].startswith(f"{Path(script).name}: error: ")
        return proc.stderr
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _example(name: str):
    """Import an example script as a module (its ``main`` and helpers, no run)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXAMPLES))


def _check_load_backbone(path: Path) -> None:
    """The backbone in an example's checkpoint loads into a network built from its config."""
    from metricface.checkpoint import load_backbone

    config = torch.load(path, weights_only=True)["extra"]["config"]
    model = _example("_common").build_model(argparse.Namespace(**config))
    state = torch.get_rng_state()
    info = load_backbone(path, model)
    assert torch.equal(torch.get_rng_state(), state)  # inference loading leaves the RNG alone
    assert info["prefix"] == "backbone."
    stored = torch.load(path, weights_only=True)["model"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, stored[f"backbone.{k}"]), k


def _log_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _tiny_pack(folder: Path, identities: int = 12, images: int = 4, size: int = 40) -> Path:
    """An InsightFace pack (``train.rec``, ``train.idx``, ``property``) of synthetic faces,
    stored as JPEG as the published packs are; returns the ``.rec`` path."""
    from PIL import Image

    from metricface.data import SyntheticFaces, write_record_pack

    faces = SyntheticFaces(identities, images, image_size=size, seed=3)

    def items():
        for i in range(len(faces)):
            image, label = faces[i]
            buf = io.BytesIO()
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=90)
            yield buf.getvalue(), int(label)

    folder.mkdir(parents=True, exist_ok=True)
    write_record_pack(folder / "train.rec", items())
    return folder / "train.rec"


def _tiny_bins(folder: Path, names=("lfw", "cfp_fp"), n_pairs: int = 20) -> list[Path]:
    """Verification ``.bin`` files as InsightFace's tools wrote them (Python 2 pickles)."""
    from _bin_files import pair_images, write_bin

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed, name in enumerate(names):
        _, encoded, issame = pair_images(n_pairs, size=24, seed=seed, fmt="JPEG")
        paths.append(write_bin(folder / f"{name}.bin", encoded, issame, layout="python2"))
    return paths
