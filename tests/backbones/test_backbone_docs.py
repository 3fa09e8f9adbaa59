"""Every public name of metricface.backbones is documented in the API reference."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

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
