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
``search`` (chunked gallery search), ``inference`` (:func:`~metricface.inference.embed`),
``checkpoint`` (atomic, safe checkpoints) and ``plots`` (needs the ``plot`` extra).
"""

from metricface import (
    backbones,
    checkpoint,
    data,
    distances,
    distributed,
    inference,
    losses,
    metrics,
    miners,
    plots,
    samplers,
    search,
)
from metricface._version import __version__

__all__ = [
    "__version__",
    "backbones",
    "checkpoint",
    "data",
    "distances",
    "distributed",
    "inference",
    "losses",
    "metrics",
    "miners",
    "plots",
    "samplers",
    "search",
]
