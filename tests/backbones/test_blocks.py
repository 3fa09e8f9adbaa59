"""Residual blocks against torchvision's blocks and float64 functional re-derivations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.models.resnet as tvr
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import metricface.backbones as B

ALL_BLOCKS = [B.BasicBlock, B.Bottleneck, B.PreActBasicBlock, B.PreActBottleneck, B.IRBlock]


def _randomise_bn(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Eval-mode batch norm, written out."""
    shape = (1, -1, 1, 1)
    mean, var = bn.running_mean.double().view(shape), bn.running_var.double().view(shape)
    w, b = bn.weight.double().view(shape), bn.bias.double().view(shape)
    return (x - mean) / torch.sqrt(var + bn.eps) * w + b


def _conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    bias = None if conv.bias is None else conv.bias.double()
    return F.conv2d(x, conv.weight.double(), bias, conv.stride, conv.padding)


@pytest.mark.parametrize(
    ("ours", "ref", "inplanes", "planes", "stride"),
    [
        (B.BasicBlock, tvr.BasicBlock, 8, 8, 1),
        (B.BasicBlock, tvr.BasicBlock, 8, 16, 2),
        (B.Bottleneck, tvr.Bottleneck, 32, 8, 1),
        (B.Bottleneck, tvr.Bottleneck, 16, 8, 2),
    ],
)
def test_basic_and_bottleneck_equal_torchvision(ours, ref, inplanes, planes, stride):
    torch.manual_seed(0)
    out = planes * ours.expansion
    down = None
    if stride != 1 or inplanes != out:
        down = nn.Sequential(tvr.conv1x1(inplanes, out, stride), nn.BatchNorm2d(out))
    r = ref(inplanes, planes, stride, down)
    _randomise_bn(r)
    o = ours(inplanes, planes, stride)
    o.load_state_dict(r.state_dict(), strict=True)
    x = torch.randn(2, inplanes, 11, 10)
    with torch.no_grad():
        torch.testing.assert_close(o.eval()(x), r.eval()(x), rtol=1e-5, atol=1e-5)


def test_bottleneck_strides_on_the_3x3():
    blk = B.Bottleneck(16, 8, stride=2)
    assert blk.conv1.stride == (1, 1) and blk.conv2.stride == (2, 2) and blk.conv3.stride == (1, 1)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("se", [None, 2])
def test_ir_block_matches_float64_rederivation(stride, se):
    torch.manual_seed(1)
    blk = B.IRBlock(6, 6 if stride == 1 else 12, stride, se_reduction=se)
    _randomise_bn(blk)
    with torch.no_grad():
        blk.prelu.weight.uniform_(0.0, 0.5)
    blk.eval()
    x = torch.randn(2, 6, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        out = _bn(_conv(_bn(x, blk.bn1), blk.conv1), blk.bn2)
        a = blk.prelu.weight.double().view(1, -1, 1, 1)
        out = torch.where(out >= 0, out, a * out)  # PReLU
        out = _bn(_conv(out, blk.conv2), blk.bn3)
        if se is not None:
            s = blk.se
            g = out.mean(dim=(2, 3), keepdim=True)
            g = torch.sigmoid(_conv(torch.relu(_conv(g, s.fc1)), s.fc2))
            out = out * g
        short = x if blk.downsample is None else _bn(_conv(x, blk.downsample[0]), blk.downsample[1])
        expected = out + short
        got = blk.double()(x)
    assert blk.conv2.stride == (stride, stride) and blk.conv1.stride == (1, 1)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("block", [B.PreActBasicBlock, B.PreActBottleneck])
def test_preactivation_blocks_match_float64_rederivation(block):
    torch.manual_seed(2)
    blk = block(8, 4, stride=2).double()
    _randomise_bn(blk)
    blk.eval()
    x = torch.randn(2, 8, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        pre = torch.relu(_bn(x, blk.bn1))
        short = _conv(pre, blk.downsample)
        out = _conv(pre, blk.conv1)
        out = _conv(torch.relu(_bn(out, blk.bn2)), blk.conv2)
        if block is B.PreActBottleneck:
            out = _conv(torch.relu(_bn(out, blk.bn3)), blk.conv3)
        torch.testing.assert_close(blk(x), out + short, rtol=1e-10, atol=1e-10)


def test_se_module_formula_and_hidden_floor():
    torch.manual_seed(3)
    se = B.SEModule(8, reduction=4).double()
    x = torch.randn(3, 8, 5, 6, dtype=torch.float64)
    h = torch.relu(x.mean(dim=(2, 3)) @ se.fc1.weight[:, :, 0, 0].T + se.fc1.bias)
    g = torch.sigmoid(h @ se.fc2.weight[:, :, 0, 0].T + se.fc2.bias)
    torch.testing.assert_close(se(x), x * g[:, :, None, None])
    assert B.SEModule(4, reduction=16).fc1.out_channels == 1


@given(
    idx=st.integers(0, len(ALL_BLOCKS) - 1),
    inplanes=st.integers(1, 9),
    planes=st.integers(1, 6),
    stride=st.integers(1, 3),
    h=st.integers(1, 13),
    w=st.integers(1, 13),
    se=st.sampled_from([None, 1, 4]),
)
def test_any_block_output_shape(idx, inplanes, planes, stride, h, w, se):
    block = ALL_BLOCKS[idx]
    blk = block(inplanes, planes, stride, se_reduction=se).eval()
    out = blk(torch.randn(1, inplanes, h, w))
    assert out.shape == (1, planes * block.expansion, math.ceil(h / stride), math.ceil(w / stride))
    needs_projection = stride != 1 or inplanes != planes * block.expansion
    assert (blk.downsample is not None) == needs_projection


def test_custom_downsample_and_norm_layer_are_used():
    down = nn.Sequential(nn.AvgPool2d(2, ceil_mode=True), B.conv1x1(4, 8))
    blk = B.BasicBlock(4, 8, 2, down, norm_layer=lambda c: nn.GroupNorm(2, c))
    assert blk.downsample is down and isinstance(blk.bn1, nn.GroupNorm)
    assert blk(torch.randn(2, 4, 6, 6)).shape == (2, 8, 3, 3)


def test_init_weights_kaiming_and_zero_init():
    torch.manual_seed(4)
    net = nn.Sequential(B.Bottleneck(64, 64), B.IRBlock(256, 256), B.PreActBasicBlock(256, 256))
    B.init_weights(net, zero_init_residual=True)
    conv = net[0].conv2  # 64 -> 64, 3x3: std = sqrt(2 / fan_out)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)
    assert not net[0].bn3.weight.any() and net[0].bn1.weight.eq(1).all()
    assert not net[1].bn3.weight.any() and not net[2].conv2.weight.any()
    assert not net[0].bn1.bias.any()


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"inplanes": 0, "planes": 4}, ValueError, "inplanes"),
        ({"inplanes": 4, "planes": 2.0}, TypeError, "planes"),
        ({"inplanes": 4, "planes": 4, "stride": 0}, ValueError, "stride"),
        ({"inplanes": 4, "planes": 4, "se_reduction": 0}, ValueError, "se_reduction"),
    ],
)
@pytest.mark.parametrize("block", ALL_BLOCKS)
def test_block_argument_errors(block, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        block(**kwargs)


def test_se_module_argument_errors():
    with pytest.raises(ValueError, match="reduction"):
        B.SEModule(8, reduction=0)
