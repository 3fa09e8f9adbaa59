"""Margin functions and the margin-softmax cross entropy they plug into.

A *margin* is a small picklable callable that maps the cosine between an embedding and its own
class center, ``cos_target`` of shape ``(B,)``, to the target logit before scaling. Every
margin-softmax loss (NormFace, CosFace, ArcFace, SphereFace, combined margins, AdaFace,
sub-center ArcFace, Partial FC) is then

.. math::

    \\ell_i = -\\log \\frac{e^{s\\,\\psi(\\cos\\theta_{i,y_i})}}
              {e^{s\\,\\psi(\\cos\\theta_{i,y_i})} + \\sum_{j \\ne y_i} e^{s \\cos\\theta_{i,j}}}

with :math:`\\psi` the margin and :math:`s` the scale. :func:`margin_cross_entropy` applies a
margin to the target column of a ``(B, C)`` cosine matrix and takes the cross entropy;
:func:`apply_margin` returns the scaled logits for callers that reduce them themselves (chunked
or sharded softmax, where labels ``< 0`` mark rows whose target class is not in the block).

**Numerics.** All margin arithmetic runs in float32 (float64 when the input is float64), also under
autocast, and :func:`margin_cross_entropy` casts its result back to the input dtype. Cosines are
clamped to ``[-1, 1]``. No margin calls ``acos``: the angle is ``atan2(sin, cos)`` with
``sin = sqrt((1 - cos)(1 + cos))``. The derivative of ``sin`` with respect to ``cos`` is
``-cos / sin``, infinite at ``cos = +-1``; its value is computed exactly but its gradient is
taken from ``sqrt(max(sin^2, 1e-6))``, i.e. it is exact for angles above about 0.057 degrees
from 0 or pi and zero closer than that. Gradients are therefore finite for every input,
including embeddings equal to (or opposite to) a class center.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from metricface._validation import check_labels, check_scalar

__all__ = [
    "AdaFaceMargin",
    "ArcFaceMargin",
    "CombinedMargin",
    "CosFaceMargin",
    "Margin",
    "NoMargin",
    "SphereFaceMargin",
    "apply_margin",
    "margin_cross_entropy",
    "subcenter_max",
]

# Floor on sin^2(theta) used for the *gradient* of sin(theta) = sqrt(1 - cos^2): caps
# |d sin / d cos| at 1e3 instead of infinity (see the module docstring).
_SIN2_FLOOR = 1e-6


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype margin arithmetic runs in: float64 for float64 input, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_angle(value: object, name: str, high: float, high_inclusive: bool = True) -> None:
    """:func:`check_scalar` for an angle in radians, hinting at degrees when it looks like one."""
    try:
        check_scalar(value, name, low=0.0, high=high, high_inclusive=high_inclusive)
    except ValueError as err:
        if isinstance(value, (int, float)) and high < value <= 180.0:
            raise ValueError(
                f"{err}: angles are in radians (pytorch-metric-learning takes degrees; "
                f"use math.radians({value!r}) = {math.radians(value):.4f})"
            ) from None
        raise


def _clamp_cos(cos: Tensor) -> Tensor:
    """``cos`` in the compute dtype, clamped to [-1, 1] with an identity gradient.

    ``Tensor.clamp`` has a zero gradient at (and beyond) the bounds, which would silence the
    target of an embedding equal to its class center or one rounded just past 1.
    """
    cos = cos.to(compute_dtype(cos.dtype))
    return cos + (cos.clamp(-1.0, 1.0) - cos).detach()


def _sin_from_cos(cos: Tensor) -> Tensor:
    """``sin(acos(cos))`` for ``cos`` in [-1, 1]: exact value, gradient capped near +-1."""
    sin2 = ((1 - cos) * (1 + cos)).clamp_min(0)
    capped = sin2.clamp_min(_SIN2_FLOOR).sqrt()
    return sin2.detach().sqrt() + (capped - capped.detach())


def _angle_from_cos(cos: Tensor) -> Tensor:
    """``acos(cos)`` in [0, pi] without the infinite gradient of ``acos`` at +-1."""
    return torch.atan2(_sin_from_cos(cos), cos)


class Margin:
    """Base class of the margins: ``margin(cos_target) -> target logit before scaling``.

    Subclasses implement :meth:`forward` on cosines already clamped to ``[-1, 1]`` and in the
    compute dtype (float32, or float64 for float64 input). Margins hold only Python floats,
    so they pickle, compare equal by value and print their parameters.
    """

    _params: tuple[str, ...] = ()

    def __call__(self, cos_target: Tensor) -> Tensor:
        """Apply the margin.

        Parameters
        ----------
        cos_target : Tensor, shape (B,)
            Cosine between each embedding and the center of its own class.

        Returns
        -------
        Tensor, shape (B,)
            The modified target cosine, float32 (float64 for float64 input).
        """
        cos = _clamp_cos(cos_target)
        return self.forward(cos)

    def forward(self, cos: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._params)
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self._params)

    def __hash__(self) -> int:
        return hash((type(self).__name__, *(getattr(self, n) for n in self._params)))


class NoMargin(Margin):
    """No margin (NormFace): :math:`\\psi(\\cos\\theta) = \\cos\\theta`."""

    def forward(self, cos: Tensor) -> Tensor:
        return cos


class CosFaceMargin(Margin):
    """Additive cosine margin (CosFace / AM-Softmax): :math:`\\psi = \\cos\\theta - m`.

    Parameters
    ----------
    margin : float
        :math:`m \\ge 0`, in cosine units (default 0.35).
    """

    _params = ("margin",)

    def __init__(self, margin: float = 0.35) -> None:
        check_scalar(margin, "margin", low=0.0)
        self.margin = float(margin)

    def forward(self, cos: Tensor) -> Tensor:
        return cos - self.margin


class ArcFaceMargin(Margin):
    """Additive angular margin (ArcFace): :math:`\\psi = \\cos(\\theta + m)`.

    Computed as :math:`\\cos\\theta\\cos m - \\sin\\theta\\sin m` (no ``acos``). Where
    :math:`\\theta + m > \\pi` the angle would wrap and the logit would grow again, so there
    the margin is :math:`\\cos\\theta - m\\sin m` instead (as in InsightFace and
    pytorch-metric-learning); the result is non-increasing in :math:`\\theta` on
    :math:`[0, \\pi]`.

    Parameters
    ----------
    margin : float
        :math:`m` in radians, in ``[0, pi/2]`` (default 0.5, about 28.6 degrees).
    easy_margin : bool
        Apply the margin only where :math:`\\cos\\theta > 0` and leave the cosine unchanged
        elsewhere (no fallback needed). Note that this makes the target logit jump from 0 down
        to :math:`-\\sin m` as :math:`\\cos\\theta` crosses 0, so it is not monotone.
    """

    _params = ("margin", "easy_margin")

    def __init__(self, margin: float = 0.5, easy_margin: bool = False) -> None:
        _check_angle(margin, "margin", math.pi / 2)
        if not isinstance(easy_margin, bool):
            raise TypeError(f"easy_margin must be a bool, got {type(easy_margin).__name__}")
        self.margin = float(margin)
        self.easy_margin = easy_margin

    def forward(self, cos: Tensor) -> Tensor:
        m = self.margin
        phi = cos * math.cos(m) - _sin_from_cos(cos) * math.sin(m)
        if self.easy_margin:
            return torch.where(cos > 0, phi, cos)
        # theta <= pi - m  <=>  cos >= cos(pi - m) = -cos(m)
        return torch.where(cos >= -math.cos(m), phi, cos - m * math.sin(m))


class SphereFaceMargin(Margin):
    """Multiplicative angular margin (SphereFace / A-Softmax), made monotone.

    :math:`\\psi(\\theta) = (-1)^k \\cos(m\\theta) - 2k` with
    :math:`k = \\lfloor m\\theta / \\pi \\rfloor`, the form of the SphereFace paper (eq. 6),
    which is continuous and decreasing on :math:`[0, \\pi]` for any real :math:`m \\ge 1`
    (the paper uses integer :math:`m`; non-integer values work the same way). Here it is
    applied to normalised features with a fixed scale, as in the ArcFace paper's comparison,
    whose default :math:`m = 1.35` is used. The paper's annealing with the plain softmax
    (:math:`\\lambda`) is not part of the margin.

    Parameters
    ----------
    margin : float
        Angle multiplier :math:`m \\ge 1` (default 1.35).
    """

    _params = ("margin",)

    def __init__(self, margin: float = 1.35) -> None:
        check_scalar(margin, "margin", low=1.0)
        self.margin = float(margin)

    def forward(self, cos: Tensor) -> Tensor:
        m_theta = self.margin * _angle_from_cos(cos)
        k = torch.floor(m_theta.detach() / math.pi)
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
        return sign * torch.cos(m_theta) - 2.0 * k


class CombinedMargin(Margin):
    """Combined margin :math:`\\psi = \\cos(m_1\\theta + m_2) - m_3` (InsightFace).

    ``CombinedMargin(1, m, 0)`` is ArcFace and ``CombinedMargin(1, 0, m)`` is CosFace.
    Beyond :math:`\\theta^* = (\\pi - m_2)/m_1`, where :math:`m_1\\theta + m_2` would pass
    :math:`\\pi`, the margin continues as
    :math:`\\cos\\theta - \\cos\\theta^* - 1 - m_3`: continuous at :math:`\\theta^*` and
    decreasing, so :math:`\\psi` is monotone on :math:`[0, \\pi]`. (This continuous fallback
    differs from :class:`ArcFaceMargin`'s historical :math:`\\cos\\theta - m\\sin m`, so the two
    agree only where :math:`\\theta + m_2 \\le \\pi`.)

    Parameters
    ----------
    m1 : float
        Angle multiplier, ``> 0`` (default 1.0).
    m2 : float
        Additive angular margin in radians, in ``[0, pi)`` (default 0.5).
    m3 : float
        Additive cosine margin, ``>= 0`` (default 0.0).
    """

    _params = ("m1", "m2", "m3")

    def __init__(self, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0) -> None:
        check_scalar(m1, "m1", low=0.0, low_inclusive=False)
        _check_angle(m2, "m2", math.pi, high_inclusive=False)
        check_scalar(m3, "m3", low=0.0)
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)

    def forward(self, cos: Tensor) -> Tensor:
        theta = _angle_from_cos(cos)
        main = torch.cos(self.m1 * theta + self.m2) - self.m3
        theta_star = (math.pi - self.m2) / self.m1
        if theta_star >= math.pi:
            return main
        fallback = cos - math.cos(theta_star) - 1.0 - self.m3
        return torch.where(theta <= theta_star, main, fallback)


class AdaFaceMargin(Margin):
    """Quality-adaptive margin (AdaFace), driven by the embedding norm.

    With :math:`\\hat z = \\mathrm{clip}(h\\,(\\|x\\| - \\mu) / (\\sigma + \\epsilon), -1, 1)`,
    where :math:`\\mu, \\sigma` are statistics of the (clipped, detached) embedding norms,

    .. math::

        \\psi = \\cos\\big(\\mathrm{clip}(\\theta - m\\hat z,\\ \\epsilon,\\ \\pi - \\epsilon)\\big)
                - (m + m\\hat z).

    High-norm (good-quality) samples get an additive cosine margin up to :math:`2m`; low-norm
    ones an ArcFace-like angular margin up to :math:`m`; :math:`\\hat z = 0` gives CosFace.
    Unlike the reference code, the cosine itself is not clipped to
    :math:`[-1 + \\epsilon, 1 - \\epsilon]`; only the shifted angle is.

    The margin holds no state: pass the running statistics (owned and updated by
    :class:`~metricface.losses.margin.AdaFaceLoss`) as ``norm_mean`` / ``norm_std``, or leave
    them out to use the statistics of ``norms`` itself.

    Parameters
    ----------
    margin : float
        :math:`m \\ge 0` (default 0.4).
    h : float
        Concentration :math:`h > 0` of :math:`\\hat z` (default 0.333: about 68% of a batch has
        :math:`|\\hat z| < 0.333`).
    eps : float
        :math:`\\epsilon` above (default 1e-3).
    """

    _params = ("margin", "h", "eps")
    norm_min = 1e-3
    norm_max = 100.0

    def __init__(self, margin: float = 0.4, h: float = 0.333, eps: float = 1e-3) -> None:
        _check_angle(margin, "margin", math.pi / 2)
        check_scalar(h, "h", low=0.0, low_inclusive=False)
        check_scalar(eps, "eps", low=0.0, high=0.1, low_inclusive=False)
        self.margin, self.h, self.eps = float(margin), float(h), float(eps)

    def clip_norms(self, norms: Tensor) -> Tensor:
        """Detached norms clipped to ``[1e-3, 100]``, in the compute dtype. Shape (B,)."""
        return norms.detach().to(compute_dtype(norms.dtype)).clamp(self.norm_min, self.norm_max)

    @staticmethod
    def batch_stats(clipped_norms: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and (unbiased) standard deviation of a batch of norms; std 0 for one sample."""
        mean = clipped_norms.mean()
        if clipped_norms.numel() < 2:
            return mean, torch.zeros_like(mean)
        return mean, clipped_norms.std()

    def quality(
        self, norms: Tensor, norm_mean: Optional[Tensor] = None, norm_std: Optional[Tensor] = None
    ) -> Tensor:
        """The clipped, normalised quality indicator :math:`\\hat z`. Shape (B,)."""
        z = self.clip_norms(norms)
        if norm_mean is None or norm_std is None:
            norm_mean, norm_std = self.batch_stats(z)
        return ((z - norm_mean.to(z)) / (norm_std.to(z) + self.eps) * self.h).clamp(-1.0, 1.0)

    def __call__(  # type: ignore[override]
        self,
        cos_target: Tensor,
        norms: Tensor,
        norm_mean: Optional[Tensor] = None,
        norm_std: Optional[Tensor] = None,
    ) -> Tensor:
        """Apply the margin.

        Parameters
        ----------
        cos_target : Tensor, shape (B,)
            Cosine between each embedding and its class center.
        norms : Tensor, shape (B,)
            L2 norms of the (unnormalised) embeddings; treated as constants.
        norm_mean, norm_std : Tensor, shape (), optional
            Running statistics of the clipped norms. Default: those of ``norms``.

        Returns
        -------
        Tensor, shape (B,)
        """
        if not isinstance(norms, torch.Tensor):
            raise TypeError(f"norms must be a torch.Tensor, got {type(norms).__name__}")
        if norms.shape != cos_target.shape:  # (B, 1) norms would broadcast to (B, B)
            raise ValueError(
                f"norms must have the shape of cos_target {tuple(cos_target.shape)}, "
                f"got {tuple(norms.shape)}"
            )
        cos = _clamp_cos(cos_target)
        z = self.quality(norms, norm_mean, norm_std).to(cos.dtype)
        m = self.margin
        theta = (_angle_from_cos(cos) - m * z).clamp(self.eps, math.pi - self.eps)
        return torch.cos(theta) - (m + m * z)


