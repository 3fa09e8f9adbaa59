"""build_backbone / available_backbones / register_backbone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import metricface.backbones as B
from metricface.backbones import registry

BUILTIN = [f"resnet{d}" for d in (18, 34, 50, 101, 152)] + [
    f"iresnet{d}" for d in (18, 34, 50, 100, 200)
]


def test_available_lists_every_builder():
    names = B.available_backbones()
    assert names == sorted(names)
    assert set(BUILTIN) <= set(names)


@pytest.mark.parametrize("name", ["resnet18", "ResNet34", "iresnet18", "IRESNET50"])
def test_build_by_name_equals_builder(name):
    model = B.build_backbone(name, embedding_dim=8)
    ref = getattr(B, name.lower())(embedding_dim=8)
    assert type(model) is type(ref)
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown backbone 'resnet19'") as info:
        B.build_backbone("resnet19")
    for name in BUILTIN:
        assert name in str(info.value)
    with pytest.raises(TypeError, match="name"):
        B.build_backbone(18)  # type: ignore[arg-type]


def test_register_custom_backbone(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @B.register_backbone("tiny_mlp")
    def tiny_mlp(embedding_dim: int = 4) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(embedding_dim))

    assert "tiny_mlp" in B.available_backbones()
    out = B.build_backbone("tiny_mlp", embedding_dim=3)(torch.randn(2, 1, 4, 4))
    assert out.shape == (2, 3)
    with pytest.raises(ValueError, match="already registered"):
        B.register_backbone("tiny_mlp", tiny_mlp)
    B.register_backbone("tiny_mlp", B.iresnet18, overwrite=True)
    assert isinstance(B.build_backbone("tiny_mlp", width=0.125), B.IResNet)
    with pytest.raises(TypeError, match="callable"):
        B.register_backbone("x", 3)  # type: ignore[arg-type]
