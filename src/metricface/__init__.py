"""metricface: deep metric learning for faces in PyTorch.

Sub-packages
------------
backbones
    ResNet / IResNet networks written from scratch, embedding heads.
losses
    Margin-softmax, sharded class-center, contrastive and triplet losses.
miners
    Which pairs and triplets of a batch a loss trains on.
samplers
    Which images go into a batch (P identities x K images, pairs), DDP-aware.
metrics
    Verification (EER, ROC, DET, TAR@FAR), identification and clustering metrics.
data
    Identity folders, pair lists, a built-in synthetic face set and transform presets.

Modules: ``distances`` (pairwise distances), ``distributed`` (gathering across ranks),
``numerics`` (normalisation, compute dtype and reductions shared by every path), ``tuples``
(the index tuples between miners and pair/triplet losses), ``search`` (chunked gallery
search), ``inference`` (:func:`~metricface.inference.embed`),
``evaluation`` (benchmark protocols: verification ``.bin`` sets, IJB-B/C),
``checkpoint`` (atomic, safe checkpoints), ``plots`` (needs the ``plot`` extra) and ``cli``
(the ``python -m metricface`` tools).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from metricface._version import __version__

# Sub-packages load on first access (``metricface.losses`` after ``import metricface`` works as
# usual): importing ``metricface.metrics`` alone then does not pay for torchvision, which only
# the data transforms need and which takes longer to import than the whole library.
_SUBMODULES = (
    "backbones",
    "checkpoint",
    "data",
    "distances",
    "distributed",
    "evaluation",
    "inference",
    "losses",
    "metrics",
    "miners",
    "numerics",
    "plots",
    "samplers",
    "search",
    "tuples",
)

if TYPE_CHECKING:
    from metricface import (
        backbones,
        checkpoint,
        data,
        distances,
        distributed,
        evaluation,
        inference,
        losses,
        metrics,
        miners,
        numerics,
        plots,
        samplers,
        search,
        tuples,
    )

__all__ = [
    "__version__",
    "backbones",
    "checkpoint",
    "data",
    "distances",
    "distributed",
    "evaluation",
    "inference",
    "losses",
    "metrics",
    "miners",
    "numerics",
    "plots",
    "samplers",
    "search",
    "tuples",
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")  # also binds the attribute
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBMODULES})
