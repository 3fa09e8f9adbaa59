"""Gradients of the margin-softmax losses where they used to be wrong.

* float16 rows of tiny norm (embeddings or centers): their gradient is the float32 gradient of
  the same values, cast back (within float16's rounding), not one divided by a floor of about
  0.015 instead of the norm; where it exceeds float16's range it saturates, never ``inf``.
* ArcFace at small angles: the gradient follows the true one continuously, with no jump at
  ``theta = 1e-3`` rad, and stays bounded down to ``theta = 0``.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from metricface.losses import (
    AdaFaceLoss,
    ArcFaceLoss,
    CombinedMarginLoss,
    CosFaceLoss,
    NormSoftmaxLoss,
    PartialFCLoss,
    SphereFaceLoss,
    SubCenterArcFaceLoss,
)

FACTORIES = {
    "arcface": lambda c, d: ArcFaceLoss(c, d),
    "cosface": lambda c, d: CosFaceLoss(c, d),
    "sphereface": lambda c, d: SphereFaceLoss(c, d),
    "combined": lambda c, d: CombinedMarginLoss(c, d, 1.0, 0.3, 0.2),
    "subcenter": lambda c, d: SubCenterArcFaceLoss(c, d),
    "adaface": lambda c, d: AdaFaceLoss(c, d).eval(),
    "normsoftmax": lambda c, d: NormSoftmaxLoss(c, d),
    "partial_fc-chunked": lambda c, d: PartialFCLoss(c, d, chunk_size=3),
}
FP16_MAX = torch.finfo(torch.float16).max


def _grads_half_and_float(loss_half, x_half, labels):
    """Gradients of the float16 module on ``x_half`` and of a float32 copy on the same values."""
    loss_float = copy.deepcopy(loss_half).float()  # float16 values are exact in float32
    x_float = x_half.detach().float().requires_grad_(True)
    x_half = x_half.detach().requires_grad_(True)
    g16 = torch.autograd.grad(loss_half(x_half, labels), [x_half, loss_half.weight])
    g32 = torch.autograd.grad(loss_float(x_float, labels), [x_float, loss_float.weight])
    return g16, g32


def _assert_float16_is_float32_cast(g16, g32):
    for a, b in zip(g16, g32):
        assert a.dtype == torch.float16 and torch.isfinite(a).all()
        fits = b.abs() <= FP16_MAX
        # within 1% (float16 rounds to 0.05%; absolute slack for float16 subnormals only)
        torch.testing.assert_close(a.float()[fits], b[fits], rtol=1e-2, atol=1e-6)
        # beyond float16's range: the largest finite value of the right sign
        assert torch.equal(a[~fits].float(), b[~fits].sign() * FP16_MAX)


def test_issue_reproduction_float16_tiny_embeddings():
    # x = (randn(4, 8) * 1e-3).half() through ArcFaceLoss(10, 8).half(): the float16 gradient
    # was about 9x too small (divided by 0.0153 instead of norms near 0.003)
    torch.manual_seed(0)
    loss_half = ArcFaceLoss(10, 8).half()
    x = (torch.randn(4, 8) * 1e-3).half()
    labels = torch.tensor([0, 3, 5, 9])
    g16, g32 = _grads_half_and_float(loss_half, x, labels)
    assert (x.float().norm(dim=1) < 0.01).all()
    _assert_float16_is_float32_cast(g16, g32)


@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize("tiny", ["embeddings", "centers"])
def test_float16_tiny_norm_gradient_is_the_float32_gradient(name, tiny):
    torch.manual_seed(1)
    loss_half = FACTORIES[name](10, 128).half()
    x = torch.randn(6, 128) * (1e-3 if tiny == "embeddings" else 1.0)  # norms near 0.011
    if tiny == "centers":
        with torch.no_grad():  # norms near 1e-4, float16 subnormal entries
            loss_half.weight.mul_(1e-3)
    labels = torch.tensor([0, 3, 5, 9, 3, 1])
    g16, g32 = _grads_half_and_float(loss_half, x.half(), labels)
    _assert_float16_is_float32_cast(g16, g32)


# ----------------------------------------------------------------------------- ArcFace at
# small angles: two centers e0, e1 (D = 2), margin 0.5, scale 1, x at angle theta from e0


def _arcface_loss_of_x(x: torch.Tensor) -> torch.Tensor:
    """Float64 ArcFace loss for label 0 against e0, e1, from the paper's cos(theta + m), with
    the angle to e0 taken as atan2(x1, x0) (exact in float64 even for tiny angles)."""
    target = torch.cos(torch.atan2(x[1], x[0]) + 0.5)
    other = x[1] / x.norm()
    return torch.logsumexp(torch.stack([target, other]), dim=0) - target


def _numeric_grad(x: torch.Tensor, h: float = 1e-8) -> torch.Tensor:
    out = torch.zeros_like(x)
    for i in range(x.numel()):
        step = torch.zeros_like(x)
        step[i] = h
        out[i] = (_arcface_loss_of_x(x + step) - _arcface_loss_of_x(x - step)) / (2 * h)
    return out


def _our_grad(theta: float) -> torch.Tensor:
    loss_fn = ArcFaceLoss(2, 2, margin=0.5, scale=1.0).double()
    with torch.no_grad():
        loss_fn.weight.copy_(torch.eye(2, dtype=torch.float64))
    x = torch.tensor([[math.cos(theta), math.sin(theta)]], dtype=torch.float64)
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(x, torch.tensor([0])), x)
    return g[0]


@pytest.mark.parametrize("theta", [*np.geomspace(1e-4, 1e-2, 9).tolist(), 0.99e-3, 1.01e-3])
def test_arcface_gradient_follows_the_true_one_across_1e_3(theta):
    # at theta = 0.99e-3 the x-gradient was [-0.00029, 0.2942] instead of [-0.00043, 0.4352]
    x = torch.tensor([math.cos(theta), math.sin(theta)], dtype=torch.float64)
    torch.testing.assert_close(_our_grad(theta), _numeric_grad(x), rtol=1e-5, atol=1e-7)


def test_arcface_gradient_is_continuous_and_bounded_down_to_zero_angle():
    thetas = [0.0, *np.geomspace(1e-12, 1e-2, 41).tolist()]
    grads = torch.stack([_our_grad(t) for t in thetas])
    assert torch.isfinite(grads).all()
    # |d loss / d x| <= scale * (1 + 1) / |x| for this loss; the true limit at theta -> 0 is
    # about sin(0.5) * p_other / |x| in the direction of e1
    assert grads.norm(dim=1).max() <= 2.0
    # no jump between neighbouring angles where the float64 cosine resolves them
    resolved = grads[1:][torch.tensor(thetas[1:]) >= 1e-6]
    steps = (resolved[1:] - resolved[:-1]).norm(dim=1)
    assert steps.max() < 0.05
