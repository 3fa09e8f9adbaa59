"""Shared call protocol of the pair and triplet losses.

Every loss here is called as ``loss(embeddings, labels=None, indices_tuple=None, ref_emb=None,
ref_labels=None)``:

* ``labels`` alone: every valid pair / triplet of the batch (never materialised as ``B^3``);
* ``indices_tuple`` (from any miner, this library's or pytorch-metric-learning's): pairs
  ``(a1, p, a2, n)`` or triplets ``(a, p, n)``; ``labels`` may then be omitted;
* ``ref_emb`` / ``ref_labels``: positives and negatives come from another set (a memory bank,
  another batch); anchors are always ``embeddings``. A sample of ``embeddings`` is excluded
  from being its own positive only when no ``ref_emb`` is given.

Reduction follows pytorch-metric-learning's default ``AvgNonZeroReducer``: the mean over the
terms that are strictly positive. When no term is positive, or the batch holds no valid pair
or triplet at all, the loss is a zero that keeps the autograd graph (``(embeddings * 0).sum()``):
it ``requires_grad`` when the embeddings do and back-propagates zeros, so a training step never
needs a special case.
"""

from __future__ import annotations

import torch
from torch import nn

from metricface._validation import (
    check_embeddings,
    check_labels,
    check_reference_set,
)
from metricface.distances import check_distance, pairwise_matrix
from metricface.numerics import to_compute_dtype
from metricface.tuples import check_indices_tuple, label_masks

__all__ = ["TupleLoss", "mean_nonzero", "zero_with_graph"]


def zero_with_graph(*tensors: torch.Tensor | None) -> torch.Tensor:
    """A scalar 0 connected to every given tensor's graph (their gradients are zeros).

    ``(t * 0).sum()``, not ``t.sum() * 0``: a sum of finite entries can overflow to ``inf``
    (float16 rows of norm 1000 do), and ``inf * 0`` is NaN.
    """
    out = None
    for t in tensors:
        if t is not None:
            term = (t * 0.0).sum()
            out = term if out is None else out + term
    assert out is not None
    return out


def mean_nonzero(terms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum, count)`` of the strictly positive entries of ``terms``."""
    keep = terms > 0
    return torch.where(keep, terms, torch.zeros_like(terms)).sum(), keep.sum()


class TupleLoss(nn.Module):
    """Base class: input checks, the distance matrix and the labels/tuple dispatch.

    Subclasses implement :meth:`_groups`, which returns one ``(sum, count)`` per averaged group
    of terms; the loss is ``sum_g sum_g / count_g`` over the groups with ``count_g > 0``.
    """

    def __init__(self, distance: str = "euclidean") -> None:
        super().__init__()
        self.distance = check_distance(distance)

    def _check(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        check_embeddings(embeddings)
        n_query = embeddings.shape[0]
        if labels is not None:
            check_labels(labels, n_query)
            labels = labels.to(embeddings.device)
        ref_labels = check_reference_set(embeddings, ref_emb, ref_labels)
        n_ref = n_query if ref_emb is None else ref_emb.shape[0]
        if indices_tuple is None:
            if labels is None:
                raise ValueError("labels or indices_tuple is required, got neither")
            if ref_emb is not None and ref_labels is None:
                raise ValueError("ref_labels is required when ref_emb is given without indices")
        else:
            indices_tuple = check_indices_tuple(indices_tuple, n_query, n_ref)
            indices_tuple = tuple(t.to(embeddings.device) for t in indices_tuple)
        return labels, indices_tuple, ref_labels

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor | None = None,
        indices_tuple: tuple[torch.Tensor, ...] | None = None,
        ref_emb: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Compute the loss.

        Parameters
        ----------
        embeddings : torch.Tensor
            Shape ``(B, D)``, floating point (any norm; they are L2-normalised inside).
        labels : torch.Tensor, optional
            Shape ``(B,)`` integer identity ids. Required unless ``indices_tuple`` is given.
        indices_tuple : tuple of torch.Tensor, optional
            Pairs ``(a1, p, a2, n)`` or triplets ``(a, p, n)`` from a miner; anchors index
            ``embeddings``, positives/negatives index ``ref_emb`` (or ``embeddings``).
        ref_emb : torch.Tensor, optional
            Shape ``(R, D)``: the reference set.
        ref_labels : torch.Tensor, optional
            Shape ``(R,)``; required with ``ref_emb`` unless ``indices_tuple`` is given.

        Returns
        -------
        torch.Tensor
            A scalar in ``embeddings.dtype``; a zero with a graph when nothing contributes.
        """
        labels, indices_tuple, ref_labels = self._check(
            embeddings, labels, indices_tuple, ref_emb, ref_labels
        )
        # one cast into the compute dtype per input, however many paths use it: their
        # gradients add up in float32 and are cast back once, saturating (cast_finite)
        in_dtype = embeddings.dtype
        if ref_emb is None:
            embeddings = to_compute_dtype(embeddings)
        else:
            embeddings, ref_emb = (
                to_compute_dtype(embeddings, ref_emb),
                to_compute_dtype(ref_emb, embeddings),
            )
        mat = pairwise_matrix(embeddings, ref_emb, self.distance)
        if indices_tuple is None:
            pos, neg = label_masks(labels, ref_labels if ref_emb is not None else None)
            groups = self._groups_from_masks(mat, pos, neg, embeddings, ref_emb)
        else:
            groups = self._groups_from_tuple(mat, indices_tuple, embeddings, ref_emb)
        loss = zero_with_graph(embeddings, ref_emb).to(mat.dtype)
        for total, count in groups:
            loss = loss + total / count.clamp(min=1)  # total is 0 when count is 0
        return loss.to(in_dtype)

    def _groups_from_masks(self, mat, pos, neg, embeddings, ref_emb):
        raise NotImplementedError

    def _groups_from_tuple(self, mat, indices_tuple, embeddings, ref_emb):
        raise NotImplementedError

    def margin_sign(self) -> float:
        """+1 for a distance, -1 for a similarity: ``dis = sign * mat`` is a dissimilarity."""
        return -1.0 if self.distance == "cosine" else 1.0
