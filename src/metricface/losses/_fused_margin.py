"""Memory-lean kernel behind the margin-softmax loss modules.

:func:`fused_margin_softmax` computes, for every row ``i`` of a batch,

.. code-block:: text

    cos[i, j] = <x_i / |x_i|, w_j / |w_j|>          (max over the K sub-centers of class j)
    loss[i]   = logsumexp_j(s * cos'[i, j]) - s * cos'[i, y_i]

where ``cos'`` equals ``cos`` except ``cos'[i, y_i] = margin(cos[i, y_i])``, and its gradient
with respect to the embeddings ``x`` and the class centers ``w``, as one autograd function.

Why a custom function: the composition of ``normalize``, ``linear``, ``scatter`` and
``cross_entropy`` keeps several ``(B, C)`` tensors (the normalised weight, the cosines, the
logits, the log-probabilities and their gradients) plus a normalised ``(C, D)`` copy of the
weight alive at once. Here the forward keeps exactly one ``(B, C)`` buffer that is turned in place
into cosines, logits and finally softmax probabilities (saved for backward); the normalisation of
the weight is folded into a per-class factor ``1/|w_j|`` so no normalised copy of the weight is
made, and the backward builds one ``(B, C)`` gradient and the ``(C, D)`` weight gradient. The
margin's derivative is taken by autograd on the ``(B,)`` target cosines only.

Precision: everything runs in float32 (float64 if the embeddings or the weight are float64);
under autocast the two matrix products run in the autocast dtype, as ``nn.Linear`` would, and
the softmax in float32. Embeddings are normalised by :func:`unit_rows` (exact direction for any
nonzero finite row, no overflow), class centers by their norm clamped at ``1e-12`` as in
:func:`torch.nn.functional.normalize`. The gradient of a normalisation divides by the norm
clamped at ``1e-12`` too (about 0.015 for float16 inputs, so the gradient stays finite when cast
back). Double backward is not supported.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

from metricface.losses.functional import compute_dtype

_NORM_EPS = 1e-12


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

            # the one (B, C) buffer: cosines -> logits -> probabilities
            buf = torch.mm(x_unit.to(mm_dtype), w.to(mm_dtype).t()).to(dtype).mul_(w_inv)
            winner = None
            if sub_centers > 1:
                buf, winner = buf.unflatten(1, (-1, sub_centers)).max(dim=2)
                winner = winner.to(torch.uint8 if sub_centers < 256 else torch.int64)

            rows = torch.arange(buf.shape[0], device=buf.device)
            target = buf[rows, labels]
            with torch.enable_grad():
                t = target.detach().requires_grad_(True)
                new_target = margin(t)
                if new_target.requires_grad:
                    (d_target,) = torch.autograd.grad(new_target.sum(), t)
                else:
                    d_target = torch.zeros_like(t)
            target_logit = new_target.detach().to(dtype) * scale

            logits = buf.mul_(scale)
            logits[rows, labels] = target_logit
            row_max = logits.amax(dim=1, keepdim=True)
            probs = logits.sub_(row_max).exp_()
            row_sum = probs.sum(dim=1, keepdim=True)
            probs.div_(row_sum)
            loss = (row_max + row_sum.log()).squeeze(1) - target_logit

        ctx.scale, ctx.sub_centers, ctx.mm_dtype = scale, sub_centers, mm_dtype
        ctx.in_dtypes = (embeddings.dtype, weight.dtype)
        ctx.save_for_backward(x_unit, x_norm, w, w_norm, probs, labels, d_target, winner)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Optional[Tensor], ...]:  # type: ignore[override]
        x_unit, x_norm, w, w_norm, probs, labels, d_target, winner = ctx.saved_tensors
        dtype, mm = probs.dtype, ctx.mm_dtype
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.autocast(probs.device.type, enabled=False):
            g_row = grad_loss.to(dtype) * ctx.scale
            grad = probs * g_row.unsqueeze(1)  # d loss / d cos, off-target columns
            rows = torch.arange(grad.shape[0], device=grad.device)
            grad[rows, labels] = (grad[rows, labels] - g_row) * d_target
            if ctx.sub_centers > 1:
                full = grad.new_zeros(grad.shape[0], grad.shape[1], ctx.sub_centers)
                full.scatter_(2, winner.long().unsqueeze(2), grad.unsqueeze(2))
                grad = full.flatten(1)
            grad_w = grad_x = None
            if need_w:  # d loss / d w_unit = grad^T x_unit, then through w / |w|
                grad_w = torch.mm(grad.to(mm).t(), x_unit.to(mm)).to(dtype)
                inv = w_norm.clamp_min(_grad_floor(ctx.in_dtypes[1])).reciprocal()
                # <grad_w_j, w_j> without a (C, D) temporary
                coef = torch.bmm(grad_w.unsqueeze(1), w.unsqueeze(2)).view(-1) * inv.square()
                coef = torch.where(w_norm > _NORM_EPS, coef, torch.zeros_like(coef))
                grad_w.addcmul_(w, coef.unsqueeze(1), value=-1.0).mul_(inv.unsqueeze(1))
                grad_w = grad_w.to(ctx.in_dtypes[1])
            if need_x:  # d loss / d x_unit = sum_j grad_j w_j / |w_j|, then through x / |x|
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
    if torch.is_autocast_enabled(device_type):
        mm_dtype = torch.get_autocast_dtype(device_type)
    return _FusedMarginSoftmax.apply(
        embeddings, weight, labels.long(), margin, float(scale), int(sub_centers), mm_dtype
    )
