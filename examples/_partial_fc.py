"""Class centers sharded over the ranks (Partial FC) in the examples' one-file checkpoints.

Under torchrun a class-center loss given a process group (Partial FC,
:class:`~metricface.losses.MarginSoftmaxLoss` and its presets) holds on each rank only its
shard of the class centers, and the optimizer only that shard's state (momentum, Adam
moments). The
example still writes one ``checkpoint.pt``, from rank 0, laid out as one process training on
all classes would write it: :func:`full_states` gathers every shard of the centers and of
their optimizer state into rank 0's state dicts (a collective: every rank calls it; one shard
at a time travels, into CPU memory), and :func:`load_states` gives each rank its own rows
back. So a run resumes exactly on the same number of ranks (each rank's random state is saved
beside it), and the checkpoint loads into a run on any number of ranks or into one process.

The loss's :meth:`~metricface.losses.MarginSoftmaxLoss.gather_shard` and
:meth:`~metricface.losses.MarginSoftmaxLoss.local_shard` move rows between a shard and the
full layout; a loss on one rank is not sharded and its states pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from metricface.losses import MarginSoftmaxLoss


class _Snapshot(nn.Module):
    """A module whose ``state_dict()`` is a given one (what ``save_checkpoint`` stores)."""

    def __init__(self, state: dict[str, Any]) -> None:
        super().__init__()
        self._snapshot = state

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return self._snapshot


class _OptimizerSnapshot:
    """An object whose ``state_dict()`` is a given optimizer state."""

    def __init__(self, state: dict[str, Any]) -> None:
        self._snapshot = state

    def state_dict(self) -> dict[str, Any]:
        return self._snapshot


def sharded_loss(objective: nn.Module) -> nn.Module | None:
    """``objective.loss`` if it holds a shard of the class centers, else ``None``."""
    loss = getattr(objective, "loss", None)
    if isinstance(loss, MarginSoftmaxLoss) and loss.world_size > 1:
        return loss
    return None


def _index(params: Sequence[torch.Tensor], weight: torch.Tensor) -> int:
    """Where ``weight`` is in the optimizer's parameters (its key in the state dict)."""
    return next(i for i, p in enumerate(params) if p is weight)


def full_states(
    objective: nn.Module, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model state, optimizer state)`` with all class centers and their optimizer state
    (complete on rank 0 only; a collective when the loss is sharded).

    ``params`` are the optimizer's parameters in order (one parameter group).
    """
    model, optim = objective.state_dict(), optimizer.state_dict()
    loss = sharded_loss(objective)
    if loss is None:
        return model, optim
    model = {**model, "loss.weight": loss.gather_shard(loss.weight, dst=0)}
    i = _index(params, loss.weight)
    state = dict(optim["state"].get(i, {}))  # a copy: the optimizer's own dict stays as it is
    for key in sorted(state):  # the same order on every rank
        value = state[key]
        if torch.is_tensor(value) and value.shape == loss.weight.shape:  # per-center state
            state[key] = loss.gather_shard(value, dst=0)
    return model, {**optim, "state": {**optim["state"], i: state}}


def to_save(
    objective: nn.Module, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]
) -> tuple[nn.Module, Any]:
    """``(model, optimizer)`` to give ``save_checkpoint``: the objects themselves, or with
    sharded class centers (a collective), stand-ins holding :func:`full_states`."""
    if sharded_loss(objective) is None:
        return objective, optimizer
    model, optim = full_states(objective, optimizer, params)
    return _Snapshot(model), _OptimizerSnapshot(optim)


def load_states(
    ckpt: dict[str, Any],
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.Tensor],
) -> None:
    """Load a checkpoint's model and optimizer states, this rank's rows of the centers only."""
    model, optim = ckpt["model"], ckpt["optimizer"]
    loss = sharded_loss(objective)
    if loss is not None:
        full_shape = (loss.num_classes * loss.sub_centers, loss.weight.shape[1])
        model = {**model, "loss.weight": loss.local_shard(model["loss.weight"])}
        i = _index(params, loss.weight)
        state = {
            k: loss.local_shard(v) if torch.is_tensor(v) and tuple(v.shape) == full_shape else v
            for k, v in optim["state"].get(i, {}).items()
        }
        optim = {**optim, "state": {**optim["state"], i: state}}
    objective.load_state_dict(model)
    optimizer.load_state_dict(optim)
