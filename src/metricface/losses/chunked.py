"""Margin-softmax cross entropy over class chunks, never holding the ``(B, C)`` logits.

For ``B`` embeddings against ``C`` class centers the dense loss materialises the ``(B, C)``
cosine matrix, the scaled logits, the softmax and the gradient of each: several ``4 * B * C``
bytes. At ``B = 512`` and ``C = 10**7`` one such matrix alone is 20 GB. The autograd function
here walks the classes in chunks of ``chunk_size`` rows of ``weight``:

* **forward** keeps a running maximum ``m`` and a running ``s = sum exp(logit - m)`` per sample
  (an online log-sum-exp), so only one ``(B, chunk_size)`` block exists at a time;
* **backward** recomputes each chunk's logits from the saved log-sum-exp, forms that block's
  gradient ``scale * (softmax - onehot)``, accumulates the embeddings' gradient and writes the
  chunk's rows of the weight gradient. When all classes fit in one chunk, that block's
  softmax is kept from the forward pass instead (no recomputation, the dense trade-off).

Peak extra memory is ``O(B * chunk_size + B * D)`` on top of ``weight`` and its gradient.
The same kernel computes the *distributed* loss when the rows of ``weight`` are one rank's
shard of the classes: the per-rank maxima and sums are combined with two all-reduces (see
:mod:`metricface.losses.partial_fc`).

All arithmetic runs in float32 (float64 if an input is float64), also for float16/bfloat16
inputs and under autocast; gradients are returned in each input's dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from metricface._validation import (
    check_embeddings,
    check_labels,
    check_same_device,
    check_scalar,
)
from metricface.losses._fused_margin import _grad_floor, first_order_only
from metricface.losses.functional import check_margin

__all__ = ["chunked_margin_cross_entropy"]

_MarginFn = Callable[[torch.Tensor], torch.Tensor]

_EPS = 1e-12  # as torch.nn.functional.normalize
_REDUCTIONS = ("mean", "sum", "none")


def _normalize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``x`` divided by ``max(norm, eps)``; also returns that divisor, shape (N, 1)."""
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(_EPS)
    return x / norm, norm


