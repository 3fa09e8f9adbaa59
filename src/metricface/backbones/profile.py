"""Parameter and FLOP counts of a network, measured with PyTorch's ``FlopCounterMode``.

FLOPs are those of one forward pass in eval mode, counted by PyTorch's own flop counter:
convolutions and matrix products count ``2 * multiply-adds``; element-wise work (norms,
activations, pooling, additions) is not counted, which is the usual convention for quoting
network cost (a 224x224 ResNet-50 is 8.2 GFLOPs = 4.1 GMACs). A training step
(forward + backward) costs about three times the forward figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from metricface._validation import check_scalar

__all__ = ["ModelProfile", "profile"]


def _human(value: float) -> str:
    """``43590848 -> '43.59 M'``."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}"
    return f"{value:g} "


@dataclass(frozen=True)
class ModelProfile:
    """Size and cost of a network for one input shape.

    Attributes
    ----------
    params : int
        Number of parameters (all of them, trainable or not).
    trainable_params : int
        Parameters with ``requires_grad=True``.
    flops : int
        Forward FLOPs for the whole batch (``2 *`` multiply-adds of convolutions and matmuls).
    input_size : tuple of int
        Shape of one input sample, e.g. ``(3, 112, 112)``.
    batch_size : int
        Batch size the FLOPs were counted for.
    """

    params: int
    trainable_params: int
    flops: int
    input_size: Tuple[int, ...]
    batch_size: int

    @property
    def flops_per_sample(self) -> float:
        """Forward FLOPs for one input sample."""
        return self.flops / self.batch_size

    def __str__(self) -> str:
        shape = "x".join(str(s) for s in self.input_size)
        return (
            f"{_human(self.params)}params ({_human(self.trainable_params)}trainable), "
            f"{_human(self.flops_per_sample)}FLOPs per {shape} input"
        )


def profile(
    model: nn.Module, input_size: Sequence[int] = (3, 112, 112), batch_size: int = 1
) -> ModelProfile:
    """Count the parameters and the forward FLOPs of ``model``.

    The forward runs once on a random input of shape ``(batch_size, *input_size)`` on the
    model's device, in eval mode and without autograd; the model's training flag is restored.

    Parameters
    ----------
    model : nn.Module
        Any network.
    input_size : sequence of int
        Shape of one sample (channels first), default ``(3, 112, 112)``.
    batch_size : int
        Batch size, default 1.

    Returns
    -------
    ModelProfile
        Counts; ``print`` it for a one-line summary.

    Examples
    --------
    >>> p = metricface.backbones.profile(metricface.backbones.resnet18(), (3, 224, 224))
    >>> p.params, round(p.flops / 1e9, 2)
    (11689512, 3.64)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(input_size, int) or len(input_size) == 0:
        raise ValueError(
            f"input_size must be a non-empty shape like (3, 112, 112), got {input_size!r}"
        )
    for s in input_size:
        check_scalar(s, "input_size", low=1, integer=True)
    check_scalar(batch_size, "batch_size", low=1, integer=True)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    x = torch.randn(batch_size, *input_size, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return ModelProfile(
        params=params,
        trainable_params=trainable,
        flops=int(counter.get_total_flops()),
        input_size=tuple(int(s) for s in input_size),
        batch_size=int(batch_size),
    )
