"""Contrastive loss (Hadsell, Chopra & LeCun 2006) over pairs of embeddings.

Defaults reproduce pytorch-metric-learning's ``ContrastiveLoss()``: L2 distance between
normalised embeddings, positive pairs penalised by ``relu(d - pos_margin)``, negative pairs by
``relu(neg_margin - d)``, and the loss is the mean of the non-zero positive terms plus the mean
of the non-zero negative terms.

Deliberate difference: the peer returns 0 whenever every index tensor of a mined tuple has at
most one entry (for example exactly one positive and one negative pair); here such a tuple
gives its actual loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metricface._validation import check_embeddings, check_same_device, check_scalar
from metricface.distances import l2_normalize
from metricface.losses._tuple_loss import TupleLoss, mean_nonzero, zero_with_graph
from metricface.tuples import to_pairs

__all__ = ["ContrastiveLoss"]

REDUCTIONS = ("avg_nonzero", "mean", "sum", "none")


class ContrastiveLoss(TupleLoss):
    r"""Pull positive pairs within ``pos_margin``, push negative pairs beyond ``neg_margin``.

    For ``distance="euclidean"`` (distance :math:`d`):
    :math:`\ell_+ = [d - m_+]_+`, :math:`\ell_- = [m_- - d]_+`.
    For ``distance="cosine"`` (similarity :math:`s`):
    :math:`\ell_+ = [m_+ - s]_+`, :math:`\ell_- = [s - m_-]_+`.
    The loss is ``mean(nonzero l+) + mean(nonzero l-)``; a group without a non-zero term adds 0
    (a zero that keeps the autograd graph and back-propagates zero gradients).

    Parameters
    ----------
    pos_margin : float, optional
        Default 0 for euclidean, 1 for cosine.
    neg_margin : float, optional
        Default 1 for euclidean, 0 for cosine.
    distance : {"euclidean", "cosine"}
        The measure between L2-normalised embeddings.

    Examples
    --------
    >>> loss_fn = metricface.losses.ContrastiveLoss()
    >>> emb = torch.randn(8, 16, requires_grad=True)
    >>> loss = loss_fn(emb, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    >>> loss.backward()
    >>> loss.ndim, emb.grad.shape
    (0, torch.Size([8, 16]))

    The explicit-pair form with cosine similarity and ``reduction="mean"`` is
    :class:`torch.nn.CosineEmbeddingLoss`:

    >>> x1, x2 = torch.randn(5, 16), torch.randn(5, 16)
    >>> y = torch.tensor([1, -1, 1, -1, -1])
    >>> ours = metricface.losses.ContrastiveLoss(1.0, 0.2, distance="cosine").forward_pairs(
    ...     x1, x2, y, reduction="mean")
    >>> torch.allclose(ours, torch.nn.CosineEmbeddingLoss(margin=0.2)(x1, x2, y))
    True
    """

    def __init__(
        self,
        pos_margin: float | None = None,
        neg_margin: float | None = None,
        distance: str = "euclidean",
    ) -> None:
        super().__init__(distance)
        cosine = self.distance == "cosine"
        pos_margin = (1.0 if cosine else 0.0) if pos_margin is None else pos_margin
        neg_margin = (0.0 if cosine else 1.0) if neg_margin is None else neg_margin
        check_scalar(pos_margin, "pos_margin")
        check_scalar(neg_margin, "neg_margin")
        self.pos_margin = float(pos_margin)
        self.neg_margin = float(neg_margin)

    def pos_terms(self, values: torch.Tensor) -> torch.Tensor:
        """Per-pair loss of positive pairs given their distances (similarities)."""
        if self.distance == "cosine":
            return F.relu(self.pos_margin - values)
        return F.relu(values - self.pos_margin)

    def neg_terms(self, values: torch.Tensor) -> torch.Tensor:
        """Per-pair loss of negative pairs given their distances (similarities)."""
        if self.distance == "cosine":
            return F.relu(values - self.neg_margin)
        return F.relu(self.neg_margin - values)

    def _groups_from_masks(self, mat, pos, neg, embeddings, ref_emb):
        return [mean_nonzero(self.pos_terms(mat[pos])), mean_nonzero(self.neg_terms(mat[neg]))]

    def _groups_from_tuple(self, mat, indices_tuple, embeddings, ref_emb):
        a1, p, a2, n = to_pairs(indices_tuple)
        return [
            mean_nonzero(self.pos_terms(mat[a1, p])),
            mean_nonzero(self.neg_terms(mat[a2, n])),
        ]

    def forward_pairs(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        target: torch.Tensor,
        reduction: str = "avg_nonzero",
    ) -> torch.Tensor:
        """The loss of explicit pairs ``(x1[i], x2[i])`` labelled by ``target[i]``.

        Parameters
        ----------
        x1, x2 : torch.Tensor
            Shape ``(N, D)``.
        target : torch.Tensor
            Shape ``(N,)``: ``1`` for a genuine (same identity) pair, ``-1`` for an impostor
            pair, as in :class:`torch.nn.CosineEmbeddingLoss`.
        reduction : {"avg_nonzero", "mean", "sum", "none"}
            ``"avg_nonzero"`` (default): mean of non-zero genuine terms plus mean of non-zero
            impostor terms, as :meth:`forward`. ``"mean"``/``"sum"`` over all ``N`` pairs;
            ``"none"``: the ``(N,)`` per-pair losses.

        Returns
        -------
        torch.Tensor
            A scalar, or shape ``(N,)`` for ``reduction="none"``.
        """
        check_embeddings(x1, "x1")
        check_embeddings(x2, "x2")
        check_same_device(x2, "x2", x1, "x1")
        if x1.shape != x2.shape:
            raise ValueError(
                f"x1 and x2 must have the same shape, got {tuple(x1.shape)} and {tuple(x2.shape)}"
            )
        if not isinstance(target, torch.Tensor):
            raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
        if target.shape != (x1.shape[0],):
            raise ValueError(f"target must have shape ({x1.shape[0]},), got {tuple(target.shape)}")
        target = target.to(x1.device)
        genuine, impostor = target == 1, target == -1
        if not bool((genuine | impostor).all()):
            other = target[~(genuine | impostor)].unique()[:5].tolist()
            raise ValueError(
                f"target must contain only 1 (genuine) and -1 (impostor) values, got {other}"
                " among them (for 0/1 labels such as PairSampler's `same`, pass 2 * same - 1)"
            )
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        u, v = l2_normalize(x1), l2_normalize(x2)
        if self.distance == "cosine":
            values = (u * v).sum(dim=1)
        else:
            values = torch.linalg.vector_norm(u - v, dim=1)
        per_pair = torch.where(genuine, self.pos_terms(values), self.neg_terms(values))
        if reduction == "none":
            return per_pair.to(x1.dtype)
        if reduction == "sum":
            return per_pair.sum().to(x1.dtype)
        if reduction == "mean":
            return per_pair.mean().to(x1.dtype)
        loss = zero_with_graph(x1, x2).to(per_pair.dtype)
        for mask in (genuine, impostor):
            total, count = mean_nonzero(per_pair[mask])
            loss = loss + total / count.clamp(min=1)
        return loss.to(x1.dtype)

    def extra_repr(self) -> str:
        return (
            f"pos_margin={self.pos_margin}, neg_margin={self.neg_margin}, "
            f"distance={self.distance!r}"
        )
