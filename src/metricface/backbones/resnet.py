"""ResNet-18/34/50/101/152 in the ImageNet layout, state-dict compatible with torchvision.

``resnetXX()`` builds exactly the network of ``torchvision.models.resnetXX()``: the same
modules under the same names (``conv1, bn1, layer1.0.conv1, ..., layer2.0.downsample.0/1,
fc``) with the same shapes, so torchvision checkpoints load with ``strict=True`` and give the
same outputs. Options that change the layout (``embedding_dim``, ``small_input``,
``se_reduction``, pre-activation blocks) are off by default.

Face option ``small_input=True``
    Replaces the 7x7 stride-2 stem convolution by a 3x3 stride-1 one and keeps the max-pool,
    so the stem downsamples by 2 instead of 4: a 112x112 face reaches ``layer4`` at 7x7, just
    as a 224x224 ImageNet image does (and as the IResNets do). For tiny inputs (32 px,
    CIFAR-style) also drop the pool: ``model.maxpool = torch.nn.Identity()``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Type, Union

import torch
from torch import nn

from metricface._validation import check_scalar
from metricface.backbones.blocks import (
    BasicBlock,
    Bottleneck,
    NormLayer,
    PreActBasicBlock,
    PreActBottleneck,
    _check_stage_depths,
    conv3x3,
    init_weights,
)
from metricface.backbones.head import EmbeddingHead

__all__ = ["ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]

ResNetBlock = Type[Union[BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck]]


class ResNet(nn.Module):
    """A four-stage residual network: stem, ``layer1..layer4``, global pooling and a head.

    **Shape:** ``(B, in_channels, H, W) -> (B, num_classes)`` or ``(B, embedding_dim)``, for
    any ``H, W >= 1`` (global average pooling).

    Parameters
    ----------
    block : type
        :class:`~metricface.backbones.BasicBlock`, :class:`~metricface.backbones.Bottleneck`
        or their pre-activation variants (which add a final ``final_bn`` + ReLU).
    layers : sequence of 4 ints
        Number of blocks per stage.
    num_classes : int
        Size of the ImageNet-style classifier ``fc``; ``0`` replaces it by
        :class:`torch.nn.Identity` so the network returns pooled features of size
        ``512 * block.expansion``. Must be left at its default (or 0) when
        ``embedding_dim`` is given.
    embedding_dim : int, optional
        Replace the classifier by an :class:`~metricface.backbones.EmbeddingHead`
        (dropout, linear, BatchNorm1d) producing ``embedding_dim`` features, stored as ``fc``.
    normalize : bool
        L2-normalise the embeddings (needs ``embedding_dim``); default ``False``.
    dropout : float
        Dropout before the embedding projection (needs ``embedding_dim``).
    small_input : bool
        3x3 stride-1 stem for 112x112 faces (see the module docstring).
    zero_init_residual : bool
        Start every residual block as the identity (see
        :func:`~metricface.backbones.init_weights`).
    norm_layer : callable, optional
        Normalisation layer factory, default :class:`torch.nn.BatchNorm2d`.
    se_reduction : int, optional
        Add a squeeze-excitation module with this reduction to every block (SE-ResNet).
    in_channels : int
        Image channels, default 3.
    """

    def __init__(
        self,
        block: ResNetBlock,
        layers: Sequence[int],
        num_classes: int = 1000,
        *,
        embedding_dim: Optional[int] = None,
        normalize: bool = False,
        dropout: float = 0.0,
        small_input: bool = False,
        zero_init_residual: bool = False,
        norm_layer: Optional[NormLayer] = None,
        se_reduction: Optional[int] = None,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if not (isinstance(block, type) and issubclass(block, nn.Module)):
            raise TypeError(f"block must be an nn.Module subclass, got {block!r}")
        _check_stage_depths(layers)
        check_scalar(num_classes, "num_classes", low=0, integer=True)
        check_scalar(in_channels, "in_channels", low=1, integer=True)
        check_scalar(dropout, "dropout", low=0.0, high=1.0, high_inclusive=False)
        if embedding_dim is not None and num_classes not in (0, 1000):
            raise ValueError(
                "num_classes has no effect when embedding_dim is given (the classifier is "
                f"replaced by the embedding head), got num_classes={num_classes}, "
                f"embedding_dim={embedding_dim}"
            )
        if embedding_dim is None and (normalize or dropout > 0):
            raise ValueError(
                "normalize=True and dropout > 0 apply to the embedding head: "
                f"pass embedding_dim as well (got embedding_dim=None, normalize={normalize}, "
                f"dropout={dropout})"
            )
        norm_layer = norm_layer or nn.BatchNorm2d
        self._norm_layer = norm_layer
        self._se_reduction = se_reduction
        self.inplanes = 64

        if small_input:
            self.conv1: nn.Conv2d = conv3x3(in_channels, 64)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], stride=1)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.num_features = 512 * block.expansion
        # pre-activation blocks leave their output un-normalised: close the trunk with BN-ReLU
        self.final_bn = norm_layer(self.num_features) if block.preactivation else None
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc: nn.Module
        if embedding_dim is not None:
            self.fc = EmbeddingHead(
                self.num_features, embedding_dim, dropout=dropout, normalize=normalize
            )
        elif num_classes == 0:
            self.fc = nn.Identity()
        else:
            self.fc = nn.Linear(self.num_features, num_classes)
        init_weights(self, zero_init_residual=zero_init_residual)

    def _make_layer(
        self, block: ResNetBlock, planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        kw: dict[str, Any] = {"norm_layer": self._norm_layer, "se_reduction": self._se_reduction}
        stage = [block(self.inplanes, planes, stride, **kw)]
        self.inplanes = planes * block.expansion
        stage += [block(self.inplanes, planes, **kw) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Run the trunk: ``(B, C, H, W) -> (B, 512 * expansion, H', W')`` before pooling."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if self.final_bn is not None:
            x = self.relu(self.final_bn(x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.forward_features(x)), 1)
        return self.fc(x)


def _resnet(block: ResNetBlock, layers: list[int], num_classes: int, **kwargs: Any) -> ResNet:
    return ResNet(block, layers, num_classes, **kwargs)


def resnet18(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """ResNet-18 (:class:`BasicBlock`, ``[2, 2, 2, 2]``), 11.7 M parameters for 1000 classes.

    Parameters
    ----------
    num_classes : int
        Classifier size (``0`` for pooled features).
    **kwargs
        Keyword options of :class:`ResNet` (``embedding_dim``, ``normalize``, ``dropout``,
        ``small_input``, ``zero_init_residual``, ``norm_layer``, ``se_reduction``,
        ``in_channels``).

    Returns
    -------
    ResNet
        ``(B, 3, H, W) -> (B, num_classes)`` (or ``(B, embedding_dim)``).
    """
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes, **kwargs)


def resnet34(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """ResNet-34 (:class:`BasicBlock`, ``[3, 4, 6, 3]``); options as :func:`resnet18`."""
    return _resnet(BasicBlock, [3, 4, 6, 3], num_classes, **kwargs)


def resnet50(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """ResNet-50 (:class:`Bottleneck` v1.5, ``[3, 4, 6, 3]``); options as :func:`resnet18`."""
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes, **kwargs)


def resnet101(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """ResNet-101 (:class:`Bottleneck` v1.5, ``[3, 4, 23, 3]``); options as :func:`resnet18`."""
    return _resnet(Bottleneck, [3, 4, 23, 3], num_classes, **kwargs)


def resnet152(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """ResNet-152 (:class:`Bottleneck` v1.5, ``[3, 8, 36, 3]``); options as :func:`resnet18`."""
    return _resnet(Bottleneck, [3, 8, 36, 3], num_classes, **kwargs)
