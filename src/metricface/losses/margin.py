"""Margin-softmax losses over learned class centers (NormFace, ArcFace, CosFace, ...).

Each loss owns ``weight`` of shape ``(num_classes * sub_centers, embedding_dim)`` (like
:class:`torch.nn.Linear`), normalises embeddings and centers, applies a margin from
:mod:`metricface.losses.functional` to each sample's target cosine, scales and takes the cross
entropy. They share one base class, :class:`MarginSoftmaxLoss`, which also accepts any custom
margin callable. Margins are in radians.

Weight initialisation: ``normal(0, 0.01)`` as in InsightFace's ``arcface_torch``. Only the
directions matter for the loss (rows are normalised); the scale matters for the effective step
size of weight decay and of optimisers that are not scale-invariant.

The forward runs in float32 (also under autocast, where only the matrix products use the
autocast dtype) through one fused autograd function that keeps a single ``(B, C)`` buffer and
never copies the weight. Non-finite embeddings are not rejected
(mixed-precision training relies on a NaN loss to skip the step); they give a NaN loss.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from metricface._validation import (
    check_embeddings,
    check_labels,
    check_same_device,
    check_scalar,
)
from metricface.losses._fused_margin import fused_margin_softmax
from metricface.losses.functional import (
    AdaFaceMargin,
    ArcFaceMargin,
    CombinedMargin,
    CosFaceMargin,
    NoMargin,
    SphereFaceMargin,
    check_margin,
    compute_dtype,
    subcenter_max,
)

__all__ = [
    "AdaFaceLoss",
    "ArcFaceLoss",
    "CombinedMarginLoss",
    "CosFaceLoss",
    "MarginSoftmaxLoss",
    "NormSoftmaxLoss",
    "SphereFaceLoss",
    "SubCenterArcFaceLoss",
]

_REDUCTIONS = ("mean", "sum", "none")


class MarginSoftmaxLoss(nn.Module):
    """Softmax cross entropy over normalised class centers with a margin on the target logit.

    Parameters
    ----------
    num_classes : int
        Number of identities ``C``.
    embedding_dim : int
        Embedding size ``D``.
    margin : callable
        Maps the target cosines, shape (B,), float32 (float64 for float64 inputs) and clamped
        to ``[-1, 1]``, to target logits before scaling, e.g.
        :class:`~metricface.losses.functional.ArcFaceMargin`. Default: no margin. Its
        derivative is taken by autograd; parameters of the margin receive no gradient.
    scale : float
        Logit scale ``s > 0``.
    sub_centers : int
        ``K`` centers per class; a sample's cosine to a class is the largest over them.
    reduction : {"mean", "sum", "none"}
        Reduction over the batch.

    Attributes
    ----------
    weight : torch.nn.Parameter, shape (num_classes * sub_centers, embedding_dim)
        Class centers, rows ``c*K .. c*K+K-1`` for class ``c``.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: Optional[Callable[[Tensor], Tensor]] = None,
        scale: float = 64.0,
        sub_centers: int = 1,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        check_scalar(num_classes, "num_classes", low=1, integer=True)
        check_scalar(embedding_dim, "embedding_dim", low=1, integer=True)
        check_scalar(scale, "scale", low=0.0, low_inclusive=False)
        check_scalar(sub_centers, "sub_centers", low=1, integer=True)
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        margin = NoMargin() if margin is None else margin
        if type(self).margin_for is MarginSoftmaxLoss.margin_for:  # margin gets cosines only
            check_margin(margin, "use AdaFaceLoss instead")
        elif not callable(margin):
            raise TypeError(f"margin must be callable, got {type(margin).__name__}")
        self.num_classes = int(num_classes)
        self.embedding_dim = int(embedding_dim)
        self.sub_centers = int(sub_centers)
        self.scale = float(scale)
        self.reduction = reduction
        self.margin = margin
        self.weight = nn.Parameter(torch.empty(self.num_classes * self.sub_centers, embedding_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the class centers from ``normal(0, 0.01)``."""
        nn.init.normal_(self.weight, mean=0.0, std=0.01)

    def extra_repr(self) -> str:
        sub = f", sub_centers={self.sub_centers}" if self.sub_centers > 1 else ""
        return (
            f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}{sub}, "
            f"margin={self.margin!r}, scale={self.scale}, reduction={self.reduction!r}"
        )

    # ------------------------------------------------------------------ validation
    def _check_embeddings(self, embeddings: object) -> Tensor:
        embeddings = check_embeddings(embeddings)
        if embeddings.shape[1] != self.embedding_dim:
            raise ValueError(
                f"embeddings must have embedding_dim={self.embedding_dim} columns, "
                f"got shape {tuple(embeddings.shape)}"
            )
        check_same_device(embeddings, "embeddings", self.weight, "the class centers (weight)")
        return embeddings

    def _check_inputs(self, embeddings: object, labels: object) -> tuple[Tensor, Tensor]:
        embeddings = self._check_embeddings(embeddings)
        labels = check_labels(labels, embeddings.shape[0], num_classes=self.num_classes)
        return embeddings, labels.to(embeddings.device)

    # ------------------------------------------------------------------ loss
    def margin_for(self, embeddings: Tensor) -> Callable[[Tensor], Tensor]:
        """The margin to apply to this batch (a hook for margins that depend on the batch)."""
        return self.margin

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Compute the loss.

        Parameters
        ----------
        embeddings : Tensor, shape (B, embedding_dim)
            Unnormalised embeddings (any floating dtype).
        labels : Tensor, shape (B,)
            Integer identities in ``[0, num_classes)``.

        Returns
        -------
        Tensor
            Shape () (shape (B,) with ``reduction="none"``), in the dtype of ``embeddings``.
        """
        embeddings, labels = self._check_inputs(embeddings, labels)
        per_sample = fused_margin_softmax(
            embeddings,
            self.weight,
            labels,
            self.margin_for(embeddings),
            self.scale,
            self.sub_centers,
        )
        if self.reduction == "mean":
            per_sample = per_sample.mean()
        elif self.reduction == "sum":
            per_sample = per_sample.sum()
        return per_sample.to(embeddings.dtype)

    # ------------------------------------------------------------------ prediction
    def logits(self, embeddings: Tensor) -> Tensor:
        """Cosine similarity of each embedding to each class (no margin, no scale).

        Parameters
        ----------
        embeddings : Tensor, shape (B, embedding_dim)

        Returns
        -------
        Tensor, shape (B, num_classes)
            Cosines in float32 (float64 for float64 input); with sub-centers, the largest
            cosine over each class's sub-centers.
        """
        embeddings = self._check_embeddings(embeddings)
        dtype = compute_dtype(torch.promote_types(embeddings.dtype, self.weight.dtype))
        with torch.autocast(embeddings.device.type, enabled=False):
            x = nn.functional.normalize(embeddings.to(dtype), dim=1)
            w = nn.functional.normalize(self.weight.to(dtype), dim=1)
            return subcenter_max(x @ w.t(), self.sub_centers)

    @torch.no_grad()
    def predict(self, embeddings: Tensor) -> Tensor:
        """Closed-set prediction: the class with the largest cosine. Shape (B,), int64."""
        return self.logits(embeddings).argmax(dim=1)

    @torch.no_grad()
    def accuracy(self, embeddings: Tensor, labels: Tensor) -> float:
        """Fraction of ``embeddings`` whose :meth:`predict` equals ``labels``.

        Parameters
        ----------
        embeddings : Tensor, shape (B, embedding_dim)
        labels : Tensor, shape (B,)
            Integer identities in ``[0, num_classes)``.
        """
        embeddings, labels = self._check_inputs(embeddings, labels)
        return (self.predict(embeddings) == labels).double().mean().item()


class NormSoftmaxLoss(MarginSoftmaxLoss):
    """Normalised softmax without margin (NormFace): logits ``s * cos``.

    With ``scale=20`` (the default) this equals pytorch-metric-learning's
    ``NormalizedSoftmaxLoss(temperature=0.05)``.
    """

    def __init__(
        self, num_classes: int, embedding_dim: int, scale: float = 20.0, reduction: str = "mean"
    ) -> None:
        super().__init__(num_classes, embedding_dim, NoMargin(), scale, reduction=reduction)


class ArcFaceLoss(MarginSoftmaxLoss):
    """ArcFace: target logit ``s * cos(theta + m)``.

    See :class:`~metricface.losses.functional.ArcFaceMargin` for the fallback beyond
    ``theta = pi - m``. ``margin`` is in radians (0.5 rad = 28.6 degrees,
    pytorch-metric-learning's default in degrees).
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: float = 0.5,
        scale: float = 64.0,
        easy_margin: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            num_classes,
            embedding_dim,
            ArcFaceMargin(margin, easy_margin),
            scale,
            reduction=reduction,
        )


class CosFaceLoss(MarginSoftmaxLoss):
    """CosFace / AM-Softmax: target logit ``s * (cos - m)``.

    See :class:`~metricface.losses.functional.CosFaceMargin`.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: float = 0.35,
        scale: float = 64.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            num_classes, embedding_dim, CosFaceMargin(margin), scale, reduction=reduction
        )


class SphereFaceLoss(MarginSoftmaxLoss):
    """SphereFace on normalised features: target logit ``s * psi(m * theta)``.

    See :class:`~metricface.losses.functional.SphereFaceMargin` for the monotone ``psi``. The
    default ``margin=1.35`` is the setting of the ArcFace paper's comparison.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: float = 1.35,
        scale: float = 64.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            num_classes, embedding_dim, SphereFaceMargin(margin), scale, reduction=reduction
        )


class CombinedMarginLoss(MarginSoftmaxLoss):
    """Combined margin: target logit ``s * (cos(m1 * theta + m2) - m3)``.

    See :class:`~metricface.losses.functional.CombinedMargin`. The ArcFace paper's best
    combination is ``(m1, m2, m3) = (1.0, 0.3, 0.2)``.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        scale: float = 64.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            num_classes, embedding_dim, CombinedMargin(m1, m2, m3), scale, reduction=reduction
        )


