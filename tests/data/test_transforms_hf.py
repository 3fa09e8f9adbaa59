"""Transform presets and the optional Hugging Face adapter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from metricface.data import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform
from metricface.data.hf import HFFaceDataset


def _img(size=112, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)


def test_eval_transform_matches_manual_normalisation():
    x = _img()
    out = eval_transform(112)(x)
    assert out.dtype == torch.float32 and out.shape == (3, 112, 112)
    ref = (x.double() / 255 - 0.5) / 0.5
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=0)
    out = eval_transform(112, mean=IMAGENET_MEAN, std=IMAGENET_STD)(x)
    m = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(3, 1, 1)
    s = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(3, 1, 1)
    torch.testing.assert_close(out.double(), (x.double() / 255 - m) / s, atol=1e-5, rtol=0)


def test_eval_transform_resizes_and_accepts_pil():
    x = _img(150)
    out = eval_transform(224)(x)
    assert out.shape == (3, 224, 224)
    pil = Image.fromarray(x.permute(1, 2, 0).numpy())
    torch.testing.assert_close(eval_transform(112)(pil), eval_transform(112)(x))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P"])
def test_pil_images_of_any_mode_become_rgb(mode):
    """PNG faces often come as RGBA, grey or palette images; they are converted to RGB."""
    rgb = Image.fromarray(_img(40, seed=3).permute(1, 2, 0).numpy())
    pil = rgb.convert(mode)
    expected = eval_transform(112)(pil.convert("RGB"))
    torch.testing.assert_close(eval_transform(112)(pil), expected)
    assert train_transform(112)(pil).shape == (3, 112, 112)


def test_train_transform_is_seeded_random_and_mild():
    x = _img()
    t = train_transform(112)
    torch.manual_seed(0)
    a = t(x)
    torch.manual_seed(0)
    b = t(x)
    assert torch.equal(a, b) and a.shape == (3, 112, 112) and a.dtype == torch.float32
    outs = torch.stack([t(x) for _ in range(20)])
    assert (outs.std(0) > 0).any()  # random
    # mild: the average augmented image stays close to the eval image
    ref = eval_transform(112)(x)
    assert (outs.mean(0) - ref).abs().mean() < (ref - ref.mean()).abs().mean()


def test_train_transform_flip_only_is_a_mirror():
    x = _img(32)
    t = train_transform(32, crop_scale=(1.0, 1.0), color_jitter=0.0)
    ref = eval_transform(32)(x)
    seen = set()
    for _ in range(30):
        out = t(x)
        if torch.equal(out, ref):
            seen.add("same")
        elif torch.equal(out, ref.flip(-1)):
            seen.add("flip")
        else:
            raise AssertionError("only a horizontal flip is expected")
    assert seen == {"same", "flip"}


@pytest.mark.parametrize(
    ("fn", "kwargs", "match"),
    [
        (eval_transform, {"image_size": 0}, "image_size"),
        (eval_transform, {"mean": (0.5, 0.5)}, "mean"),
        (eval_transform, {"std": (0.5, 0.0, 0.5)}, "std"),
        (train_transform, {"crop_scale": (0.0, 1.0)}, r"crop_scale\[0\]"),
        (train_transform, {"crop_scale": (0.9, 0.8)}, r"crop_scale\[1\]"),
        (train_transform, {"color_jitter": -1.0}, "color_jitter"),
    ],
)
def test_transform_arguments(fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(**kwargs)


def test_hf_name_without_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"pip install datasets") as info:
        HFFaceDataset("some-user/some-faces")
    assert "Hugging Face" in str(info.value)


def test_hf_adapter_on_loaded_rows():
    rows = [
        {"image": Image.new("RGB", (8, 6), (i, 0, 0)), "label": i % 2, "extra": "x"}
        for i in range(4)
    ]
    rows[3]["image"] = Image.new("L", (8, 6), 9)  # grey-scale becomes RGB
    ds = HFFaceDataset(rows, transform=lambda x: x.float())
    assert len(ds) == 4 and ds.labels.tolist() == [0, 1, 0, 1] and ds.num_classes == 2
    img, label = ds[2]
    assert img.shape == (3, 6, 8) and img.dtype == torch.float32 and label == 0
    assert img[0, 0, 0] == 2 and img[1:].abs().sum() == 0
    assert ds[3][0].unique().tolist() == [9.0]
    arr_rows = [{"img": np.zeros((5, 5, 3), dtype=np.uint8), "id": 3}]
    ds = HFFaceDataset(arr_rows, image_column="img", label_column="id")
    assert ds[0][0].shape == (3, 5, 5) and ds[0][1] == 3
    with pytest.raises(ValueError, match="no column 'label'"):
        HFFaceDataset(arr_rows, image_column="img")
    with pytest.raises(ValueError, match="at least one row"):
        HFFaceDataset([])
    with pytest.raises(TypeError, match="source"):
        HFFaceDataset(42)


def test_datasets_is_imported_only_when_a_dataset_is_loaded_by_name(tmp_path):
    """A ``datasets`` package that fails on import must not matter until a Hub name is used."""
    (tmp_path / "datasets.py").write_text("raise RuntimeError('datasets was imported')\n")
    src = Path(__file__).resolve().parents[2] / "src"
    code = (
        "import sys, metricface, metricface.data\n"
        "from metricface.data import HFFaceDataset, SyntheticFaces\n"
        "from PIL import Image\n"
        "ds = HFFaceDataset([{'image': Image.new('RGB', (4, 4)), 'label': 0}])\n"
        "assert len(ds) == 1 and 'datasets' not in sys.modules\n"
        "try:\n"
        "    HFFaceDataset('some-user/some-faces')\n"
        "except RuntimeError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": f"{src}:{tmp_path}", "OMP_NUM_THREADS": "1", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "datasets was imported"  # ... and only by the Hub path


@pytest.mark.parametrize("size", [112, 224])
def test_presets_for_112_and_224_crops(size):
    for source in (size, 250, 96):  # already the size, larger, smaller
        x = _img(source, seed=source)
        resized = x if source == size else TF.resize(x, [size, size], antialias=True)
        ref = (resized.double() / 255 - 0.5) / 0.5
        torch.testing.assert_close(eval_transform(size)(x).double(), ref, atol=1e-6, rtol=0)
        torch.manual_seed(source)
        out = train_transform(size)(x)
        assert out.shape == (3, size, size) and out.dtype == torch.float32
        assert out.min() >= -1 - 1e-6 and out.max() <= 1 + 1e-6
