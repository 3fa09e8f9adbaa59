"""Pair and triplet losses over the global batch of a ``torch.distributed`` job.

With data parallelism each rank holds ``B_r`` embeddings, but pair and triplet losses get
better with more pairs: the positives and negatives of the *whole* batch. The wrapper gathers
embeddings and labels from every rank with :func:`metricface.distributed.all_gather_with_grad`,
mines on the gathered batch and computes the loss there.

Gradient convention (the one of :mod:`metricface.distributed`): every rank computes the same
global loss ``L``; the gather's backward pass sums the ranks' gradients, so a rank's local
embeddings receive ``world_size * dL/dx``. ``DistributedDataParallel`` averages parameter
gradients over ranks, so the parameters follow exactly ``dL/dw`` - the same step as one process
holding the concatenated batch. (Without DDP's averaging, divide the loss by the world size
before ``backward``.)

Half precision: the embeddings are gathered in float32
(:func:`metricface.numerics.to_compute_dtype`), so the ranks' gradients are summed in float32
and cast back once, saturating at the largest finite value (a float16 sum of gradients that
each saturate would overflow to ``inf``).

Cost: every rank mines and evaluates the full ``(sum_r B_r)^2`` problem; for the losses here
that is O(B^2) memory and cheap next to the network. Random miners (``max_triplets``,
:class:`~metricface.miners.DistanceWeightedMiner`) select the same tuples on every rank only
when the ranks' torch RNGs agree; otherwise each rank trains on its own random subset, which
DDP's averaging still combines correctly.
"""

from __future__ import annotations

import torch
from torch import nn

from metricface._validation import check_embeddings, check_labels
from metricface.distributed import all_gather_with_grad
from metricface.numerics import to_compute_dtype

__all__ = ["DistributedLossWrapper"]


class DistributedLossWrapper(nn.Module):
    """Gather embeddings and labels from all ranks, mine, and compute ``loss`` on them.

    Parameters
    ----------
    loss : nn.Module
        A pair/triplet loss called as ``loss(embeddings, labels, indices_tuple=...)``, e.g.
        :class:`~metricface.losses.TripletMarginLoss`.
    miner : nn.Module, optional
        Called as ``miner(embeddings, labels)`` on the gathered batch.
    group : ProcessGroup, optional
        The process group; the default group when omitted.

    Examples
    --------
    Without an initialised process group the wrapper is the plain loss:

    >>> wrapped = metricface.losses.DistributedLossWrapper(
    ...     metricface.losses.TripletMarginLoss(), miner=metricface.miners.BatchHardMiner())
    >>> emb, labels = torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    >>> direct = metricface.losses.TripletMarginLoss()(
    ...     emb, labels, metricface.miners.BatchHardMiner()(emb, labels))
    >>> torch.equal(wrapped(emb, labels), direct)
    True
    """

    def __init__(self, loss: nn.Module, miner: nn.Module | None = None, group=None) -> None:
        super().__init__()
        if not isinstance(loss, nn.Module):
            raise TypeError(f"loss must be a torch.nn.Module, got {type(loss).__name__}")
        if miner is not None and not isinstance(miner, nn.Module):
            raise TypeError(f"miner must be a torch.nn.Module or None, got {type(miner).__name__}")
        self.loss = loss
        self.miner = miner
        self.group = group

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of the global batch.

        Parameters
        ----------
        embeddings : torch.Tensor
            This rank's embeddings, shape ``(B_r, D)`` (``B_r`` may differ between ranks).
        labels : torch.Tensor
            This rank's labels, shape ``(B_r,)``.

        Returns
        -------
        torch.Tensor
            The scalar loss of the concatenated batch (identical on every rank), in
            ``embeddings.dtype``.
        """
        check_embeddings(embeddings)
        check_labels(labels, embeddings.shape[0])
        all_emb = all_gather_with_grad(to_compute_dtype(embeddings), self.group)
        all_labels = all_gather_with_grad(labels.to(embeddings.device), self.group)
        indices = None if self.miner is None else self.miner(all_emb, all_labels)
        return self.loss(all_emb, all_labels, indices_tuple=indices).to(embeddings.dtype)
