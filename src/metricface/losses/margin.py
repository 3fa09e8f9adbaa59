"""Margin-softmax losses: the one module that owns class centers, and its presets.

:class:`MarginSoftmaxLoss` owns ``weight`` of shape ``(num_classes * sub_centers,
embedding_dim)`` (like :class:`torch.nn.Linear`) and scores a batch through the pipeline of
:mod:`metricface.losses.chunked`: embeddings -> normalise -> cosines per chunk of classes ->
margin (:mod:`metricface.losses.margins`) on the target -> online log-sum-exp -> loss. Every
margin works with every option that scales it:

* ``sub_centers``: ``K`` centers per class, a sample's cosine to a class the best of them;
* ``chunk_size``: classes scored per block; the ``(B, C)`` logits are never held at once;
* ``sample_rate``: each step scores the positive classes of the batch plus random negatives;
* ``process_group``: the classes are sharded over the ranks of a ``torch.distributed`` group.

The presets (:class:`ArcFaceLoss`, :class:`CosFaceLoss`, :class:`SphereFaceLoss`,
:class:`CombinedMarginLoss`, :class:`SubCenterArcFaceLoss`, :class:`AdaFaceLoss`,
:class:`NormSoftmaxLoss` and :class:`~metricface.losses.PartialFCLoss`) only choose the margin
and the defaults. Margins are in radians.

**Class-center sampling** (``sample_rate < 1``): each step scores the batch against every
*positive* class (a class with at least one sample in the global batch) plus random negative
classes, ``int(sample_rate * C_shard)`` classes per shard in total (all positives if there are
more). The negatives are drawn with ``torch.rand`` on the weight's device, so the choice is
reproducible from the torch RNG state. Rows of ``weight`` that were not sampled get an exactly
zero gradient; see the optimizer notes of the Partial FC guide (``docs/partial_fc.rst``).
:attr:`MarginSoftmaxLoss.last_sampled` holds the classes used by the latest call.

**Sharding** (``process_group`` with more than one rank): rank ``r`` of ``W`` holds the
contiguous classes :func:`shard_range` ``(C, W, r)`` (the split of :func:`torch.tensor_split`),
so the concatenation of all ranks' ``weight`` in rank order is the single-process weight.
Embeddings are gathered from all ranks with gradients
(:func:`metricface.distributed.all_gather_with_grad`), labels without; each rank scores the
global batch against its shard and every rank returns the same loss, the reduction over the
global batch. ``weight`` on each rank receives exactly the gradient of that loss with respect
to its shard (do not wrap the module in ``DistributedDataParallel``); each rank's embeddings
receive the gradient of the global loss with respect to them (see the Partial FC guide for the
DDP recipe and checkpoints).

Weight initialisation: ``normal(0, 0.01)`` as in InsightFace's ``arcface_torch`` (each rank of
a sharded module from its own generator, seeded from one draw of the torch RNG plus the rank).
Only the directions matter for the loss (rows are normalised); the scale matters for the
effective step size of weight decay and of optimisers that are not scale-invariant.

Non-finite embeddings are not rejected (mixed-precision training relies on a NaN loss to skip
the step); they give a NaN loss.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from metricface._validation import (
    check_embeddings,
    check_labels,
    check_same_device,
    check_scalar,
)
from metricface.distributed import all_gather_with_grad
from metricface.losses.chunked import _margin_softmax
from metricface.losses.functional import subcenter_max
from metricface.losses.margins import (
    AdaFaceMargin,
    ArcFaceMargin,
    CombinedMargin,
    CosFaceMargin,
    MarginLike,
    NoMargin,
    SphereFaceMargin,
    _check_margin,
)
from metricface.numerics import (
    apply_reduction,
    check_reduction,
    compute_dtype,
    inverse_norms,
    unit_rows,
)

__all__ = [
    "AdaFaceLoss",
    "ArcFaceLoss",
    "CombinedMarginLoss",
    "CosFaceLoss",
    "MarginSoftmaxLoss",
    "NormSoftmaxLoss",
    "SphereFaceLoss",
    "SubCenterArcFaceLoss",
    "shard_range",
]


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
    >>> from metricface.losses import shard_range
    >>> [shard_range(10, 3, r) for r in range(3)]
    [(0, 4), (4, 7), (7, 10)]
    """
    check_scalar(num_classes, "num_classes", low=1, integer=True)
    check_scalar(world_size, "world_size", low=1, integer=True)
    check_scalar(rank, "rank", low=0, high=world_size - 1, integer=True)
    base, rem = divmod(num_classes, world_size)
    start = rank * base + min(rank, rem)
    return start, start + base + (1 if rank < rem else 0)


