"""Triplet margin loss (Weinberger & Saul 2009; Schroff et al. 2015) without ``B^3`` tensors.

Defaults reproduce pytorch-metric-learning's ``TripletMarginLoss()``: L2 distance between
normalised embeddings, per-triplet ``relu(d(a, p) - d(a, n) + margin)``, averaged over the
triplets whose loss is non-zero.

With ``labels`` alone the loss covers *every* valid triplet of the batch. The peer enumerates
them through a ``B x B x B`` mask, which runs out of memory beyond a few thousand embeddings.
Here:

* by default the terms are summed in chunks of positive pairs by a custom autograd function
  whose backward pass recomputes each chunk instead of storing it: memory
  O(chunk_elements + B * R), time O(#positive pairs * R);
* hinge loss without ``swap`` when anchors have many positives (more than
  ``SORTED_MIN_POSITIVES_PER_ANCHOR`` on average, i.e. few large classes): for each anchor the
  negative distances are sorted once; for each positive pair the violating negatives are a
  prefix of that order, so their count and the sum of their distances come from a binary
  search and a cumulative sum. Memory O(B * R), time O(B * R * log R) however many positives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metricface._validation import check_scalar
from metricface.distances import pairwise_matrix
from metricface.losses._tuple_loss import TupleLoss
from metricface.tuples import entries_by_row, to_triplets

__all__ = ["TripletMarginLoss"]

# 2**18 elements keep a chunk's temporaries to a few MiB (the mined triplets the loss reads
# are usually larger) at no measurable cost in speed.
DEFAULT_CHUNK_ELEMENTS = 1 << 18
# The sorted path costs two O(R log R) passes per anchor (sort, binary search), the chunked
# path O(R) per positive pair; sorting only pays off with many positives per anchor.
SORTED_MIN_POSITIVES_PER_ANCHOR = 16


def _rows_of_positives(dis: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each anchor's positive entries of ``dis``, packed to the left of a ``(B, P)`` matrix.

    ``P`` is the largest number of positives of an anchor; returns the packed values
    (differentiable, 0 in the padding) and the mask of real entries.
    """
    rows, cols, slot, width = entries_by_row(pos)
    index = (rows, slot)
    packed = dis.new_zeros(pos.shape[0], max(width, 1)).index_put(index, dis[rows, cols])
    valid = torch.zeros_like(packed, dtype=torch.bool).index_put_(
        index, torch.ones_like(rows, dtype=torch.bool)
    )
    return packed, valid


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
        Number of triplet terms evaluated at once on the chunked paths: mined
        ``indices_tuple`` triplets, and all triplets of the batch except on the sorted hinge
        path (see the module docstring).

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
        ref_dis = self._ref_dis(dis, ref_emb) if self.swap else dis
        plan = _GivenTriplets(a, p, n, self.chunk_elements)
        return [_ChunkedTripletSum.apply(dis, ref_dis, plan, self)]

    def _groups_from_masks(self, mat, pos, neg, embeddings, ref_emb):
        dis = self.margin_sign() * mat
        many_positives = int(pos.sum()) > SORTED_MIN_POSITIVES_PER_ANCHOR * pos.shape[0]
        if many_positives and not (self.swap or self.smooth_loss):
            return [self._sorted_hinge(dis, pos, neg)]
        return [self._chunked(dis, self._ref_dis(dis, ref_emb) if self.swap else dis, pos, neg)]

    def _sorted_hinge(self, dis, pos, neg):
        """Sum and count of the non-zero hinge terms over all triplets, O(B * R) memory.

        With ``n_0`` the anchor's nearest negative, the terms of the ``c`` violating negatives
        sum to ``c * v(a, p, n_0) - sum_n (D(a, n) - D(a, n_0))``, where ``v`` is
        :meth:`_violation` (rounded as a single term is) and the shifted distances are
        non-negative prefix sums: no cancellation against the distances' magnitude, and
        terms equal to the nearest one (ties on the hinge included) are summed exactly as the
        chunked paths sum them.
        """
        inf = torch.finfo(dis.dtype).max
        ranked, _ = torch.sort(dis.masked_fill(~neg, inf), dim=1)
        n_neg = neg.sum(dim=1, keepdim=True)
        cols = torch.arange(dis.shape[1], device=dis.device)
        nearest = ranked[:, :1].masked_fill(n_neg == 0, 0.0)
        shifted = (ranked - nearest).masked_fill(cols.unsqueeze(0) >= n_neg, 0.0)
        prefix_sums = torch.cumsum(shifted, dim=1)
        d_ap, valid = _rows_of_positives(dis, pos)
        count = self._violating_prefix(d_ap.detach(), ranked.detach().contiguous(), n_neg)
        count = count.masked_fill(~valid, 0)
        last = prefix_sums.gather(1, (count - 1).clamp(min=0))
        per_pair = count.to(dis.dtype) * self._violation(d_ap, nearest) - last
        total = torch.where(count > 0, per_pair, torch.zeros_like(per_pair)).sum()
        return total, count.sum()

    def _violating_prefix(self, dis, ranked, n_neg):
        """For every entry ``D(a, p)`` of ``dis``: how many of ``a``'s sorted negatives violate.

        A negative violates when :meth:`_violation` is positive, the very value the chunked
        paths (and pytorch-metric-learning) test. That value is non-increasing in ``D(a, n)``
        (rounding is monotonic), so the violating negatives are a prefix of ``ranked``. A
        binary search for ``D(a, p) + margin`` gives its end up to rounding; the test itself
        then checks the negatives on either side of that end, and the entries where it
        disagrees (negatives within rounding of the hinge) are bisected with the test alone.

        Shapes: ``dis`` ``(B, P)``, ``ranked`` ``(B, R)``, ``n_neg`` ``(B, 1)``; returns ``(B, P)``
        long.
        """
        count = torch.searchsorted(ranked, (dis + self.margin).contiguous())
        count = torch.minimum(count, n_neg)
        last_col = ranked.shape[1] - 1
        after = ranked.gather(1, count.clamp(max=last_col))
        before = ranked.gather(1, (count - 1).clamp(min=0))
        wrong = (count < n_neg) & (self._violation(dis, after) > 0)
        wrong |= (count > 0) & ~(self._violation(dis, before) > 0)
        if not bool(wrong.any()):
            return count
        rows, cols = wrong.nonzero(as_tuple=True)
        d_ap = dis[rows, cols]
        low = torch.zeros_like(rows)
        high = n_neg[rows, 0]
        for _ in range(ranked.shape[1].bit_length()):  # halves every open interval
            mid = (low + high) // 2
            violates = self._violation(d_ap, ranked[rows, mid.clamp(max=last_col)]) > 0
            open_ = low < high
            low = torch.where(open_ & violates, mid + 1, low)
            high = torch.where(open_ & ~violates, mid, high)
        return count.index_put_((rows, cols), low)

    def _chunked(self, dis, ref_dis, pos, neg):
        """Sum and count of the non-zero terms over all triplets, chunk by chunk."""
        plan = _AllTriplets(pos, neg, max(1, self.chunk_elements // dis.shape[1]))
        return _ChunkedTripletSum.apply(dis, ref_dis, plan, self)

    def _violation(self, d_ap: torch.Tensor, d_an: torch.Tensor) -> torch.Tensor:
        """``D(a, p) - D(a, n) + margin``, rounded as every path (and the peer) rounds it.

        A triplet is a non-zero term exactly when this value is positive (for the hinge).
        """
        return d_ap - d_an + self.margin

    def _block(self, d_ap, d_an, d_pn, valid):
        """Sum and count of the non-zero terms of a block of triplets (shapes broadcast)."""
        if self.swap:
            d_an = torch.minimum(d_an, d_pn)
        terms = self._terms(self._violation(d_ap, d_an))
        keep = terms > 0 if valid is None else valid & (terms > 0)
        return torch.where(keep, terms, torch.zeros_like(terms)).sum(), keep.sum()

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, swap={self.swap}, smooth_loss={self.smooth_loss}, "
            f"distance={self.distance!r}"
        )


class _AllTriplets:
    """Every (positive pair, negative) of the label masks, one chunk of positive pairs at a time.

    Blocks are ``(K, R)``: ``d_ap`` is ``(K, 1)``, ``d_an`` and ``d_pn`` are rows.
    """

    def __init__(self, pos: torch.Tensor, neg: torch.Tensor, step: int) -> None:
        self.a, self.p = pos.nonzero(as_tuple=True)
        self.neg, self.step = neg, step

    def chunks(self):
        for start in range(0, self.a.numel(), self.step):
            yield self.a[start : start + self.step], self.p[start : start + self.step]

    def gather(self, dis, ref_dis, chunk, swap):
        a, p = chunk
        d_pn = ref_dis[p] if swap else None
        return dis[a, p].unsqueeze(1), dis[a], d_pn, self.neg[a]

    def scatter(self, grad_dis, grad_ref, chunk, g_ap, g_an, g_pn):
        a, p = chunk
        grad_dis.index_put_((a, p), g_ap.squeeze(1), accumulate=True)
        grad_dis.index_add_(0, a, g_an)
        if g_pn is not None:
            grad_ref.index_add_(0, p, g_pn)


class _GivenTriplets:
    """Explicit triplets ``(a, p, n)``, ``step`` at a time; blocks are 1-D."""

    def __init__(self, a: torch.Tensor, p: torch.Tensor, n: torch.Tensor, step: int) -> None:
        self.a, self.p, self.n, self.step = a, p, n, step

    def chunks(self):
        for start in range(0, self.a.numel(), self.step):
            stop = start + self.step
            yield self.a[start:stop], self.p[start:stop], self.n[start:stop]

    def gather(self, dis, ref_dis, chunk, swap):
        a, p, n = chunk
        return dis[a, p], dis[a, n], (ref_dis[p, n] if swap else None), None

    def scatter(self, grad_dis, grad_ref, chunk, g_ap, g_an, g_pn):
        a, p, n = chunk
        grad_dis.index_put_((a, p), g_ap, accumulate=True)
        grad_dis.index_put_((a, n), g_an, accumulate=True)
        if g_pn is not None:
            grad_ref.index_put_((p, n), g_pn, accumulate=True)


class _ChunkedTripletSum(torch.autograd.Function):
    """Sum and count of the non-zero triplet terms of a plan, recomputed in backward.

    Forward keeps nothing but its inputs and the plan's indices; backward re-scores one chunk
    at a time and scatters the chunk's gradient into ``(B, R)`` buffers, so memory never exceeds
    one chunk plus the distance matrices, however many triplets there are.
    """

    @staticmethod
    def forward(ctx, dis, ref_dis, plan, loss):  # type: ignore[override]
        total = dis.new_zeros(())
        count = torch.zeros((), dtype=torch.long, device=dis.device)
        for chunk in plan.chunks():
            s, c = loss._block(*plan.gather(dis, ref_dis, chunk, loss.swap))
            total += s
            count += c
        ctx.save_for_backward(dis, ref_dis)
        ctx.plan, ctx.loss = plan, loss
        ctx.mark_non_differentiable(count)
        return total, count

    @staticmethod
    def backward(ctx, grad_total, _grad_count):  # type: ignore[override]
        dis, ref_dis = ctx.saved_tensors
        plan, loss = ctx.plan, ctx.loss
        # under create_graph=True the chunk's gradient keeps its graph back to the distances,
        # so second-order terms (the curvature of softplus) are not lost
        create_graph = torch.is_grad_enabled()
        grad_dis = torch.zeros_like(dis)
        grad_ref = torch.zeros_like(ref_dis) if loss.swap else None
        for chunk in plan.chunks():
            d_ap, d_an, d_pn, valid = plan.gather(dis, ref_dis, chunk, loss.swap)
            with torch.enable_grad():
                leaves = [
                    t if create_graph and t.requires_grad else t.detach().requires_grad_(True)
                    for t in ((d_ap, d_an) if d_pn is None else (d_ap, d_an, d_pn))
                ]
                s, _ = loss._block(*leaves[:2], leaves[2] if d_pn is not None else None, valid)
                grads = torch.autograd.grad(s, leaves, allow_unused=True, create_graph=create_graph)
            grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves)]
            plan.scatter(
                grad_dis,
                grad_ref,
                chunk,
                grads[0],
                grads[1],
                grads[2] if d_pn is not None else None,
            )
        grad_dis *= grad_total
        if grad_ref is not None:
            grad_ref *= grad_total
        return grad_dis, grad_ref, None, None
