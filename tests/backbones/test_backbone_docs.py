"""Every public name of metricface.backbones is documented; the guide's table is what profile() gives."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch

import metricface.backbones as B

API_PAGE = Path(__file__).resolve().parents[2] / "docs" / "api" / "backbones.rst"


def test_every_public_name_is_in_the_api_page():
    if not API_PAGE.exists():
        pytest.skip("documentation sources not available")
    text = API_PAGE.read_text()
    missing = [n for n in B.__all__ if f"metricface.backbones.{n}\n" not in text]
    assert missing == []


@pytest.mark.parametrize("name", B.__all__)
def test_every_public_name_has_a_docstring(name):
    obj = getattr(B, name)
    assert inspect.getdoc(obj), name


GUIDE = Path(__file__).resolve().parents[2] / "docs" / "backbones.rst"
_ROW = re.compile(
    r"^``(?P<call>\w+\(.*\))``\s+(?P<size>\d+)\s+(?P<params>[\d,]+)\s+(?P<gflops>[\d.]+)$"
)


def _table_rows() -> list[tuple[str, int, int, str]]:
    if not GUIDE.exists():
        return []
    rows = []
    for line in GUIDE.read_text().splitlines():
        match = _ROW.match(line.strip())
        if match:
            rows.append(
                (
                    match["call"],
                    int(match["size"]),
                    int(match["params"].replace(",", "")),
                    match["gflops"],
                )
            )
    return rows


def test_architecture_table_lists_every_builder():
    rows = _table_rows()
    if not GUIDE.exists():
        pytest.skip("documentation sources not available")
    listed = {call.split("(")[0] for call, *_ in rows}
    expected = {f"resnet{d}" for d in (18, 34, 50, 101, 152)}
    expected |= {f"iresnet{d}" for d in (18, 34, 50, 100, 200)}
    assert expected <= listed


@pytest.mark.parametrize(("call", "size", "params", "gflops"), _table_rows())
def test_architecture_table_row_is_what_profile_measures(call, size, params, gflops):
    # shapes are all FlopCounterMode needs: build and run on the meta device (no weights)
    with torch.device("meta"):
        model = eval(call, {n: getattr(B, n) for n in B.__all__})
    p = B.profile(model, (3, size, size))
    assert p.params == params
    assert f"{p.flops / 1e9:.2f}" == gflops
