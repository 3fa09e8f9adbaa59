"""Miners choose which pairs and triplets of a batch a loss trains on.

They return index tuples in pytorch-metric-learning's format, so each library's miners feed
the other's losses.
"""

from metricface.miners.base import BaseMiner
from metricface.miners.batch_hard import BatchHardMiner
from metricface.miners.distance_weighted import DistanceWeightedMiner
from metricface.miners.multi_similarity import MultiSimilarityMiner
from metricface.miners.pair_margin import PairMarginMiner
from metricface.miners.semihard import SemiHardMiner
from metricface.miners.triplet_margin import BatchAllMiner, TripletMarginMiner

__all__ = [
    "BaseMiner",
    "BatchAllMiner",
    "BatchHardMiner",
    "DistanceWeightedMiner",
    "MultiSimilarityMiner",
    "PairMarginMiner",
    "SemiHardMiner",
    "TripletMarginMiner",
]