class MarginSoftmaxLoss(nn.Module):
    """Softmax cross entropy over normalised class centers with a margin on the target logit.

    Parameters
    ----------
    num_classes : int
        Number of identities ``C`` (over all ranks when sharded).
    embedding_dim : int
        Embedding size ``D``.
    margin : Margin or callable, optional
        Maps the target cosines, shape (B,), float32 (float64 for float64 inputs) and clamped
        to ``[-1, 1]``, to target logits before scaling: a
        :class:`~metricface.losses.Margin` (which also receives the embedding norms, e.g.
        :class:`~metricface.losses.AdaFaceMargin` with each batch's norm statistics) or any
        function of the cosines alone. Default: no margin. Its derivative is taken by
        autograd; parameters of the margin receive no gradient.
    scale : float
        Logit scale ``s > 0``.
    sub_centers : int
        ``K`` centers per class; a sample's cosine to a class is the largest over them.
    reduction : {"mean", "sum", "none"}
        Reduction over the (global) batch.
    chunk_size : int, optional
        Classes scored per block; ``None`` (default) scores all (sampled, local) classes in
        one block, which keeps one ``(B, C)`` buffer and is fastest when it fits. With a
        ``chunk_size`` memory beyond the centers and their gradient is about
        ``2 * 4 * B * chunk_size`` bytes, and the backward pass recomputes each block.
    sample_rate : float
        Fraction of each shard's classes scored per step, in ``(0, 1]`` (default 1: all).
        Positive classes are always included.
    process_group : ProcessGroup, optional
        Ranks that share the classes (each holds a contiguous shard, see :func:`shard_range`).
        Default: no sharding, every rank holds all classes (as for data parallelism).
    device, dtype : optional
        Where and how to allocate ``weight``.

    Attributes
    ----------
    weight : torch.nn.Parameter
        Shape ``((class_stop - class_start) * sub_centers, embedding_dim)``: class centers, rows ``c*K .. c*K+K-1`` for (local) class ``c``; all
        ``num_classes * sub_centers`` rows without sharding.
    class_start, class_stop : int
        The classes ``[class_start, class_stop)`` this rank holds (all without sharding).
    last_sampled : torch.Tensor or None
        Classes (local indices, sorted) scored by the latest forward pass when
        ``sample_rate < 1``, ``None`` otherwise; their rows are ``c*K .. c*K+K-1``.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: Optional[MarginLike] = None,
        scale: float = 64.0,
        sub_centers: int = 1,
        reduction: str = "mean",
        *,
        chunk_size: Optional[int] = None,
        sample_rate: float = 1.0,
        process_group: Any = None,
        device: Optional[torch.device | str] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        check_scalar(num_classes, "num_classes", low=1, integer=True)
        check_scalar(embedding_dim, "embedding_dim", low=1, integer=True)
        check_scalar(scale, "scale", low=0.0, low_inclusive=False)
        check_scalar(sub_centers, "sub_centers", low=1, integer=True)
        check_reduction(reduction)
        if chunk_size is not None:
            check_scalar(chunk_size, "chunk_size", low=1, integer=True)
        check_scalar(sample_rate, "sample_rate", low=0.0, high=1.0, low_inclusive=False)
        margin = NoMargin() if margin is None else margin
        _check_margin(margin)
        self.num_classes = int(num_classes)
        self.embedding_dim = int(embedding_dim)
        self.sub_centers = int(sub_centers)
        self.scale = float(scale)
        self.reduction = reduction
        self.margin = margin
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.sample_rate = float(sample_rate)

        if process_group is not None and dist.get_world_size(process_group) == 1:
            process_group = None
        self.process_group = process_group
        self.world_size = 1 if process_group is None else dist.get_world_size(process_group)
        self.rank = 0 if process_group is None else dist.get_rank(process_group)
        self.class_start, self.class_stop = shard_range(
            self.num_classes, self.world_size, self.rank
        )
        rows = (self.class_stop - self.class_start) * self.sub_centers
        self.weight = nn.Parameter(torch.empty(rows, embedding_dim, device=device, dtype=dtype))
        self.last_sampled: Optional[Tensor] = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the class centers from ``normal(0, 0.01)``.

        A sharded module's ranks draw from their own generators, seeded from one draw of the
        default torch RNG plus the rank, so shards differ even when all ranks share a seed,
        and a run is reproducible from the seed.
        """
        if self.world_size == 1:
            nn.init.normal_(self.weight, mean=0.0, std=0.01)
            return
        seed = int(torch.randint(0, 2**62, ()).item()) + self.rank
        gen = torch.Generator(device=self.weight.device).manual_seed(seed)
        with torch.no_grad():
            self.weight.normal_(0.0, 0.01, generator=gen)

    def extra_repr(self) -> str:
        parts = [f"num_classes={self.num_classes}", f"embedding_dim={self.embedding_dim}"]
        if self.sub_centers > 1:
            parts.append(f"sub_centers={self.sub_centers}")
        parts += [f"margin={self.margin!r}", f"scale={self.scale}"]
        parts.append(f"reduction={self.reduction!r}")
        if self.chunk_size is not None:
            parts.append(f"chunk_size={self.chunk_size}")
        if self.sample_rate < 1.0:
            parts.append(f"sample_rate={self.sample_rate}")
        return ", ".join(parts) + self._shard_repr()

    def _shard_repr(self) -> str:
        if self.world_size == 1:
            return ""
        return f", shard=[{self.class_start}, {self.class_stop}) of {self.world_size} ranks"

    # ------------------------------------------------------------------ validation
    def _check_embeddings(self, embeddings: object) -> Tensor:
        embeddings = check_embeddings(embeddings)
        if embeddings.shape[1] != self.embedding_dim:
            raise ValueError(
                f"embeddings must have shape (batch, {self.embedding_dim}), got shape "
                f"{tuple(embeddings.shape)} (embedding_dim={self.embedding_dim})"
            )
        check_same_device(embeddings, "embeddings", self.weight, "the class centers (weight)")
        return embeddings

    def _check_inputs(self, embeddings: object, labels: object) -> tuple[Tensor, Tensor]:
        embeddings = self._check_embeddings(embeddings)
        labels = check_labels(labels, embeddings.shape[0], num_classes=self.num_classes)
        return embeddings, labels.to(device=embeddings.device, dtype=torch.long)

    # ------------------------------------------------------------------ loss
    def _batch_margin(self, embeddings: Tensor) -> MarginLike:
        """The margin this (gathered) batch is scored with; AdaFaceLoss binds its statistics."""
        return self.margin

    def _sample(self, labels: Tensor) -> tuple[Optional[Tensor], Tensor]:
        """Local classes to score (None = all) and each label's position among them (-1: on
        another rank)."""
        if self.sample_rate >= 1.0 and self.world_size == 1:
            return None, labels  # every class, all on this rank
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

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Compute the loss.

        Parameters
        ----------
        embeddings : Tensor, shape (B, embedding_dim)
            Unnormalised embeddings (any floating dtype). Sharded: this rank's; ``B`` may
            differ between ranks.
        labels : Tensor, shape (B,)
            Integer identities in ``[0, num_classes)``.

        Returns
        -------
        Tensor
            Shape () (shape (B,) with ``reduction="none"``; sharded: the global batch's,
            identical on every rank), in the dtype of ``embeddings``.
        """
        embeddings, labels = self._check_inputs(embeddings, labels)
        if self.process_group is not None:
            embeddings = all_gather_with_grad(embeddings, self.process_group)
            labels = all_gather_with_grad(labels, self.process_group)
        margin = self._batch_margin(embeddings)
        index, local_labels = self._sample(labels)
        self.last_sampled = index
        weight = self.weight
        if index is not None:
            k = self.sub_centers
            rows = index if k == 1 else (index[:, None] * k + torch.arange(k, device=index.device))
            weight = weight[rows.reshape(-1)]
        losses = _margin_softmax(
            embeddings, weight, local_labels, margin, self.scale, sub_centers=self.sub_centers,
            chunk_size=self.chunk_size, group=self.process_group,
        )  # fmt: skip
        return apply_reduction(losses, self.reduction).to(embeddings.dtype)

    # ------------------------------------------------------------------ prediction
    def logits(self, embeddings: Tensor) -> Tensor:
        """Cosine similarity of each embedding to each class (no margin, no scale).

        Normalised as in the loss: the exact direction of each embedding, each center divided
        by ``max(norm, 1e-12)``.

        Parameters
        ----------
        embeddings : Tensor, shape (B, embedding_dim)

        Returns
        -------
        Tensor, shape (B, class_stop - class_start)
            Cosines in float32 (float64 for float64 input) to every class (this rank's when
            sharded); with sub-centers, the largest cosine over each class's sub-centers.
        """
        embeddings = self._check_embeddings(embeddings)
        dtype = compute_dtype(embeddings, self.weight)
        with torch.autocast(embeddings.device.type, enabled=False):
            unit_x, _ = unit_rows(embeddings.to(dtype))
            w = self.weight.to(dtype)
            inv, _ = inverse_norms(w)
            return subcenter_max((unit_x @ w.t()) * inv, self.sub_centers)

    def _check_unsharded(self, what: str) -> None:
        if self.world_size > 1:
            raise RuntimeError(
                f"{what}() needs every class, and this rank holds only [{self.class_start}, "
                f"{self.class_stop}): load full_state_dict() into a loss without process_group"
            )

    @torch.no_grad()
    def predict(self, embeddings: Tensor) -> Tensor:
        """Closed-set prediction: the class with the largest cosine. Shape (B,), int64."""
        self._check_unsharded("predict")
        return self.logits(embeddings).argmax(dim=1)

    @torch.no_grad()
    def accuracy(self, embeddings: Tensor, labels: Tensor) -> float:
        """Fraction of ``embeddings`` whose :meth:`predict` equals ``labels``.

        Parameters
        ----------
        embeddings : Tensor, shape (B, embedding_dim)
        labels : Tensor, shape (B,)
            Integer identities in ``[0, num_classes)``.
        """
        embeddings, labels = self._check_inputs(embeddings, labels)
        return (self.predict(embeddings) == labels).double().mean().item()

    # ------------------------------------------------------------------ full checkpoints
    def gather_weight(
        self, dst: Optional[int] = None, device: torch.device | str = "cpu"
    ) -> Optional[Tensor]:
        """Assemble the full weight from all shards (a collective: call on every rank).

        :meth:`gather_shard` of the weight.

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
            Shape ``(num_classes * sub_centers, embedding_dim)``, detached; ``None`` on ranks
            other than ``dst``.
        """
        return self.gather_shard(self.weight, dst=dst, device=device)

    def gather_shard(
        self, shard: Tensor, dst: Optional[int] = None, device: torch.device | str = "cpu"
    ) -> Optional[Tensor]:
        """Assemble a tensor laid out like the weight's shard from all ranks (a collective).

        ``shard`` holds one row per class center of this rank, as the weight does: the weight
        itself, or the optimizer state of the weight (SGD momentum, Adam moments), so that a
        single checkpoint can hold everything a run on any number of ranks resumes from.
        Shards are broadcast one at a time, so the accelerator never holds more than one
        extra shard. Without a process group, a copy of ``shard`` on ``device``.

        Parameters
        ----------
        shard : Tensor, shape (n_local_rows, ...)
            ``n_local_rows = (class_stop - class_start) * sub_centers``; the trailing
            dimensions, dtype and device are the same on every rank.
        dst : int, optional
            Rank (within the process group, in ``[0, world_size)``) that receives the result;
            ``None``: every rank.
        device : torch.device or str
            Where to put the full tensor.

        Returns
        -------
        torch.Tensor or None
            Shape ``(num_classes * sub_centers, ...)``, detached, rows in class order; ``None``
            on ranks other than ``dst``.
        """
        if dst is not None:  # checked on every rank alike, so none waits in a broadcast
            check_scalar(dst, "dst", low=0, high=self.world_size - 1, integer=True)
        k = self.sub_centers
        if not isinstance(shard, Tensor):
            raise TypeError(f"shard must be a torch.Tensor, got {type(shard).__name__}")
        local_rows = (self.class_stop - self.class_start) * k
        if shard.dim() == 0 or shard.shape[0] != local_rows:
            raise ValueError(
                f"shard must have {local_rows} rows (this rank's class centers), got shape "
                f"{tuple(shard.shape)}"
            )
        shard = shard.detach()
        if self.process_group is None:
            return shard.to(device, copy=True)
        tail = tuple(shard.shape[1:])
        full = None
        if dst is None or dst == self.rank:
            full = torch.empty((self.num_classes * k, *tail), dtype=shard.dtype, device=device)
        for src in range(self.world_size):
            start, stop = (k * c for c in shard_range(self.num_classes, self.world_size, src))
            if stop == start:
                continue
            if src == self.rank:
                buf = shard.contiguous()
            else:
                buf = torch.empty((stop - start, *tail), dtype=shard.dtype, device=shard.device)
            dist.broadcast(
                buf, src=dist.get_global_rank(self.process_group, src), group=self.process_group
            )
            if full is not None:
                full[start:stop].copy_(buf)
        return full

    def local_shard(self, full: Tensor) -> Tensor:
        """This rank's rows of a tensor laid out like the full weight (a view, no collective).

        The inverse of :meth:`gather_shard`: ``full`` has one row per class center of all
        ranks (``num_classes * sub_centers`` rows, in class order), e.g. a gathered weight or
        its gathered optimizer state.

        Parameters
        ----------
        full : Tensor, shape (num_classes * sub_centers, ...)

        Returns
        -------
        Tensor
            Shape ``((class_stop - class_start) * sub_centers, ...)``.
        """
        rows = self.num_classes * self.sub_centers
        if not isinstance(full, Tensor):
            raise TypeError(f"full must be a torch.Tensor, got {type(full).__name__}")
        if full.dim() == 0 or full.shape[0] != rows:
            raise ValueError(
                f"full must have {rows} rows (every class center), got shape {tuple(full.shape)}"
            )
        k = self.sub_centers
        return full[self.class_start * k : self.class_stop * k]

    def full_state_dict(
        self, dst: Optional[int] = None, device: torch.device | str = "cpu"
    ) -> Optional[dict[str, Tensor]]:
        """The state dict a single-process module would save: the full ``"weight"``.

        A collective (see :meth:`gather_weight`); ``None`` on ranks other than ``dst``. Save
        it from one rank and load it with :meth:`load_full_state_dict` on any world size.
        Buffers (AdaFace's running statistics, identical on every rank) are included. It holds
        no optimizer state: to resume exactly, every rank also saves its own ``state_dict()``
        and optimizer (see the Partial FC guide).
        """
        full = self.gather_weight(dst=dst, device=device)
        if full is None:
            return None
        return {"weight": full, **{n: b.detach().to(device) for n, b in self.named_buffers()}}

    def load_full_weight(self, weight: Tensor) -> None:
        """Copy this rank's shard out of a full ``(num_classes * sub_centers, D)`` weight.

        Not a collective: each rank reads its own rows (``weight`` may live on any device).
        """
        expected = (self.num_classes * self.sub_centers, self.embedding_dim)
        if not isinstance(weight, Tensor):
            raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
        if tuple(weight.shape) != expected:
            raise ValueError(
                f"weight must have shape {expected} (all classes), got {tuple(weight.shape)}"
            )
        with torch.no_grad():
            self.weight.copy_(self.local_shard(weight))

    def load_full_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Load a state dict holding the full ``"weight"`` (as :meth:`full_state_dict` makes)."""
        if not isinstance(state_dict, dict) or "weight" not in state_dict:
            raise ValueError("state_dict must be a dict with a 'weight' entry of shape (C, D)")
        self.load_full_weight(state_dict["weight"])
        with torch.no_grad():
            for name, buf in self.named_buffers():
                if name in state_dict:
                    buf.copy_(state_dict[name])


class NormSoftmaxLoss(MarginSoftmaxLoss):
    """Normalised softmax without margin (NormFace): logits ``s * cos``.

    With ``scale=20`` (the default) this equals pytorch-metric-learning's
    ``NormalizedSoftmaxLoss(temperature=0.05)``.

    Parameters
    ----------
    num_classes, embedding_dim, scale, reduction
        As in :class:`MarginSoftmaxLoss`.
    **options
        ``sub_centers``, ``chunk_size``, ``sample_rate``, ``process_group``, ``device``,
        ``dtype``: as in :class:`MarginSoftmaxLoss`.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        scale: float = 20.0,
        reduction: str = "mean",
        **options: Any,
    ) -> None:
        super().__init__(
            num_classes, embedding_dim, NoMargin(), scale, reduction=reduction, **options
        )


class ArcFaceLoss(MarginSoftmaxLoss):
    """ArcFace: target logit ``s * cos(theta + m)``.

    See :class:`~metricface.losses.ArcFaceMargin` for the fallback beyond ``theta = pi - m``.
    ``margin`` is in radians (0.5 rad = 28.6 degrees, pytorch-metric-learning's default in
    degrees).

    Parameters
    ----------
    num_classes, embedding_dim, scale, reduction
        As in :class:`MarginSoftmaxLoss`.
    margin : float
        ``m`` in radians (default 0.5).
    easy_margin : bool
        See :class:`~metricface.losses.ArcFaceMargin`.
    **options
        ``sub_centers``, ``chunk_size``, ``sample_rate``, ``process_group``, ``device``,
        ``dtype``: as in :class:`MarginSoftmaxLoss`.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: float = 0.5,
        scale: float = 64.0,
        easy_margin: bool = False,
        reduction: str = "mean",
        **options: Any,
    ) -> None:
        margin_fn = ArcFaceMargin(margin, easy_margin)
        super().__init__(
            num_classes, embedding_dim, margin_fn, scale, reduction=reduction, **options
        )


