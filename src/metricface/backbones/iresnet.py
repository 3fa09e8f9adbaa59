"""IResNet-18/34/50/100/200: the face-recognition ResNets of ArcFace for 112x112 crops.

Layout (Deng et al., 2019, and InsightFace's ``arcface_torch``):

* stem: ``conv1`` 3x3 stride 1 (64 channels), ``bn1``, ``prelu``;
* four stages ``layer1..layer4`` of :class:`~metricface.backbones.IRBlock` with 64, 128,
  256 and 512 channels, the first block of every stage striding by 2 (112 -> 56 -> 28 -> 14
  -> 7);
* the "E" output head: ``bn2`` (BatchNorm2d) - ``dropout`` - flatten -
  ``fc`` (512 * 7 * 7 -> ``embedding_dim``) - ``features`` (BatchNorm1d whose scale is fixed
  at 1 and not trained, as in ``arcface_torch``).

Module names match ``arcface_torch``'s ``iresnet.py``, so its published checkpoints load with
``load_state_dict(..., strict=True)``. The output is the raw (un-normalised) embedding by
default, as in InsightFace; pass ``normalize=True`` for unit vectors.

Two options scale the network down or adapt it:

``width``
    Multiplies every channel count (stem and stages), e.g. ``width=0.25`` gives
    16/32/64/128 channels - a network small enough to train on two CPU cores.
``input_size``
    The ``(H, W)`` (or one int for square) input the head is built for; the flattened map is
    ``ceil(H / 16) x ceil(W / 16)``. Inputs of another size raise a ``ValueError``.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from metricface._validation import check_scalar
from metricface.backbones.blocks import (
    IRBlock,
    NormLayer,
    _check_stage_depths,
    conv3x3,
    init_weights,
)
from metricface.backbones.head import L2Norm

__all__ = ["IResNet", "iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200"]

_STAGE_CHANNELS = (64, 128, 256, 512)


def _pair(value: Union[int, Sequence[int]], name: str) -> Tuple[int, int]:
    pair = (value, value) if not isinstance(value, (tuple, list)) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair (H, W), got {value!r}")
    for v in pair:
        check_scalar(v, name, low=1, integer=True)
    return int(pair[0]), int(pair[1])


@torch.fx.wrap
def _check_input_size(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Return ``x`` after checking that its last two dimensions are ``size``.

    Skipped under ``torch.jit.trace`` (e.g. the TorchScript ONNX exporter), where shapes are
    symbolic; wrapped for ``torch.fx``, so symbolic tracing (e.g. torchvision's
    ``create_feature_extractor``) records the check as one call and the traced module still
    runs it.
    """
    if not torch.jit.is_tracing() and tuple(x.shape[-2:]) != size:
        raise ValueError(
            f"this IResNet is built for inputs of size {size} (input_size=), "
            f"got {tuple(x.shape[-2:])}"
        )
    return x


