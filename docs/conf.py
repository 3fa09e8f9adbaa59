"""Sphinx configuration for metricface."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path

# Document this checkout's code, installed or not (``sphinx-build docs docs/_build/html``).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

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

# Links into other projects' documentation need their inventories from the network, so they
# are opt-in: METRICFACE_DOCS_ONLINE=1 turns them on. By default (CI, air-gapped machines, the
# README's command) the build is offline and such references stay plain text.
intersphinx_mapping = {}
if os.environ.get("METRICFACE_DOCS_ONLINE", "") not in ("", "0"):
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable", None),
        "torch": ("https://docs.pytorch.org/docs/stable", None),
        "matplotlib": ("https://matplotlib.org/stable", None),
    }
intersphinx_timeout = 5

# ``sphinx-build -n`` reports every reference that resolves nowhere. References into other
# projects (linked only online, and not all of their names are in their inventories) and the
# words of numpydoc type descriptions ("array-like of shape (n,)", "optional", choice sets)
# are not links to check; every metricface name must resolve.
_OTHER_PROJECTS = (
    "torch",
    "torchvision",
    "numpy",
    "np",
    "scipy",
    "matplotlib",
    "PIL",
    "datasets",
    "os",
    "collections",
    "argparse",
    "pathlib",
    "random",
    "typing",
)
nitpick_ignore_regex = [
    (r"py:.*", rf"({'|'.join(_OTHER_PROJECTS)})(\..+)?"),
    (r"py:class", r"(Tensor|Module|Dataset|ProcessGroup|nn\.Module)"),  # short torch names
    (r"py:class", r"NormLayer"),  # a type alias of metricface.backbones.blocks (a callable)
    (
        r"py:class",
        r"(optional|array-like|callable|sequence|mapping|iterable|integer|int64|float64|"
        r"shape|default.*|\d+ (ints|floats)|\w+ to \w+|paths?|(two|three) arrays|.* \* .*|"
        r".* \+ .*)",
    ),
    (r"py:class", r"[A-Za-z]|[A-Z]+|n_\w+|max_\w+|embedding_dim|bins|k"),  # sizes in shapes
    (r"py:class", r"[{].*|.*[}]|\"[^\"]*\""),  # choices: {"a", "b"}
]
nitpicky = True
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


def _private(cls: type) -> bool:
    """A class named with ``_`` or defined in a ``_module`` (not part of the API reference)."""
    parts = [*cls.__module__.split("."), cls.__name__]
    return any(p.startswith("_") for p in parts if p != "__main__") and cls.__module__ != "builtins"


def _public_bases(app, name, obj, options, bases):
    """Show the nearest public ancestor instead of a private implementation base class."""
    shown = []
    for base in bases:
        while _private(base) and base is not object:
            base = base.__mro__[1]
        if base not in shown:
            shown.append(base)
    bases[:] = shown


def _resolve_public_path(app, env, node, contnode):
    """Resolve ``metricface.<package>.<Name>``, the path users import a name by, to the module
    that defines it, where autodoc documents it (``metricface.metrics.roc_curve`` ->
    ``metricface.metrics.verification.roc_curve``)."""
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py":
        return None
    if "." not in target and node.get("py:class"):  # e.g. :meth:`forward` in a class's text
        return _undocumented_member(node, target, contnode)
    if not target.startswith("metricface."):
        return None
    parts = target.split(".")
    for i in range(len(parts), 0, -1):  # the longest importable module, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        break
    else:
        return None
    if inspect.ismodule(obj):
        return None
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not (isinstance(module, str) and isinstance(qualname, str)):
        return None
    real = f"{module}.{qualname}"
    if real == target:
        return None
    py = env.get_domain("py")
    return py.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], real, node, contnode)


def _undocumented_member(node, target, contnode):
    """A member of the class in context that exists but has no docstring of its own (autodoc
    leaves it out) is shown as code, not as a dead link."""
    try:
        cls = importlib.import_module(node.get("py:module", ""))
        for attr in node["py:class"].split("."):
            cls = getattr(cls, attr)
    except (ImportError, AttributeError, ValueError):
        return None
    return contnode if hasattr(cls, target) else None


def setup(app):
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("missing-reference", _resolve_public_path)
