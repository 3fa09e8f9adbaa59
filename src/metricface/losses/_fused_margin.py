"""Memory-lean kernel behind the margin-softmax loss modules.

:func:`fused_margin_softmax` computes, for every row ``i`` of a batch,

.. code-block:: text

    cos[i, j] = <x_i / |x_i|, w_j / |w_j|>          (max over the K sub-centers of class j)
    loss[i]   = logsumexp_j(s * cos'[i, j]) - s * cos'[i, y_i]

where ``cos'`` equals ``cos`` except ``cos'[i, y_i] = margin(cos[i, y_i])``, and its gradient
with respect to the embeddings ``x`` and the class centers ``w``, as one autograd function.

Why a custom function: the composition of ``normalize``, ``linear``, ``scatter`` and
``cross_entropy`` keeps several ``(B, C)`` tensors (the cosines, the logits, the
log-probabilities and their gradients) plus a normalised ``(C, D)`` copy of the weight alive at
once. Here the forward keeps exactly one ``(B, C)`` buffer, turned in place from logits into
``exp(logit - row max)`` and saved for backward; the normalisation of the weight is folded into
a per-class factor ``1/|w_j|``, so no normalised copy of the weight is made. The backward turns
the saved buffer into the ``(B, C)`` gradient in place and allocates only the ``(C, D)`` weight
gradient (with ``K`` sub-centers, the ``(B, C * K)`` cosines are never formed: each
sub-center's ``(B, C)`` block is computed and routed in turn through one more ``(B, C)``
buffer), so the function can be backpropagated once (a second backward with
``retain_graph=True`` raises). The margin's derivative is taken by autograd on the ``(B,)``
target cosines only.

Precision: everything runs in float32 (float64 if the embeddings or the weight are float64);
under autocast the two matrix products run in the autocast dtype (unless an input is float64,
which autocast leaves alone), as ``nn.Linear`` would, and
the softmax in float32. Embeddings are normalised by :func:`unit_rows` (exact direction for any
nonzero finite row, no overflow), class centers by their norm clamped at ``1e-12`` as in
:func:`torch.nn.functional.normalize`. The gradient of a normalisation divides by the norm
clamped at ``1e-12`` too (about 0.015 for float16 inputs, so the gradient stays finite when cast
back). Double backward and repeated backward are not supported: both raise a RuntimeError
(the backward pass is not itself differentiable, so a gradient penalty through this loss
cannot be computed).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from metricface.losses.functional import _clamp_cos, compute_dtype

_NORM_EPS = 1e-12


class _SecondOrderError(torch.autograd.Function):
    """Identity whose backward pass raises: marks a gradient as not differentiable."""

    @staticmethod
    def forward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad.view_as(grad)

    @staticmethod
    def backward(ctx: Any, _: Tensor) -> Tensor:  # type: ignore[override]
        raise RuntimeError(
            "the margin-softmax losses cannot be differentiated twice: their backward pass is "
            "not differentiable, so second-order terms (e.g. a gradient penalty through the "
            "loss) are not available"
        )


def first_order_only(backward: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate an autograd ``backward`` whose own computation is not differentiable.

    Like :func:`torch.autograd.function.once_differentiable`, but the gradients it returns
    under ``create_graph=True`` *always* lead to an error when differentiated again, also when
    the incoming gradient is a constant (``once_differentiable`` then returns plain tensors,
    so a second-order term through the function would silently be zero).
    """

    @functools.wraps(backward)
    def wrapper(ctx: Any, *grads: Tensor) -> Any:
        with torch.no_grad():
            outputs = backward(ctx, *grads)
        if not torch.is_grad_enabled():  # create_graph=False: nothing to protect
            return outputs
        return tuple(
            o if not isinstance(o, Tensor) else _SecondOrderError.apply(o.detach().requires_grad_())
            for o in outputs
        )

    return wrapper


