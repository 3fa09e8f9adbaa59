"""Residual building blocks shared by the ResNet and IResNet families.

Every block is a plain :class:`torch.nn.Module` taking ``(B, inplanes, H, W)`` and returning
``(B, planes * expansion, ceil(H / stride), ceil(W / stride))``, so users can stack them into
their own networks. Sub-module names follow torchvision (``conv1``, ``bn1``, ...,
``downsample.0`` / ``downsample.1``) and InsightFace's ``arcface_torch`` (the IR block), so
checkpoints written by either load into networks assembled from these blocks.

When a block changes the tensor shape (``stride != 1`` or ``inplanes != planes * expansion``)
and no ``downsample`` module is given, it builds the usual projection shortcut: a strided
1x1 convolution followed by a normalisation layer, stored as ``downsample``.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import nn

from metricface._validation import check_scalar

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "IRBlock",
    "NormLayer",
    "PreActBasicBlock",
    "PreActBottleneck",
    "SEModule",
    "conv1x1",
    "conv3x3",
    "init_weights",
]

NormLayer = Callable[[int], nn.Module]
"""A callable building a normalisation layer for a number of channels, e.g. ``nn.BatchNorm2d``."""


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (the normalisation layer that follows has one).

    Maps ``(B, in_planes, H, W)`` to ``(B, out_planes, ceil(H / stride), ceil(W / stride))``.
    """
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias.

    Maps ``(B, in_planes, H, W)`` to ``(B, out_planes, ceil(H / stride), ceil(W / stride))``.
    """
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def init_weights(model: nn.Module, *, zero_init_residual: bool = False) -> None:
    """Initialise a network built from these blocks in place.

    Convolutions get Kaiming-normal weights (``fan_out``, ReLU gain, as torchvision), norm
    layers weight 1 and bias 0, linear layers keep PyTorch's default; with
    ``zero_init_residual`` every block's last norm (or, for pre-activation blocks, last
    convolution) is zeroed so each residual block starts as the identity, which often helps
    large-batch training.

    Parameters
    ----------
    model : nn.Module
        The network; modified in place.
    zero_init_residual : bool
        Call ``zero_init_last()`` on every block that has it.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm, nn.LayerNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, _ResidualBlock):
                m.zero_init_last()


def _check_stage_depths(layers: Sequence[int]) -> None:
    """Check a network's ``layers`` argument: four block counts, each a positive integer."""
    if len(layers) != 4:
        raise ValueError(f"layers must hold 4 block counts, got {list(layers)}")
    for i, n in enumerate(layers):
        check_scalar(n, f"layers[{i}]", low=1, integer=True)


