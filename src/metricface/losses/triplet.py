"""Triplet margin loss (Weinberger & Saul 2009; Schroff et al. 2015) without ``B^3`` tensors.

Defaults reproduce pytorch-metric-learning's ``TripletMarginLoss()``: L2 distance between
normalised embeddings, per-triplet ``relu(d(a, p) - d(a, n) + margin)``, averaged over the
triplets whose loss is non-zero.

With ``labels`` alone the loss covers *every* valid triplet of the batch. The peer enumerates
them through a ``B x B x B`` mask, which runs out of memory beyond a few thousand embeddings.
Here:

* hinge loss without ``swap``: for each anchor the negative distances are sorted once; for
  each positive pair the violating negatives are a prefix of that order, so their count and the
  sum of their distances come from a binary search and a cumulative sum. Memory and gradient
  memory O(B * R), time O(B * R * log R);
* ``swap`` or ``smooth_loss``: the terms are summed in chunks of positive pairs by a custom
  autograd function whose backward pass recomputes each chunk instead of storing it. Memory
  O(chunk_elements + B * R).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metricface._validation import check_scalar
from metricface.distances import pairwise_matrix
from metricface.losses._tuple_loss import TupleLoss, mean_nonzero
from metricface.miners._tuples import to_triplets

__all__ = ["TripletMarginLoss"]

DEFAULT_CHUNK_ELEMENTS = 1 << 22


class TripletMarginLoss(TupleLoss):
    r"""Triplet loss :math:`[D(a,p) - D(a,n) + \text{margin}]_+`, mean over non-zero triplets.

    ``D`` is the L2 distance of normalised embeddings (``distance="euclidean"``) or the negated
    cosine similarity (``distance="cosine"``).

    Parameters
    ----------
    margin : float
        The margin (pytorch-metric-learning's default 0.05).
    swap : bool
        Use ``min(D(a, n), D(p, n))`` as the negative distance (Balntas et al. 2016). With
        ``ref_emb`` the positive-negative distance is taken between the two reference
        embeddings.
    smooth_loss : bool
        Use ``softplus`` instead of the hinge (every triplet then counts as non-zero).
    distance : {"euclidean", "cosine"}
        The measure.
    chunk_elements : int
        Block size of the chunked all-triplet path (``swap`` / ``smooth_loss``).

    Notes
    -----
    A batch without a valid triplet, or whose triplets all have zero loss, gives a zero loss
    that keeps the graph (its gradient is zero), never NaN.

    Examples
    --------
    >>> loss_fn = metricface.losses.TripletMarginLoss(margin=0.2)
    >>> emb = torch.randn(12, 32, requires_grad=True)
    >>> labels = torch.arange(4).repeat_interleave(3)
    >>> loss = loss_fn(emb, labels)
    >>> bool(loss > 0)
    True
    >>> miner = metricface.miners.BatchHardMiner()
    >>> hard = loss_fn(emb, labels, indices_tuple=miner(emb, labels))
    """

    def __init__(
        self,
        margin: float = 0.05,
        swap: bool = False,
        smooth_loss: bool = False,
        distance: str = "euclidean",
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    ) -> None:
        super().__init__(distance)
        check_scalar(margin, "margin")
        check_scalar(chunk_elements, "chunk_elements", low=1, integer=True)
        for name, flag in (("swap", swap), ("smooth_loss", smooth_loss)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        self.margin = float(margin)
        self.swap = swap
        self.smooth_loss = smooth_loss
        self.chunk_elements = int(chunk_elements)

    def _terms(self, violation: torch.Tensor) -> torch.Tensor:
        return F.softplus(violation) if self.smooth_loss else F.relu(violation)

    def _ref_dis(self, dis: torch.Tensor, ref_emb: torch.Tensor | None) -> torch.Tensor:
        """Dissimilarity between reference embeddings (for ``swap``)."""
        if ref_emb is None:
            return dis
        return self.margin_sign() * pairwise_matrix(ref_emb, None, self.distance)

    def _groups_from_tuple(self, mat, indices_tuple, embeddings, ref_emb):
        a, p, n = to_triplets(indices_tuple)
        dis = self.margin_sign() * mat
        d_ap, d_an = dis[a, p], dis[a, n]
        if self.swap:
            d_an = torch.minimum(d_an, self._ref_dis(dis, ref_emb)[p, n])
        return [mean_nonzero(self._terms(d_ap - d_an + self.margin))]

    def _groups_from_masks(self, mat, pos, neg, embeddings, ref_emb):
        dis = self.margin_sign() * mat
        if not (self.swap or self.smooth_loss):
            return [self._sorted_hinge(dis, pos, neg)]
        return [self._chunked(dis, self._ref_dis(dis, ref_emb) if self.swap else dis, pos, neg)]

    def _sorted_hinge(self, dis, pos, neg):
        """Sum and count of the non-zero hinge terms over all triplets, O(B * R) memory."""
        inf = torch.finfo(dis.dtype).max
        ranked, _ = torch.sort(dis.masked_fill(~neg, inf), dim=1)
        cols = torch.arange(dis.shape[1], device=dis.device)
        finite = cols.unsqueeze(0) < neg.sum(dim=1, keepdim=True)
        prefix_sums = torch.cumsum(ranked.masked_fill(~finite, 0.0), dim=1)
        threshold = dis + self.margin  # a negative violates iff D(a, n) < D(a, p) + margin
        count = torch.searchsorted(ranked.detach().contiguous(), threshold.detach().contiguous())
        count = count.masked_fill(~pos, 0)
        last = prefix_sums.gather(1, (count - 1).clamp(min=0))
        active = count > 0
        per_pair = count.to(dis.dtype) * threshold - last
        total = torch.where(active, per_pair, torch.zeros_like(per_pair)).sum()
        return total, count.sum()

    def _chunked(self, dis, ref_dis, pos, neg):
        """Sum and count of the non-zero terms over all triplets, chunk by chunk."""
        a_all, p_all = pos.nonzero(as_tuple=True)
        step = max(1, self.chunk_elements // dis.shape[1])
        total, count = _ChunkedTripletSum.apply(dis, ref_dis, neg, a_all, p_all, step, self)
        return total, count

    def _block(self, d_ap, d_an, d_pn, neg_rows):
        """Sum and count of the non-zero terms of a ``(K, R)`` block of triplets."""
        if self.swap:
            d_an = torch.minimum(d_an, d_pn)
        terms = self._terms(d_ap.unsqueeze(1) - d_an + self.margin)
        keep = neg_rows & (terms > 0)
        return torch.where(keep, terms, torch.zeros_like(terms)).sum(), keep.sum()

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, swap={self.swap}, smooth_loss={self.smooth_loss}, "
            f"distance={self.distance!r}"
        )


class _ChunkedTripletSum(torch.autograd.Function):
    """Sum of triplet terms over every (positive pair, negative), recomputed in backward.

    Forward keeps nothing but its inputs; backward re-scores one chunk of positive pairs at a
    time and scatters the chunk's gradient into ``(B, R)`` buffers, so memory never exceeds
    one chunk plus the distance matrices.
    """

    @staticmethod
    def forward(ctx, dis, ref_dis, neg, a_all, p_all, step, loss):  # type: ignore[override]
        total = dis.new_zeros(())
        count = torch.zeros((), dtype=torch.long, device=dis.device)
        for start in range(0, a_all.numel(), step):
            a, p = a_all[start : start + step], p_all[start : start + step]
            s, c = loss._block(dis[a, p], dis[a], ref_dis[p], neg[a])
            total += s
            count += c
        ctx.save_for_backward(dis, ref_dis, neg, a_all, p_all)
        ctx.step, ctx.loss = step, loss
        ctx.mark_non_differentiable(count)
        return total, count

    @staticmethod
    def backward(ctx, grad_total, _grad_count):  # type: ignore[override]
        dis, ref_dis, neg, a_all, p_all = ctx.saved_tensors
        grad_dis = torch.zeros_like(dis)
        grad_ref = torch.zeros_like(ref_dis)
        for start in range(0, a_all.numel(), ctx.step):
            a, p = a_all[start : start + ctx.step], p_all[start : start + ctx.step]
            with torch.enable_grad():
                d_ap = dis[a, p].detach().requires_grad_(True)
                d_an = dis[a].detach().requires_grad_(True)
                d_pn = ref_dis[p].detach().requires_grad_(True)
                s, _ = ctx.loss._block(d_ap, d_an, d_pn, neg[a])
                g_ap, g_an, g_pn = torch.autograd.grad(s, (d_ap, d_an, d_pn), allow_unused=True)
            if g_ap is not None:
                grad_dis.index_put_((a, p), g_ap, accumulate=True)
            if g_an is not None:
                grad_dis.index_add_(0, a, g_an)
            if g_pn is not None:
                grad_ref.index_add_(0, p, g_pn)
        grad_dis *= grad_total
        grad_ref *= grad_total
        return grad_dis, grad_ref, None, None, None, None, None
