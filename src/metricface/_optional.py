"""Lazy imports of optional dependencies with errors that name the extra to install.

metricface's core needs only torch, torchvision, numpy and scipy. Plotting, progress bars and
peer libraries are optional; modules that use them call :func:`require` at the point of use
so that ``import metricface`` stays light and a missing package says how to get it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]

# module name -> extra of ``metricface`` that installs it
_EXTRAS = {
    "matplotlib": "plot",
    "matplotlib.pyplot": "plot",
    "tqdm": "progress",
    "tqdm.auto": "progress",
    "pytorch_metric_learning": "dev",
}
# top-level module -> distribution name, where ``pip install <module>`` would not work (the
# library's scikit-learn features, t-SNE plots, are in no user-facing extra: ``dev`` would pull
# the whole test and docs tool chain)
_PIP_NAMES = {"sklearn": "scikit-learn"}


def require(module: str, extra: str | None = None, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise an :class:`ImportError` that says how to install it.

    Parameters
    ----------
    module : str
        Dotted module name, e.g. ``"matplotlib.pyplot"``.
    extra : str, optional
        The ``metricface`` extra that provides it. Looked up from a built-in table when omitted.
    purpose : str, optional
        What the caller wanted to do, added to the message (e.g. ``"plot a ROC curve"``).

    Returns
    -------
    types.ModuleType
        The imported module.

    Raises
    ------
    ImportError
        If the module is not installed; the message names the ``pip install`` command.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if exc.name is not None and exc.name != top and not module.startswith(exc.name):
            raise  # the module exists but one of *its* dependencies is missing
        extra = extra or _EXTRAS.get(module) or _EXTRAS.get(top)
        why = f" to {purpose}" if purpose else ""
        hint = (
            f"pip install 'metricface[{extra}]'"
            if extra
            else f"pip install {_PIP_NAMES.get(top, top)}"
        )
        raise ImportError(
            f"metricface needs the optional package {top!r}{why}, which is not installed. "
            f"Install it with: {hint}"
        ) from exc