def check_margin(margin: object, instead: str) -> None:
    """Raise a TypeError unless ``margin`` maps the target cosines alone to target logits.

    :class:`AdaFaceMargin` also needs the embedding norms; ``instead`` completes the message
    with what to do in the caller's context. Cheap: call it before any compute.
    """
    if isinstance(margin, AdaFaceMargin):
        raise TypeError(
            f"margin=AdaFaceMargin(...) also needs the embedding norms, which are not passed "
            f"here; {instead}"
        )
    if not callable(margin):
        raise TypeError(f"margin must be callable (cos_target -> tensor), got {margin!r}")


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
    cos: Tensor, labels: Tensor, margin: Callable[[Tensor], Tensor], scale: float
) -> Tensor:
    """Scaled logits with the margin applied to each row's target column.

    Parameters
    ----------
    cos : Tensor, shape (B, C)
        Cosine similarities (any floating dtype).
    labels : Tensor, shape (B,)
        Target column of each row (any integer dtype, any device); a negative label means the row's target is not among these
        ``C`` columns (a block of a chunked or sharded classifier) and the row is only scaled.
        Not range-checked here (this is the inner kernel); :func:`margin_cross_entropy` checks.
    margin : callable
        ``(B,) -> (B,)`` target-cosine map, e.g. :class:`ArcFaceMargin` (or a closure over
        :class:`AdaFaceMargin` with its norms bound).
    scale : float
        Logit scale :math:`s`.

    Returns
    -------
    Tensor, shape (B, C)
        ``scale * cos`` with the target columns replaced by ``scale * margin(cos_target)``, in
        float32 (float64 for float64 input), computed with autocast disabled.
    """
    labels = labels.to(device=cos.device, dtype=torch.long)  # gather needs int64 indices
    with torch.autocast(cos.device.type, enabled=False):
        dtype = compute_dtype(cos.dtype)
        logits = cos.to(dtype) * scale
        has_target = labels >= 0
        index = labels.clamp_min(0).unsqueeze(1)
        target = cos.gather(1, index).squeeze(1).to(dtype)
        new_target = torch.where(has_target, margin(_clamp_cos(target)).to(dtype), target) * scale
        return logits.scatter_(1, index, new_target.unsqueeze(1))


