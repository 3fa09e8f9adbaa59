"""Pair mining by distance thresholds."""

from __future__ import annotations

from metricface._validation import check_scalar
from metricface.miners.base import BaseMiner

__all__ = ["PairMarginMiner"]


class PairMarginMiner(BaseMiner):
    """Positive pairs farther than ``pos_margin`` and negative pairs closer than ``neg_margin``.

    As pytorch-metric-learning's ``PairMarginMiner``. With ``distance="cosine"`` the tests
    flip: positive pairs with similarity below ``pos_margin``, negative pairs above
    ``neg_margin``. Returns ``(a1, p, a2, n)`` in row-major order; memory O(B * R).

    Parameters
    ----------
    pos_margin, neg_margin : float
        Thresholds in distance (or similarity) units.
    distance : {"euclidean", "cosine"}
        The measure.
    """

    def __init__(
        self, pos_margin: float = 0.2, neg_margin: float = 0.8, distance: str = "euclidean"
    ) -> None:
        super().__init__(distance)
        check_scalar(pos_margin, "pos_margin")
        check_scalar(neg_margin, "neg_margin")
        self.pos_margin = float(pos_margin)
        self.neg_margin = float(neg_margin)

    def mine(self, dis, pos, neg):
        if self.distance == "cosine":  # dis is the negated similarity
            hard_pos = pos & (-dis < self.pos_margin)
            hard_neg = neg & (-dis > self.neg_margin)
        else:
            hard_pos = pos & (dis > self.pos_margin)
            hard_neg = neg & (dis < self.neg_margin)
        a1, p = hard_pos.nonzero(as_tuple=True)
        a2, n = hard_neg.nonzero(as_tuple=True)
        return a1, p, a2, n

    def extra_repr(self) -> str:
        return (
            f"pos_margin={self.pos_margin}, neg_margin={self.neg_margin}, "
            f"distance={self.distance!r}"
        )
