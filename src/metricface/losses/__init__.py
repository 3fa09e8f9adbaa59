"""Losses: margin softmax over class centers, sharded class-center training, contrastive and triplet losses."""

from metricface.losses.chunked import chunked_margin_cross_entropy
from metricface.losses.partial_fc import PartialFCLoss, shard_range

__all__: list[str] = [
    "PartialFCLoss",
    "chunked_margin_cross_entropy",
    "shard_range",
]
