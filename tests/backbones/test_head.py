"""Embedding heads, L2 normalisation and the wrapper for foreign backbones."""

from __future__ import annotations

import pytest
import torch
import torchvision
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

import metricface.backbones as B


@given(
    arrays(
        "float64",
        st.tuples(st.integers(1, 5), st.integers(1, 8)),
        elements=st.floats(-1e6, 1e6, allow_subnormal=False),
    )
)
def test_normalize_matches_float64_division(a):
    x = torch.from_numpy(a)
    norm = torch.sqrt((x * x).sum(dim=1, keepdim=True))
    expected = torch.where(norm > 1e-12, x / norm.clamp_min(1e-12), x / 1e-12)
    torch.testing.assert_close(B.normalize(x), expected)
    ok = norm.squeeze(1) > 1e-6
    torch.testing.assert_close(B.normalize(x).norm(dim=1)[ok], torch.ones_like(norm.squeeze(1))[ok])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_normalize_half_precision_does_not_overflow(dtype):
    x = torch.full((2, 512), 300.0, dtype=dtype)  # sum of squares overflows float16
    out = B.normalize(x)
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float().norm(dim=1), torch.ones(2), rtol=1e-2, atol=1e-2)
    assert not B.normalize(torch.zeros(1, 4, dtype=dtype)).any()  # zero stays zero, no NaN


def test_l2norm_module_and_errors():
    x = torch.randn(3, 4, 5)
    torch.testing.assert_close(B.L2Norm(dim=2)(x), x / x.norm(dim=2, keepdim=True))
    with pytest.raises(TypeError, match="floating-point"):
        B.normalize(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="eps"):
        B.L2Norm(eps=0.0)


def test_embedding_head_pools_feature_maps_and_matches_formula():
    torch.manual_seed(0)
    head = B.EmbeddingHead(6, 4).eval()
    with torch.no_grad():
        head.bn.running_mean.uniform_(-1, 1)
        head.bn.running_var.uniform_(0.5, 2)
    fmap = torch.randn(2, 6, 3, 5, dtype=torch.float64)
    head = head.double()
    pooled = fmap.mean(dim=(2, 3))
    z = pooled @ head.fc.weight.T
    bn = head.bn
    expected = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(head(fmap), expected)
    torch.testing.assert_close(head(pooled), expected)
    assert head.fc.bias is None  # the BN shift makes it redundant


def test_embedding_head_options_and_errors():
    head = B.EmbeddingHead(6, 4, batch_norm=False, normalize=True, dropout=0.5).eval()
    assert head.bn is None and head.fc.bias is not None
    torch.testing.assert_close(head(torch.randn(3, 6)).norm(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match=r"\(B, 6\)"):
        head(torch.randn(3, 5))
    with pytest.raises(ValueError, match="embedding_dim"):
        B.EmbeddingHead(6, 0)
    with pytest.raises(ValueError, match="dropout"):
        B.EmbeddingHead(6, 4, dropout=1.5)


def test_embedding_model_wraps_a_torchvision_network():
    torch.manual_seed(1)
    tv = torchvision.models.resnet18()
    tv.fc = nn.Identity()
    model = B.EmbeddingModel(tv, 512, 32, normalize=True)
    x = torch.randn(4, 3, 48, 48)
    out = model(x)
    assert out.shape == (4, 32)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    torch.testing.assert_close(model(x), model.head(tv(x)))


def test_embedding_model_accepts_feature_map_backbones():
    trunk = B.resnet18(num_classes=0)
    fmap_model = B.EmbeddingModel(nn.Sequential(trunk.conv1, trunk.bn1, trunk.layer1), 64, 8)
    assert fmap_model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 8)
    with pytest.raises(TypeError, match="backbone"):
        B.EmbeddingModel(lambda x: x, 4, 2)  # type: ignore[arg-type]