def _normalize_backward(
    grad: torch.Tensor, unit: torch.Tensor, norm: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Gradient through ``x / max(||x||, eps)`` given the output gradient and the saved parts.

    ``dtype`` is the input's: the divisor is floored so that the gradient, cast back to it,
    stays finite (float16 rows of tiny norm would otherwise overflow to inf).
    """
    radial = (grad * unit).sum(dim=1, keepdim=True)
    clamped = norm <= _EPS  # below eps the divisor is a constant and the map is linear
    return torch.where(clamped, grad, grad - unit * radial) / norm.clamp_min(_grad_floor(dtype))


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _put_target(block: torch.Tensor, value: torch.Tensor, local_labels: torch.Tensor, start: int):
    """Write ``value[i]`` into ``block[i, local_labels[i] - start]`` where that column exists.

    A gather / where / scatter, so no host synchronisation (no ``nonzero``) on accelerators.
    """
    column = local_labels - start
    inside = (column >= 0) & (column < block.shape[1])
    column = column.clamp(0, block.shape[1] - 1)[:, None]
    kept = block.gather(1, column)[:, 0]
    block.scatter_(1, column, torch.where(inside, value, kept)[:, None])


def _chunk_logits(
    unit_x: torch.Tensor,
    weight_chunk: torch.Tensor,
    scale: float,
    target_logit: torch.Tensor,
    local_labels: torch.Tensor,
    start: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scaled logits of one chunk with the margin-modified target logits written in.

    Returns the logits ``(B, c)``, the normalised weight chunk ``(c, D)`` with its norms
    ``(c, 1)``.
    """
    unit_w, norm_w = _normalize(weight_chunk.to(unit_x.dtype))
    logits = (unit_x @ unit_w.T).mul_(scale)
    _put_target(logits, target_logit, local_labels, start)
    return logits, unit_w, norm_w


def _target_cosine(unit_x: torch.Tensor, weight: torch.Tensor, local_labels: torch.Tensor):
    """Cosine of each sample with its own class center (0 where that class is not local)."""
    if weight.shape[0] == 0:
        return unit_x.new_zeros(unit_x.shape[0])
    has = local_labels >= 0
    unit_w, _ = _normalize(weight[local_labels.clamp_min(0)].to(unit_x.dtype))
    return torch.where(has, (unit_x * unit_w).sum(dim=1), 0.0)


class _ChunkedMarginCE(torch.autograd.Function):
    """The loss of the *global* batch when ``weight`` is this rank's shard of the classes.

    Arguments: ``(embeddings, weight, local_labels, margin, scale, chunk_size, reduction,
    group)``. ``local_labels`` index rows of ``weight`` or are ``-1`` where another rank holds
    the target class. Every rank returns the same loss; the embeddings' gradient is this
    shard's contribution only (an all-gather's backward sums them). With ``group=None`` and
    the full ``weight`` this is the single-process loss. No input validation: callers do it.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        embeddings: torch.Tensor,
        weight: torch.Tensor,
        local_labels: torch.Tensor,
        margin: _MarginFn,
        scale: float,
        chunk_size: int,
        reduction: str,
        group,
    ) -> torch.Tensor:
        distributed = group is not None
        with torch.autocast(embeddings.device.type, enabled=False):
            dtype = _compute_dtype(embeddings, weight)
            unit_x, norm_x = _normalize(embeddings.to(dtype))
            cos_t = _target_cosine(unit_x, weight, local_labels)
            if distributed:  # exactly one rank holds a non-zero cosine per sample
                dist.all_reduce(cos_t, op=dist.ReduceOp.SUM, group=group)
            cos_t = cos_t.clamp(-1.0, 1.0)
            target_logit = margin(cos_t).to(dtype) * scale

            batch, num_local = unit_x.shape[0], weight.shape[0]
            run_max = unit_x.new_full((batch,), float("-inf"))
            run_sum = unit_x.new_zeros(batch)
            # a single block is kept and turned into probabilities for the backward pass
            # (no recomputation); several blocks are recomputed there instead
            single = num_local <= chunk_size
            kept = None
            for start in range(0, num_local, chunk_size):
                logits, _, _ = _chunk_logits(
                    unit_x, weight[start : start + chunk_size], scale, target_logit,
                    local_labels, start,
                )  # fmt: skip
                new_max = torch.maximum(run_max, logits.max(dim=1).values)
                run_sum = run_sum * torch.exp(run_max - new_max) + torch.exp(
                    logits - new_max[:, None]
                ).sum(dim=1)
                run_max = new_max
                kept = logits if single else None
                del logits
            if distributed:
                global_max = run_max.clone()
                dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=group)
                # a rank without local classes has run_max = -inf and run_sum = 0
                run_sum = torch.where(
                    run_sum > 0, run_sum * torch.exp(run_max - global_max), run_sum
                )
                dist.all_reduce(run_sum, op=dist.ReduceOp.SUM, group=group)
                run_max = global_max
            lse = run_max + torch.log(run_sum)
            losses = lse - target_logit
            probs = None if kept is None else kept.sub_(lse[:, None]).exp_()

        ctx.save_for_backward(embeddings, weight, local_labels, unit_x, norm_x, cos_t, lse, probs)
        ctx.margin, ctx.scale, ctx.chunk_size, ctx.reduction = margin, scale, chunk_size, reduction
        if reduction == "mean":
            out = losses.mean()
        elif reduction == "sum":
            out = losses.sum()
        else:
            out = losses
        return out.to(embeddings.dtype)

    @staticmethod
    @first_order_only
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        embeddings, weight, local_labels, unit_x, norm_x, cos_t, lse, probs = ctx.saved_tensors
        scale, chunk_size = ctx.scale, ctx.chunk_size
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.autocast(embeddings.device.type, enabled=False):
            dtype = unit_x.dtype
            batch = unit_x.shape[0]
            g = grad_out.to(dtype)
            if ctx.reduction == "mean":
                g = g.expand(batch) / batch
            elif ctx.reduction == "sum":
                g = g.expand(batch)
            # d loss_i / d cos_t,i = scale * (p_target - 1) * margin'(cos_t); margin' by autograd
            with torch.enable_grad():
                c = cos_t.detach().requires_grad_(True)
                target_logit = ctx.margin(c).to(dtype) * scale
                (dmargin,) = torch.autograd.grad(target_logit.sum(), c)
            target_logit = target_logit.detach()
            p_target = torch.exp(target_logit - lse)
            # gradient w.r.t. the target *cosine*, already multiplied by g
            g_target = g * (p_target - 1.0) * dmargin

            grad_unit_x = torch.zeros_like(unit_x) if need_x else None
            grad_w = torch.empty_like(weight) if need_w else None  # every row is written
            for start in range(0, weight.shape[0], chunk_size):
                stop = min(start + chunk_size, weight.shape[0])
                # gradient w.r.t. this chunk's cosines: scale * g * softmax, target column
                # replaced by the margin's chain rule
                if probs is None:
                    logits, unit_w, norm_w = _chunk_logits(
                        unit_x, weight[start:stop], scale, target_logit, local_labels, start
                    )
                    grad_cos = torch.exp(logits.sub_(lse[:, None])).mul_((g * scale)[:, None])
                    del logits
                else:
                    unit_w, norm_w = _normalize(weight.to(dtype))
                    grad_cos = probs * (g * scale)[:, None]
                _put_target(grad_cos, g_target, local_labels, start)
                if need_x:
                    grad_unit_x.addmm_(grad_cos, unit_w)
                if need_w:
                    grad_unit_w = grad_cos.T @ unit_x
                    grad_w[start:stop] = _normalize_backward(
                        grad_unit_w, unit_w, norm_w, grad_w.dtype
                    ).to(grad_w.dtype)
                del grad_cos
            grad_x = None
            if need_x:
                grad_x = _normalize_backward(grad_unit_x, unit_x, norm_x, embeddings.dtype).to(
                    embeddings.dtype
                )
        return grad_x, grad_w, None, None, None, None, None, None


# the entry point of the sharded (Partial FC) loss, which validates its inputs itself
_margin_cross_entropy_shard = _ChunkedMarginCE.apply


def _check_common(
    embeddings: torch.Tensor, weight: torch.Tensor, margin: object, scale: float, reduction: str
) -> None:
    check_embeddings(embeddings)
    check_embeddings(weight, name="weight")
    if weight.shape[1] != embeddings.shape[1]:
        raise ValueError(
            f"weight must have shape (num_classes, {embeddings.shape[1]}) to match embeddings "
            f"of dim {embeddings.shape[1]}, got shape {tuple(weight.shape)}"
        )
    check_same_device(embeddings, "embeddings", weight, "weight")
    _check_margin(margin)
    check_scalar(scale, "scale", low=0.0, low_inclusive=False)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_margin(margin: object) -> None:
    """Raise a TypeError unless ``margin`` maps the target cosines alone to new target logits.

    :class:`~metricface.losses.functional.AdaFaceMargin` also needs the embedding norms, which
    the chunked and sharded paths do not pass; it is rejected here, before any compute.
    """
    check_margin(margin, "the chunked and sharded losses cannot pass them; use AdaFaceLoss instead")


def chunked_margin_cross_entropy(
    embeddings: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    margin: _MarginFn,
    scale: float = 64.0,
    chunk_size: int = 8192,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Margin-softmax cross entropy computed over chunks of classes.

    Equal to the dense loss

    .. math::

        \ell_i = -\log \frac{e^{s\,\psi(\cos\theta_{i,y_i})}}
                 {e^{s\,\psi(\cos\theta_{i,y_i})} + \sum_{j \ne y_i} e^{s \cos\theta_{i,j}}},
        \qquad \cos\theta_{i,j} = \frac{x_i \cdot w_j}{\lVert x_i\rVert \lVert w_j\rVert}

    with the margin ``psi = margin``, but never allocates the ``(B, C)`` logits or their
    gradient: memory beyond the inputs and the weight gradient is ``O(B * chunk_size)``.
    With more than one chunk the backward pass recomputes each chunk's logits (one extra
    ``B x C x D`` matmul, the price of not storing them); with ``chunk_size >= C`` the
    softmax is kept from the forward pass instead.

    Parameters
    ----------
    embeddings : torch.Tensor
        Shape ``(B, D)``, any floating dtype; normalised inside (the gradient includes the
        normalisation).
    weight : torch.Tensor
        Class centers, shape ``(C, D)``, normalised inside row by row.
    labels : torch.Tensor
        Integer class of each embedding, shape ``(B,)``, values in ``[0, C)``.
    margin : callable
        Maps the target cosines, a float32 (or float64) tensor of shape ``(B,)`` clamped to
        ``[-1, 1]``, to the modified target cosines of the same shape (before scaling), e.g.
        :class:`~metricface.losses.ArcFaceMargin`. Must be differentiable by
        autograd; its derivative is taken in the backward pass (parameters of the margin, if
        any, receive no gradient).
    scale : float
        The logit scale ``s`` (> 0).
    chunk_size : int
        Number of classes processed at once; peak extra memory is about
        ``3 * 4 * B * chunk_size`` bytes.
    reduction : {"mean", "sum", "none"}
        ``"none"`` returns the per-sample losses, shape ``(B,)``.

    Returns
    -------
    torch.Tensor
        A scalar, or shape ``(B,)`` for ``reduction="none"``, cast to the embeddings' dtype
        (computed in float32, or float64 if an input is float64).

    Raises
    ------
    TypeError, ValueError
        For inputs of the wrong type, shape, device, or labels outside ``[0, C)``.

    Examples
    --------
    >>> from metricface.losses import CosFaceMargin, chunked_margin_cross_entropy
    >>> x, w = torch.randn(4, 8), torch.randn(100, 8)
    >>> y = torch.tensor([0, 5, 99, 5])
    >>> loss = chunked_margin_cross_entropy(x, w, y, CosFaceMargin(0.35), 30.0, chunk_size=16)
    >>> loss.shape
    torch.Size([])
    """
    _check_common(embeddings, weight, margin, scale, reduction)
    check_labels(labels, embeddings.shape[0], num_classes=weight.shape[0])
    check_scalar(chunk_size, "chunk_size", low=1, integer=True)
    labels = labels.to(device=embeddings.device, dtype=torch.long)
    return _ChunkedMarginCE.apply(
        embeddings, weight, labels, margin, float(scale), int(chunk_size), reduction, None
    )
