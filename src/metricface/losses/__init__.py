"""Losses: margin softmax over class centers, sharded class-center training, contrastive and
triplet losses."""

from metricface.losses import functional
from metricface.losses.chunked import chunked_margin_cross_entropy
from metricface.losses.distributed_wrapper import DistributedLossWrapper
from metricface.losses.functional import (
    AdaFaceMargin,
    ArcFaceMargin,
    CombinedMargin,
    CosFaceMargin,
    Margin,
    NoMargin,
    SphereFaceMargin,
    apply_margin,
    margin_cross_entropy,
    subcenter_max,
)
from metricface.losses.margin import (
    AdaFaceLoss,
    ArcFaceLoss,
    CombinedMarginLoss,
    CosFaceLoss,
    MarginSoftmaxLoss,
    NormSoftmaxLoss,
    SphereFaceLoss,
    SubCenterArcFaceLoss,
)
from metricface.losses.multi_similarity import MultiSimilarityLoss
from metricface.losses.pair import ContrastiveLoss
from metricface.losses.partial_fc import PartialFCLoss, shard_range
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
