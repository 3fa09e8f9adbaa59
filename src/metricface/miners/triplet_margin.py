"""Margin-based triplet miners: :class:`TripletMarginMiner` and :class:`BatchAllMiner`.

Both enumerate every valid triplet ``(a, p, n)`` of the batch (``label[a] == label[p]``,
``a != p``, ``label[n] != label[a]``) one chunk of positive pairs at a time, and keep those
whose *triplet margin* ``m(a, p, n) = D(a, n) - D(a, p)`` passes a test (``D`` is the L2
distance, or the negated cosine similarity). Memory is O(B^2) plus the output; the output itself
can be cubic in the batch size, which is what ``max_triplets`` is for.
"""

from __future__ import annotations

import torch

from metricface.miners.base import DEFAULT_CHUNK_ELEMENTS, BaseMiner, _MarginTripletMiner

__all__ = ["BatchAllMiner", "TripletMarginMiner"]

TYPES = ("all", "hard", "semihard", "easy")


class TripletMarginMiner(_MarginTripletMiner):
    """Triplets selected by their margin, as pytorch-metric-learning's ``TripletMarginMiner``.

    With ``m = D(a, n) - D(a, p)``:

    * ``"all"``: ``m <= margin`` (the triplet violates the margin);
    * ``"hard"``: ``m <= 0`` (the negative is at least as close as the positive);
    * ``"semihard"``: ``0 < m <= margin``;
    * ``"easy"``: ``m > margin``.

    Returns the same triplets, in the same order, as the peer (which builds a ``B^3`` mask).

    Parameters
    ----------
    margin : float
        The margin (distance units; similarity units for ``distance="cosine"``).
    type_of_triplets : {"all", "hard", "semihard", "easy"}
        Which triplets to keep.
    distance, max_triplets, chunk_elements
        See :class:`~metricface.miners.base.BaseMiner`.

    Examples
    --------
    >>> miner = metricface.miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")
    >>> a, p, n = miner(torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    >>> a.dtype
    torch.int64
    """

    def __init__(
        self,
        margin: float = 0.2,
        type_of_triplets: str = "all",
        distance: str = "euclidean",
        max_triplets: int | None = None,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    ) -> None:
        super().__init__(margin, distance, max_triplets, chunk_elements)
        if type_of_triplets not in TYPES:
            raise ValueError(f"type_of_triplets must be one of {TYPES}, got {type_of_triplets!r}")
        self.type_of_triplets = type_of_triplets

    def _keep(self, d_ap: torch.Tensor, d_an: torch.Tensor) -> torch.Tensor:
        m = d_an - d_ap
        kind = self.type_of_triplets
        if kind == "easy":
            return m > self.margin
        keep = m <= self.margin
        if kind == "hard":
            keep &= m <= 0
        elif kind == "semihard":
            keep &= m > 0
        return keep

    def mine(self, dis, pos, neg):
        return self._enumerate_triplets(dis, pos, neg, self._keep)

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, type_of_triplets={self.type_of_triplets!r}, "
            + BaseMiner.extra_repr(self)
        )


class BatchAllMiner(_MarginTripletMiner):
    """Every triplet with a non-zero triplet loss ("batch all", Hermans et al. 2017).

    Keeps ``(a, p, n)`` when ``D(a, p) - D(a, n) + margin > 0``: exactly the triplets a
    :class:`~metricface.losses.TripletMarginLoss` with the same margin would average over.
    (``TripletMarginMiner(type_of_triplets="all")`` also keeps triplets whose loss is exactly 0.)

    Parameters
    ----------
    margin : float
        The triplet margin.
    distance, max_triplets, chunk_elements
        See :class:`~metricface.miners.base.BaseMiner`.
    """

    def mine(self, dis, pos, neg):
        return self._enumerate_triplets(
            dis, pos, neg, lambda d_ap, d_an: d_ap - d_an + self.margin > 0
        )