class SEModule(nn.Module):
    """Squeeze-and-excitation: rescale each channel by a gate computed from global context.

    ``x * sigmoid(fc2(relu(fc1(avgpool(x)))))`` where ``fc1`` reduces the channels by
    ``reduction`` (at least one hidden channel) and ``fc2`` restores them; both are 1x1
    convolutions with bias (Hu et al., 2018).

    **Shape:** ``(B, C, H, W) -> (B, C, H, W)``.

    Parameters
    ----------
    channels : int
        Number of channels ``C`` of the input.
    reduction : int
        Channel reduction of the bottleneck, default 16.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        check_scalar(channels, "channels", low=1, integer=True)
        check_scalar(reduction, "reduction", low=1, integer=True)
        hidden = max(1, channels // reduction)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * gate


class _ResidualBlock(nn.Module):
    """What every block below shares: argument checks, the SE module, the shortcut, the addition.

    A subclass sets ``expansion`` and ``preactivation``, creates its residual branch in
    ``_build_branch`` and evaluates it in ``_branch``. The SE module and the shortcut are created
    after the branch, so sub-module names, their order and the seeded initialisation match
    torchvision's and InsightFace's blocks.
    """

    expansion: int = 1
    preactivation: bool = False
    _relu_after_add: bool = False

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        *,
        norm_layer: Optional[NormLayer] = None,
        se_reduction: Optional[int] = None,
    ) -> None:
        super().__init__()
        check_scalar(inplanes, "inplanes", low=1, integer=True)
        check_scalar(planes, "planes", low=1, integer=True)
        check_scalar(stride, "stride", low=1, integer=True)
        if se_reduction is not None:
            check_scalar(se_reduction, "se_reduction", low=1, integer=True)
        norm_layer = norm_layer or nn.BatchNorm2d
        outplanes = planes * self.expansion
        self._build_branch(inplanes, planes, stride, norm_layer)
        self.se = None if se_reduction is None else SEModule(outplanes, se_reduction)
        if downsample is None and (stride != 1 or inplanes != outplanes):
            downsample = self._projection(inplanes, outplanes, stride, norm_layer)
        self.downsample = downsample
        self.stride = stride

    def _build_branch(self, inplanes: int, planes: int, stride: int, norm_layer: NormLayer) -> None:
        raise NotImplementedError

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _projection(
        self, inplanes: int, outplanes: int, stride: int, norm_layer: NormLayer
    ) -> nn.Module:
        """The default shortcut when shapes change: a strided 1x1 convolution and a norm layer."""
        return nn.Sequential(conv1x1(inplanes, outplanes, stride), norm_layer(outplanes))

    def _merge(self, out: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        if self.se is not None:
            out = self.se(out)
        out = out + identity
        return self.relu(out) if self._relu_after_add else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self._merge(self._branch(x), identity)


class _PreActBlock(_ResidualBlock):
    """Pre-activation blocks: ``bn1`` + ReLU feed both the branch and a bare 1x1 projection."""

    preactivation: bool = True

    def _projection(
        self, inplanes: int, outplanes: int, stride: int, norm_layer: NormLayer
    ) -> nn.Module:
        return conv1x1(inplanes, outplanes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        identity = x if self.downsample is None else self.downsample(pre)
        return self._merge(self._branch(pre), identity)


class BasicBlock(_ResidualBlock):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34).

    ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; the stride sits on ``conv1``.

    **Shape:** ``(B, inplanes, H, W) -> (B, planes, ceil(H / stride), ceil(W / stride))``.

    Parameters
    ----------
    inplanes : int
        Input channels.
    planes : int
        Output channels (``expansion = 1``).
    stride : int
        Stride of the first convolution and of the projection shortcut.
    downsample : nn.Module, optional
        Shortcut module; by default a conv1x1 + norm projection is built when shapes change.
    norm_layer : callable, optional
        Normalisation layer factory, default :class:`torch.nn.BatchNorm2d`.
    se_reduction : int, optional
        If given, a :class:`SEModule` with this reduction rescales the residual branch
        before the addition (SE-ResNet).
    """

    expansion: int = 1
    _relu_after_add: bool = True

    def _build_branch(self, inplanes: int, planes: int, stride: int, norm_layer: NormLayer) -> None:
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)

    def zero_init_last(self) -> None:
        """Zero the last norm's weight so the block starts as the identity (Goyal et al., 2017)."""
        nn.init.zeros_(self.bn2.weight)

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class Bottleneck(_ResidualBlock):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a residual connection (ResNet-50/101/152).

    The stride sits on the 3x3 convolution (``conv2``), the "ResNet v1.5" layout torchvision
    uses, which is about 0.5 % more accurate on ImageNet than striding the first 1x1.

    **Shape:** ``(B, inplanes, H, W) -> (B, 4 * planes, ceil(H / stride), ceil(W / stride))``.

    Parameters
    ----------
    inplanes : int
        Input channels.
    planes : int
        Width of the bottleneck; the block outputs ``planes * 4`` channels.
    stride : int
        Stride of ``conv2`` and of the projection shortcut.
    downsample : nn.Module, optional
        Shortcut module; by default a conv1x1 + norm projection is built when shapes change.
    norm_layer : callable, optional
        Normalisation layer factory, default :class:`torch.nn.BatchNorm2d`.
    se_reduction : int, optional
        If given, a :class:`SEModule` rescales the residual branch before the addition.
    """

    expansion: int = 4
    _relu_after_add: bool = True

    def _build_branch(self, inplanes: int, planes: int, stride: int, norm_layer: NormLayer) -> None:
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = norm_layer(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)

    def zero_init_last(self) -> None:
        """Zero the last norm's weight so the block starts as the identity (Goyal et al., 2017)."""
        nn.init.zeros_(self.bn3.weight)

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class PreActBasicBlock(_PreActBlock):
    """Pre-activation basic block (He et al., 2016, "Identity mappings"): norm and ReLU first.

    ``conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut(x)`` with nothing after the addition.
    A projection shortcut, when needed, is a bare strided 1x1 convolution applied to the
    pre-activated input, as in the paper. A network of these blocks needs a final norm + ReLU
    after its last stage.

    **Shape:** ``(B, inplanes, H, W) -> (B, planes, ceil(H / stride), ceil(W / stride))``.

    Parameters
    ----------
    inplanes, planes, stride, downsample, norm_layer, se_reduction
        As for :class:`BasicBlock`.
    """

    expansion: int = 1

    def _build_branch(self, inplanes: int, planes: int, stride: int, norm_layer: NormLayer) -> None:
        self.bn1 = norm_layer(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn2 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes)

    def zero_init_last(self) -> None:
        """Zero the last convolution so the residual branch starts at zero."""
        nn.init.zeros_(self.conv2.weight)

    def _branch(self, pre: torch.Tensor) -> torch.Tensor:
        out = self.conv1(pre)
        return self.conv2(self.relu(self.bn2(out)))


