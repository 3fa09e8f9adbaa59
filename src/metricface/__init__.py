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
"""

from metricface import backbones, data, distributed, losses, metrics, miners, samplers
from metricface._version import __version__

__all__ = [
    "__version__",
    "backbones",
    "data",
    "distributed",
    "losses",
    "metrics",
    "miners",
    "samplers",
]