class SubCenterArcFaceLoss(MarginSoftmaxLoss):
    """Sub-center ArcFace: ``sub_centers`` centers per class, max-pooled, then ArcFace.

    ``weight`` has shape ``(num_classes * sub_centers, embedding_dim)`` with rows
    ``c*K .. c*K+K-1`` for class ``c``, as in the paper's code and pytorch-metric-learning.
    Positional arguments follow the other margin losses (``margin, scale``, then
    ``sub_centers``), which is also pytorch-metric-learning's order.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: float = 0.5,
        scale: float = 64.0,
        sub_centers: int = 3,
        easy_margin: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            num_classes,
            embedding_dim,
            ArcFaceMargin(margin, easy_margin),
            scale,
            sub_centers=sub_centers,
            reduction=reduction,
        )


class AdaFaceLoss(MarginSoftmaxLoss):
    """AdaFace: a margin adapted to image quality through the embedding norm.

    See :class:`~metricface.losses.functional.AdaFaceMargin` for the formula. The module owns the
    running mean and standard deviation of the (clipped, detached) embedding norms as buffers
    ``running_mean`` / ``running_std`` (initialised to 20 and 100 as in the reference code, saved
    in the ``state_dict``; float32 also when the module is cast to float16 or bfloat16, whose
    resolution cannot hold the small updates). In training mode each call first updates them,
    ``running = (1 - momentum) * running + momentum * batch``, then uses them; in eval mode they
    are used unchanged. A batch holding a non-finite embedding (whose loss is not finite, a
    step mixed-precision training skips) leaves them unchanged. The statistics are those of the
    local batch (not synchronised across processes).

    Parameters
    ----------
    num_classes, embedding_dim, scale, reduction
        As in :class:`MarginSoftmaxLoss`.
    margin : float
        ``m`` (default 0.4).
    h : float
        Concentration of the quality indicator (default 0.333).
    momentum : float
        Weight of the current batch in the running statistics, in ``(0, 1]`` (default 0.01;
        1 uses the batch statistics only).
    eps : float
        Stabiliser of the normalisation and angle clip (default 1e-3).
    """

    running_mean: Tensor
    running_std: Tensor

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: float = 0.4,
        h: float = 0.333,
        scale: float = 64.0,
        momentum: float = 0.01,
        eps: float = 1e-3,
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            num_classes, embedding_dim, AdaFaceMargin(margin, h, eps), scale, reduction=reduction
        )
        check_scalar(momentum, "momentum", low=0.0, high=1.0, low_inclusive=False)
        self.momentum = float(momentum)
        self.register_buffer("running_mean", torch.tensor(20.0))
        self.register_buffer("running_std", torch.tensor(100.0))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", momentum={self.momentum}"

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # ``.half()`` / ``.to(torch.bfloat16)`` would lower the running statistics too, and
        # updates of ``momentum * (batch - running)`` fall below half precision's resolution
        # (bfloat16 stops moving within about 6 of 20): keep them float32 (float64 stays).
        super()._apply(fn, recurse)
        for name in ("running_mean", "running_std"):
            buf = getattr(self, name)
            if buf.dtype in (torch.float16, torch.bfloat16):
                setattr(self, name, buf.float())
        return self

    def margin_for(self, embeddings: Tensor) -> Callable[[Tensor], Tensor]:
        margin: AdaFaceMargin = self.margin  # type: ignore[assignment]
        norms = embeddings.detach().to(compute_dtype(embeddings.dtype)).norm(dim=1)
        if self.training:
            with torch.no_grad():
                mean, std = margin.batch_stats(margin.clip_norms(norms))
                # a batch with a non-finite embedding gives a non-finite loss, a step that mixed
                # precision skips: leave the statistics alone too (no host synchronisation)
                keep = torch.isfinite(norms).all()
                for running, batch in ((self.running_mean, mean), (self.running_std, std)):
                    updated = running.lerp(batch.to(running), self.momentum)
                    running.copy_(torch.where(keep, updated, running))
        mean, std = self.running_mean.clone(), self.running_std.clone()

        def bound(cos_target: Tensor) -> Tensor:
            return margin(cos_target, norms, mean, std)

        return bound
