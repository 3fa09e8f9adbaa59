"""Stateless margin-softmax functions of cosines you computed yourself.

:func:`margin_cross_entropy` takes a ``(B, C)`` cosine matrix, applies a margin (see
:mod:`metricface.losses.margins`) to each row's target column, scales and takes the cross
entropy; :func:`apply_margin` returns the scaled logits for callers that reduce them themselves
(a negative label marks rows whose target class is not among the columns, e.g. one block of a
classifier); :func:`subcenter_max` max-pools sub-center cosines to one per class. They are
compositions that autograd differentiates, in float32 (float64 for float64 input) also under
autocast, with the helpers of :mod:`metricface.numerics`. To score embeddings against a weight
matrix, use :func:`~metricface.losses.chunked.chunked_margin_cross_entropy` (re-exported here),
the kernel behind every class-center loss, which never holds more than one block of cosines.

The margins are defined in :mod:`metricface.losses.margins`; they (and
``chunked_margin_cross_entropy``) remain importable from here.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from metricface._validation import check_labels, check_scalar

# the margins and the chunked kernel's function stay importable from here, where they used to
# be defined (they are documented in their own modules)
from metricface.losses.chunked import chunked_margin_cross_entropy as chunked_margin_cross_entropy
from metricface.losses.margins import AdaFaceMargin as AdaFaceMargin
from metricface.losses.margins import ArcFaceMargin as ArcFaceMargin
from metricface.losses.margins import CombinedMargin as CombinedMargin
from metricface.losses.margins import CosFaceMargin as CosFaceMargin
from metricface.losses.margins import Margin as Margin
from metricface.losses.margins import MarginLike, _call_margin, _check_margin
from metricface.losses.margins import NoMargin as NoMargin
from metricface.losses.margins import SphereFaceMargin as SphereFaceMargin
from metricface.numerics import check_reduction, clamp_cos, compute_dtype

__all__ = ["apply_margin", "margin_cross_entropy", "subcenter_max"]


def _check_cos(cos: object, name: str = "cos") -> Tensor:
    if not isinstance(cos, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(cos).__name__}")
    if not cos.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {cos.dtype}")
    if cos.ndim != 2 or cos.shape[0] == 0 or cos.shape[1] == 0:
        raise ValueError(
            f"{name} must have a non-empty shape (batch, classes), got {tuple(cos.shape)}"
        )
    return cos


def apply_margin(
    cos: Tensor,
    labels: Tensor,
    margin: MarginLike,
    scale: float,
    norms: Optional[Tensor] = None,
) -> Tensor:
    """Scaled logits with the margin applied to each row's target column.

    Parameters
    ----------
    cos : Tensor, shape (B, C)
        Cosine similarities (any floating dtype).
    labels : Tensor, shape (B,)
        Target column of each row (any integer dtype, any device); a negative label means the
        row's target is not among these ``C`` columns (a block of a larger classifier) and the
        row is only scaled. Not range-checked here; :func:`margin_cross_entropy` checks.
    margin : metricface.losses.margins.Margin or callable
        ``(B,) -> (B,)`` target-cosine map, e.g. :class:`~metricface.losses.margins.ArcFaceMargin`.
    scale : float
        Logit scale :math:`s`.
    norms : Tensor, shape (B,), optional
        L2 norms of the embeddings, for margins that read them (:class:`~metricface.losses.margins.AdaFaceMargin`).

    Returns
    -------
    Tensor, shape (B, C)
        ``scale * cos`` with the target columns replaced by ``scale * margin(cos_target)``, in
        float32 (float64 for float64 input), computed with autocast disabled.
    """
    labels = labels.to(device=cos.device, dtype=torch.long)  # gather needs int64 indices
    with torch.autocast(cos.device.type, enabled=False):
        dtype = compute_dtype(cos)
        has_target = labels >= 0
        index = labels.clamp_min(0).unsqueeze(1)
        target = cos.gather(1, index).squeeze(1).to(dtype)
        new_target = _call_margin(margin, clamp_cos(target), norms).to(dtype)
        new_target = torch.where(has_target, new_target, target) * scale
        logits = cos.to(dtype) * scale
        return logits.scatter_(1, index, new_target.unsqueeze(1))


def margin_cross_entropy(
    cos: Tensor,
    labels: Tensor,
    margin: MarginLike,
    scale: float,
    reduction: str = "mean",
    *,
    norms: Optional[Tensor] = None,
) -> Tensor:
    """Cross entropy of margin-adjusted, scaled cosine logits.

    Parameters
    ----------
    cos : Tensor, shape (B, C)
        Cosine similarities between embeddings and class centers.
    labels : Tensor, shape (B,)
        Integer class of each row, in ``[0, C)`` (any integer dtype, any device).
    margin : metricface.losses.margins.Margin or callable
        ``(B,) -> (B,)`` target-cosine map (see :class:`~metricface.losses.margins.Margin`).
    scale : float
        Logit scale :math:`s > 0`.
    reduction : {"mean", "sum", "none"}
        As in :func:`torch.nn.functional.cross_entropy`.
    norms : Tensor, shape (B,), optional
        L2 norms of the embeddings behind ``cos``, for margins that read them
        (:class:`~metricface.losses.margins.AdaFaceMargin`, which raises a TypeError without them).

    Returns
    -------
    Tensor
        Shape () for ``"mean"``/``"sum"``, (B,) for ``"none"``; in the dtype of ``cos``. The
        softmax itself runs in float32 (float64 for float64 input), also under autocast.
    """
    cos = _check_cos(cos)
    check_labels(labels, cos.shape[0], num_classes=cos.shape[1])
    check_scalar(scale, "scale", low=0.0, low_inclusive=False)
    check_reduction(reduction)
    _check_margin(margin)
    labels = labels.to(device=cos.device, dtype=torch.long)
    logits = apply_margin(cos, labels, margin, scale, norms)
    with torch.autocast(cos.device.type, enabled=False):
        loss = torch.nn.functional.cross_entropy(logits, labels, reduction=reduction)
    return loss.to(cos.dtype)


def subcenter_max(cos: Tensor, sub_centers: int) -> Tensor:
    """Max-pool sub-center cosines to one cosine per class.

    Parameters
    ----------
    cos : Tensor, shape (B, C * K)
        Cosines to all sub-centers; columns ``c*K .. c*K+K-1`` belong to class ``c``.
    sub_centers : int
        ``K >= 1``.

    Returns
    -------
    Tensor, shape (B, C)
        The largest cosine of each class. The gradient goes to the winning sub-center only
        (the first one on ties).
    """
    cos = _check_cos(cos)
    check_scalar(sub_centers, "sub_centers", low=1, integer=True)
    if cos.shape[1] % sub_centers:
        raise ValueError(
            f"cos must have a multiple of sub_centers={sub_centers} columns, got {cos.shape[1]}"
        )
    if sub_centers == 1:
        return cos
    return cos.unflatten(1, (-1, sub_centers)).max(dim=2).values