class CosFaceLoss(MarginSoftmaxLoss):
    """CosFace / AM-Softmax: target logit ``s * (cos - m)``.

    See :class:`~metricface.losses.CosFaceMargin`.

    Parameters
    ----------
    num_classes, embedding_dim, scale, reduction
        As in :class:`MarginSoftmaxLoss`.
    margin : float
        ``m`` in cosine units (default 0.35).
    **options
        ``sub_centers``, ``chunk_size``, ``sample_rate``, ``process_group``, ``device``,
        ``dtype``: as in :class:`MarginSoftmaxLoss`.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: float = 0.35,
        scale: float = 64.0,
        reduction: str = "mean",
        **options: Any,
    ) -> None:
        margin_fn = CosFaceMargin(margin)
        super().__init__(
            num_classes, embedding_dim, margin_fn, scale, reduction=reduction, **options
        )


class SphereFaceLoss(MarginSoftmaxLoss):
    """SphereFace on normalised features: target logit ``s * psi(m * theta)``.

    See :class:`~metricface.losses.SphereFaceMargin` for the monotone ``psi``. The default
    ``margin=1.35`` is the setting of the ArcFace paper's comparison.

    Parameters
    ----------
    num_classes, embedding_dim, scale, reduction
        As in :class:`MarginSoftmaxLoss`.
    margin : float
        Angle multiplier ``m >= 1`` (default 1.35).
    **options
        ``sub_centers``, ``chunk_size``, ``sample_rate``, ``process_group``, ``device``,
        ``dtype``: as in :class:`MarginSoftmaxLoss`.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: float = 1.35,
        scale: float = 64.0,
        reduction: str = "mean",
        **options: Any,
    ) -> None:
        margin_fn = SphereFaceMargin(margin)
        super().__init__(
            num_classes, embedding_dim, margin_fn, scale, reduction=reduction, **options
        )


