"""Multi-similarity pair mining (Wang et al. 2019, "Multi-Similarity Loss with General Pair
Weighting")."""

from __future__ import annotations

import torch

from metricface._validation import check_scalar
from metricface.miners.base import BaseMiner

__all__ = ["MultiSimilarityMiner"]


class MultiSimilarityMiner(BaseMiner):
    """Informative pairs relative to each anchor's hardest pair of the other kind.

    With cosine similarity ``S`` (the default), for each anchor ``a`` keep

    * positive pairs with ``S(a, p) - epsilon < max_n S(a, n)``;
    * negative pairs with ``S(a, n) + epsilon > min_p S(a, p)``.

    An anchor without negatives keeps no positive pair and vice versa. With
    ``distance="euclidean"`` the inequalities are mirrored. Same pairs as
    pytorch-metric-learning's ``MultiSimilarityMiner``; returned in row-major order.

    Parameters
    ----------
    epsilon : float
        Slack of the comparison, >= 0.
    distance : {"cosine", "euclidean"}
        The measure (default cosine, as in the paper).
    """

    def __init__(self, epsilon: float = 0.1, distance: str = "cosine") -> None:
        super().__init__(distance)
        check_scalar(epsilon, "epsilon", low=0)
        self.epsilon = float(epsilon)

    def mine(self, dis, pos, neg):
        # dis is a dissimilarity; for cosine it is exactly -S, so these are the same tests
        inf = torch.tensor(float("inf"), dtype=dis.dtype, device=dis.device)
        nearest_neg = torch.where(neg, dis, inf).amin(dim=1, keepdim=True)
        farthest_pos = torch.where(pos, dis, -inf).amax(dim=1, keepdim=True)
        hard_pos = pos & (dis + self.epsilon > nearest_neg)
        hard_neg = neg & (dis - self.epsilon < farthest_pos)
        a1, p = hard_pos.nonzero(as_tuple=True)
        a2, n = hard_neg.nonzero(as_tuple=True)
        return a1, p, a2, n

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}, distance={self.distance!r}"
