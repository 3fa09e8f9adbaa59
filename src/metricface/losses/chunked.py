"""The margin-softmax kernel behind every class-center loss: one autograd function.

For ``B`` embeddings ``x`` against class centers ``weight`` (``C * K`` rows: ``K`` sub-centers
per class, rows ``c*K .. c*K+K-1`` for class ``c``) the kernel computes, per sample ``i``,

.. code-block:: text

    embeddings -> normalise          u_i = x_i / |x_i|            (exact direction; |x_i| kept)
               -> target cosine      t_i = max_k <u_i, w_(y_i,k)> / |w_(y_i,k)|
               -> margin on target   z_i = s * margin(t_i, |x_i|)   (float32, on (B,) only)
               -> cosines per chunk  l_ij = s * max_k <u_i, w_(j,k)> / |w_(j,k)|,  l_(i,y_i) = z_i
               -> online log-sum-exp m_i = max_j l_ij, S_i = sum_j exp(l_ij - m_i), chunk by chunk
               -> loss               loss_i = m_i + log S_i - z_i

and its gradient with respect to the embeddings and the centers. Only one ``(B, chunk)`` block
of cosines exists at a time, so memory beyond the inputs and the centers' gradient is
``O(B * chunk + B * D)`` for any number of classes:

* **one chunk** (the dense case, ``chunk_size`` at least the number of classes): the forward
  pass keeps exactly one ``(B, C)`` buffer, reads the target cosines from it, and turns it in
  place from cosines into logits into ``exp(logit - max)``, saved; the backward pass turns it
  into the gradient in place, so the loss can be backpropagated once (a second backward
  raises). The normalisation of the centers is a per-row factor ``1 / |w_j|`` folded into the
  products, so the ``(C, D)`` weight is never copied;
* **several chunks**: the target cosines are computed first from the ``(B, K, D)`` rows of the
  targets' centers; the forward pass keeps only the running maximum and sum of each row; the
  backward pass recomputes each block from them (one more ``B x C x D`` product, the price of not
  storing the logits) and writes that block's rows of the centers' gradient in place;
* **sub-centers** (``K > 1``): each block is formed one sub-center at a time (a strided view of
  the weight) with a running maximum and the index of the winning sub-center, so no
  ``(B, C * K)`` cosines are made; the gradient goes to the winner (the first on ties);
* **sharded classes** (``group``): the rows of ``weight`` are one rank's shard of the classes
  and ``labels`` are ``-1`` where another rank holds the target class; the target cosine comes
  from its owner (an all-reduce of a ``(B,)`` vector) and the per-row maxima and sums are
  combined with two more all-reduces, so every rank returns the loss of the global batch and
  the embeddings' gradient of its shard (an all-gather's backward sums them).

The margin's derivative is taken by autograd on the ``(B,)`` target cosines only (parameters of
a margin receive no gradient). Precision: everything, matrix products included, runs in float32
(float64 if the embeddings or the weight are float64), also for float16 / bfloat16 inputs and
under autocast; the gradients are computed with the true norms (:mod:`metricface.numerics`) and
cast back to each input's dtype, saturating at its largest finite value. The backward pass is
not itself differentiable: a second-order gradient (e.g. a gradient penalty through the loss)
raises a RuntimeError instead of silently dropping terms.

:func:`chunked_margin_cross_entropy` is the kernel as a function of a weight matrix you manage;
:class:`~metricface.losses.MarginSoftmaxLoss` and its presets own the centers and add class
sampling and sharding.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from metricface._validation import check_embeddings, check_labels, check_same_device, check_scalar
from metricface.losses.margins import MarginLike, _call_margin, _check_margin
from metricface.numerics import (
    apply_reduction,
    cast_finite,
    check_reduction,
    clamp_cos,
    compute_dtype,
    inverse_norms,
    inverse_norms_backward_,
    unit_rows,
    unit_rows_backward,
)

__all__ = ["chunked_margin_cross_entropy"]


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


def _first_order_only(backward: Callable[..., Any]) -> Callable[..., Any]:
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


def _columns(
    labels: Tensor, start: int, width: int, local: bool
) -> tuple[Tensor, Optional[Tensor]]:
    """Each row's target column in a block of classes ``[start, start + width)``, shape (B, 1),
    and whether it lies in the block (None when every label is known to: one block, no shard).
    """
    if local:
        return labels.unsqueeze(1), None
    column = labels - start
    inside = (column >= 0) & (column < width)
    return column.clamp(0, width - 1).unsqueeze(1), inside


def _take(block: Tensor, column: Tensor, inside: Optional[Tensor]) -> Tensor:
    """``block[i, column[i]]``, 0 where the column is not in the block. Shape (B,)."""
    value = block.gather(1, column).squeeze(1)
    return value if inside is None else torch.where(inside, value, 0.0)


def _put(block: Tensor, value: Tensor, column: Tensor, inside: Optional[Tensor]) -> None:
    """Write ``value[i]`` into ``block[i, column[i]]`` where the column is in the block.

    A gather / where / scatter, so no host synchronisation (no ``nonzero``) on accelerators.
    """
    if inside is not None:
        value = torch.where(inside, value, block.gather(1, column).squeeze(1))
    block.scatter_(1, column, value.unsqueeze(1))


def _target_cosine(unit_x: Tensor, w: Tensor, w_inv: Tensor, labels: Tensor, k: int) -> Tensor:
    """Cosine of each sample with its own class (best of its ``k`` sub-centers), 0 where the
    class is not among the rows of ``w``. Gathers ``(B, k, D)`` rows, never ``(B, C)``."""
    if w.shape[0] == 0:
        return unit_x.new_zeros(unit_x.shape[0])
    rows = labels.clamp_min(0)[:, None] * k + torch.arange(k, device=labels.device)
    cos = torch.bmm(w[rows], unit_x.unsqueeze(2)).squeeze(2) * w_inv[rows]
    return torch.where(labels >= 0, cos.amax(dim=1), 0.0)


def _block(unit_x: Tensor, w: Tensor, factor: Tensor, k: int) -> tuple[Tensor, Optional[Tensor]]:
    """Scaled cosines ``(B, c)`` of one chunk of classes (``c * k`` rows of ``w``, ``factor =
    scale / |w_j|``), and the winning sub-center of each entry (None for ``k = 1``).

    With ``k > 1`` one sub-center at a time (rows ``j, j + k, ...`` of ``w`` are a strided view
    the product reads in place): the maximum is kept in one ``(B, c)`` buffer and its index in
    a uint8 one (int64 for ``k >= 256``). On ties the first sub-center wins; NaN propagates.
    """
    if k == 1:
        return torch.mm(unit_x, w.t()).mul_(factor), None
    w3, f3 = w.view(-1, k, w.shape[1]), factor.view(-1, k)
    best = torch.mm(unit_x, w3[:, 0].t()).mul_(f3[:, 0])
    winner = torch.zeros(best.shape, dtype=torch.uint8 if k < 256 else torch.int64, device=w.device)
    cos, better = torch.empty_like(best), torch.empty(best.shape, dtype=torch.bool, device=w.device)
    for j in range(1, k):
        torch.mm(unit_x, w3[:, j].t(), out=cos).mul_(f3[:, j])
        torch.gt(cos, best, out=better)
        winner.masked_fill_(better, j)
        torch.maximum(best, cos, out=best)
    return best, winner


def _block_backward(
    grad: Tensor,
    winner: Optional[Tensor],
    unit_x: Tensor,
    w: Tensor,
    w_inv: Tensor,
    w_norm: Tensor,
    grad_w: Optional[Tensor],
    grad_unit_x: Optional[Tensor],
) -> None:
    """Route the gradient ``grad`` (B, c) w.r.t. one chunk's cosines to its ``c * k`` rows.

    Writes the chunk's rows of the centers' gradient into ``grad_w`` (through the
    normalisation) and adds the gradient w.r.t. the unit embeddings to ``grad_unit_x``; both
    optional. Consumes ``grad``. With sub-centers, one sub-center at a time, so no
    ``(B, c * k)`` buffer is made.
    """
    k = w.shape[0] // grad.shape[1]
    if k == 1:
        if grad_w is not None:
            torch.mm(grad.t(), unit_x, out=grad_w)
        if grad_unit_x is not None:
            grad_unit_x.addmm_(grad.mul_(w_inv), w)
    else:
        assert winner is not None
        w3, inv3 = w.view(-1, k, w.shape[1]), w_inv.view(-1, k)
        part = torch.empty_like(grad)
        mask = torch.empty(grad.shape, dtype=torch.bool, device=grad.device)
        zero = grad.new_zeros(())
        for j in range(k):
            torch.where(torch.eq(winner, j, out=mask), grad, zero, out=part)
            if grad_w is not None:
                torch.mm(part.t(), unit_x, out=grad_w.view(-1, k, w.shape[1])[:, j])
            if grad_unit_x is not None:
                grad_unit_x.addmm_(part.mul_(inv3[:, j]), w3[:, j])
    if grad_w is not None:
        inverse_norms_backward_(grad_w, w, w_inv, w_norm)


class _MarginSoftmax(torch.autograd.Function):
    """Per-sample margin-softmax losses; arguments as :func:`_margin_softmax` (no checks)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        embeddings: Tensor,
        weight: Tensor,
        labels: Tensor,
        margin: MarginLike,
        scale: float,
        k: int,
        chunk_size: Optional[int],
        group: Any,
    ) -> Tensor:
        dtype = compute_dtype(embeddings, weight)
        with torch.autocast(embeddings.device.type, enabled=False):
            unit_x, norm_x = unit_rows(embeddings.detach().to(dtype))
            w = weight.detach().to(dtype)  # no copy for a float32 weight
            w_inv, w_norm = inverse_norms(w)
            num_classes = w.shape[0] // k
            chunk = max(num_classes, 1) if chunk_size is None else chunk_size

            factor = w_inv * scale
            single = 0 < num_classes <= chunk  # one block, kept for the backward pass
            local = single and group is None  # every target column is in that block

            # the target cosine: from the one block, or gathered (B, k, D) ahead of the chunks
            if single:
                block, winner = _block(unit_x, w, factor, k)
                column, inside = _columns(labels, 0, num_classes, local)
                cos_t = _take(block, column, inside) / scale
            else:
                cos_t = _target_cosine(unit_x, w, w_inv, labels, k)
            if group is not None:  # exactly one rank holds a non-zero cosine per sample
                dist.all_reduce(cos_t, op=dist.ReduceOp.SUM, group=group)

            # the margin on it; its derivative by autograd on (B,) values
            with torch.enable_grad():
                c = cos_t.detach().requires_grad_(True)
                target = _call_margin(margin, clamp_cos(c), norm_x)
                if not isinstance(target, Tensor) or target.shape != c.shape:
                    raise ValueError(
                        f"margin must return one target logit per sample, shape "
                        f"{tuple(c.shape)}, got {getattr(target, 'shape', type(target).__name__)}"
                    )
                d_target = None
                if target.requires_grad:
                    (d_target,) = torch.autograd.grad(target.sum(), c, allow_unused=True)
                if d_target is None:
                    d_target = torch.zeros_like(cos_t)
            target_logit = target.detach().to(dtype) * scale

            # logits block by block, folded into a running maximum and sum of exponentials
            kept = None
            if single:  # the block becomes exp(logit - max) in place, saved for the backward
                _put(block, target_logit, column, inside)
                run_max = block.amax(dim=1)
                kept = block.sub_(run_max.unsqueeze(1)).exp_()
                run_sum = kept.sum(dim=1)
                del block
            else:
                winner = None
                run_max = unit_x.new_full((unit_x.shape[0],), float("-inf"))
                run_sum = unit_x.new_zeros(unit_x.shape[0])
                for start in range(0, num_classes, chunk):
                    rows = slice(start * k, min(start + chunk, num_classes) * k)
                    block, _ = _block(unit_x, w[rows], factor[rows], k)
                    _put(block, target_logit, *_columns(labels, start, block.shape[1], False))
                    new_max = torch.maximum(run_max, block.amax(dim=1))
                    exps = block.sub_(new_max.unsqueeze(1)).exp_()
                    run_sum = run_sum * torch.exp(run_max - new_max) + exps.sum(dim=1)
                    run_max = new_max
                    del block, exps
            local_max = run_max
            if group is not None:
                run_max = local_max.clone()
                dist.all_reduce(run_max, op=dist.ReduceOp.MAX, group=group)
                # a rank without local classes has local_max = -inf and run_sum = 0
                run_sum = torch.where(run_sum > 0, run_sum * torch.exp(local_max - run_max), 0.0)
                dist.all_reduce(run_sum, op=dist.ReduceOp.SUM, group=group)
            losses = run_max + torch.log(run_sum) - target_logit

        ctx.scale, ctx.k, ctx.chunk, ctx.local = scale, k, chunk, local
        ctx.world_size = 1 if group is None else dist.get_world_size(group)
        ctx.in_dtypes = (embeddings.dtype, weight.dtype)
        ctx.keeps_softmax, ctx.consumed = kept is not None, False
        ctx.save_for_backward(
            unit_x, norm_x, w, w_inv, w_norm, labels, d_target, target_logit,
            run_max, run_sum, local_max, kept, winner if kept is not None else None,
        )  # fmt: skip
        return losses

    @staticmethod
    @_first_order_only
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Optional[Tensor], ...]:  # type: ignore[override]
        if ctx.keeps_softmax:
            if ctx.consumed:
                raise RuntimeError(
                    "the margin-softmax loss reuses its softmax buffer for the gradient, so it "
                    "can be backpropagated only once (retain_graph is not supported); "
                    "recompute the loss"
                )
            ctx.consumed = True
        (unit_x, norm_x, w, w_inv, w_norm, labels, d_target, target_logit,
         run_max, run_sum, local_max, kept, winner) = ctx.saved_tensors  # fmt: skip
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        scale, k, chunk = ctx.scale, ctx.k, ctx.chunk
        num_classes = w.shape[0] // k
        with torch.autocast(unit_x.device.type, enabled=False):
            g = grad_loss.to(unit_x.dtype)
            # d loss_i / d logit_ij = g_i * softmax_ij, minus g_i at the target, whose logit is
            # s * margin(t_i): the target column's gradient w.r.t. the cosine t_i is
            g_target = g * (torch.exp(target_logit - run_max) / run_sum - 1.0) * d_target * scale
            coef = g * scale / run_sum  # times exp(logit - max): gradient w.r.t. a cosine
            grad_unit_x = torch.zeros_like(unit_x) if need_x else None
            grad_w = torch.empty_like(w) if need_w else None  # every row is written
            factor = w_inv * scale
            for start in range(0, num_classes, chunk):
                rows = slice(start * k, min(start + chunk, num_classes) * k)
                width = min(chunk, num_classes - start)
                columns = _columns(labels, start, width, ctx.local)
                if kept is not None:  # exp(logit - local max), turned into the gradient in place
                    if ctx.local:  # run_max is local_max
                        grad = kept.mul_(coef.unsqueeze(1))
                    else:
                        grad = kept.mul_((coef * torch.exp(local_max - run_max)).unsqueeze(1))
                else:
                    grad, winner = _block(unit_x, w[rows], factor[rows], k)
                    _put(grad, target_logit, *columns)
                    grad.sub_(run_max.unsqueeze(1)).exp_().mul_(coef.unsqueeze(1))
                _put(grad, g_target, *columns)
                _block_backward(
                    grad, winner, unit_x, w[rows], w_inv[rows], w_norm[rows],
                    None if grad_w is None else grad_w[rows], grad_unit_x,
                )  # fmt: skip
                del grad
            grad_x = None
            if grad_unit_x is not None:
                # sharded: the ranks' gradients are summed (all-gather's backward) in that dtype
                grad_x = unit_rows_backward(grad_unit_x, unit_x, norm_x)
                grad_x = cast_finite(grad_x, ctx.in_dtypes[0], parts=ctx.world_size)
            if grad_w is not None:
                grad_w = cast_finite(grad_w, ctx.in_dtypes[1])
        return grad_x, grad_w, None, None, None, None, None, None


