"""Sphinx configuration for metricface."""

from __future__ import annotations

import os

import metricface

project = "metricface"
author = "metricface developers"
copyright = "2026, metricface developers"
release = metricface.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

autosummary_generate = False
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_inherit_docstrings = False
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable", None),
    "torch": ("https://docs.pytorch.org/docs/stable", None),
}
intersphinx_timeout = 5
# Offline builds (CI, air-gapped machines) set METRICFACE_DOCS_OFFLINE=1: cross-links to the
# Python/NumPy/PyTorch docs are then left as plain text instead of failing the -W build.
if os.environ.get("METRICFACE_DOCS_OFFLINE"):
    intersphinx_mapping = {}

nitpicky = False
doctest_global_setup = """
import numpy as np
import torch
import os

import metricface
torch.manual_seed(0)
"""

html_theme = "furo"
html_title = f"metricface {release}"
html_static_path = ["_static"]
templates_path: list[str] = []
exclude_patterns = ["_build"]


def _public_bases(app, name, obj, options, bases):
    """Show the nearest public ancestor instead of a private implementation base class."""
    shown = []
    for base in bases:
        while base.__name__.startswith("_") and base is not object:
            base = base.__mro__[1]
        if base not in shown:
            shown.append(base)
    bases[:] = shown


def setup(app):
    app.connect("autodoc-process-bases", _public_bases)