def unit_rows(v: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of ``v`` scaled to unit length, and their norms; shape (N, D) -> (N, D), (N,).

    Overflow- and underflow-free: each row is divided by its largest magnitude before the norm
    is taken, so every nonzero finite row gets its exact direction (``F.normalize`` would
    overflow above about 1e19 in float32 and shrink rows shorter than its ``eps``). Zero rows
    stay zero. The returned norm may be ``inf`` for rows near the dtype's maximum.
    """
    peak = v.abs().amax(dim=1, keepdim=True)
    scaled = v / torch.where(peak > 0, peak, torch.ones_like(peak))
    n = scaled.norm(dim=1, keepdim=True)
    unit = scaled / torch.where(n > 0, n, torch.ones_like(n))
    return unit, (peak * n).squeeze(1)


def _grad_floor(dtype: torch.dtype) -> float:
    """Smallest norm the gradient of ``v / |v|`` divides by, for inputs of ``dtype``.

    ``1e-12`` (as ``F.normalize``) unless that could overflow the input dtype: for float16 the
    floor is about 0.015, so gradients stay finite when cast back.
    """
    return max(_NORM_EPS, 1e3 / torch.finfo(dtype).max)


def _project_out(grad: Tensor, unit: Tensor, norm: Tensor, floor: float) -> Tensor:
    """Gradient through ``v / |v|`` given the upstream ``grad`` (computed in place on ``grad``).

    ``(grad - <grad, u> u) / max(|v|, floor)`` with ``u = v / |v|`` (zero for zero rows).
    """
    coef = (grad * unit).sum(dim=1, keepdim=True)
    return grad.addcmul_(unit, coef, value=-1.0).div_(norm.clamp_min(floor).unsqueeze(1))


def _mm_into(a: Tensor, b: Tensor, out: Tensor) -> Tensor:
    """``out = a @ b`` written in place (``a`` and ``b`` may be in a lower autocast dtype)."""
    if a.dtype == out.dtype:
        return torch.mm(a, b, out=out)
    return out.copy_(torch.mm(a, b))


def _subcenter_logits(
    x_unit: Tensor, w: Tensor, factor: Tensor, k: int, mm_dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Per-class maximum over ``k`` sub-centers of ``factor * (x_unit @ w.T)``, and its argmax.

    Shapes: ``x_unit`` (B, D), ``w`` (C * k, D), ``factor`` (C * k,) -> (B, C), (B, C) uint8
    (int64 for ``k >= 256``). One sub-center at a time (rows ``j, j + k, ...`` of ``w`` are a
    strided view the matrix product reads in place), so no ``(B, C * k)`` buffer is made. On
    ties the first sub-center wins; a NaN propagates to the maximum.
    """
    w3, f3 = w.view(-1, k, w.shape[1]), factor.view(-1, k)
    x = x_unit.to(mm_dtype)
    shape = (x.shape[0], w3.shape[0])
    best = _mm_into(x, w3[:, 0].to(mm_dtype).t(), factor.new_empty(shape)).mul_(f3[:, 0])
    winner = torch.zeros(shape, dtype=torch.uint8 if k < 256 else torch.int64, device=w.device)
    cos, better = torch.empty_like(best), torch.empty(shape, dtype=torch.bool, device=w.device)
    for j in range(1, k):
        _mm_into(x, w3[:, j].to(mm_dtype).t(), cos).mul_(f3[:, j])
        torch.gt(cos, best, out=better)
        winner.masked_fill_(better, j)
        torch.maximum(best, cos, out=best)
    return best, winner


def _subcenter_grads(
    grad: Tensor,
    winner: Tensor,
    x_unit: Tensor,
    w: Tensor,
    w_norm: Tensor,
    mm_dtype: torch.dtype,
    need_w: bool,
    need_x: bool,
) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """Products of the per-class ``grad`` (B, C) routed to each class's winning sub-center.

    Returns ``(C * k, D)`` ``routed.T @ x_unit`` and ``(B, D)`` ``sum_j routed_j w_j / |w_j|``
    (before the normalisation steps), one sub-center at a time so that no ``(B, C * k)``
    buffer is made.
    """
    k = w.shape[0] // grad.shape[1]
    w3 = w.view(-1, k, w.shape[1])
    inv3 = w_norm.clamp_min(_NORM_EPS).reciprocal().view(-1, k)
    x = x_unit.to(mm_dtype)
    grad_w = grad.new_empty(w.shape) if need_w else None
    grad_x = grad.new_zeros(x_unit.shape) if need_x else None
    part = torch.empty_like(grad)
    mask = torch.empty(grad.shape, dtype=torch.bool, device=grad.device)
    zero = grad.new_zeros(())
    for j in range(k):
        torch.where(torch.eq(winner, j, out=mask), grad, zero, out=part)
        if grad_w is not None:
            _mm_into(part.to(mm_dtype).t(), x, grad_w.view(-1, k, w.shape[1])[:, j])
        if grad_x is not None:
            grad_x += torch.mm(part.mul_(inv3[:, j]).to(mm_dtype), w3[:, j].to(mm_dtype))
    return grad_w, grad_x


class _FusedMarginSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        embeddings: Tensor,
        weight: Tensor,
        labels: Tensor,
        margin: Callable[[Tensor], Tensor],
        scale: float,
        sub_centers: int,
        mm_dtype: Optional[torch.dtype],
    ) -> Tensor:
        dtype = compute_dtype(torch.promote_types(embeddings.dtype, weight.dtype))
        mm_dtype = mm_dtype or dtype
        with torch.autocast(embeddings.device.type, enabled=False):
            x = embeddings.detach().to(dtype)
            w = weight.detach().to(dtype)
            x_unit, x_norm = unit_rows(x)
            # the weight is never copied: its normalisation is a per-class factor 1/|w_j|
            w_norm = torch.linalg.vector_norm(w, dim=1)
            w_inv = w_norm.clamp_min(_NORM_EPS).reciprocal()

            # the one (B, C) buffer: scaled cosines (logits) -> exp(logit - row max)
            winner = None
            if sub_centers > 1:
                buf, winner = _subcenter_logits(x_unit, w, w_inv * scale, sub_centers, mm_dtype)
            else:
                buf = torch.mm(x_unit.to(mm_dtype), w.to(mm_dtype).t()).to(dtype)
                buf.mul_(w_inv * scale)

            rows = torch.arange(buf.shape[0], device=buf.device)
            target = buf[rows, labels] / scale
            with torch.enable_grad():
                t = target.detach().requires_grad_(True)
                # in [-1, 1] (identity gradient): rounding puts x.w just past 1 for x = w
                new_target = margin(_clamp_cos(t))
                if new_target.requires_grad:
                    (d_target,) = torch.autograd.grad(new_target.sum(), t)
                else:
                    d_target = torch.zeros_like(t)
            target_logit = new_target.detach().to(dtype) * scale

            buf[rows, labels] = target_logit
            row_max = buf.amax(dim=1, keepdim=True)
            exps = buf.sub_(row_max).exp_()  # softmax = exps / row_sum, divided in backward
            row_sum = exps.sum(dim=1)
            loss = row_max.squeeze(1) + row_sum.log() - target_logit

        ctx.scale, ctx.sub_centers, ctx.mm_dtype = scale, sub_centers, mm_dtype
        ctx.consumed = False
        ctx.in_dtypes = (embeddings.dtype, weight.dtype)
        ctx.save_for_backward(x_unit, x_norm, w, w_norm, exps, row_sum, labels, d_target, winner)
        return loss

    @staticmethod
    @first_order_only
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Optional[Tensor], ...]:  # type: ignore[override]
        if ctx.consumed:
            raise RuntimeError(
                "the margin-softmax loss reuses its softmax buffer for the gradient, so it can "
                "be backpropagated only once (retain_graph is not supported); recompute the loss"
            )
        ctx.consumed = True
        x_unit, x_norm, w, w_norm, exps, row_sum, labels, d_target, winner = ctx.saved_tensors
        dtype, mm = exps.dtype, ctx.mm_dtype
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.autocast(exps.device.type, enabled=False):
            g_row = grad_loss.to(dtype) * ctx.scale
            # d loss / d cos = s * g * (softmax - one_hot), written over the saved exps
            grad = exps.mul_((g_row / row_sum).unsqueeze(1))
            rows = torch.arange(grad.shape[0], device=grad.device)
            grad[rows, labels] = (grad[rows, labels] - g_row) * d_target
            grad_w = grad_x = None
            if ctx.sub_centers > 1:
                grad_w, grad_x = _subcenter_grads(
                    grad, winner, x_unit, w, w_norm, mm, need_w, need_x
                )
            if need_w:  # d loss / d w_unit = grad^T x_unit, then through w / |w|
                if grad_w is None:
                    grad_w = torch.mm(grad.to(mm).t(), x_unit.to(mm)).to(dtype)
                inv = w_norm.clamp_min(_grad_floor(ctx.in_dtypes[1])).reciprocal()
                # <grad_w_j, w_j> without a (C, D) temporary
                coef = torch.bmm(grad_w.unsqueeze(1), w.unsqueeze(2)).view(-1) * inv.square()
                coef = torch.where(w_norm > _NORM_EPS, coef, torch.zeros_like(coef))
                grad_w.addcmul_(w, coef.unsqueeze(1), value=-1.0).mul_(inv.unsqueeze(1))
                grad_w = grad_w.to(ctx.in_dtypes[1])
            if need_x:  # d loss / d x_unit = sum_j grad_j w_j / |w_j|, then through x / |x|
                if grad_x is None:
                    inv = w_norm.clamp_min(_NORM_EPS).reciprocal()
                    grad_x = torch.mm(grad.mul_(inv).to(mm), w.to(mm)).to(dtype)
                floor = _grad_floor(ctx.in_dtypes[0])
                grad_x = _project_out(grad_x, x_unit, x_norm, floor).to(ctx.in_dtypes[0])
        return grad_x, grad_w, None, None, None, None, None


