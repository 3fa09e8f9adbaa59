"""Every public name of every sub-package is documented in the API reference.

A name is covered when its defining module is rendered by an ``.. automodule::`` directive in
``docs/api/*.rst`` that renders members (``conf.py`` turns ``:members:`` on by default; a
``:no-members:`` option turns it off) and the module lists the name in ``__all__`` (which is
what autodoc renders), or when the name is rendered explicitly with an
``.. autoclass::`` / ``.. autofunction::`` / ``.. autodata::`` directive.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import metricface

DOCS_API = Path(__file__).resolve().parents[1] / "docs" / "api"


def _directives() -> tuple[set[str], set[str]]:
    modules, objects = set(), set()
    for rst in DOCS_API.glob("*.rst"):
        text = rst.read_text()
        for match in re.finditer(r"^\.\. automodule:: (\S+)\n((?:   .*\n|\n)*)", text, re.M):
            listed = re.search(r":members:[ \t]*(\S.*)$", match.group(2), re.M)
            if listed:  # an explicit list renders only the names it lists
                names = (n.strip() for n in listed.group(1).split(","))
                objects.update(f"{match.group(1)}.{n}" for n in names)
            elif ":no-members:" not in match.group(2):
                modules.add(match.group(1))
        for match in re.finditer(r"^\.\. auto(?:class|function|data):: (\S+)", text, re.M):
            objects.add(match.group(1))
    return modules, objects


def _public_names() -> list[tuple[str, str, object]]:
    names = []
    packages = [metricface] + [
        importlib.import_module(f"metricface.{info.name}")
        for info in pkgutil.iter_modules(metricface.__path__)
        if not info.name.startswith("_")
    ]
    for package in packages:
        for name in getattr(package, "__all__", []):
            obj = getattr(package, name)
            if inspect.ismodule(obj) or name == "__version__":
                continue
            names.append((package.__name__, name, obj))
    return names


def _home(package: str, name: str, obj: object) -> str:
    """The module that defines ``obj``; for data (no ``__module__``), the sub-module exporting it."""
    home = getattr(obj, "__module__", None)
    if isinstance(home, str):
        return home
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(getattr(pkg, "__path__", [])):
        module = importlib.import_module(f"{package}.{info.name}")
        if name in getattr(module, "__all__", ()) and getattr(module, name, None) is obj:
            return module.__name__
    return package


@pytest.mark.parametrize(
    "package, name, obj", _public_names(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_public_name_is_in_api_reference(package, name, obj):
    modules, objects = _directives()
    home = _home(package, name, obj)
    if f"{home}.{name}" in objects or f"{package}.{name}" in objects:
        return
    assert home in modules, (
        f"{package}.{name} is defined in {home}, which no docs/api/*.rst page renders with "
        f"'.. automodule:: {home}' (without ':no-members:')"
    )
    module_all = getattr(importlib.import_module(home), "__all__", None)
    assert module_all is not None and name in module_all, (
        f"{home} must list {name!r} in __all__ so that autodoc renders it"
    )
    if getattr(obj, "__module__", None) is None:  # data: autodoc skips it without a doc comment
        from sphinx.pycode import ModuleAnalyzer

        attr_docs = ModuleAnalyzer.for_module(home).find_attr_docs()
        assert ("", name) in attr_docs, f"{home}.{name} needs a '#:' doc comment to be rendered"


def test_api_reference_pages_are_in_the_toctree():
    index = (DOCS_API / "index.rst").read_text()
    for rst in DOCS_API.glob("*.rst"):
        if rst.stem != "index":
            assert re.search(rf"^\s+{rst.stem}\s*$", index, re.M), f"{rst.name} not in api/index"


def _documented_docstrings():
    """(where, docstring) of every public module, public name and its methods."""
    for info in pkgutil.walk_packages(metricface.__path__, "metricface."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        module = importlib.import_module(info.name)
        yield info.name, module.__doc__ or ""
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                continue
            yield f"{info.name}.{name}", getattr(obj, "__doc__", None) or ""
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if not attr.startswith("_") and getattr(member, "__doc__", None):
                        yield f"{info.name}.{name}.{attr}", member.__doc__


def test_docstrings_do_not_send_readers_to_private_modules():
    """The API reference renders no private module, so a docstring that points at one
    (``see metricface.losses._x``) is a dead end for the reader."""
    private = re.compile(r"metricface(?:\.\w+)*\._[a-z]\w*")
    bad = {
        where: private.findall(doc)
        for where, doc in _documented_docstrings()
        if private.search(doc)
    }
    assert bad == {}
