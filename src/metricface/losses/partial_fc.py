"""Partial FC: margin-softmax training with millions of classes, sampled and sharded.

:class:`PartialFCLoss` is :class:`~metricface.losses.ArcFaceLoss` with the defaults of
InsightFace's Partial FC: the class centers are sharded over the ranks of the default process
group whenever ``torch.distributed`` is initialised with more than one rank. It is a preset of
:class:`~metricface.losses.MarginSoftmaxLoss`, which owns the class centers and implements the
three tools, each usable alone and with every margin:

**Chunking** (``chunk_size``): the softmax is evaluated over blocks of classes with an online
log-sum-exp (:mod:`metricface.losses.chunked`), so the ``(B, C)`` logits and their gradient are
never held in memory at once.

**Class-center sampling** (``sample_rate < 1``): each step scores the batch against every
*positive* class plus random negatives, ``int(sample_rate * C_shard)`` classes per shard.
``last_sampled`` holds the classes used by the latest
call.

**Model parallelism**: rank ``r`` of ``W`` holds the contiguous classes
:func:`~metricface.losses.shard_range` ``(C, W, r)``; embeddings are gathered from all ranks,
each rank scores the global batch against its shard, the softmax normaliser is combined across
ranks, and every rank returns the same loss, the mean over the global batch. Do **not** wrap
the module in ``DistributedDataParallel``; see the Partial FC guide for the DDP recipe (the
gradient that enters a DDP backbone is ``1 / W`` of the global loss's) and for checkpoints.

Collectives used: all-gather, all-reduce (sum and max) and broadcast, all on tensors living on
the inputs' device, so NCCL and gloo both work.
"""

from __future__ import annotations

import numbers
from typing import Any, Optional, Union

import torch
import torch.distributed as dist

from metricface.losses.margin import MarginSoftmaxLoss
from metricface.losses.margin import shard_range as shard_range  # where it used to live
from metricface.losses.margins import ArcFaceMargin, MarginLike

__all__ = ["PartialFCLoss"]


class PartialFCLoss(MarginSoftmaxLoss):
    """ArcFace over class centers for very many classes, sharded by default (Partial FC).

    The same loss as :class:`~metricface.losses.ArcFaceLoss` (``margin=0.5``, ``scale=64``),
    with the options that scale it first among the arguments and sharding on by default.
    With ``sample_rate=1`` the loss and its gradients equal the dense margin-softmax cross
    entropy of the global batch against all ``num_classes`` centers, and a checkpoint's
    ``weight`` moves between the two classes.

    Parameters
    ----------
    num_classes : int
        Total number of classes ``C`` (over all ranks).
    embedding_dim : int
        Embedding dimension ``D``.
    margin : float or Margin or callable, optional
        A float is ArcFace's angular margin in radians, as for
        :class:`~metricface.losses.ArcFaceLoss`; ``None`` (the default) is
        ``ArcFaceMargin(0.5)``, ArcFaceLoss's default and InsightFace's Partial FC recipe. Any
        :class:`~metricface.losses.Margin` (AdaFace included) or differentiable function of
        the target cosines works too.
    scale : float
        Logit scale ``s`` (> 0).
    sample_rate : float
        Fraction of each shard's classes scored per step, in ``(0, 1]``. Positive classes are
        always included.
    chunk_size : int, optional
        Classes per block of the chunked softmax; ``None`` scores the (sampled) shard in one
        block, which is fastest when it fits in memory.
    process_group : ProcessGroup, optional
        Ranks sharing the classes. Default: the default group if ``torch.distributed`` is
        initialised with more than one rank, otherwise no sharding (unlike
        :class:`~metricface.losses.MarginSoftmaxLoss`, which shards only when given a group).
    device, dtype : optional
        Where and how to allocate ``weight``.
    **options
        ``sub_centers``, ``reduction``: as in :class:`~metricface.losses.MarginSoftmaxLoss`.

    Attributes
    ----------
    weight : torch.nn.Parameter
        This rank's class centers, shape ``(class_stop - class_start, D)``; the full
        ``(C, D)`` matrix without sharding. Initialised ``N(0, 0.01)`` (only directions
        matter).
    class_start, class_stop : int
        The classes ``[class_start, class_stop)`` this rank holds.
    last_sampled : torch.Tensor or None
        Rows of ``weight`` (local indices, sorted) used by the latest forward pass when
        ``sample_rate < 1``; ``None`` otherwise.

    Examples
    --------
    >>> from metricface.losses import PartialFCLoss
    >>> loss_fn = PartialFCLoss(1000, 16, margin=0.5, sample_rate=0.1, chunk_size=256)
    >>> loss = loss_fn(torch.randn(8, 16), torch.randint(0, 1000, (8,)))
    >>> loss.backward()
    >>> int((loss_fn.weight.grad.abs().sum(dim=1) > 0).sum())  # only the sampled rows
    100
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: Union[float, MarginLike, None] = None,
        scale: float = 64.0,
        sample_rate: float = 1.0,
        chunk_size: Optional[int] = None,
        process_group: Any = None,
        *,
        device: Optional[torch.device | str] = None,
        dtype: Optional[torch.dtype] = None,
        **options: Any,
    ) -> None:
        margin = 0.5 if margin is None else margin
        if isinstance(margin, numbers.Real):  # ArcFace's margin, as for ArcFaceLoss
            margin = ArcFaceMargin(margin)
        if process_group is None and dist.is_available() and dist.is_initialized():
            if dist.get_world_size() > 1:
                process_group = dist.group.WORLD
        super().__init__(
            num_classes, embedding_dim, margin, scale, chunk_size=chunk_size,
            sample_rate=sample_rate, process_group=process_group, device=device, dtype=dtype,
            **options,
        )  # fmt: skip

    def extra_repr(self) -> str:
        sub = f", sub_centers={self.sub_centers}" if self.sub_centers > 1 else ""
        return (
            f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}{sub}, "
            f"margin={self.margin!r}, scale={self.scale}, sample_rate={self.sample_rate}, "
            f"chunk_size={self.chunk_size}"
        ) + self._shard_repr()