def fused_margin_softmax(
    embeddings: Tensor,
    weight: Tensor,
    labels: Tensor,
    margin: Callable[[Tensor], Tensor],
    scale: float,
    sub_centers: int = 1,
) -> Tensor:
    """Per-sample margin-softmax loss of unnormalised embeddings against class centers.

    Parameters
    ----------
    embeddings : Tensor, shape (B, D)
    weight : Tensor, shape (C * K, D)
        Class centers, rows ``c*K .. c*K+K-1`` for class ``c``; need not be normalised.
    labels : Tensor, shape (B,)
        Integer classes in ``[0, C)``; not checked here (the modules validate).
    margin : callable
        ``(B,) -> (B,)`` map of the target cosine, elementwise.
    scale : float
    sub_centers : int
        ``K``.

    Returns
    -------
    Tensor, shape (B,)
        Loss of each sample, float32 (float64 if an input is float64).
    """
    device_type = embeddings.device.type
    mm_dtype = None
    # autocast lowers float32 matmuls only: float64 stays float64, as in nn.Linear
    if torch.is_autocast_enabled(device_type) and torch.float64 not in (
        embeddings.dtype,
        weight.dtype,
    ):
        mm_dtype = torch.get_autocast_dtype(device_type)
    return _FusedMarginSoftmax.apply(
        embeddings, weight, labels.long(), margin, float(scale), int(sub_centers), mm_dtype
    )
