"""ResNet builders against torchvision: same state dict, same parameters, same outputs."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import metricface.backbones as B

DEPTHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", DEPTHS)
def test_state_dict_keys_shapes_and_param_count_match_torchvision(name):
    with torch.device("meta"):  # shapes only: skips the (slow) weight initialisation
        ours = getattr(B, name)()
        ref = getattr(torchvision.models, name)()
    assert list(_shapes(ours)) == list(_shapes(ref))  # same keys in the same order
    assert _shapes(ours) == _shapes(ref)
    n_ours = sum(p.numel() for p in ours.parameters())
    assert n_ours == sum(p.numel() for p in ref.parameters())
    # buffers too (BN running stats, num_batches_tracked)
    assert sum(b.numel() for b in ours.buffers()) == sum(b.numel() for b in ref.buffers())
    ours.load_state_dict(ref.state_dict(), strict=True)


@pytest.mark.parametrize(
    "name",
    [
        "resnet18",
        "resnet34",
        "resnet50",
        pytest.param("resnet101", marks=pytest.mark.slow),
        pytest.param("resnet152", marks=pytest.mark.slow),
    ],
)
def test_forward_equals_torchvision_with_loaded_weights(name):
    torch.manual_seed(1)
    ref = getattr(torchvision.models, name)(num_classes=10)
    # non-trivial BN statistics so eval mode exercises them
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    ours = getattr(B, name)(num_classes=10)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.eval()
    ours.eval()
    # an even input and an odd one (every stride-2 stage rounds up: padding must match too)
    for size in [(64, 64), (37, 45)]:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_train_mode_forward_backward_match_torchvision():
    torch.manual_seed(2)
    ref = torchvision.models.resnet18(num_classes=5)
    ours = B.resnet18(num_classes=5)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 3, 48, 48)
    ours(x).square().sum().backward()
    ref(x).square().sum().backward()
    for (n, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.parametrize("size", [(33, 47), (1, 1), (97, 64)])
def test_output_shapes_for_odd_inputs(size):
    model = B.resnet18(num_classes=7).eval()
    assert model(torch.randn(2, 3, *size)).shape == (2, 7)


def test_embedding_head_small_input_and_features():
    model = B.resnet18(embedding_dim=64, small_input=True).eval()
    assert isinstance(model.fc, B.EmbeddingHead)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    x = torch.randn(2, 3, 112, 112)
    assert model.forward_features(x).shape == (2, 512, 7, 7)  # like a 224 ImageNet image
    assert model(x).shape == (2, 64)
    assert B.resnet50(num_classes=0).eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2048)


def test_normalize_option_gives_unit_norm_embeddings():
    model = B.resnet34(embedding_dim=32, normalize=True).eval()
    out = model(torch.randn(4, 3, 40, 40))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))


@pytest.mark.parametrize(
    "build",
    [
        lambda: B.resnet18(embedding_dim=16, se_reduction=4, dropout=0.1),
        lambda: B.ResNet(B.Bottleneck, [1, 2, 1, 1], embedding_dim=16, se_reduction=4),
        lambda: B.ResNet(B.PreActBottleneck, [1, 1, 2, 1], num_classes=5, small_input=True),
        lambda: B.ResNet(B.PreActBasicBlock, [2, 1, 1, 1], embedding_dim=8, normalize=True),
    ],
    ids=["resnet18-se", "bottleneck-se", "preact-bottleneck", "preact-basic-normalized"],
)
def test_gradients_reach_every_parameter(build):
    torch.manual_seed(0)
    model = build()
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


def test_zero_init_residual_makes_blocks_identity_on_branch():
    model = B.ResNet(B.Bottleneck, [1, 2, 1, 1], zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, B.Bottleneck)]
    assert len(blocks) == 5 and all(not m.bn3.weight.any() for m in blocks)
    x = torch.randn(2, 64, 8, 8)
    blk = model.layer1[0]
    with torch.no_grad():  # the residual branch is zero: the block reduces to relu(shortcut)
        torch.testing.assert_close(blk.eval()(x), torch.relu(blk.downsample(x)))
    default = B.ResNet(B.Bottleneck, [1, 2, 1, 1])
    assert all(m.bn3.weight.eq(1).all() for m in default.modules() if isinstance(m, B.Bottleneck))


def test_preactivation_resnet_has_final_norm_and_runs():
    model = B.ResNet(B.PreActBasicBlock, [1, 1, 1, 1], num_classes=3)
    assert isinstance(model.final_bn, nn.BatchNorm2d)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert B.resnet18().final_bn is None


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"num_classes": -1}, ValueError, "num_classes"),
        ({"num_classes": 2.5}, TypeError, "num_classes"),
        ({"normalize": True}, ValueError, "embedding_dim"),
        ({"num_classes": 10, "embedding_dim": 8}, ValueError, "num_classes"),
        ({"embedding_dim": 0}, ValueError, "embedding_dim"),
        ({"embedding_dim": 8, "dropout": 1.0}, ValueError, "dropout"),
        ({"se_reduction": 0}, ValueError, "se_reduction"),
        ({"in_channels": 0}, ValueError, "in_channels"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        B.resnet18(**kwargs)


def test_bad_layout_arguments():
    with pytest.raises(ValueError, match="layers"):
        B.ResNet(B.BasicBlock, [2, 2, 2])
    with pytest.raises(TypeError, match="block"):
        B.ResNet("basic", [2, 2, 2, 2])  # type: ignore[arg-type]
