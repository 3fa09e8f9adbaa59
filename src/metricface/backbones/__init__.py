"""Networks written from scratch: residual blocks, ResNet and IResNet families, embedding heads.

* :mod:`~metricface.backbones.blocks` - reusable residual blocks (basic, bottleneck, IR,
  pre-activation, squeeze-excitation) and :func:`init_weights`;
* :mod:`~metricface.backbones.resnet` - ``resnet18 ... resnet152``, state-dict compatible with
  torchvision;
* :mod:`~metricface.backbones.iresnet` - ``iresnet18 ... iresnet200`` for 112x112 faces,
  state-dict compatible with InsightFace's ``arcface_torch``;
* :mod:`~metricface.backbones.head` - embedding heads and a wrapper for any feature extractor;
* :mod:`~metricface.backbones.registry` - build by name, register your own;
* :mod:`~metricface.backbones.profile` - parameter and FLOP counts.
"""

from metricface.backbones.blocks import (
    BasicBlock,
    Bottleneck,
    IRBlock,
    PreActBasicBlock,
    PreActBottleneck,
    SEModule,
    conv1x1,
    conv3x3,
    init_weights,
)
from metricface.backbones.head import EmbeddingHead, EmbeddingModel, L2Norm, normalize
from metricface.backbones.iresnet import (
    IResNet,
    iresnet18,
    iresnet34,
    iresnet50,
    iresnet100,
    iresnet200,
)
from metricface.backbones.profile import ModelProfile, profile
from metricface.backbones.registry import available_backbones, build_backbone, register_backbone
from metricface.backbones.resnet import ResNet, resnet18, resnet34, resnet50, resnet101, resnet152

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "EmbeddingHead",
    "EmbeddingModel",
    "IRBlock",
    "IResNet",
    "L2Norm",
    "ModelProfile",
    "PreActBasicBlock",
    "PreActBottleneck",
    "ResNet",
    "SEModule",
    "available_backbones",
    "build_backbone",
    "conv1x1",
    "conv3x3",
    "init_weights",
    "iresnet18",
    "iresnet34",
    "iresnet50",
    "iresnet100",
    "iresnet200",
    "normalize",
    "profile",
    "register_backbone",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
]