def margin_cross_entropy(
    cos: Tensor,
    labels: Tensor,
    margin: Callable[[Tensor], Tensor],
    scale: float,
    reduction: str = "mean",
) -> Tensor:
    """Cross entropy of margin-adjusted, scaled cosine logits.

    Parameters
    ----------
    cos : Tensor, shape (B, C)
        Cosine similarities between embeddings and class centers.
    labels : Tensor, shape (B,)
        Integer class of each row, in ``[0, C)`` (any integer dtype, any device).
    margin : callable
        ``(B,) -> (B,)`` target-cosine map (see :class:`Margin`).
    scale : float
        Logit scale :math:`s > 0`.
    reduction : {"mean", "sum", "none"}
        As in :func:`torch.nn.functional.cross_entropy`.

    Returns
    -------
    Tensor
        Shape () for ``"mean"``/``"sum"``, (B,) for ``"none"``; in the dtype of ``cos``. The
        softmax itself runs in float32 (float64 for float64 input), also under autocast.
    """
    cos = _check_cos(cos)
    check_labels(labels, cos.shape[0], num_classes=cos.shape[1])
    check_scalar(scale, "scale", low=0.0, low_inclusive=False)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    check_margin(margin, "bind them, e.g. lambda c: ada(c, norms), or use AdaFaceLoss")
    labels = labels.to(device=cos.device, dtype=torch.long)
    logits = apply_margin(cos, labels, margin, scale)
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
