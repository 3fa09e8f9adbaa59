"""Semi-hard negative mining as in FaceNet (Schroff et al. 2015)."""

from __future__ import annotations

import torch

from metricface.miners.base import _MarginTripletMiner
from metricface.tuples import entries_by_row

__all__ = ["SemiHardMiner"]


class SemiHardMiner(_MarginTripletMiner):
    """For every positive pair, the nearest negative that is farther than the positive.

    FaceNet's selection: for each anchor-positive pair ``(a, p)`` the negative ``n`` minimises
    ``D(a, n)`` subject to ``D(a, p) < D(a, n) < D(a, p) + margin`` (the lowest index among
    equally distant negatives). Pairs with no such negative are dropped, so at most one triplet
    per positive pair is returned, in row-major ``(a, p)`` order. (For *every* semi-hard triplet
    use ``TripletMarginMiner(type_of_triplets="semihard")``.)

    Cost ``O(B R log K)`` for ``K`` positives per anchor, never ``O(#pairs x R)``: each
    anchor's positive distances are sorted once, every negative is located among them by
    binary search, and the nearest negative past each positive distance is a per-interval
    minimum. Memory O(B R), in blocks of ``chunk_elements``.

    Parameters
    ----------
    margin : float
        The triplet margin, > 0.
    distance, max_triplets, chunk_elements
        See :class:`~metricface.miners.base.BaseMiner`.
    """

    _positive_margin = True

    def mine(self, dis, pos, neg):
        if bool(torch.isnan(dis).any()):  # a NaN distance never qualifies; neither does +inf
            dis = dis.nan_to_num(nan=float("inf"))
        rows = max(1, self.chunk_elements // max(1, dis.shape[1]))
        parts = []
        for start in range(0, dis.shape[0], rows):
            stop = start + rows
            a, p, n = _nearest_farther_negatives(
                dis[start:stop], pos[start:stop], neg[start:stop], self.margin
            )
            parts.append((a + start, p, n))
        return self._cap(tuple(torch.cat(column) for column in zip(*parts)))


def _nearest_farther_negatives(
    dis: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, margin: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Semi-hard triplets of one block of anchor rows, in row-major ``(a, p)`` order.

    With anchor ``a``'s positive distances sorted, ``q_0 <= ... <= q_{k-1}``, a negative at
    distance ``v`` falls in interval ``#(q_j < v)``. The nearest negative farther than ``q_j``
    is the minimum of the first non-empty interval ``> j`` (intervals hold increasing
    distances), and it is semi-hard when it is closer than ``q_j + margin``.
    """
    b, r = dis.shape
    device = dis.device
    a_all, p_all, slot, k = entries_by_row(pos)  # positive pairs, row-major
    if a_all.numel() == 0:
        return a_all, p_all, p_all.clone()
    inf = float("inf")
    q = torch.full((b, k), inf, dtype=dis.dtype, device=device)
    q[a_all, slot] = dis[a_all, p_all]
    q, order = q.sort(dim=1)  # padding (+inf) last; a +inf positive never finds a negative
    neg_d = torch.where(neg, dis, inf)
    interval = torch.searchsorted(q, neg_d)  # #(q_j < v): (b, r) in [0, k]
    low = torch.full((b, k + 1), inf, dtype=dis.dtype, device=device)
    low.scatter_reduce_(1, interval, neg_d, "amin")
    # the lowest column among the negatives at each interval's minimum
    hit_a, hit_n = ((neg_d == low.gather(1, interval)) & (neg_d < inf)).nonzero(as_tuple=True)
    low_n = torch.full((b * (k + 1),), r, dtype=torch.long, device=device)
    low_n.scatter_reduce_(0, hit_a * (k + 1) + interval[hit_a, hit_n], hit_n, "amin")
    low_n = low_n.view(b, k + 1)
    # first non-empty interval >= j + 1 for the j-th positive
    ids = torch.arange(k + 1, device=device)
    first = torch.where(low < inf, ids, k + 1).flip(1).cummin(1).values.flip(1)[:, 1:]
    at = first.clamp(max=k)
    found = (first <= k) & (low.gather(1, at) < q + margin)
    chosen = torch.where(found, low_n.gather(1, at), -1)
    # back from sorted positions to the positive pairs' order
    rank = torch.empty_like(order).scatter_(1, order, ids[:k].expand(b, k).contiguous())
    n = chosen[a_all, rank[a_all, slot]]
    keep = n >= 0
    return a_all[keep], p_all[keep], n[keep]