class CombinedMarginLoss(MarginSoftmaxLoss):
    """Combined margin: target logit ``s * (cos(m1 * theta + m2) - m3)``.

    See :class:`~metricface.losses.CombinedMargin`. The ArcFace paper's best combination is
    ``(m1, m2, m3) = (1.0, 0.3, 0.2)``.

    Parameters
    ----------
    num_classes, embedding_dim, scale, reduction
        As in :class:`MarginSoftmaxLoss`.
    m1, m2, m3 : float
        See :class:`~metricface.losses.CombinedMargin` (defaults 1.0, 0.5, 0.0).
    **options
        ``sub_centers``, ``chunk_size``, ``sample_rate``, ``process_group``, ``device``,
        ``dtype``: as in :class:`MarginSoftmaxLoss`.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        scale: float = 64.0,
        reduction: str = "mean",
        **options: Any,
    ) -> None:
        margin_fn = CombinedMargin(m1, m2, m3)
        super().__init__(
            num_classes, embedding_dim, margin_fn, scale, reduction=reduction, **options
        )


class SubCenterArcFaceLoss(MarginSoftmaxLoss):
    """Sub-center ArcFace: ``sub_centers`` centers per class, max-pooled, then ArcFace.

    ``weight`` has shape ``(num_classes * sub_centers, embedding_dim)`` with rows
    ``c*K .. c*K+K-1`` for class ``c``, as in the paper's code and pytorch-metric-learning.
    Positional arguments follow the other margin losses (``margin, scale``, then
    ``sub_centers``), which is also pytorch-metric-learning's order. (Any preset takes
    ``sub_centers=``; this one defaults to 3.)

    Parameters
    ----------
    num_classes, embedding_dim, scale, reduction
        As in :class:`MarginSoftmaxLoss`.
    margin, easy_margin
        As in :class:`ArcFaceLoss`.
    sub_centers : int
        ``K`` (default 3).
    **options
        ``chunk_size``, ``sample_rate``, ``process_group``, ``device``,
        ``dtype``: as in :class:`MarginSoftmaxLoss`.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: float = 0.5,
        scale: float = 64.0,
        sub_centers: int = 3,
        easy_margin: bool = False,
        reduction: str = "mean",
        **options: Any,
    ) -> None:
        margin_fn = ArcFaceMargin(margin, easy_margin)
        super().__init__(
            num_classes, embedding_dim, margin_fn, scale, sub_centers, reduction, **options
        )


