"""Samplers choose which images go into a batch.

P identities x K images per batch, genuine/impostor pairs and distorted triplets, all
deterministic by seed and epoch and correct under DDP.
"""

from metricface.samplers.identity import IdentityBatchSampler
from metricface.samplers.pairs import PairDataset, PairSampler
from metricface.samplers.triplets import DistortedTripletDataset

__all__ = [
    "DistortedTripletDataset",
    "IdentityBatchSampler",
    "PairDataset",
    "PairSampler",
]
