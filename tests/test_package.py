"""The package imports cleanly, exposes its version and reports missing extras helpfully."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import metricface
from metricface._optional import require

SRC = Path(__file__).resolve().parents[1] / "src"


def _run_python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that imports this checkout's metricface."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_version_matches_installed_metadata():
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("metricface")
    except PackageNotFoundError:  # running from a source tree without an install
        pytest.skip("metricface is not installed")
    assert metricface.__version__ == installed


def test_import_does_not_pull_optional_or_test_dependencies():
    # (tqdm is left out: torch itself imports it when it is installed)
    code = (
        "import sys, metricface; "
        "bad = [m for m in ('matplotlib', 'sklearn', 'pytorch_metric_learning', 'hypothesis', "
        "'pytest', 'sphinx') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = _run_python(code + "; print(metricface.__file__)")
    assert out.returncode == 0, out.stderr
    bad, path = out.stdout.rstrip("\n").split("\n")
    assert Path(path).is_relative_to(SRC)
    assert bad == ""


def test_require_returns_module():
    assert require("math").sqrt(4.0) == 2.0


def test_require_names_the_extra_for_a_missing_package():
    with pytest.raises(ImportError, match=r"pip install 'metricface\[plot\]'") as info:
        require("matplotlib_that_does_not_exist", extra="plot", purpose="plot a ROC curve")
    assert "plot a ROC curve" in str(info.value)


def test_require_falls_back_to_pip_package_name():
    with pytest.raises(ImportError, match=r"pip install no_such_pkg_xyz"):
        require("no_such_pkg_xyz.sub")


def test_readme_example_runs(capsys):
    """The README's code example is real: it trains one step and prints verification metrics."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    assert "EER 0.333" in capsys.readouterr().out


def test_optional_features_without_their_packages():
    """With matplotlib, scikit-learn, tqdm and onnx absent, the core still works and each
    optional feature says what to install (the package a user can actually ``pip install``)."""
    code = r"""
import sys
for name in ("matplotlib", "matplotlib.pyplot", "sklearn", "tqdm", "tqdm.auto", "onnx"):
    sys.modules[name] = None
import torch
import metricface
from metricface.backbones import iresnet18
from metricface.inference import embed
from metricface.losses import ArcFaceLoss
from metricface.metrics import equal_error_rate, kmeans_cluster_accuracy
from metricface.plots import plot_embeddings, plot_roc

model = iresnet18(embedding_dim=8)
loss = ArcFaceLoss(4, 8)(model(torch.randn(2, 3, 112, 112)), torch.tensor([0, 1]))
loss.backward()
assert equal_error_rate([1, 0, 1, 0], [0.9, 0.1, 0.4, 0.6]) == 0.5
x = torch.randn(12, 8)
kmeans_cluster_accuracy(x, torch.arange(12) % 3)
emb, _ = embed(torch.nn.Identity(), [(x, torch.arange(12))])
assert emb.shape == (12, 8)

def message(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ImportError as exc:
        return str(exc)
    raise AssertionError(f"{fn.__name__} did not raise ImportError")

print(message(plot_roc, [1, 0], [0.9, 0.1]))
print(message(plot_embeddings, x, torch.arange(12) % 3, method="tsne"))
print(message(embed, torch.nn.Identity(), [(x, torch.arange(12))], progress=True))
"""
    out = _run_python(code)
    assert out.returncode == 0, out.stderr
    roc, tsne, progress = out.stdout.strip().splitlines()
    assert "pip install 'metricface[plot]'" in roc
    assert "pip install scikit-learn" in tsne and "t-SNE" in tsne
    assert "pip install 'metricface[progress]'" in progress


def test_import_is_light_and_subpackages_load_on_access():
    """Computing metrics or losses does not pay for torchvision (about 1.5 s: it imports
    torch._dynamo); only the data transforms need it. ``metricface.<sub>`` still works after a
    bare ``import metricface``."""
    code = (
        "import sys, metricface, metricface.metrics, metricface.losses, metricface.miners, "
        "metricface.checkpoint; "
        "print('torchvision' in sys.modules); "
        "import metricface as m; "
        "print(m.plots.__name__, m.data.SyntheticFaces.__name__, 'torchvision' in sys.modules); "
        "print(sorted(set(m.__all__) - set(dir(m))))"
    )
    out = _run_python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == [
        "False",
        "metricface.plots SyntheticFaces True",
        "[]",
    ]