class AdaFaceLoss(MarginSoftmaxLoss):
    """AdaFace: a margin adapted to image quality through the embedding norm.

    See :class:`~metricface.losses.AdaFaceMargin` for the formula. The module owns the running
    mean and standard deviation of the (clipped, detached) embedding norms as buffers
    ``running_mean`` / ``running_std`` (initialised to 20 and 100 as in the reference code,
    saved in the ``state_dict``; float32 also when the module is cast to float16 or bfloat16,
    whose resolution cannot hold the small updates). In training mode each call first updates
    them, ``running = (1 - momentum) * running + momentum * batch``, then scores the batch with
    the margin bound to them (:meth:`~metricface.losses.AdaFaceMargin.with_statistics`); in
    eval mode they are used unchanged. A batch holding a non-finite embedding (whose loss is
    not finite, a step mixed-precision training skips) leaves them unchanged. The statistics
    are those of the batch the loss sees: the local batch, or the global one when the classes
    are sharded over a ``process_group`` (so every rank keeps the same statistics).

    Parameters
    ----------
    num_classes, embedding_dim, scale, reduction
        As in :class:`MarginSoftmaxLoss`.
    margin : float
        ``m`` (default 0.4).
    h : float
        Concentration of the quality indicator (default 0.333).
    momentum : float
        Weight of the current batch in the running statistics, in ``(0, 1]`` (default 0.01;
        1 uses the batch statistics only).
    eps : float
        Stabiliser of the normalisation and angle clip (default 1e-3).
    **options
        ``sub_centers``, ``chunk_size``, ``sample_rate``, ``process_group``, ``device``,
        ``dtype``: as in :class:`MarginSoftmaxLoss`.
    """

    running_mean: Tensor
    running_std: Tensor

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: float = 0.4,
        h: float = 0.333,
        scale: float = 64.0,
        momentum: float = 0.01,
        eps: float = 1e-3,
        reduction: str = "mean",
        **options: Any,
    ) -> None:
        margin_fn = AdaFaceMargin(margin, h, eps)
        super().__init__(
            num_classes, embedding_dim, margin_fn, scale, reduction=reduction, **options
        )
        check_scalar(momentum, "momentum", low=0.0, high=1.0, low_inclusive=False)
        self.momentum = float(momentum)
        self.register_buffer("running_mean", torch.tensor(20.0, device=self.weight.device))
        self.register_buffer("running_std", torch.tensor(100.0, device=self.weight.device))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", momentum={self.momentum}"

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # ``.half()`` / ``.to(torch.bfloat16)`` would lower the running statistics too, and
        # updates of ``momentum * (batch - running)`` fall below half precision's resolution
        # (bfloat16 stops moving within about 6 of 20): keep them float32 (float64 stays).
        super()._apply(fn, recurse)
        for name in ("running_mean", "running_std"):
            buf = getattr(self, name)
            if buf.dtype in (torch.float16, torch.bfloat16):
                setattr(self, name, buf.float())
        return self

    def _batch_margin(self, embeddings: Tensor) -> AdaFaceMargin:
        margin: AdaFaceMargin = self.margin  # type: ignore[assignment]
        if self.training:
            with torch.no_grad():
                norms = torch.linalg.vector_norm(embeddings.to(compute_dtype(embeddings)), dim=1)
                mean, std = margin.batch_stats(margin.clip_norms(norms))
                # a batch with a non-finite embedding gives a non-finite loss, a step that mixed
                # precision skips: leave the statistics alone too (no host synchronisation)
                keep = torch.isfinite(norms).all()
                for running, batch in ((self.running_mean, mean), (self.running_std, std)):
                    updated = running.lerp(batch.to(running), self.momentum)
                    running.copy_(torch.where(keep, updated, running))
        return margin.with_statistics(self.running_mean.clone(), self.running_std.clone())
