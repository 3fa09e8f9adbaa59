"""The package imports cleanly, exposes its version and reports missing extras helpfully."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import metricface
from metricface._optional import require


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
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


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
