"""chunked_margin_cross_entropy against a dense float64 autograd re-derivation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from metricface.losses import (
    AdaFaceMargin,
    ArcFaceMargin,
    CombinedMargin,
    CosFaceMargin,
    NoMargin,
    SphereFaceMargin,
    chunked_margin_cross_entropy,
    margin_cross_entropy,
)


# --------------------------------------------------------------------------- test margins
def arcface(cos: torch.Tensor, m: float = 0.5) -> torch.Tensor:
    """cos(theta + m) written as in the paper, via acos (fine away from cos = +-1)."""
    return torch.cos(torch.acos(cos) + m)


def arcface_safe(cos: torch.Tensor, m: float = 0.5) -> torch.Tensor:
    """cos(theta + m) by the angle-sum identity, with a sine that has a finite gradient."""
    sine = torch.sqrt((1.0 - cos * cos).clamp_min(1e-12))
    return cos * math.cos(m) - sine * math.sin(m)


def cosface(cos: torch.Tensor) -> torch.Tensor:
    return cos - 0.35


def no_margin(cos: torch.Tensor) -> torch.Tensor:
    return cos


MARGINS = {"arcface_safe": arcface_safe, "cosface": cosface, "none": no_margin}
LIBRARY_MARGINS = [
    ArcFaceMargin(0.5),
    ArcFaceMargin(0.5, easy_margin=True),
    CosFaceMargin(0.35),
    CombinedMargin(1.0, 0.3, 0.2),
    SphereFaceMargin(1.35),
    NoMargin(),
]


def dense_reference(x, w, y, margin, scale, reduction="mean"):
    """Dense margin softmax cross entropy, written independently with plain autograd."""
    cos = F.normalize(x, dim=1) @ F.normalize(w, dim=1).T
    target = cos.gather(1, y[:, None]).squeeze(1).clamp(-1.0, 1.0)
    logits = cos.scatter(1, y[:, None], margin(target)[:, None]) * scale
    return F.cross_entropy(logits, y, reduction=reduction)


def _data(b, d, c, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=dtype)
    w = torch.randn(c, d, generator=g, dtype=dtype)
    y = torch.randint(0, c, (b,), generator=g)
    return x, w, y


def _grads(fn, x, w):
    x = x.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    loss = fn(x, w)
    weights = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    gx, gw = torch.autograd.grad((loss * weights).sum(), (x, w))
    return loss.detach(), gx, gw


# --------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("margin", list(MARGINS))
@pytest.mark.parametrize("chunk_size", [1, 7, 37, 1000])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_dense_float64(margin, chunk_size, reduction):
    x, w, y = _data(6, 5, 37)
    y[0] = 36  # a target in the last, partial chunk
    y[1] = 0
    fn = MARGINS[margin]
    ours = _grads(
        lambda a, b: chunked_margin_cross_entropy(a, b, y, fn, 30.0, chunk_size, reduction), x, w
    )
    ref = _grads(lambda a, b: dense_reference(a, b, y, fn, 30.0, reduction), x, w)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_matches_dense_float32_rtol_1e5():
    x, w, y = _data(64, 32, 3000, dtype=torch.float32, seed=1)
    x64, w64 = x.double(), w.double()
    ours = _grads(
        lambda a, b: chunked_margin_cross_entropy(a, b, y, arcface, 64.0, chunk_size=512), x, w
    )
    dense32 = _grads(lambda a, b: dense_reference(a, b, y, arcface, 64.0), x, w)
    ref64 = _grads(lambda a, b: dense_reference(a, b, y, arcface, 64.0), x64, w64)
    for a, b, c in zip(ours, dense32, ref64):
        assert a.dtype == torch.float32
        # as close to the float64 truth as the dense float32 path, and within rtol 1e-5 of it
        tol = 1e-5 * c.abs().max().item()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=tol)
        torch.testing.assert_close(a.double(), c, rtol=1e-5, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_on_device_matches_float64_reference(device, dtype):
    x, w, y = _data(32, 16, 500, dtype=torch.float32, seed=7)
    x, w = x.to(dtype), w.to(dtype)
    ref = _grads(lambda a, b: dense_reference(a, b, y, arcface_safe, 64.0), x.double(), w.double())
    xd, wd, yd = x.to(device), w.to(device), y.to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype != torch.float32):
        ours = _grads(
            lambda a, b: chunked_margin_cross_entropy(a, b, yd, arcface_safe, 64.0, 128), xd, wd
        )
    tol = 1e-5 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps
    for a, b in zip(ours, ref):
        assert a.device.type == device.type and a.dtype == dtype
        torch.testing.assert_close(a.cpu().double(), b, rtol=tol, atol=tol * b.abs().max())


@pytest.mark.parametrize("margin", LIBRARY_MARGINS, ids=repr)
@pytest.mark.parametrize("extreme", [False, True])
def test_library_margins_match_dense_margin_cross_entropy(margin, extreme):
    x, w, y = _data(8, 6, 45, seed=11)
    if extreme:
        x[3] = w[y[3]]  # cos = 1 up to rounding
        x[4] = -w[y[4]]  # cos = -1 up to rounding
    ours = _grads(
        lambda a, b: chunked_margin_cross_entropy(a, b, y, margin, 64.0, 10, "none"), x, w
    )
    cos = lambda a, b: F.normalize(a, dim=1) @ F.normalize(b, dim=1).T  # noqa: E731
    ref = _grads(lambda a, b: margin_cross_entropy(cos(a, b), y, margin, 64.0, "none"), x, w)
    # at cos = +-1 a margin's slope is steep (ArcFace: sqrt(1 - c^2)), so the last-bit
    # difference between a dot product and a matmul shows up at about 1e-8
    tol = 1e-6 if extreme else 1e-10
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * b.abs().max())


def test_library_arcface_matches_textbook_formula():
    # away from theta > pi - m, ArcFaceMargin is cos(acos(c) + m)
    x, w, y = _data(16, 32, 300, seed=12)
    ours = _grads(
        lambda a, b: chunked_margin_cross_entropy(a, b, y, ArcFaceMargin(0.5), 64.0, 64), x, w
    )
    ref = _grads(lambda a, b: dense_reference(a, b, y, arcface, 64.0), x, w)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradcheck():
    x, w, y = _data(3, 4, 9)
    x.requires_grad_(True)
    w.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: chunked_margin_cross_entropy(a, b, y, arcface, 4.0, chunk_size=4), (x, w)
    )
    assert torch.autograd.gradcheck(
        lambda a, b: chunked_margin_cross_entropy(a, b, y, cosface, 4.0, 2, "none"), (x, w)
    )


@pytest.mark.parametrize("chunk_size", [4, 100])
def test_double_backward_raises_instead_of_dropping_second_order_terms(chunk_size):
    # with create_graph=True the first-order gradient must not pose as a constant: using it in
    # a gradient penalty has to fail, not silently drop the loss's curvature
    x, w, y = _data(3, 4, 9)
    x.requires_grad_(True)
    w.requires_grad_(True)
    loss = chunked_margin_cross_entropy(x, w, y, arcface, 4.0, chunk_size=chunk_size)
    g_x, g_w = torch.autograd.grad(loss, (x, w), create_graph=True)
    ref = torch.autograd.grad(dense_reference(x, w, y, arcface, 4.0), (x, w))
    torch.testing.assert_close(g_x, ref[0])  # first order still exact
    torch.testing.assert_close(g_w, ref[1])
    with pytest.raises(RuntimeError, match="cannot be differentiated twice"):
        (g_x.square().sum() + x.sum()).backward()


def test_normalisation_gradient_is_included():
    # scaling an embedding does not change the loss: its gradient is orthogonal to it
    x, w, y = _data(5, 6, 11)
    x.requires_grad_(True)
    chunked_margin_cross_entropy(x * 1.0, w, y, cosface, 10.0, chunk_size=3).backward()
    radial = (x.grad * x.detach()).sum(dim=1)
    torch.testing.assert_close(radial, torch.zeros(5, dtype=torch.float64), atol=1e-12, rtol=0)
    x2 = (x.detach() * 7.0).requires_grad_(True)
    chunked_margin_cross_entropy(x2, w, y, cosface, 10.0, chunk_size=3).backward()
    torch.testing.assert_close(x2.grad * 7.0, x.grad)


def test_only_needed_gradients():
    x, w, y = _data(4, 3, 10)
    w.requires_grad_(True)
    chunked_margin_cross_entropy(x, w, y, cosface, 8.0, chunk_size=3).backward()
    w_ref = w.detach().clone().requires_grad_(True)
    dense_reference(x, w_ref, y, cosface, 8.0).backward()
    torch.testing.assert_close(w.grad, w_ref.grad)
    assert x.grad is None


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def test_never_materialises_batch_by_classes():
    b, d, c, chunk = 16, 4, 2000, 100
    x, w, y = _data(b, d, c, dtype=torch.float32)
    x.requires_grad_(True)
    w.requires_grad_(True)
    with _LargestTensor() as mode:
        chunked_margin_cross_entropy(x, w, y, arcface_safe, 64.0, chunk_size=chunk).backward()
    biggest = max(math.prod(s) for s in mode.shapes)
    assert biggest <= max(b * chunk, c * d)  # block of logits, or the weight gradient
    assert all(s != (b, c) and s != (c, b) for s in mode.shapes)


# --------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(dtype):
    x, w, y = _data(8, 16, 50, dtype=torch.float32, seed=3)
    x, w = x.to(dtype), w.to(dtype)
    ours = _grads(lambda a, b: chunked_margin_cross_entropy(a, b, y, arcface_safe, 64.0, 16), x, w)
    ref = _grads(lambda a, b: dense_reference(a, b, y, arcface_safe, 64.0), x.double(), w.double())
    assert ours[0].dtype == dtype and ours[1].dtype == dtype and ours[2].dtype == dtype
    # only the final casts to the half dtype lose precision
    eps = torch.finfo(dtype).eps
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.double(), b, rtol=2 * eps, atol=2 * eps * b.abs().max())


def test_autocast_runs_in_float32():
    x, w, y = _data(8, 16, 50, dtype=torch.float32, seed=4)
    plain = chunked_margin_cross_entropy(x, w, y, arcface_safe, 64.0, chunk_size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = chunked_margin_cross_entropy(x, w, y, arcface_safe, 64.0, chunk_size=16)
    assert cast.dtype == torch.float32
    torch.testing.assert_close(cast, plain, rtol=0, atol=0)


finite = st.floats(-1e4, 1e4, allow_nan=False, width=16)


@given(
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
    values=st.lists(finite, min_size=3 * 4, max_size=3 * 4),
    wvalues=st.lists(finite, min_size=5 * 4, max_size=5 * 4),
    labels=st.lists(st.integers(0, 4), min_size=3, max_size=3),
    duplicate=st.booleans(),
    margin=st.sampled_from([*MARGINS.values(), *LIBRARY_MARGINS]),
)
def test_finite_for_finite_inputs(dtype, values, wvalues, labels, duplicate, margin):
    x = torch.tensor(values, dtype=dtype).reshape(3, 4)
    w = torch.tensor(wvalues, dtype=dtype).reshape(5, 4)
    y = torch.tensor(labels)
    if duplicate:  # cos = 1 and -1 exactly, and a repeated embedding
        x[0] = w[y[0]]
        x[1] = x[0]
        x[2] = -w[y[2]]
    x.requires_grad_(True)
    w.requires_grad_(True)
    loss = chunked_margin_cross_entropy(x, w, y, margin, 64.0, chunk_size=2)
    loss.backward()
    assert torch.isfinite(loss)
    # including float16 rows of tiny or zero norm, whose gradient divisor is floored
    assert torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()


# --------------------------------------------------------------------------- validation
def test_adaface_margin_gets_the_embedding_norms():
    # AdaFace is an ordinary margin: the kernel passes every margin the embeddings' norms
    x, w, y = _data(12, 6, 30, seed=13)
    x = x * torch.linspace(0.5, 40.0, 12, dtype=torch.float64)[:, None]  # a spread of norms
    margin = AdaFaceMargin(0.4, 0.333)
    ours = _grads(lambda a, b: chunked_margin_cross_entropy(a, b, y, margin, 64.0, 7, "none"), x, w)
    cos = lambda a, b: F.normalize(a, dim=1) @ F.normalize(b, dim=1).T  # noqa: E731
    ref = _grads(
        lambda a, b: margin_cross_entropy(
            cos(a, b), y, margin, 64.0, "none", norms=a.detach().norm(dim=1)
        ),
        x,
        w,
    )
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_rejects_bad_input():
    x, w, y = _data(4, 3, 10, dtype=torch.float32)
    f = chunked_margin_cross_entropy
    with pytest.raises(
        ValueError, match=r"labels must be in \[0, num_classes=10\), got a label 10"
    ):
        f(x, w, torch.tensor([0, 1, 2, 10]), cosface)
    with pytest.raises(ValueError, match="labels must have one entry per embedding"):
        f(x, w, y[:3], cosface)
    with pytest.raises(TypeError, match="labels must have an integer dtype"):
        f(x, w, y.float(), cosface)
    with pytest.raises(ValueError, match=r"weight must have shape \(num_classes, 3\)"):
        f(x, torch.randn(10, 4), y, cosface)
    with pytest.raises(TypeError, match="weight must have a floating-point dtype"):
        f(x, w.long(), y, cosface)
    with pytest.raises(TypeError, match="margin must be callable"):
        f(x, w, y, 0.5)
    with pytest.raises(ValueError, match=r"embeddings must be on the same device as weight"):
        f(x.to("meta"), w, y, cosface)
    with pytest.raises(ValueError, match="scale must be in"):
        f(x, w, y, cosface, scale=0.0)
    with pytest.raises(ValueError, match="chunk_size must be in"):
        f(x, w, y, cosface, chunk_size=0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        f(x, w, y, cosface, reduction="max")
    with pytest.raises(ValueError, match=r"embeddings must have shape \(batch, dim\)"):
        f(x[0], w, y, cosface)
