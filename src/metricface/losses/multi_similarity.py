"""Multi-similarity loss (Wang et al. 2019, "Multi-Similarity Loss with General Pair
Weighting for Deep Metric Learning").

Defaults reproduce pytorch-metric-learning's ``MultiSimilarityLoss()``: cosine similarity,
``alpha=2``, ``beta=50``, ``base=0.5``, averaged over *all* anchors (the peer's default
reducer for this loss is a plain mean, not the mean over non-zero terms).
Memory O(B * R). As for the contrastive loss, a mined tuple whose index tensors each hold at
most one entry gives its actual loss (the peer returns 0 there).
"""

from __future__ import annotations

import torch

from metricface._validation import check_scalar
from metricface.losses._tuple_loss import TupleLoss
from metricface.tuples import to_pairs

__all__ = ["MultiSimilarityLoss"]


def _log1p_sum_exp(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise ``log(1 + sum_{mask} exp(x))``, stable, 0 for rows with an empty mask."""
    x = x.masked_fill(~mask, float("-inf"))
    return torch.logsumexp(torch.cat([x, x.new_zeros(x.shape[0], 1)], dim=1), dim=1)


class MultiSimilarityLoss(TupleLoss):
    r"""Per anchor ``a`` with cosine similarities ``S``:

    .. math::

        \frac{1}{\alpha}\log\Big(1 + \sum_{p} e^{-\alpha (S_{ap} - \lambda)}\Big)
        + \frac{1}{\beta}\log\Big(1 + \sum_{n} e^{\beta (S_{an} - \lambda)}\Big)

    averaged over all ``B`` anchors, including those with no pair (``lambda`` is ``base``). With
    ``distance="euclidean"`` the signs flip (``D - base`` for positives, ``base - D`` for
    negatives).

    Parameters
    ----------
    alpha : float
        Weight of positive pairs, > 0.
    beta : float
        Weight of negative pairs, > 0.
    base : float
        The similarity offset ``lambda``.
    distance : {"cosine", "euclidean"}
        The measure (default cosine).

    Examples
    --------
    >>> loss_fn = metricface.losses.MultiSimilarityLoss()
    >>> emb = torch.randn(8, 16)
    >>> labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    >>> miner = metricface.miners.MultiSimilarityMiner()
    >>> loss = loss_fn(emb, labels, indices_tuple=miner(emb, labels))
    >>> loss.ndim
    0
    """

    def __init__(
        self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, distance: str = "cosine"
    ) -> None:
        super().__init__(distance)
        check_scalar(alpha, "alpha", low=0, low_inclusive=False)
        check_scalar(beta, "beta", low=0, low_inclusive=False)
        check_scalar(base, "base")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.base = float(base)

    def _groups_from_masks(self, mat, pos, neg, embeddings, ref_emb):
        # margin(x, y) is x - y for a distance and y - x for a similarity
        sign = self.margin_sign()
        pos_loss = _log1p_sum_exp(self.alpha * sign * (mat - self.base), pos) / self.alpha
        neg_loss = _log1p_sum_exp(self.beta * sign * (self.base - mat), neg) / self.beta
        rows = pos_loss + neg_loss
        return [(rows.sum(), torch.tensor(rows.numel(), device=rows.device))]

    def _groups_from_tuple(self, mat, indices_tuple, embeddings, ref_emb):
        a1, p, a2, n = to_pairs(indices_tuple)
        pos = torch.zeros(mat.shape, dtype=torch.bool, device=mat.device)
        neg = torch.zeros_like(pos)
        pos[a1, p] = True
        neg[a2, n] = True
        if bool((pos & neg).any()):
            raise ValueError("indices_tuple names the same pair as both positive and negative")
        return self._groups_from_masks(mat, pos, neg, embeddings, ref_emb)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, base={self.base}, distance={self.distance!r}"
