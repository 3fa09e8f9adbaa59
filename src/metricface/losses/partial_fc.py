"""Partial FC: margin-softmax training with millions of classes, sampled and sharded.

:class:`PartialFCLoss` is an ``nn.Module`` called as ``loss(embeddings, labels)``. It combines
three independent ideas, each of which can be used alone:

**Chunking** (``chunk_size``): the softmax is evaluated over blocks of classes with an online
log-sum-exp (:func:`~metricface.losses.chunked.chunked_margin_cross_entropy`), so the
``(B, C)`` logits and their gradient are never held in memory at once.

**Class-center sampling** (``sample_rate < 1``): each step scores the batch against every
*positive* class (a class with at least one sample in the global batch) plus random negative
classes, ``int(sample_rate * C_shard)`` classes per shard in total (all positives if there are
more). The negatives are drawn with ``torch.rand`` on the weight's device, so the choice is
reproducible from the torch RNG state. Labels are remapped to the sampled rows. Rows of
``weight`` that were not sampled get an exactly zero gradient; see the optimizer notes in the
guide (``docs/partial_fc.rst``): momentum and weight decay still move such rows unless the
optimizer is told otherwise. :attr:`PartialFCLoss.last_sampled` holds the rows used by the
latest call.

**Model parallelism**: when a ``torch.distributed`` process group with more than one rank is
initialised (or ``process_group`` is given), rank ``r`` of ``W`` holds only its contiguous shard
of the classes:

* with ``C = q * W + rem`` (``0 <= rem < W``), ranks ``r < rem`` hold ``q + 1`` classes and the
  others ``q``; rank ``r``'s shard starts at ``r * q + min(r, rem)`` (the split of
  :func:`torch.tensor_split` and ``numpy.array_split``), see :func:`shard_range`;
* row ``i`` of rank ``r``'s ``weight`` is class ``shard_range(C, W, r)[0] + i``; so the
  concatenation of all ranks' ``weight`` in rank order is the single-process ``(C, D)`` weight.

Embeddings are gathered from all ranks with gradients
(:func:`metricface.distributed.all_gather_with_grad`), labels without. Each rank scores the
global batch against its own shard; the softmax normaliser is combined with an all-reduce of
the per-sample maximum and of the sum of exponentials; the target cosine comes from the rank
that owns the class (one all-reduce of a ``(B,)`` vector) and the margin is applied to it.
Every rank returns the same loss, the mean over the global batch. Gradients:

* ``weight`` on rank ``r`` receives exactly the gradient of that loss with respect to the
  shard; do **not** wrap this module in ``DistributedDataParallel`` (it would average shards of
  different classes) - keep it outside the DDP model and give its parameters to the optimizer;
* each rank's input embeddings receive the gradient of the global loss with respect to them
  (the all-gather's backward sums the shards' contributions). A backbone wrapped in DDP then
  gets its gradients averaged over ranks, which is ``1 / W`` times the gradient of the global
  loss: to match one process training on the whole global batch, scale the gradient entering
  the backbone by ``W`` (``embeddings.register_hook(lambda g: g * W)``). Scaling the
  backbone's learning rate by ``W`` instead is equivalent only for SGD without weight decay.

Collectives used: all-gather, all-reduce (sum and max) and broadcast, all on tensors living on
the inputs' device, so NCCL and gloo both work.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from metricface._validation import (
    check_embeddings,
    check_labels,
    check_same_device,
    check_scalar,
)
from metricface.distributed import all_gather_with_grad
from metricface.losses.chunked import _check_margin, _margin_cross_entropy_shard
from metricface.losses.functional import ArcFaceMargin

__all__ = ["PartialFCLoss", "shard_range"]

_MarginFn = Callable[[torch.Tensor], torch.Tensor]


def shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """The classes ``[start, stop)`` that rank ``rank`` of ``world_size`` holds.

    Contiguous, in rank order, sizes differing by at most one (earlier ranks get the extra
    classes): the split of :func:`torch.tensor_split`.

    Parameters
    ----------
    num_classes : int
        Total number of classes ``C``.
    world_size : int
        Number of ranks ``W``.
    rank : int
        Rank in ``[0, W)``.

    Returns
    -------
    tuple of int
        ``(start, stop)``; ``stop - start`` is ``C // W + (rank < C % W)``.

    Examples
    --------
    >>> from metricface.losses.partial_fc import shard_range
    >>> [shard_range(10, 3, r) for r in range(3)]
    [(0, 4), (4, 7), (7, 10)]
    """
    check_scalar(num_classes, "num_classes", low=1, integer=True)
    check_scalar(world_size, "world_size", low=1, integer=True)
    check_scalar(rank, "rank", low=0, high=world_size - 1, integer=True)
    base, rem = divmod(num_classes, world_size)
    start = rank * base + min(rank, rem)
    return start, start + base + (1 if rank < rem else 0)


class PartialFCLoss(nn.Module):
    """Margin-softmax loss over class centers for very many classes (Partial FC).

    Sampling, sharding and chunking are described in :mod:`metricface.losses.partial_fc`.
    With ``sample_rate=1`` the loss and its gradients equal the dense margin-softmax cross
    entropy of the global batch against all ``num_classes`` centers.

    Parameters
    ----------
    num_classes : int
        Total number of classes ``C`` (over all ranks).
    embedding_dim : int
        Embedding dimension ``D``.
    margin : callable, optional
        Maps target cosines ``(B,)`` (float32, in ``[-1, 1]``) to modified cosines before
        scaling: :class:`~metricface.losses.ArcFaceMargin`,
        :class:`~metricface.losses.CosFaceMargin`, :class:`~metricface.losses.CombinedMargin`,
        :class:`~metricface.losses.SphereFaceMargin`, :class:`~metricface.losses.NoMargin` or
        any differentiable callable. Default ``ArcFaceMargin(0.5)``.
        (:class:`~metricface.losses.AdaFaceMargin` also needs the embedding norms and is not
        supported.)
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
        initialised with more than one rank, otherwise no sharding.
    device, dtype : optional
        Where and how to allocate ``weight``.

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
    >>> from metricface.losses import ArcFaceMargin, PartialFCLoss
    >>> loss_fn = PartialFCLoss(1000, 16, ArcFaceMargin(0.5), sample_rate=0.1, chunk_size=256)
    >>> loss = loss_fn(torch.randn(8, 16), torch.randint(0, 1000, (8,)))
    >>> loss.backward()
    >>> int((loss_fn.weight.grad.abs().sum(dim=1) > 0).sum())  # only the sampled rows
    100
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: _MarginFn | None = None,
        scale: float = 64.0,
        sample_rate: float = 1.0,
        chunk_size: int | None = None,
        process_group=None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_scalar(num_classes, "num_classes", low=1, integer=True)
        check_scalar(embedding_dim, "embedding_dim", low=1, integer=True)
        check_scalar(scale, "scale", low=0.0, low_inclusive=False)
        check_scalar(sample_rate, "sample_rate", low=0.0, high=1.0, low_inclusive=False)
        if chunk_size is not None:
            check_scalar(chunk_size, "chunk_size", low=1, integer=True)
        if margin is None:
            margin = ArcFaceMargin(0.5)
        _check_margin(margin)
        self.num_classes = int(num_classes)
        self.embedding_dim = int(embedding_dim)
        self.margin = margin
        self.scale = float(scale)
        self.sample_rate = float(sample_rate)
        self.chunk_size = chunk_size

        if process_group is None and dist.is_available() and dist.is_initialized():
            if dist.get_world_size() > 1:
                process_group = dist.group.WORLD
        if process_group is not None and dist.get_world_size(process_group) == 1:
            process_group = None
        self.process_group = process_group
        self.world_size = 1 if process_group is None else dist.get_world_size(process_group)
        self.rank = 0 if process_group is None else dist.get_rank(process_group)
        self.class_start, self.class_stop = shard_range(
            self.num_classes, self.world_size, self.rank
        )
        self.weight = nn.Parameter(
            torch.empty(self.class_stop - self.class_start, embedding_dim, device=device,
                        dtype=dtype)
        )  # fmt: skip
        self.last_sampled: torch.Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw ``weight`` from ``N(0, 0.01)``.

        Each rank draws from its own generator, seeded from one draw of the default torch RNG
        plus the rank, so shards differ even when all ranks share a seed, and a run is
        reproducible from the seed.
        """
        seed = int(torch.randint(0, 2**62, ()).item()) + self.rank
        gen = torch.Generator(device=self.weight.device).manual_seed(seed)
        with torch.no_grad():
            self.weight.normal_(0.0, 0.01, generator=gen)

    def extra_repr(self) -> str:
        shard = ""
        if self.world_size > 1:
            shard = f", shard=[{self.class_start}, {self.class_stop}) of {self.world_size} ranks"
        return (
            f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, "
            f"margin={self.margin!r}, scale={self.scale}, sample_rate={self.sample_rate}, "
            f"chunk_size={self.chunk_size}{shard}"
        )

    def _sample(self, labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Rows of ``weight`` to score (None = all) and each label's row in them (-1: remote)."""
        num_local = self.class_stop - self.class_start
        shifted = labels - self.class_start
        local = (shifted >= 0) & (shifted < num_local)
        if self.sample_rate >= 1.0:
            return None, torch.where(local, shifted, -1)
        num_sample = int(self.sample_rate * num_local)
        positive = torch.unique(shifted[local])  # sorted
        if positive.numel() >= num_sample:
            index = positive
        else:
            score = torch.rand(num_local, device=self.weight.device)
            score[positive] = 2.0  # positives first
            index = torch.topk(score, num_sample, sorted=False).indices.sort().values
        position = torch.searchsorted(index, shifted.clamp(0, max(num_local - 1, 0)))
        return index, torch.where(local, position, -1)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean margin-softmax loss of the (global) batch.

        Parameters
        ----------
        embeddings : torch.Tensor
            This rank's embeddings, shape ``(B, D)``, any floating dtype, on the weight's
            device. ``B`` may differ between ranks.
        labels : torch.Tensor
            Integer classes in ``[0, num_classes)``, shape ``(B,)``.

        Returns
        -------
        torch.Tensor
            Scalar (in the embeddings' dtype), identical on every rank: the mean over all
            ranks' samples.
        """
        check_embeddings(embeddings)
        if embeddings.shape[1] != self.embedding_dim:
            raise ValueError(
                f"embeddings must have shape (batch, {self.embedding_dim}), "
                f"got shape {tuple(embeddings.shape)}"
            )
        check_same_device(embeddings, "embeddings", self.weight, "the class centers (weight)")
        check_labels(labels, embeddings.shape[0], num_classes=self.num_classes)
        labels = labels.to(device=embeddings.device, dtype=torch.long)
        if self.process_group is not None:
            embeddings = all_gather_with_grad(embeddings, self.process_group)
            labels = all_gather_with_grad(labels, self.process_group)
        index, local_labels = self._sample(labels)
        self.last_sampled = index
        weight = self.weight if index is None else self.weight[index]
        chunk = self.chunk_size or max(weight.shape[0], 1)
        return _margin_cross_entropy_shard(
            embeddings, weight, local_labels, self.margin, self.scale, chunk, "mean",
            self.process_group,
        )  # fmt: skip

    # ----------------------------------------------------------------- full checkpoints
    def gather_weight(
        self, dst: int | None = None, device: torch.device | str = "cpu"
    ) -> torch.Tensor | None:
        """Assemble the full ``(C, D)`` weight from all shards (a collective: call on every rank).

        Shards are broadcast one at a time, so the accelerator never holds more than one
        extra shard.

        Parameters
        ----------
        dst : int, optional
            Rank (within the process group, in ``[0, world_size)``) that receives the result;
            ``None``: every rank.
        device : torch.device or str
            Where to put the full matrix (default CPU: 10M x 512 float32 is 20 GB).

        Returns
        -------
        torch.Tensor or None
            Shape ``(num_classes, embedding_dim)``, detached; ``None`` on ranks other than
            ``dst``.
        """
        if dst is not None:  # checked on every rank alike, so none waits in a broadcast
            check_scalar(dst, "dst", low=0, high=self.world_size - 1, integer=True)
        weight = self.weight.detach()
        if self.process_group is None:
            return weight.to(device, copy=True)
        receive = dst is None or dst == self.rank
        full = (
            torch.empty(self.num_classes, self.embedding_dim, dtype=weight.dtype, device=device)
            if receive
            else None
        )
        for src in range(self.world_size):
            start, stop = shard_range(self.num_classes, self.world_size, src)
            if stop == start:
                continue
            buf = (
                weight.contiguous()
                if src == self.rank
                else torch.empty(stop - start, self.embedding_dim, dtype=weight.dtype,
                                 device=weight.device)
            )  # fmt: skip
            dist.broadcast(
                buf, src=dist.get_global_rank(self.process_group, src), group=self.process_group
            )
            if full is not None:
                full[start:stop].copy_(buf)
        return full

    def full_state_dict(
        self, dst: int | None = None, device: torch.device | str = "cpu"
    ) -> dict[str, torch.Tensor] | None:
        """``{"weight": (C, D)}`` as a single-process :class:`PartialFCLoss` would save it.

        A collective (see :meth:`gather_weight`); ``None`` on ranks other than ``dst``. Save
        it from one rank and load it with :meth:`load_full_state_dict` on any world size. It
        holds no optimizer state: to resume exactly, every rank also saves its own
        ``state_dict()`` and optimizer (see the Partial FC guide).
        """
        full = self.gather_weight(dst=dst, device=device)
        return None if full is None else {"weight": full}

    def load_full_weight(self, weight: torch.Tensor) -> None:
        """Copy this rank's shard out of a full ``(num_classes, embedding_dim)`` weight.

        Not a collective: each rank reads its own rows (``weight`` may live on any device).
        """
        expected = (self.num_classes, self.embedding_dim)
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
        if tuple(weight.shape) != expected:
            raise ValueError(
                f"weight must have shape {expected} (all classes), got {tuple(weight.shape)}"
            )
        with torch.no_grad():
            self.weight.copy_(weight[self.class_start : self.class_stop])

    def load_full_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a state dict holding the full ``"weight"`` (as :meth:`full_state_dict` makes)."""
        if not isinstance(state_dict, dict) or "weight" not in state_dict:
            raise ValueError("state_dict must be a dict with a 'weight' entry of shape (C, D)")
        self.load_full_weight(state_dict["weight"])