class PreActBottleneck(_PreActBlock):
    """Pre-activation bottleneck: ``bn-relu-conv1x1, bn-relu-conv3x3(stride), bn-relu-conv1x1``.

    Outputs ``4 * planes`` channels; the projection shortcut (a bare strided 1x1 convolution)
    reads the pre-activated input, as in He et al. (2016).

    **Shape:** ``(B, inplanes, H, W) -> (B, 4 * planes, ceil(H / stride), ceil(W / stride))``.

    Parameters
    ----------
    inplanes, planes, stride, downsample, norm_layer, se_reduction
        As for :class:`Bottleneck`.
    """

    expansion: int = 4

    def _build_branch(self, inplanes: int, planes: int, stride: int, norm_layer: NormLayer) -> None:
        self.bn1 = norm_layer(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv1x1(inplanes, planes)
        self.bn2 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = norm_layer(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)

    def zero_init_last(self) -> None:
        """Zero the last convolution so the residual branch starts at zero."""
        nn.init.zeros_(self.conv3.weight)

    def _branch(self, pre: torch.Tensor) -> torch.Tensor:
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        return self.conv3(self.relu(self.bn3(out)))


class IRBlock(_ResidualBlock):
    """The "improved residual" block of face-recognition ResNets (ArcFace, Deng et al., 2019).

    ``bn3(conv2(prelu(bn2(conv1(bn1(x)))))) + shortcut(x)``: a batch norm before the first
    convolution, PReLU instead of ReLU, the stride on the *second* 3x3 convolution and no
    activation after the addition. Names match InsightFace's ``arcface_torch`` ``IBasicBlock``
    (``bn1, conv1, bn2, prelu, conv2, bn3, downsample``).

    **Shape:** ``(B, inplanes, H, W) -> (B, planes, ceil(H / stride), ceil(W / stride))``.

    Parameters
    ----------
    inplanes : int
        Input channels.
    planes : int
        Output channels (``expansion = 1``).
    stride : int
        Stride of ``conv2`` and of the projection shortcut.
    downsample : nn.Module, optional
        Shortcut module; by default a conv1x1 + norm projection is built when shapes change.
    norm_layer : callable, optional
        Normalisation layer factory, default :class:`torch.nn.BatchNorm2d`.
    se_reduction : int, optional
        If given, a :class:`SEModule` rescales the residual branch before the addition
        (the "IR-SE" networks).
    """

    expansion: int = 1

    def _build_branch(self, inplanes: int, planes: int, stride: int, norm_layer: NormLayer) -> None:
        self.bn1 = norm_layer(inplanes)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = norm_layer(planes)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = norm_layer(planes)

    def zero_init_last(self) -> None:
        """Zero the last norm's weight so the block starts as the identity."""
        nn.init.zeros_(self.bn3.weight)

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.prelu(self.bn2(self.conv1(self.bn1(x))))
        return self.bn3(self.conv2(out))
