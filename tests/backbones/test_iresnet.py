"""IResNet layout: InsightFace parameter counts, shapes, options and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import metricface.backbones as B

# arcface_torch's published parameter counts for a 512-d embedding (frozen BN1d scale included)
EXPECTED_PARAMS = {
    "iresnet18": 24_025_600,
    "iresnet34": 34_139_328,
    "iresnet50": 43_590_848,
    "iresnet100": 65_156_160,
    "iresnet200": 118_833_920,
}
LAYERS = {
    "iresnet18": [2, 2, 2, 2],
    "iresnet34": [3, 4, 6, 3],
    "iresnet50": [3, 4, 14, 3],
    "iresnet100": [3, 13, 30, 3],
    "iresnet200": [6, 26, 60, 6],
}


def _reference_param_count(layers: list[int], emb: int = 512) -> int:
    """Re-derive the count by hand from the published layout."""
    bn = lambda c: 2 * c  # noqa: E731
    total = 3 * 64 * 9 + bn(64) + 64  # stem conv, bn, prelu
    cin = 64
    for c, n in zip([64, 128, 256, 512], layers):
        for i in range(n):
            total += bn(cin) + cin * c * 9 + bn(c) + c + c * c * 9 + bn(c)
            if i == 0:
                total += cin * c + bn(c)  # projection shortcut (stride 2)
            cin = c
    return total + bn(512) + 512 * 49 * emb + emb + bn(emb)


@pytest.mark.parametrize("name", list(EXPECTED_PARAMS))
def test_parameter_counts_match_insightface(name):
    model = getattr(B, name)()
    n = sum(p.numel() for p in model.parameters())
    assert n == EXPECTED_PARAMS[name] == _reference_param_count(LAYERS[name])
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == LAYERS[name]
    # only the embedding BN's scale is frozen
    frozen = [k for k, p in model.named_parameters() if not p.requires_grad]
    assert frozen == ["features.weight"]


def test_state_dict_names_follow_arcface_torch():
    keys = set(B.iresnet18().state_dict())
    for k in [
        "conv1.weight",
        "bn1.running_var",
        "prelu.weight",
        "layer1.0.bn1.weight",
        "layer1.0.conv1.weight",
        "layer1.0.bn2.weight",
        "layer1.0.prelu.weight",
        "layer1.0.conv2.weight",
        "layer1.0.bn3.weight",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.weight",
        "bn2.weight",
        "fc.weight",
        "fc.bias",
        "features.weight",
        "features.running_mean",
    ]:
        assert k in keys, k
    assert "layer1.1.downsample.0.weight" not in keys


def test_stage_resolutions_and_output():
    model = B.iresnet18().eval()
    x = torch.randn(2, 3, 112, 112)
    feats = [model.prelu(model.bn1(model.conv1(x)))]
    for i in range(1, 5):
        feats.append(getattr(model, f"layer{i}")(feats[-1]))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (64, 112, 112),
        (64, 56, 56),
        (128, 28, 28),
        (256, 14, 14),
        (512, 7, 7),
    ]
    assert model(x).shape == (2, 512)


def test_forward_matches_a_hand_written_head():
    torch.manual_seed(0)
    model = B.iresnet18(embedding_dim=32, width=0.25, input_size=64).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        trunk = model.forward_features(x)
        bn2 = model.bn2
        z = (trunk - bn2.running_mean[:, None, None]) / torch.sqrt(
            bn2.running_var[:, None, None] + bn2.eps
        ) * bn2.weight[:, None, None] + bn2.bias[:, None, None]
        e = z.flatten(1) @ model.fc.weight.T + model.fc.bias
        f = model.features
        e = (e - f.running_mean) / torch.sqrt(f.running_var + f.eps) * f.weight + f.bias
        torch.testing.assert_close(model(x), e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("size", "fmap"), [(112, (7, 7)), ((97, 83), (7, 6)), (32, (2, 2))])
def test_width_and_input_size_options(size, fmap):
    model = B.iresnet34(embedding_dim=16, width=0.125, input_size=size).eval()
    assert model.feature_map_size == fmap
    assert model.fc.in_features == 64 * fmap[0] * fmap[1]
    hw = (size, size) if isinstance(size, int) else size
    assert model(torch.randn(2, 3, *hw)).shape == (2, 16)


def test_tiny_cpu_model_is_small():
    model = B.iresnet18(embedding_dim=128, width=0.25, input_size=64)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_wrong_input_size_is_a_clear_error():
    model = B.iresnet18(width=0.125)
    with pytest.raises(ValueError, match=r"input_size"):
        model(torch.randn(1, 3, 96, 96))


def test_normalize_gives_unit_norm_and_default_is_raw():
    x = torch.randn(3, 3, 32, 32)
    on = B.iresnet18(embedding_dim=8, width=0.125, input_size=32, normalize=True).eval()
    torch.testing.assert_close(on(x).norm(dim=1), torch.ones(3))
    off = B.iresnet18(embedding_dim=8, width=0.125, input_size=32).eval()
    off.load_state_dict(on.state_dict())
    raw = off(x)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(on(x), raw / raw.norm(dim=1, keepdim=True))


def test_gradients_reach_every_trainable_parameter():
    model = B.iresnet18(embedding_dim=8, width=0.125, input_size=32, se_reduction=2, dropout=0.2)
    model(torch.randn(4, 3, 32, 32)).square().sum().backward()
    missing = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.any())
    ]
    assert missing == []
    assert model.features.weight.grad is None


def test_zero_init_residual_and_init():
    model = B.iresnet18(width=0.125, zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, B.IRBlock)]
    assert len(blocks) == 8 and all(not b.bn3.weight.any() for b in blocks)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.weight.std() > 0 for m in convs)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"embedding_dim": 0}, ValueError, "embedding_dim"),
        ({"dropout": -0.1}, ValueError, "dropout"),
        ({"width": 0.0}, ValueError, "width"),
        ({"input_size": (112, 112, 3)}, ValueError, "input_size"),
        ({"input_size": 0}, ValueError, "input_size"),
        ({"input_size": 11.5}, TypeError, "input_size"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        B.iresnet18(**kwargs)
