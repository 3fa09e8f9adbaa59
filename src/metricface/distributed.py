"""Helpers for training across ``torch.distributed`` ranks.

The central piece is :func:`all_gather_with_grad`: every rank receives the concatenation of all
ranks' tensors, and gradients flow back to each rank's own slice. Miners and pair losses use it
to see the global batch; sharded class-center losses use it to score every rank's embeddings
against the local shard of centers.

Gradient convention: the backward pass *sums* the incoming gradients of all ranks (an
all-reduce) and hands each rank the slice that belongs to its own input. If every rank computes
a loss ``L_r`` on the gathered batch, a rank's input therefore receives ``d(sum_r L_r)/dx``.
``DistributedDataParallel`` averages parameter gradients over ranks, so the parameters follow
``d(mean_r L_r)/dw`` - the same as one process that computes ``mean_r L_r``.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

__all__ = ["all_gather_with_grad", "get_rank", "get_world_size", "is_distributed"]


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank, or 0 when not running distributed."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """The number of ranks, or 1 when not running distributed."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


_DTYPES = (
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool, torch.uint8,
    torch.int8, torch.int16, torch.int32, torch.int64,
)  # fmt: skip
_SHOWN_DIMS = 4  # trailing dimensions spelled out in the mismatch message


def _layout(x: torch.Tensor) -> list[int]:
    """``[batch, dtype code, trailing ndim, trailing numel, first trailing dims (-1 padded)]``."""
    code = _DTYPES.index(x.dtype) if x.dtype in _DTYPES else len(_DTYPES) + x.element_size()
    trailing = list(x.shape[1:])
    shown = (trailing + [-1] * _SHOWN_DIMS)[:_SHOWN_DIMS]
    return [x.shape[0], code, len(trailing), math.prod(trailing), *shown]


def _describe(layout: list[int]) -> str:
    code, ndim, numel = layout[1:4]
    dtype = str(_DTYPES[code]).replace("torch.", "") if code < len(_DTYPES) else "another dtype"
    dims = layout[4 : 4 + ndim] if ndim <= _SHOWN_DIMS else [f"{ndim} dims of {numel} elements"]
    return f"{dtype} ({', '.join(['B', *map(str, dims)])})"


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:  # type: ignore[override]
        world = dist.get_world_size(group)
        # Ranks may hold different batch sizes (e.g. the last batch of an epoch): share the
        # sizes, pad to the largest, gather, then drop the padding. The dtype and trailing
        # shape travel along: where they differ every rank raises the same error here, instead
        # of NCCL hanging or mixing bytes (and gloo aborting the process).
        layout = torch.tensor(_layout(x), device=x.device, dtype=torch.long)
        layouts = [torch.empty_like(layout) for _ in range(world)]
        dist.all_gather(layouts, layout, group=group)
        table = torch.stack(layouts).tolist()
        for r, other in enumerate(table):
            if other[1:] != table[0][1:]:
                raise ValueError(
                    "x must have the same dtype and shape after the batch dimension on every "
                    f"rank, got {_describe(table[0])} on rank 0 and {_describe(other)} on rank {r}"
                )
        counts = [row[0] for row in table]
        longest = max(counts)
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous(), group=group)
        ctx.group = group
        ctx.counts = counts
        ctx.rank = dist.get_rank(group)
        return torch.cat([p[:n] for p, n in zip(parts, counts)], dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.counts[: ctx.rank])
        return grad[start : start + ctx.counts[ctx.rank]], None


def all_gather_with_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping the autograd graph.

    Parameters
    ----------
    x : torch.Tensor
        Shape ``(B_r, ...)`` on rank ``r``; ``B_r`` may differ between ranks, the trailing
        dimensions may not.
    group : ProcessGroup, optional
        The process group; the default group when omitted.

    Returns
    -------
    torch.Tensor
        Shape ``(sum_r B_r, ...)``, rank 0's rows first. Without an initialised process group
        (or with a single rank) ``x`` itself is returned.

    Raises
    ------
    ValueError
        On every rank, where the ranks' ``x`` differ in dtype or in their trailing dimensions.

    Notes
    -----
    Gradients are summed over ranks in the backward pass; see the module docstring.
    A collective: every rank of ``group`` must call it, and, when the result takes part in the
    loss, run the backward pass too.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 0:
        raise ValueError("x must have a batch dimension, got a 0-dimensional tensor")
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return x
    return _AllGather.apply(x, group)
