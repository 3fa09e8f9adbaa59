"""Numerics shared by every path that normalises embeddings or scores them.

One home for the rules that the margin-softmax kernel, the distances, the gallery search, the
embedding heads and the metrics follow, so that a numerics fix is made once:

* **compute dtype** (:func:`compute_dtype`): half precision and float32 inputs are computed in
  float32, anything involving float64 in float64;
* **normalisation**: :func:`l2_normalize` is the differentiable ``x / max(||x||, eps)`` of
  :func:`torch.nn.functional.normalize` (what pytorch-metric-learning does, so the pair losses
  match it bit for bit), computed in the compute dtype; :func:`unit_rows` gives the exact
  direction of every finite row (no overflow for huge rows, no shrinking of tiny ones) together
  with the norms, for kernels that write their own backward pass with
  :func:`unit_rows_backward`; class centers are normalised through a per-row factor
  (:func:`inverse_norms`, :func:`inverse_norms_backward_`) so that a ``(C, D)`` weight is never
  copied;
* **cosines** (:func:`clamp_cos`): clamped to ``[-1, 1]`` with an identity gradient;
* **casting back** (:func:`cast_finite`): a gradient computed in float32 is cast to the input's
  dtype, saturating at that dtype's largest finite value instead of overflowing to infinity;
  :func:`to_compute_dtype` is the differentiable cast into the compute dtype whose backward
  pass does exactly that, for paths that let autograd differentiate them;
* **reductions** (:data:`REDUCTIONS`, :func:`check_reduction`, :func:`apply_reduction`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "NORM_EPS",
    "REDUCTIONS",
    "apply_reduction",
    "cast_finite",
    "check_reduction",
    "clamp_cos",
    "compute_dtype",
    "inverse_norms",
    "inverse_norms_backward_",
    "l2_normalize",
    "to_compute_dtype",
    "unit_rows",
    "unit_rows_backward",
]

#: Smallest norm a normalisation divides by, as in :func:`torch.nn.functional.normalize`.
NORM_EPS = 1e-12
#: The accepted values of every ``reduction=`` argument.
REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")


def compute_dtype(*tensors: Tensor | torch.dtype) -> torch.dtype:
    """The dtype to compute in: float64 if any input is float64, float32 otherwise.

    Parameters
    ----------
    *tensors : Tensor or torch.dtype
        The inputs (or their dtypes).

    Examples
    --------
    >>> from metricface.numerics import compute_dtype
    >>> compute_dtype(torch.zeros(2, dtype=torch.float16)), compute_dtype(torch.float64)
    (torch.float32, torch.float64)
    """
    dtypes = [t if isinstance(t, torch.dtype) else t.dtype for t in tensors]
    return torch.float64 if torch.float64 in dtypes else torch.float32


class _ToComputeDtype(torch.autograd.Function):
    """``x.to(dtype)`` whose backward pass casts the gradient back with :func:`cast_finite`."""

    @staticmethod
    def forward(ctx, x: Tensor, dtype: torch.dtype) -> Tensor:  # type: ignore[override]
        ctx.in_dtype = x.dtype
        return x.to(dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return cast_finite(grad, ctx.in_dtype), None


def to_compute_dtype(x: Tensor, *others: Tensor | torch.dtype) -> Tensor:
    """``x`` in :func:`compute_dtype` of ``x`` and ``others``; its gradient saturates on the way back.

    The plain cast ``x.to(torch.float32)`` of a float16 ``x`` casts the float32 gradient back
    to float16 unguarded, and a gradient above 65504 (that of an all-zero or tiny embedding
    row through a normalisation, for example) becomes ``inf``. Here it becomes the largest
    finite value of ``x``'s dtype instead (:func:`cast_finite`). ``x`` is returned itself when
    it already has the compute dtype.

    Parameters
    ----------
    x : Tensor
        Floating-point tensor.
    *others : Tensor or torch.dtype
        Further inputs of the same computation: a float64 one makes the compute dtype float64.

    Returns
    -------
    Tensor
        ``x`` as float32, or float64 when ``x`` or any of ``others`` is float64.

    Examples
    --------
    >>> from metricface.numerics import to_compute_dtype
    >>> x = torch.zeros(2, dtype=torch.float16, requires_grad=True)
    >>> (to_compute_dtype(x) * 1e6).sum().backward()
    >>> x.grad
    tensor([65504., 65504.], dtype=torch.float16)
    """
    dtype = compute_dtype(x, *others)
    if x.dtype == dtype:
        return x
    return _ToComputeDtype.apply(x, dtype)


def l2_normalize(x: Tensor, dim: int = 1, eps: float = NORM_EPS) -> Tensor:
    """``x / max(||x||, eps)`` along ``dim``, differentiable, in the compute dtype.

    :func:`torch.nn.functional.normalize` applied to ``x`` in :func:`compute_dtype` (float32
    for half precision, so their norms cannot overflow): all-zero rows stay zero. The gradient
    reaches a half-precision ``x`` through :func:`to_compute_dtype`: finite even where the
    float32 gradient exceeds the half-precision range (an all-zero row's is ``1 / eps`` times
    the upstream gradient).

    Parameters
    ----------
    x : Tensor
        Floating-point tensor, typically embeddings of shape ``(B, D)``.
    dim : int
        Dimension to normalise along.
    eps : float
        Smallest divisor.

    Returns
    -------
    Tensor
        Same shape as ``x``, float32 (float64 for float64 input).
    """
    return F.normalize(to_compute_dtype(x), p=2.0, dim=dim, eps=eps)


def unit_rows(v: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of ``v`` scaled to unit length, and their norms: ``(N, D) -> (N, D), (N,)``.

    Overflow- and underflow-free: each row is divided by its largest magnitude before its norm
    is taken, so every nonzero finite row gets its exact direction
    (:func:`torch.nn.functional.normalize` overflows above about 1e19 in float32 and shrinks
    rows shorter than its ``eps``). Zero rows stay zero. The returned norm may be ``inf`` for
    rows near the dtype's maximum. Computed in ``v``'s dtype; differentiable.
    """
    peak = v.abs().amax(dim=1, keepdim=True)
    scaled = v / torch.where(peak > 0, peak, torch.ones_like(peak))
    n = torch.linalg.vector_norm(scaled, dim=1, keepdim=True)
    unit = scaled / torch.where(n > 0, n, torch.ones_like(n))
    return unit, (peak * n).squeeze(1)