class IResNet(nn.Module):
    """Face ResNet of :class:`~metricface.backbones.IRBlock` stages with the "E" head.

    **Shape:** ``(B, in_channels, *input_size) -> (B, embedding_dim)``.

    Parameters
    ----------
    layers : sequence of 4 ints
        Number of IR blocks per stage.
    embedding_dim : int
        Embedding size, default 512.
    dropout : float
        Dropout on the flattened feature map before ``fc``, in ``[0, 1)``; default 0
        (InsightFace uses 0 for MS1M-scale data, 0.4 for small sets).
    normalize : bool
        L2-normalise the embedding (default ``False``: raw embeddings, as InsightFace).
    width : float
        Channel multiplier (``> 0``); channels are ``max(1, round(c * width))``.
    input_size : int or (int, int)
        Input height and width the head is built for, default 112.
    zero_init_residual : bool
        Start every block as the identity (zero ``bn3`` weights).
    norm_layer : callable, optional
        Normalisation factory for the trunk (default :class:`torch.nn.BatchNorm2d`).
    se_reduction : int, optional
        Squeeze-excitation in every block (IR-SE networks).
    in_channels : int
        Image channels, default 3.
    """

    def __init__(
        self,
        layers: Sequence[int],
        embedding_dim: int = 512,
        dropout: float = 0.0,
        *,
        normalize: bool = False,
        width: float = 1.0,
        input_size: Union[int, Sequence[int]] = 112,
        zero_init_residual: bool = False,
        norm_layer: Optional[NormLayer] = None,
        se_reduction: Optional[int] = None,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        _check_stage_depths(layers)
        check_scalar(embedding_dim, "embedding_dim", low=1, integer=True)
        check_scalar(dropout, "dropout", low=0.0, high=1.0, high_inclusive=False)
        check_scalar(width, "width", low=0.0, low_inclusive=False)
        check_scalar(in_channels, "in_channels", low=1, integer=True)
        self.input_size = _pair(input_size, "input_size")
        norm_layer = norm_layer or nn.BatchNorm2d
        channels = [max(1, round(c * width)) for c in _STAGE_CHANNELS]

        self.conv1 = conv3x3(in_channels, channels[0])
        self.bn1 = norm_layer(channels[0])
        self.prelu = nn.PReLU(channels[0])
        inplanes = channels[0]
        stages = []
        for planes, blocks in zip(channels, layers):
            stage = [IRBlock(inplanes, planes, 2, norm_layer=norm_layer, se_reduction=se_reduction)]
            stage += [
                IRBlock(planes, planes, norm_layer=norm_layer, se_reduction=se_reduction)
                for _ in range(1, blocks)
            ]
            stages.append(nn.Sequential(*stage))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

        h, w = self.input_size
        self.feature_map_size = (math.ceil(h / 16), math.ceil(w / 16))
        self.num_features = inplanes
        self.bn2 = norm_layer(inplanes)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(
            inplanes * self.feature_map_size[0] * self.feature_map_size[1], embedding_dim
        )
        self.features = nn.BatchNorm1d(embedding_dim)
        self.l2 = L2Norm() if normalize else None
        init_weights(self, zero_init_residual=zero_init_residual)
        # arcface_torch keeps the embedding BN's scale at 1: only its shift is learned
        self.features.weight.requires_grad_(False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Run the trunk: ``(B, C, *input_size) -> (B, 512 * width, *feature_map_size)``."""
        x = self.prelu(self.bn1(self.conv1(_check_input_size(x, self.input_size))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.bn2(self.forward_features(x)))
        x = self.features(self.fc(torch.flatten(x, 1)))
        if self.l2 is not None:
            x = self.l2(x)
        return x


def _iresnet(layers: list[int], embedding_dim: int, dropout: float, **kwargs: Any) -> IResNet:
    return IResNet(layers, embedding_dim, dropout, **kwargs)


def iresnet18(embedding_dim: int = 512, dropout: float = 0.0, **kwargs: Any) -> IResNet:
    """IResNet-18 (``[2, 2, 2, 2]`` IR blocks), 24.0 M parameters for a 512-d embedding.

    Parameters
    ----------
    embedding_dim : int
        Embedding size, default 512.
    dropout : float
        Dropout before the embedding projection.
    **kwargs
        Keyword options of :class:`IResNet` (``normalize``, ``width``, ``input_size``,
        ``zero_init_residual``, ``norm_layer``, ``se_reduction``, ``in_channels``).

    Returns
    -------
    IResNet
        ``(B, 3, 112, 112) -> (B, embedding_dim)``.

    Examples
    --------
    A network small enough for CPU experiments: a quarter of the channels, 64x64 inputs.

    >>> tiny = metricface.backbones.iresnet18(128, width=0.25, input_size=64).eval()
    >>> tiny(torch.randn(2, 3, 64, 64)).shape
    torch.Size([2, 128])
    """
    return _iresnet([2, 2, 2, 2], embedding_dim, dropout, **kwargs)


def iresnet34(embedding_dim: int = 512, dropout: float = 0.0, **kwargs: Any) -> IResNet:
    """IResNet-34 (``[3, 4, 6, 3]``), 34.1 M parameters at 512-d; options as :func:`iresnet18`."""
    return _iresnet([3, 4, 6, 3], embedding_dim, dropout, **kwargs)


def iresnet50(embedding_dim: int = 512, dropout: float = 0.0, **kwargs: Any) -> IResNet:
    """IResNet-50 (``[3, 4, 14, 3]``), 43.6 M parameters at 512-d; options as :func:`iresnet18`."""
    return _iresnet([3, 4, 14, 3], embedding_dim, dropout, **kwargs)


def iresnet100(embedding_dim: int = 512, dropout: float = 0.0, **kwargs: Any) -> IResNet:
    """IResNet-100 (``[3, 13, 30, 3]``), 65.2 M parameters at 512-d; as :func:`iresnet18`."""
    return _iresnet([3, 13, 30, 3], embedding_dim, dropout, **kwargs)


def iresnet200(embedding_dim: int = 512, dropout: float = 0.0, **kwargs: Any) -> IResNet:
    """IResNet-200 (``[6, 26, 60, 6]``), 118.8 M parameters at 512-d; as :func:`iresnet18`."""
    return _iresnet([6, 26, 60, 6], embedding_dim, dropout, **kwargs)
