"""Losses: margin softmax over class centers, sharded class-center training, contrastive and triplet losses."""

from metricface.losses.distributed_wrapper import DistributedLossWrapper
from metricface.losses.multi_similarity import MultiSimilarityLoss
from metricface.losses.pair import ContrastiveLoss
from metricface.losses.triplet import TripletMarginLoss

__all__: list[str] = [
    "ContrastiveLoss",
    "DistributedLossWrapper",
    "MultiSimilarityLoss",
    "TripletMarginLoss",
]