def _margin_softmax(
    embeddings: Tensor,
    weight: Tensor,
    labels: Tensor,
    margin: MarginLike,
    scale: float,
    *,
    sub_centers: int = 1,
    chunk_size: Optional[int] = None,
    group: Any = None,
) -> Tensor:
    """Per-sample margin-softmax losses, the kernel described in the module docstring.

    No input checks (the public entry points make them). ``weight`` has ``C * sub_centers``
    rows; ``labels`` (int64, shape (B,)) are classes in ``[0, C)``, or ``-1`` where the target
    class is on another rank of ``group``. ``chunk_size`` classes per block, ``None`` for one
    block. Returns shape (B,), float32 (float64 if an input is float64).
    """
    return _MarginSoftmax.apply(
        embeddings, weight, labels, margin, float(scale), int(sub_centers), chunk_size, group
    )


def chunked_margin_cross_entropy(
    embeddings: Tensor,
    weight: Tensor,
    labels: Tensor,
    margin: MarginLike,
    scale: float = 64.0,
    chunk_size: Optional[int] = 8192,
    reduction: str = "mean",
    *,
    sub_centers: int = 1,
) -> Tensor:
    r"""Margin-softmax cross entropy of embeddings against a weight you manage, over chunks.

    Equal to the dense loss

    .. math::

        \ell_i = -\log \frac{e^{s\,\psi(\cos\theta_{i,y_i})}}
                 {e^{s\,\psi(\cos\theta_{i,y_i})} + \sum_{j \ne y_i} e^{s \cos\theta_{i,j}}},
        \qquad \cos\theta_{i,j} = \frac{x_i \cdot w_j}{\lVert x_i\rVert \lVert w_j\rVert}

    with the margin ``psi = margin``, computed by the kernel of this module: memory beyond the
    inputs and the weight gradient is ``O(B * chunk_size)``. With more than one chunk the
    backward pass recomputes each chunk's logits (one extra ``B x C x D`` matmul, the price of
    not storing them); with ``chunk_size >= C`` (or ``None``) the softmax is kept from the
    forward pass instead, and the loss can be backpropagated once.

    Parameters
    ----------
    embeddings : torch.Tensor
        Shape ``(B, D)``, any floating dtype; normalised inside (the gradient includes the
        normalisation).
    weight : torch.Tensor
        Class centers, shape ``(C * sub_centers, D)``, normalised inside row by row.
    labels : torch.Tensor
        Integer class of each embedding, shape ``(B,)``, values in ``[0, C)``.
    margin : Margin or callable
        A :class:`~metricface.losses.Margin` (called with the target cosines and the
        embeddings' norms, so :class:`~metricface.losses.AdaFaceMargin` works, with the
        batch's norm statistics) or any differentiable function of the target cosines, a
        float32 (or float64) tensor of shape ``(B,)`` clamped to ``[-1, 1]``. Parameters of the
        margin, if any, receive no gradient.
    scale : float
        The logit scale ``s`` (> 0).
    chunk_size : int or None
        Number of classes processed at once; peak extra memory is about
        ``2 * 4 * B * chunk_size`` bytes. ``None``: all classes in one block.
    reduction : {"mean", "sum", "none"}
        ``"none"`` returns the per-sample losses, shape ``(B,)``.
    sub_centers : int
        ``K`` centers per class (rows ``c*K .. c*K+K-1`` for class ``c``); a sample's cosine
        to a class is the largest over them.

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
    check_embeddings(embeddings)
    check_embeddings(weight, name="weight")
    check_scalar(sub_centers, "sub_centers", low=1, integer=True)
    if weight.shape[1] != embeddings.shape[1] or weight.shape[0] % sub_centers:
        rows = "num_classes" + (f" * {sub_centers}" if sub_centers > 1 else "")
        raise ValueError(
            f"weight must have shape ({rows}, {embeddings.shape[1]}) to match embeddings of "
            f"dim {embeddings.shape[1]}, got shape {tuple(weight.shape)}"
        )
    check_same_device(embeddings, "embeddings", weight, "weight")
    _check_margin(margin)
    check_scalar(scale, "scale", low=0.0, low_inclusive=False)
    if chunk_size is not None:
        check_scalar(chunk_size, "chunk_size", low=1, integer=True)
    check_reduction(reduction)
    check_labels(labels, embeddings.shape[0], num_classes=weight.shape[0] // sub_centers)
    losses = _margin_softmax(
        embeddings, weight, labels.to(device=embeddings.device, dtype=torch.long), margin, scale,
        sub_centers=sub_centers, chunk_size=chunk_size,
    )  # fmt: skip
    return apply_reduction(losses, reduction).to(embeddings.dtype)
