"""Margin callables and margin cross entropy against float64 re-derivations written here."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from metricface.losses.functional import (
    AdaFaceMargin,
    ArcFaceMargin,
    CombinedMargin,
    CosFaceMargin,
    NoMargin,
    SphereFaceMargin,
    apply_margin,
    margin_cross_entropy,
    subcenter_max,
)

# ---------------------------------------------------------------- float64 references (numpy)


def ref_arcface(c, m, easy=False):
    theta = np.arccos(c)
    phi = np.cos(theta + m)
    if easy:
        return np.where(c > 0, phi, c)
    return np.where(theta + m <= math.pi, phi, c - m * math.sin(m))


def ref_sphereface(c, m):
    theta = np.arccos(c)
    k = np.floor(m * theta / math.pi)
    return (-1.0) ** k * np.cos(m * theta) - 2 * k


def ref_combined(c, m1, m2, m3):
    theta = np.arccos(c)
    t_star = (math.pi - m2) / m1
    main = np.cos(m1 * theta + m2) - m3
    # continuous continuation past t_star: value there is -1 - m3, slope of cos(theta)
    cont = -1 - m3 + (c - math.cos(min(t_star, math.pi)))
    return np.where(theta <= t_star, main, cont)


def ref_adaface(c, norms, m, h, eps, mean=None, std=None):
    z = np.clip(norms, 1e-3, 100)
    if mean is None:
        mean, std = z.mean(), z.std(ddof=1)
    q = np.clip((z - mean) / (std + eps) * h, -1, 1)
    theta = np.clip(np.arccos(c) - m * q, eps, math.pi - eps)
    return np.cos(theta) - (m + m * q)


MARGINS = [
    (NoMargin(), lambda c: c),
    (CosFaceMargin(0.35), lambda c: c - 0.35),
    (CosFaceMargin(0.1), lambda c: c - 0.1),
    (ArcFaceMargin(0.5), lambda c: ref_arcface(c, 0.5)),
    (ArcFaceMargin(0.3), lambda c: ref_arcface(c, 0.3)),
    (ArcFaceMargin(0.5, easy_margin=True), lambda c: ref_arcface(c, 0.5, easy=True)),
    (SphereFaceMargin(1.35), lambda c: ref_sphereface(c, 1.35)),
    (SphereFaceMargin(4), lambda c: ref_sphereface(c, 4)),
    (CombinedMargin(1.0, 0.3, 0.2), lambda c: ref_combined(c, 1.0, 0.3, 0.2)),
    (CombinedMargin(1.2, 0.4, 0.1), lambda c: ref_combined(c, 1.2, 0.4, 0.1)),
    (CombinedMargin(0.9, 0.2, 0.0), lambda c: ref_combined(c, 0.9, 0.2, 0.0)),
]
IDS = [repr(m) for m, _ in MARGINS]


def _grid(n=2001, edge=1e-3):
    """Cosines avoiding +-1 (where acos' derivative diverges) and every branch switch."""
    return np.linspace(-1 + edge, 1 - edge, n)


def _numeric_grad(f, c, h=1e-6):
    return (f(c + h) - f(c - h)) / (2 * h)


def _away_from_kinks(margin, c, tol=1e-4):
    """Mask of grid points not within tol of a branch switch of the margin."""
    theta = np.arccos(c)
    kinks = []
    if isinstance(margin, ArcFaceMargin):
        kinks = [0.0] if margin.easy_margin else [math.cos(math.pi - margin.margin)]
    elif isinstance(margin, SphereFaceMargin):
        kinks = [math.cos(k * math.pi / margin.margin) for k in range(1, 8)]
    elif isinstance(margin, CombinedMargin):
        kinks = [math.cos(min(math.pi, (math.pi - margin.m2) / margin.m1))]
    ok = np.ones_like(c, dtype=bool)
    for k in kinks:
        ok &= np.abs(c - k) > tol
    return ok & (theta > 1e-3)


@pytest.mark.parametrize(("margin", "ref"), MARGINS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_margin_matches_reference(margin, ref, dtype):
    c = _grid()
    c = c[_away_from_kinks(margin, c)]
    x = torch.tensor(c, dtype=dtype, requires_grad=True)
    out = margin(x)
    assert out.dtype == dtype
    (grad,) = torch.autograd.grad(out.sum(), x)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    c_used = x.detach().double().numpy()
    np.testing.assert_allclose(out.detach().double().numpy(), ref(c_used), atol=tol, rtol=tol)
    num = _numeric_grad(ref, c_used)
    gtol = 1e-5 if dtype == torch.float64 else 2e-3
    np.testing.assert_allclose(grad.double().numpy(), num, atol=gtol, rtol=gtol)


@pytest.mark.parametrize(("margin", "ref"), MARGINS, ids=IDS)
def test_margin_is_monotone_in_cosine(margin, ref):
    c = torch.linspace(-1, 1, 20001, dtype=torch.float64)
    out = margin(c)
    if getattr(margin, "easy_margin", False):
        # documented exception: easy margin drops from 0 to -sin(m) just above cos = 0
        jump = out[1:] < out[:-1] - 1e-12
        assert torch.equal(c[1:][jump], c[c > 0][:1])
    else:
        assert torch.all(out[1:] >= out[:-1] - 1e-12)
    if getattr(margin, "m1", 1.0) >= 1.0:  # m1 < 1 shrinks the angle
        assert torch.all(out <= c + 1e-12)  # a margin never makes the target easier


@pytest.mark.parametrize(("margin", "ref"), MARGINS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_margin_finite_at_plus_minus_one(margin, ref, dtype):
    x = torch.tensor([1.0, -1.0, 1.0, -1.0, 0.0], dtype=dtype, requires_grad=True)
    out = margin(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    # exact values at the ends
    expected = ref(np.array([1.0, -1.0]))
    np.testing.assert_allclose(out[:2].double().detach().numpy(), expected, atol=1e-6)
    # cosines rounded just past +-1 are clamped but still receive a gradient
    y = torch.tensor([1.0 + 1e-6, -1.0 - 1e-6], dtype=torch.float64, requires_grad=True)
    (gy,) = torch.autograd.grad(margin(y).sum(), y)
    assert torch.isfinite(gy).all()
    np.testing.assert_allclose(margin(y).detach().numpy(), expected, atol=1e-12)


def test_arcface_gradient_at_one_is_cos_m():
    # d/dc [c cos m - sin(theta) sin m]; the sin part has its gradient capped at +-1
    x = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(ArcFaceMargin(0.5)(x).sum(), x)
    assert g.item() == pytest.approx(math.cos(0.5))


@given(
    c=st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=20),
    m=st.floats(0.0, math.pi / 2),
    m1=st.floats(0.5, 3.0),
    m3=st.floats(0.0, 1.0),
)
def test_margins_finite_for_any_cosine(c, m, m1, m3):
    x = torch.tensor(c, dtype=torch.float32, requires_grad=True)
    for margin in (
        ArcFaceMargin(m),
        ArcFaceMargin(m, easy_margin=True),
        SphereFaceMargin(1 + m1),
        CombinedMargin(m1, m, m3),
        CosFaceMargin(m3),
    ):
        out = margin(x)
        (g,) = torch.autograd.grad(out.sum(), x)
        assert torch.isfinite(out).all() and torch.isfinite(g).all(), margin


def test_combined_reduces_to_arcface_and_cosface():
    c = torch.linspace(-0.8, 1, 1001, dtype=torch.float64)  # theta + 0.5 <= pi here
    torch.testing.assert_close(CombinedMargin(1.0, 0.5, 0.0)(c), ArcFaceMargin(0.5)(c))
    c = torch.linspace(-1, 1, 1001, dtype=torch.float64)
    torch.testing.assert_close(CombinedMargin(1.0, 0.0, 0.35)(c), CosFaceMargin(0.35)(c))


@pytest.mark.parametrize("stats", [False, True])
def test_adaface_matches_reference(stats):
    rng = np.random.default_rng(0)
    c = rng.uniform(-0.99, 0.99, 64)
    norms = rng.uniform(5, 40, 64)
    mean, std = (18.0, 7.0) if stats else (None, None)
    margin = AdaFaceMargin(0.4, 0.333)
    x = torch.tensor(c, requires_grad=True)
    kw = {}
    if stats:
        kw = {"norm_mean": torch.tensor(mean), "norm_std": torch.tensor(std)}
    out = margin(x, torch.tensor(norms, requires_grad=True), **kw)
    expected = ref_adaface(c, norms, 0.4, 0.333, 1e-3, mean, std)
    np.testing.assert_allclose(out.detach().numpy(), expected, atol=1e-12)
    (g,) = torch.autograd.grad(out.sum(), x)
    num = _numeric_grad(lambda cc: ref_adaface(cc, norms, 0.4, 0.333, 1e-3, mean, std), c)
    np.testing.assert_allclose(g.numpy(), num, atol=1e-5)


def test_adaface_extremes_are_cosface_and_arcface():
    c = torch.linspace(-0.5, 0.99, 101, dtype=torch.float64)
    margin = AdaFaceMargin(0.4, 0.333)
    mean, std = torch.tensor(20.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    at_mean = margin(c, torch.full_like(c, 20.0), mean, std)
    torch.testing.assert_close(at_mean, c - 0.4)
    low = margin(c, torch.full_like(c, 1.0), mean, std)  # z = -1: ArcFace (clipped angle)
    theta = torch.clamp(torch.arccos(c) + 0.4, 1e-3, math.pi - 1e-3)
    torch.testing.assert_close(low, torch.cos(theta))


def test_adaface_rejects_norms_of_another_shape():
    # the reference code keeps the norms as (B, 1): broadcasting them against (B,) cosines
    # would silently give a (B, B) result
    margin = AdaFaceMargin()
    cos = torch.tensor([0.1, 0.5, -0.3])
    with pytest.raises(
        ValueError, match=r"norms must have the shape of cos_target \(3,\), got \(3, 1\)"
    ):
        margin(cos, torch.tensor([[10.0], [20.0], [30.0]]))
    with pytest.raises(TypeError, match="norms must be a torch.Tensor, got list"):
        margin(cos, [10.0, 20.0, 30.0])
    out = margin(cos, torch.tensor([10.0, 20.0, 30.0]))
    expected = ref_adaface(cos.double().numpy(), np.array([10.0, 20.0, 30.0]), 0.4, 0.333, 1e-3)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_adaface_single_sample_is_finite():
    x = torch.tensor([0.3], requires_grad=True)
    out = AdaFaceMargin()(x, torch.tensor([10.0]))
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(out).all() and torch.isfinite(g).all()


# ---------------------------------------------------------------- margin_cross_entropy


def ref_margin_ce(cos, labels, ref, scale):
    cos = np.asarray(cos, dtype=np.float64)
    logits = scale * cos.copy()
    rows = np.arange(len(labels))
    logits[rows, labels] = scale * ref(cos[rows, labels])
    mx = logits.max(axis=1, keepdims=True)
    lse = mx[:, 0] + np.log(np.exp(logits - mx).sum(axis=1))
    return lse - logits[rows, labels]


@pytest.mark.parametrize(("margin", "ref"), MARGINS[:7], ids=IDS[:7])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_margin_cross_entropy_matches_reference(margin, ref, reduction):
    g = torch.Generator().manual_seed(1)
    cos = torch.rand(16, 50, generator=g, dtype=torch.float64) * 1.8 - 0.9
    labels = torch.randint(0, 50, (16,), generator=g)
    loss = margin_cross_entropy(cos, labels, margin, 30.0, reduction=reduction)
    per = ref_margin_ce(cos.numpy(), labels.numpy(), ref, 30.0)
    expected = {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-10)


def test_margin_cross_entropy_gradient_matches_numeric():
    g = torch.Generator().manual_seed(2)
    cos = torch.rand(6, 9, generator=g, dtype=torch.float64) * 1.6 - 0.8
    labels = torch.randint(0, 9, (6,), generator=g)
    cos.requires_grad_(True)
    margin = ArcFaceMargin(0.5)
    assert torch.autograd.gradcheck(
        lambda x: margin_cross_entropy(x, labels, margin, 8.0), (cos,), eps=1e-6, atol=1e-6
    )


def test_margin_cross_entropy_float32_under_autocast():
    g = torch.Generator().manual_seed(3)
    cos = (torch.rand(8, 20, generator=g) * 2 - 1).to(torch.bfloat16).requires_grad_(True)
    labels = torch.randint(0, 20, (8,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = margin_cross_entropy(cos, labels, ArcFaceMargin(), 64.0)
    assert loss.dtype == torch.bfloat16
    expected = ref_margin_ce(cos.detach().double().numpy(), labels.numpy(), ref_arcface_05, 64.0)
    # the bf16 cast of the final value is the only rounding beyond float32
    assert loss.item() == pytest.approx(expected.mean(), rel=1e-2)
    loss.backward()
    assert torch.isfinite(cos.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_margin_cross_entropy_margin_and_softmax_in_float32(dtype):
    # cosines exact in the low dtype: beyond float32 the only rounding is the final cast, so a
    # margin or log-sum-exp computed in the low dtype (about 1e-3 off here) cannot pass
    seen = []

    def margin(c):
        seen.append(c.dtype)
        return ArcFaceMargin(0.5)(c)

    g = torch.Generator().manual_seed(8)
    cos = (torch.randint(-2, 3, (32, 20), generator=g) / 2).to(dtype)  # -1, -1/2, 0, 1/2, 1
    labels = torch.randint(0, 20, (32,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = margin_cross_entropy(cos, labels, margin, 64.0, reduction="none")
    assert loss.dtype == dtype and seen == [torch.float32]
    expected = ref_margin_ce(cos.double().numpy(), labels.numpy(), ref_arcface_05, 64.0)
    eps = torch.finfo(dtype).eps
    np.testing.assert_allclose(loss.double().numpy(), expected, rtol=eps / 2, atol=1e-5)


def ref_arcface_05(c):
    return ref_arcface(c, 0.5)


def test_apply_margin_negative_label_only_scales():
    cos = torch.tensor([[0.1, 0.5, -0.2], [0.3, 0.2, 0.9]])
    logits = apply_margin(cos, torch.tensor([-1, 2]), CosFaceMargin(0.25), 10.0)
    expected = torch.tensor([[1.0, 5.0, -2.0], [3.0, 2.0, 6.5]])
    torch.testing.assert_close(logits, expected)


@pytest.mark.parametrize("label_dtype", [torch.int8, torch.uint8, torch.int16, torch.int32])
def test_margin_cross_entropy_takes_every_integer_label_dtype(label_dtype):
    # check_labels accepts any integer dtype, so the kernel must too (gather needs int64)
    g = torch.Generator().manual_seed(6)
    cos = torch.rand(8, 12, generator=g, dtype=torch.float64) * 1.8 - 0.9
    labels = torch.randint(0, 12, (8,), generator=g)
    loss = margin_cross_entropy(cos, labels.to(label_dtype), ArcFaceMargin(), 16.0, "none")
    expected = ref_margin_ce(cos.numpy(), labels.numpy(), ref_arcface_05, 16.0)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-10)
    logits = apply_margin(cos, labels.to(label_dtype), ArcFaceMargin(), 16.0)
    rows = torch.arange(8)
    np.testing.assert_allclose(
        logits[rows, labels].numpy(), 16.0 * ref_arcface_05(cos[rows, labels].numpy()), rtol=1e-10
    )


def test_custom_margin_gets_cosines_clamped_to_one():
    # the module docstring promises clamped cosines: a custom acos margin must not see 1 + eps
    cos = torch.tensor([[1.0 + 2e-7, 0.3, -0.2], [0.1, -1.0 - 2e-7, 0.4]])
    labels = torch.tensor([0, 1])

    def acos_arcface(c):
        return torch.cos(torch.acos(c) + 0.5)

    loss = margin_cross_entropy(cos, labels, acos_arcface, 10.0, reduction="none")
    expected = ref_margin_ce(
        np.clip(cos.double().numpy(), -1, 1),
        labels.numpy(),
        lambda c: np.cos(np.arccos(c) + 0.5),
        10.0,
    )
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
def test_margin_cross_entropy_takes_labels_on_another_device():
    g = torch.Generator().manual_seed(7)
    cos = torch.rand(8, 12, generator=g, dtype=torch.float64) * 1.8 - 0.9
    labels = torch.randint(0, 12, (8,), generator=g)
    loss = margin_cross_entropy(cos.cuda(), labels, ArcFaceMargin(), 16.0, "none")
    expected = ref_margin_ce(cos.numpy(), labels.numpy(), ref_arcface_05, 16.0)
    np.testing.assert_allclose(loss.cpu().numpy(), expected, rtol=1e-10)


def test_margin_cross_entropy_validates_inputs():
    cos = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"labels must be in \[0, num_classes=4\)"):
        margin_cross_entropy(cos, torch.tensor([0, 1, 4]), NoMargin(), 1.0)
    with pytest.raises(TypeError, match="labels must have an integer dtype"):
        margin_cross_entropy(cos, torch.zeros(3), NoMargin(), 1.0)
    with pytest.raises(ValueError, match="one entry per embedding"):
        margin_cross_entropy(cos, torch.tensor([0, 1]), NoMargin(), 1.0)
    with pytest.raises(ValueError, match="scale must be in"):
        margin_cross_entropy(cos, torch.tensor([0, 1, 2]), NoMargin(), 0.0)
    with pytest.raises(ValueError, match="reduction"):
        margin_cross_entropy(cos, torch.tensor([0, 1, 2]), NoMargin(), 1.0, reduction="avg")
    with pytest.raises(TypeError, match="margin must be callable"):
        margin_cross_entropy(cos, torch.tensor([0, 1, 2]), "arcface", 1.0)
    with pytest.raises(TypeError, match="also needs the embedding norms"):
        margin_cross_entropy(cos, torch.tensor([0, 1, 2]), AdaFaceMargin(), 1.0)
    with pytest.raises(ValueError, match="cos must have a non-empty shape"):
        margin_cross_entropy(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), NoMargin(), 1)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: ArcFaceMargin(-0.1), "margin must be in"),
        (lambda: ArcFaceMargin(2.0), "margin must be in"),
        (lambda: ArcFaceMargin(0.5, easy_margin=1), "easy_margin must be a bool"),
        (lambda: CosFaceMargin(float("nan")), "margin must be finite"),
        (lambda: SphereFaceMargin(0.5), "margin must be in"),
        (lambda: CombinedMargin(0.0, 0.5, 0.0), "m1 must be in"),
        (lambda: CombinedMargin(1.0, 4.0, 0.0), "m2 must be in"),
        (lambda: AdaFaceMargin(h=0.0), "h must be in"),
    ],
)
def test_margin_parameters_are_validated(factory, match):
    with pytest.raises((ValueError, TypeError), match=match):
        factory()


@pytest.mark.parametrize(("margin", "ref"), MARGINS, ids=IDS)
def test_margins_pickle_and_repr(margin, ref):
    clone = pickle.loads(pickle.dumps(margin))
    assert clone == margin and hash(clone) == hash(margin)
    assert repr(clone) == repr(margin)
    assert repr(margin).startswith(type(margin).__name__ + "(")
    assert eval(repr(margin)) == margin


def test_subcenter_max_matches_loop():
    g = torch.Generator().manual_seed(4)
    cos = torch.rand(5, 12, generator=g, requires_grad=True)
    out = subcenter_max(cos, 3)
    expected = torch.stack(
        [torch.stack([cos[b, c * 3 : c * 3 + 3].max() for c in range(4)]) for b in range(5)]
    )
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert (cos.grad.sum(dim=1) == 4).all()  # one winning sub-center per class
    with pytest.raises(ValueError, match="multiple of sub_centers=5"):
        subcenter_max(cos, 5)
    assert subcenter_max(cos, 1) is cos
