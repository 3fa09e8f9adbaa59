"""Distance-weighted negative sampling (Wu et al. 2017, "Sampling Matters in Deep Embedding
Learning")."""

from __future__ import annotations

import torch

from metricface._validation import check_embeddings, check_scalar
from metricface.miners.base import DEFAULT_CHUNK_ELEMENTS, BaseMiner
from metricface.tuples import entries_by_row

__all__ = ["DistanceWeightedMiner"]


class DistanceWeightedMiner(BaseMiner):
    r"""One negative per positive pair, sampled with probability ~ 1 / q(distance).

    On the unit sphere in ``d`` dimensions pairwise distances have density
    :math:`q(s) \propto s^{d-2} (1 - s^2/4)^{(d-3)/2}`; sampling negatives with weight
    :math:`1/q(\max(s, \text{cutoff}))` spreads them evenly over distances. Negatives at
    distance ``>= nonzero_loss_cutoff`` (which would give zero loss) get weight 0. For every
    positive pair ``(a, p)`` one negative is drawn from anchor ``a``'s weights with torch's RNG;
    anchors with no eligible negative are skipped. Weights are normalised per anchor in log
    space, so no anchor underflows (the peer subtracts one global maximum). Only the
    Euclidean distance is meaningful here. Each anchor draws all its negatives (one per
    positive pair, with replacement) in one call: time and memory O(B R).

    Parameters
    ----------
    cutoff : float
        Distances below it are treated as ``cutoff`` (bounds the weights), in ``(0, 2)``.
    nonzero_loss_cutoff : float
        Negatives at this distance or farther are never sampled, in ``(cutoff, 2]``.
    max_triplets
        See :class:`~metricface.miners.base.BaseMiner`.
    chunk_elements
        Accepted for a uniform signature; sampling needs no blocks.
    """

    def __init__(
        self,
        cutoff: float = 0.5,
        nonzero_loss_cutoff: float = 1.4,
        max_triplets: int | None = None,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    ) -> None:
        super().__init__("euclidean", max_triplets, chunk_elements)
        check_scalar(cutoff, "cutoff", low=0, high=2, low_inclusive=False, high_inclusive=False)
        check_scalar(
            nonzero_loss_cutoff, "nonzero_loss_cutoff", low=cutoff, high=2, low_inclusive=False
        )
        self.cutoff = float(cutoff)
        self.nonzero_loss_cutoff = float(nonzero_loss_cutoff)
        self._dim = 0

    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None):
        check_embeddings(embeddings)
        self._dim = int(embeddings.shape[1])  # the weights depend on the embedding dimension
        return super().forward(embeddings, labels, ref_emb, ref_labels)

    def log_weights(self, dis: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """Per-anchor log sampling weights of shape ``(B, R)`` (``-inf`` where not eligible)."""
        d = float(self._dim)
        s = dis.clamp(min=self.cutoff)
        logw = (2.0 - d) * torch.log(s) - ((d - 3.0) / 2.0) * torch.log(
            (1.0 - 0.25 * s * s).clamp(min=torch.finfo(s.dtype).tiny)
        )
        eligible = neg & (dis < self.nonzero_loss_cutoff)
        return logw.masked_fill(~eligible, float("-inf"))

    def mine(self, dis, pos, neg):
        logw = self.log_weights(dis, neg)
        has_neg = torch.isfinite(logw).any(dim=1)
        probs = torch.softmax(logw.masked_fill(~has_neg.unsqueeze(1), 0.0), dim=1)
        a, p, slot, width = entries_by_row(pos & has_neg.unsqueeze(1))  # row-major
        if a.numel() == 0:
            return self._cap((a, p, p.clone()))
        # every positive pair of an anchor draws from the same weights: draw as many as the
        # anchor has pairs, once per anchor, O(B R) instead of O(#pairs x R)
        draws = torch.multinomial(probs, width, replacement=True)
        return self._cap((a, p, draws[a, slot]))

    def extra_repr(self) -> str:
        return (
            f"cutoff={self.cutoff}, nonzero_loss_cutoff={self.nonzero_loss_cutoff}, "
            + super().extra_repr()
        )
