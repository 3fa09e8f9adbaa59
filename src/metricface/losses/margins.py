"""The margins: ``margin(cos_target, norms=None) -> target logit`` (before scaling).

A *margin* maps the cosine between each embedding and its own class center, ``cos_target`` of
shape ``(B,)``, to the target logit before scaling; ``norms``, the ``(B,)`` L2 norms of the
(unnormalised) embeddings, are passed along for margins that read them (:class:`AdaFaceMargin`)
and ignored by the others. Every margin-softmax loss (NormFace, CosFace, ArcFace, SphereFace,
combined margins, AdaFace, sub-center ArcFace, Partial FC) is then

.. math::

    \\ell_i = -\\log \\frac{e^{s\\,\\psi(\\cos\\theta_{i,y_i})}}
              {e^{s\\,\\psi(\\cos\\theta_{i,y_i})} + \\sum_{j \\ne y_i} e^{s \\cos\\theta_{i,j}}}

with :math:`\\psi` the margin and :math:`s` the scale; the pipeline that evaluates it is
described in :mod:`metricface.losses.chunked`. Besides the :class:`Margin` subclasses here,
any callable of the target cosines alone (a plain function ``cos -> tensor``) is a margin; it
is called without the norms.

**Numerics.** Margins compute in float32 (float64 for float64 input), also under autocast, on
cosines clamped to ``[-1, 1]`` with an identity gradient. No margin calls ``acos``: the angle is
``atan2(sin, cos)`` with ``sin = sqrt((1 - cos)(1 + cos))``, whose value is exact. Its
derivative :math:`d\\sin\\theta / d\\cos\\theta = -\\cot\\theta` is infinite at
:math:`\\cos\\theta = \\pm 1`; the gradient used is
:math:`-\\cos\\theta\\,\\sin\\theta / (\\sin^2\\theta + \\delta^2)` with :math:`\\delta = 10^{-8}`:
a smooth function of the angle, equal to the true derivative to a relative
:math:`\\delta^2 / \\sin^2\\theta` (below :math:`10^{-9}` for every angle a float32 cosine
resolves, and for float64 angles above :math:`3 \\cdot 10^{-4}` rad), never larger than
:math:`1 / (2\\delta)` in magnitude and zero exactly at :math:`\\theta = 0` and :math:`\\pi`.
The gradient with respect to an embedding therefore follows the true one continuously down to
the smallest angle the cosine resolves, with no jump, and is finite for every input, including
embeddings equal to (or opposite to) a class center.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Optional, Union

import torch
from torch import Tensor

from metricface._validation import check_scalar
from metricface.numerics import clamp_cos, compute_dtype

__all__ = [
    "AdaFaceMargin",
    "ArcFaceMargin",
    "CombinedMargin",
    "CosFaceMargin",
    "Margin",
    "NoMargin",
    "SphereFaceMargin",
]

#: A margin: a :class:`Margin`, or a callable of the target cosines alone.
MarginLike = Union["Margin", Callable[[Tensor], Tensor]]

# delta^2 of the gradient of sin(theta) (see the module docstring)
_SIN_DELTA2 = 1e-16


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


def _sin_from_cos(cos: Tensor) -> Tensor:
    """``sin(acos(cos))`` for ``cos`` in [-1, 1]: exact value, smoothly bounded gradient."""
    sin2 = ((1 - cos) * (1 + cos)).clamp_min(0)
    sin = sin2.sqrt().detach()
    slope = (-cos * sin / (sin2 + _SIN_DELTA2)).detach()
    return sin + slope * (cos - cos.detach())


def _angle_from_cos(cos: Tensor) -> Tensor:
    """``acos(cos)`` in [0, pi] without the infinite gradient of ``acos`` at +-1."""
    return torch.atan2(_sin_from_cos(cos), cos)


class Margin:
    """Base class of the margins: ``margin(cos_target, norms=None) -> target logit``.

    Subclasses implement :meth:`forward` on cosines already clamped to ``[-1, 1]`` and in the
    compute dtype (float32, or float64 for float64 input). Margins hold only Python floats,
    so they pickle, compare equal by value and print their parameters.
    """

    _params: tuple[str, ...] = ()

    def __call__(self, cos_target: Tensor, norms: Optional[Tensor] = None) -> Tensor:
        """Apply the margin.

        Parameters
        ----------
        cos_target : Tensor, shape (B,)
            Cosine between each embedding and the center of its own class.
        norms : Tensor, shape (B,), optional
            L2 norms of the unnormalised embeddings, treated as constants; read only by
            margins that depend on them (:class:`AdaFaceMargin`).

        Returns
        -------
        Tensor, shape (B,)
            The target logit before scaling, float32 (float64 for float64 input).
        """
        return self.forward(clamp_cos(cos_target), norms)

    def forward(self, cos: Tensor, norms: Optional[Tensor]) -> Tensor:  # pragma: no cover
        """The margin on clamped cosines in the compute dtype (implemented by subclasses)."""
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


def _check_margin(margin: object) -> None:
    """Raise a TypeError unless ``margin`` is callable (cheap: call it before any compute)."""
    if not callable(margin):
        raise TypeError(
            f"margin must be callable (a Margin, or a function cos_target -> tensor), "
            f"got {margin!r}"
        )


def _call_margin(margin: MarginLike, cos_target: Tensor, norms: Optional[Tensor]) -> Tensor:
    """The target logits of ``margin``: a :class:`Margin` also gets the norms, a function not."""
    if isinstance(margin, Margin):
        return margin(cos_target, norms)
    return margin(cos_target)


class NoMargin(Margin):
    """No margin (NormFace): :math:`\\psi(\\cos\\theta) = \\cos\\theta`."""

    def forward(self, cos: Tensor, norms: Optional[Tensor] = None) -> Tensor:
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

    def forward(self, cos: Tensor, norms: Optional[Tensor] = None) -> Tensor:
        return cos - self.margin


class ArcFaceMargin(Margin):
    """Additive angular margin (ArcFace): :math:`\\psi = \\cos(\\theta + m)`.

    Computed as :math:`\\cos\\theta\\cos m - \\sin\\theta\\sin m` (no ``acos``). Where
    :math:`\\theta + m > \\pi` the angle would wrap and the logit would grow again, so there
    the margin is :math:`\\cos\\theta - m\\sin m` instead (as in InsightFace and
    pytorch-metric-learning); the result is non-increasing in :math:`\\theta` on
    :math:`[0, \\pi]`. The derivative in :math:`\\cos\\theta`,
    :math:`\\cos m + \\sin m \\cot\\theta`, is unbounded as :math:`\\theta \\to 0`; its
    smooth bound is described in the module docstring.

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

    def forward(self, cos: Tensor, norms: Optional[Tensor] = None) -> Tensor:
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

    def forward(self, cos: Tensor, norms: Optional[Tensor] = None) -> Tensor:
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

    def forward(self, cos: Tensor, norms: Optional[Tensor] = None) -> Tensor:
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

    An ordinary margin: every loss passes it the norms of its embeddings. By default
    :math:`\\mu, \\sigma` are the statistics of the ``norms`` of the call (the batch).
    :class:`~metricface.losses.AdaFaceLoss` keeps running statistics instead and scores each
    batch with :meth:`with_statistics` of them; ``norm_mean`` / ``norm_std`` given to a call
    take precedence too. The statistics are data, not parameters: they take no part in ``==``,
    ``hash`` or ``repr``.

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
        self.statistics: Optional[tuple[Tensor, Tensor]] = None

    def with_statistics(self, norm_mean: Tensor, norm_std: Tensor) -> AdaFaceMargin:
        """A copy that uses fixed norm statistics instead of each call's batch statistics.

        Parameters
        ----------
        norm_mean, norm_std : Tensor, shape ()
            Mean and standard deviation of the clipped norms (e.g. running statistics).
        """
        for name, value in (("norm_mean", norm_mean), ("norm_std", norm_std)):
            if not isinstance(value, Tensor) or value.ndim != 0:
                raise TypeError(f"{name} must be a 0-dimensional torch.Tensor, got {value!r}")
        bound = copy.copy(self)
        bound.statistics = (norm_mean, norm_std)
        return bound

    def clip_norms(self, norms: Tensor) -> Tensor:
        """Detached norms clipped to ``[1e-3, 100]``, in the compute dtype. Shape (B,)."""
        return norms.detach().to(compute_dtype(norms)).clamp(self.norm_min, self.norm_max)

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
        """The clipped, normalised quality indicator :math:`\\hat z`. Shape (B,).

        Statistics: ``norm_mean`` / ``norm_std`` if given, else those fixed by
        :meth:`with_statistics`, else the batch statistics of ``norms``.
        """
        z = self.clip_norms(norms)
        if norm_mean is None or norm_std is None:
            norm_mean, norm_std = self.statistics or self.batch_stats(z)
        return ((z - norm_mean.to(z)) / (norm_std.to(z) + self.eps) * self.h).clamp(-1.0, 1.0)

    def __call__(  # type: ignore[override]
        self,
        cos_target: Tensor,
        norms: Optional[Tensor] = None,
        norm_mean: Optional[Tensor] = None,
        norm_std: Optional[Tensor] = None,
    ) -> Tensor:
        """Apply the margin.

        Parameters
        ----------
        cos_target : Tensor, shape (B,)
            Cosine between each embedding and its class center.
        norms : Tensor, shape (B,)
            L2 norms of the (unnormalised) embeddings; treated as constants. Required.
        norm_mean, norm_std : Tensor, shape (), optional
            Statistics of the clipped norms to use for this call (see :meth:`quality`).

        Returns
        -------
        Tensor, shape (B,)
        """
        if norms is None:
            raise TypeError(
                "AdaFaceMargin also needs the embedding norms: call it as margin(cos_target, "
                "norms); margin_cross_entropy and apply_margin take them as norms="
            )
        if not isinstance(norms, Tensor):
            raise TypeError(f"norms must be a torch.Tensor, got {type(norms).__name__}")
        if norms.shape != cos_target.shape:  # (B, 1) norms would broadcast to (B, B)
            raise ValueError(
                f"norms must have the shape of cos_target {tuple(cos_target.shape)}, "
                f"got {tuple(norms.shape)}"
            )
        margin = self
        if norm_mean is not None and norm_std is not None:
            margin = self.with_statistics(norm_mean, norm_std)
        return margin.forward(clamp_cos(cos_target), norms)

    def forward(self, cos: Tensor, norms: Optional[Tensor]) -> Tensor:
        assert norms is not None  # checked by __call__
        z = self.quality(norms).to(cos.dtype)
        m = self.margin
        theta = (_angle_from_cos(cos) - m * z).clamp(self.eps, math.pi - self.eps)
        return torch.cos(theta) - (m + m * z)
