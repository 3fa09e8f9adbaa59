"""profile(): parameter counts and forward FLOPs against an independent hook-based count."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import metricface.backbones as B


def _hook_flops(model: nn.Module, x: torch.Tensor) -> int:
    """2 * multiply-adds of every Conv2d and Linear, counted from their output shapes."""
    total = 0

    def conv_hook(m, inp, out):
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
        total += 2 * out.numel() * k

    def lin_hook(m, inp, out):
        nonlocal total
        total += 2 * out.numel() * m.in_features

    hs = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hs.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hs.append(m.register_forward_hook(lin_hook))
    with torch.no_grad():
        model.eval()(x)
    for h in hs:
        h.remove()
    return total


@pytest.mark.parametrize(
    ("build", "size"),
    [
        (lambda: B.resnet18(), (3, 64, 64)),
        (lambda: B.resnet50(embedding_dim=128, small_input=True), (3, 56, 48)),
        (
            lambda: B.iresnet18(embedding_dim=64, width=0.5, input_size=48, se_reduction=4),
            (3, 48, 48),
        ),
        (lambda: torchvision.models.resnet18(), (3, 32, 32)),
    ],
)
def test_flops_and_params_match_independent_count(build, size):
    torch.manual_seed(0)
    model = build()
    p = B.profile(model, size, batch_size=2)
    assert p.flops == _hook_flops(model, torch.randn(2, *size))
    assert p.params == sum(q.numel() for q in model.parameters())
    assert p.flops_per_sample == p.flops / 2
    assert p.input_size == size and p.batch_size == 2


def test_known_published_figures():
    # ResNet-50 at 224x224: 4.1 GMACs; IResNet-50 at 112x112: 6.3 GMACs (InsightFace)
    p = B.profile(B.resnet50(), (3, 224, 224))
    assert p.params == 25_557_032 and 4.0e9 < p.flops / 2 < 4.2e9
    q = B.profile(B.iresnet50(), (3, 112, 112))
    assert q.trainable_params == q.params - 512 and 6.2e9 < q.flops / 2 < 6.4e9


def test_profile_restores_training_mode_and_prints():
    model = B.iresnet18(embedding_dim=16, width=0.125, input_size=32)
    p = B.profile(model, (3, 32, 32))
    assert model.training
    text = str(p)
    assert "params" in text and "FLOPs per 3x32x32 input" in text
    assert f"{p.params / 1e3:.2f} k" in text


@pytest.mark.parametrize(
    ("args", "exc"),
    [
        (("not a model",), TypeError),
        ((nn.Linear(2, 2), ()), ValueError),
        ((nn.Linear(2, 2), (0,)), ValueError),
        ((nn.Linear(2, 2), (2,), 0), ValueError),
    ],
)
def test_profile_bad_arguments(args, exc):
    with pytest.raises(exc):
        B.profile(*args)