def unit_rows_backward(grad: Tensor, unit: Tensor, norm: Tensor) -> Tensor:
    """Gradient through ``v / ||v||`` given the upstream ``grad``; computed in place on ``grad``.

    ``(grad - <grad, u> u) / max(||v||, eps)`` per row, with ``u`` and ``||v||`` from
    :func:`unit_rows` (zero rows have ``u = 0``: their gradient is ``grad / eps``, as for
    :func:`torch.nn.functional.normalize`). The divisor is the true norm, so compute in float32
    (or float64) and cast the result back with :func:`cast_finite`.

    Shapes: ``grad`` and ``unit`` ``(N, D)``, ``norm`` ``(N,)``.
    """
    coef = (grad * unit).sum(dim=1, keepdim=True)
    return grad.addcmul_(unit, coef, value=-1.0).div_(norm.clamp_min(NORM_EPS).unsqueeze(1))


def inverse_norms(w: Tensor) -> tuple[Tensor, Tensor]:
    """``1 / max(||w_j||, eps)`` for each row, and the norms: ``(C, D) -> (C,), (C,)``.

    ``w * inverse_norms(w)[0][:, None]`` is :func:`torch.nn.functional.normalize`'s result; a
    kernel that multiplies its products by this factor never makes a normalised copy of ``w``.
    """
    norm = torch.linalg.vector_norm(w, dim=1)
    return norm.clamp_min(NORM_EPS).reciprocal(), norm


def inverse_norms_backward_(grad: Tensor, w: Tensor, inv: Tensor, norm: Tensor) -> Tensor:
    """Gradient through ``w_j * inv_j`` (``inv`` from :func:`inverse_norms`), in place on ``grad``.

    ``(g_j - <g_j, w_j> w_j / ||w_j||^2) / ||w_j||`` for rows longer than ``eps`` and
    ``g_j / eps`` for the others (where the normalisation is a constant factor), the gradient of
    :func:`torch.nn.functional.normalize`, without a ``(C, D)`` temporary. The divisor is the
    true norm: cast the result back with :func:`cast_finite`.

    Shapes: ``grad`` and ``w`` ``(C, D)``, ``inv`` and ``norm`` ``(C,)``.
    """
    coef = torch.bmm(grad.unsqueeze(1), w.unsqueeze(2)).view(-1) * inv.square()
    coef = torch.where(norm > NORM_EPS, coef, torch.zeros_like(coef))
    return grad.addcmul_(w, coef.unsqueeze(1), value=-1.0).mul_(inv.unsqueeze(1))


def clamp_cos(cos: Tensor) -> Tensor:
    """``cos`` in the compute dtype, clamped to ``[-1, 1]`` with an identity gradient.

    :meth:`torch.Tensor.clamp` has a zero gradient at (and beyond) the bounds, which would
    silence the target of an embedding equal to its class center or one rounded just past 1.
    """
    cos = cos.to(compute_dtype(cos))
    return cos + (cos.clamp(-1.0, 1.0) - cos).detach()


def cast_finite(t: Tensor, dtype: torch.dtype, parts: int = 1) -> Tensor:
    """``t`` cast to ``dtype``, saturating at ``dtype``'s largest finite value.

    A float32 gradient that exceeds float16's range (about 65504), e.g. of a float16 embedding
    of tiny norm, becomes ``+-65504`` instead of ``inf``. NaN stays NaN. With ``parts > 1`` the
    limit is that value divided by ``parts``, so that the sum of ``parts`` such tensors (e.g.
    the ranks' contributions an all-reduce adds up) stays finite too.
    """
    if t.dtype != dtype and dtype.is_floating_point:
        limit = torch.finfo(dtype).max / parts
        if limit < torch.finfo(t.dtype).max:
            t = t.clamp(-limit, limit)
    return t.to(dtype)


def check_reduction(reduction: object) -> str:
    """Check that ``reduction`` is one of :data:`REDUCTIONS`; return it."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def apply_reduction(losses: Tensor, reduction: str) -> Tensor:
    """Mean, sum or nothing over the per-sample ``losses`` of shape ``(B,)``."""
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses
