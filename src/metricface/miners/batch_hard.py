"""Batch-hard mining (Hermans et al. 2017, "In Defense of the Triplet Loss")."""

from __future__ import annotations

import torch

from metricface.miners.base import BaseMiner

__all__ = ["BatchHardMiner"]


class BatchHardMiner(BaseMiner):
    """One triplet per anchor: its farthest positive and its nearest negative.

    Anchors without a positive or without a negative in the reference set are skipped. This
    is pytorch-metric-learning's ``BatchHardMiner``; memory is O(B * R).

    Parameters
    ----------
    distance : {"euclidean", "cosine"}
        With ``"cosine"`` the hardest positive is the least similar one and the hardest
        negative the most similar one.
    max_triplets : int, optional
        Cap on the number of returned triplets (random subset, torch RNG).

    Examples
    --------
    >>> emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> a, p, n = metricface.miners.BatchHardMiner()(emb, torch.tensor([0, 0, 1, 1]))
    >>> a.tolist(), p.tolist(), n.tolist()
    ([0, 1, 2, 3], [1, 0, 3, 2], [3, 3, 1, 1])
    """

    def __init__(self, distance: str = "euclidean", max_triplets: int | None = None) -> None:
        super().__init__(distance, max_triplets)

    def mine(self, dis, pos, neg):
        inf = torch.tensor(float("inf"), dtype=dis.dtype, device=dis.device)
        p = torch.where(pos, dis, -inf).argmax(dim=1)
        n = torch.where(neg, dis, inf).argmin(dim=1)
        valid = pos.any(dim=1) & neg.any(dim=1)
        a = torch.arange(dis.shape[0], device=dis.device)[valid]
        return self._cap((a, p[valid], n[valid]))

    def extra_repr(self) -> str:
        return super().extra_repr()
