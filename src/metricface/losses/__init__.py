"""Losses: margin softmax over class centers (sampled, chunked, sharded), contrastive and
triplet losses.

The class-center losses are one pipeline: :mod:`~metricface.losses.margins` (the margins),
:mod:`~metricface.losses.chunked` (the kernel: normalise, cosines per chunk, margin on the
target, online log-sum-exp), :mod:`~metricface.losses.margin` (the module that owns the class
centers, with sampling and sharding, and its presets) and :mod:`~metricface.losses.partial_fc`
(the Partial FC preset); :mod:`~metricface.losses.functional` holds the stateless functions.
"""

from metricface.losses import functional
from metricface.losses.chunked import chunked_margin_cross_entropy
from metricface.losses.distributed_wrapper import DistributedLossWrapper
from metricface.losses.functional import apply_margin, margin_cross_entropy, subcenter_max
from metricface.losses.margin import (
    AdaFaceLoss,
    ArcFaceLoss,
    CombinedMarginLoss,
    CosFaceLoss,
    MarginSoftmaxLoss,
    NormSoftmaxLoss,
    SphereFaceLoss,
    SubCenterArcFaceLoss,
    shard_range,
)
from metricface.losses.margins import (
    AdaFaceMargin,
    ArcFaceMargin,
    CombinedMargin,
    CosFaceMargin,
    Margin,
    NoMargin,
    SphereFaceMargin,
)
from metricface.losses.multi_similarity import MultiSimilarityLoss
from metricface.losses.pair import ContrastiveLoss
from metricface.losses.partial_fc import PartialFCLoss
from metricface.losses.triplet import TripletMarginLoss

__all__ = [
    "AdaFaceLoss",
    "AdaFaceMargin",
    "ArcFaceLoss",
    "ArcFaceMargin",
    "CombinedMargin",
    "CombinedMarginLoss",
    "ContrastiveLoss",
    "CosFaceLoss",
    "CosFaceMargin",
    "DistributedLossWrapper",
    "Margin",
    "MarginSoftmaxLoss",
    "MultiSimilarityLoss",
    "NoMargin",
    "NormSoftmaxLoss",
    "PartialFCLoss",
    "SphereFaceLoss",
    "SphereFaceMargin",
    "SubCenterArcFaceLoss",
    "TripletMarginLoss",
    "apply_margin",
    "chunked_margin_cross_entropy",
    "functional",
    "margin_cross_entropy",
    "shard_range",
    "subcenter_max",
]
