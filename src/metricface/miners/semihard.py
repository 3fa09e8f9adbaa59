"""Semi-hard negative mining as in FaceNet (Schroff et al. 2015)."""

from __future__ import annotations

import torch

from metricface.miners.base import _MarginTripletMiner

__all__ = ["SemiHardMiner"]


class SemiHardMiner(_MarginTripletMiner):
    """For every positive pair, the nearest negative that is farther than the positive.

    FaceNet's selection: for each anchor-positive pair ``(a, p)`` the negative ``n`` minimises
    ``D(a, n)`` subject to ``D(a, p) < D(a, n) < D(a, p) + margin``. Pairs with no such
    negative are dropped, so at most one triplet per positive pair is returned. (For *every*
    semi-hard triplet use ``TripletMarginMiner(type_of_triplets="semihard")``.) Memory is
    O(B^2), computed in chunks of positive pairs.

    Parameters
    ----------
    margin : float
        The triplet margin, > 0.
    distance, max_triplets, chunk_elements
        See :class:`~metricface.miners.base.BaseMiner`.
    """

    _positive_margin = True

    def mine(self, dis, pos, neg):
        out_a, out_p, out_n = [], [], []
        for a, p in self._pair_chunks(pos):
            d_ap = dis[a, p].unsqueeze(1)
            d_an = dis[a]
            ok = neg[a] & (d_an > d_ap) & (d_an < d_ap + self.margin)
            scores = torch.where(ok, d_an, torch.full_like(d_an, float("inf")))
            n = scores.argmin(dim=1)
            has = ok.any(dim=1)
            out_a.append(a[has])
            out_p.append(p[has])
            out_n.append(n[has])
        if not out_a:
            empty = torch.empty(0, dtype=torch.long, device=dis.device)
            return empty, empty.clone(), empty.clone()
        return self._cap((torch.cat(out_a), torch.cat(out_p), torch.cat(out_n)))
