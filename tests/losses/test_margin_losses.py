"""Margin-softmax loss modules against pytorch-metric-learning and float64 re-derivations."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
from _margin_reference import _adaface, _arc_easy, _combined, _sphere, reference_loss

from metricface.losses import (
    AdaFaceLoss,
    AdaFaceMargin,
    ArcFaceLoss,
    ArcFaceMargin,
    CombinedMarginLoss,
    CosFaceLoss,
    CosFaceMargin,
    MarginSoftmaxLoss,
    NormSoftmaxLoss,
    SphereFaceLoss,
    SubCenterArcFaceLoss,
    margin_cross_entropy,
    subcenter_max,
)
from metricface.losses.chunked import _margin_softmax

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")

B, D, C = 24, 32, 40


def _inputs(dtype, seed=0, b=B, d=D):
    g = torch.Generator().manual_seed(seed)
    emb = (torch.randn(b, d, generator=g, dtype=torch.float64) * 3).to(dtype)
    labels = torch.randint(0, C, (b,), generator=g)
    return emb.requires_grad_(True), labels


def _grads(loss, emb, weight):
    return torch.autograd.grad(loss, [emb, weight])


# ---------------------------------------------------------------- pytorch-metric-learning

PML_CASES = {
    # ours, PML (margin in degrees, W stored as (D, C))
    "arcface": (
        lambda: ArcFaceLoss(C, D, margin=0.5, scale=64.0),
        lambda: pml_losses.ArcFaceLoss(C, D, margin=math.degrees(0.5), scale=64),
    ),
    "arcface-m0.3-s30": (
        lambda: ArcFaceLoss(C, D, margin=0.3, scale=30.0),
        lambda: pml_losses.ArcFaceLoss(C, D, margin=math.degrees(0.3), scale=30),
    ),
    "cosface": (
        lambda: CosFaceLoss(C, D, margin=0.35, scale=64.0),
        lambda: pml_losses.CosFaceLoss(C, D, margin=0.35, scale=64),
    ),
    "subcenter": (
        lambda: SubCenterArcFaceLoss(C, D, sub_centers=3, margin=0.5, scale=64.0),
        lambda: pml_losses.SubCenterArcFaceLoss(
            num_classes=C, embedding_size=D, margin=math.degrees(0.5), scale=64, sub_centers=3
        ),
    ),
    "normsoftmax": (
        lambda: NormSoftmaxLoss(C, D),
        lambda: pml_losses.NormalizedSoftmaxLoss(C, D, temperature=0.05),
    ),
}


@pytest.mark.parametrize("case", list(PML_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_pytorch_metric_learning(case, dtype):
    make_ours, make_peer = PML_CASES[case]
    torch.manual_seed(1)
    ours, peer = make_ours().to(dtype), make_peer().to(dtype)
    with torch.no_grad():
        ours.weight.normal_()  # unit-scale centers: gradients of order one
        peer.W.copy_(ours.weight.t())
    emb, labels = _inputs(dtype)
    # inputs where the definitions agree: no sample in ArcFace's fallback region
    assert (ours.logits(emb)[torch.arange(B), labels] > -math.cos(0.5) + 0.05).all()
    loss = ours(emb, labels)
    peer_loss = peer(emb, labels)
    g_emb, g_w = _grads(loss, emb, ours.weight)
    p_emb, p_w = _grads(peer_loss, emb, peer.W)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-11, "atol": 0}
    assert loss.dtype == dtype
    torch.testing.assert_close(loss, peer_loss, **tol)
    gtol = (
        {"rtol": 1e-4, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-14}
    )
    torch.testing.assert_close(g_emb, p_emb, **gtol)
    torch.testing.assert_close(g_w, p_w.t(), **gtol)


def test_matches_pml_in_arcface_fallback_region():
    # both libraries use cos - m sin(m) beyond theta = pi - m: force targets there
    torch.manual_seed(2)
    ours = ArcFaceLoss(C, D, margin=0.5).double()
    peer = pml_losses.ArcFaceLoss(C, D, margin=math.degrees(0.5)).double()
    emb, _ = _inputs(torch.float64, seed=3)
    labels = torch.randperm(C)[:B]
    with torch.no_grad():
        ours.weight.normal_()
        ours.weight[labels] = -emb.detach() + 0.1 * torch.randn(B, D, dtype=torch.float64)
        peer.W.copy_(ours.weight.t())
    assert (ours.logits(emb)[torch.arange(B), labels] < -math.cos(0.5) - 0.01).all()
    loss, peer_loss = ours(emb, labels), peer(emb, labels)
    torch.testing.assert_close(loss, peer_loss, rtol=1e-12, atol=0)
    g, p = _grads(loss, emb, ours.weight), _grads(peer_loss, emb, peer.W)
    torch.testing.assert_close(g[0], p[0], rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(g[1], p[1].t(), rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------- float64 re-derivation


REF_CASES = {
    "sphereface": (lambda: SphereFaceLoss(C, D, margin=1.35, scale=64.0), _sphere(1.35), 1),
    "sphereface-m4": (lambda: SphereFaceLoss(C, D, margin=4, scale=16.0), _sphere(4.0), 1),
    "combined": (
        lambda: CombinedMarginLoss(C, D, m1=1.0, m2=0.3, m3=0.2, scale=64.0),
        _combined(1.0, 0.3, 0.2),
        1,
    ),
    "combined-m1": (
        lambda: CombinedMarginLoss(C, D, m1=1.35, m2=0.4, m3=0.1, scale=32.0),
        _combined(1.35, 0.4, 0.1),
        1,
    ),
    "arcface-easy": (lambda: ArcFaceLoss(C, D, 0.5, 64.0, easy_margin=True), _arc_easy(0.5), 1),
    "subcenter-k2": (
        lambda: SubCenterArcFaceLoss(C, D, sub_centers=2, margin=0.4, scale=32.0),
        lambda t, _n: torch.cos(t + 0.4),
        2,
    ),
    "custom": (
        lambda: MarginSoftmaxLoss(C, D, margin=CosFaceMargin(0.2), scale=10.0),
        lambda t, _n: torch.cos(t) - 0.2,
        1,
    ),
    "adaface-eval": (
        lambda: AdaFaceLoss(C, D, margin=0.4, h=0.333, scale=64.0).eval(),
        _adaface(0.4, 0.333, 1e-3, 20.0, 100.0),
        1,
    ),
}


@pytest.mark.parametrize("case", list(REF_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_float64_reference(case, dtype):
    make, target_fn, k = REF_CASES[case]
    torch.manual_seed(4)
    loss_fn = make().to(dtype)
    with torch.no_grad():
        loss_fn.weight.normal_()
    emb, labels = _inputs(dtype, seed=5)
    loss = loss_fn(emb, labels)
    g_emb, g_w = _grads(loss, emb, loss_fn.weight)
    e64 = emb.detach().double().requires_grad_(True)
    w64 = loss_fn.weight.detach().double().requires_grad_(True)
    ref = reference_loss(e64, w64, labels, target_fn, loss_fn.scale, k)
    r_emb, r_w = _grads(ref, e64, w64)
    tol = {"rtol": 1e-11, "atol": 1e-13} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(loss.double(), ref, **tol)
    torch.testing.assert_close(g_emb.double(), r_emb, **tol)
    torch.testing.assert_close(g_w.double(), r_w, **tol)


def test_adaface_training_uses_and_updates_running_stats():
    torch.manual_seed(6)
    loss_fn = AdaFaceLoss(C, D, margin=0.4, momentum=0.3).double()
    emb, labels = _inputs(torch.float64, seed=7)
    norms = emb.detach().norm(dim=1).clamp(1e-3, 100)
    mean = 0.7 * 20 + 0.3 * norms.mean()
    std = 0.7 * 100 + 0.3 * norms.std()
    loss = loss_fn(emb, labels)
    torch.testing.assert_close(loss_fn.running_mean, mean)
    torch.testing.assert_close(loss_fn.running_std, std)
    ref = reference_loss(
        emb.detach(), loss_fn.weight.detach(), labels, _adaface(0.4, 0.333, 1e-3, mean, std), 64.0
    )
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-11, atol=1e-13)
    loss_fn.eval()
    loss_fn(emb, labels)
    torch.testing.assert_close(loss_fn.running_mean, mean)  # eval: unchanged
    state = loss_fn.state_dict()
    assert set(state) == {"weight", "running_mean", "running_std"}
    clone = AdaFaceLoss(C, D, margin=0.4).double()
    clone.load_state_dict(state)
    torch.testing.assert_close(clone.eval()(emb, labels), loss_fn(emb, labels))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adaface_training_loss_and_gradients_match_float64_reference(dtype):
    # in training mode the margin uses this batch's (detached) norm statistics, blended into
    # the running ones: loss and gradients against the paper's formula with those statistics
    torch.manual_seed(24)
    loss_fn = AdaFaceLoss(C, D, margin=0.4, momentum=0.5).to(dtype)
    with torch.no_grad():
        loss_fn.weight.normal_()
    emb, labels = _inputs(dtype, seed=25)
    norms = emb.detach().double().norm(dim=1).clamp(1e-3, 100)
    mean, std = 0.5 * 20 + 0.5 * norms.mean(), 0.5 * 100 + 0.5 * norms.std()
    loss = loss_fn(emb, labels)
    g_emb, g_w = _grads(loss, emb, loss_fn.weight)
    e64 = emb.detach().double().requires_grad_(True)
    w64 = loss_fn.weight.detach().double().requires_grad_(True)
    ref = reference_loss(e64, w64, labels, _adaface(0.4, 0.333, 1e-3, mean, std), 64.0)
    r_emb, r_w = _grads(ref, e64, w64)
    tol = {"rtol": 1e-11, "atol": 1e-13} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(loss.double(), ref, **tol)
    torch.testing.assert_close(g_emb.double(), r_emb, **tol)
    torch.testing.assert_close(g_w.double(), r_w, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adaface_margin_in_margin_softmax_loss_uses_batch_statistics(dtype):
    # an ordinary margin: MarginSoftmaxLoss passes it the norms; without running statistics
    # (AdaFaceLoss's) it uses those of the batch
    torch.manual_seed(26)
    loss_fn = MarginSoftmaxLoss(C, D, margin=AdaFaceMargin(0.4, 0.333), scale=64.0).to(dtype)
    with torch.no_grad():
        loss_fn.weight.normal_()
    emb, labels = _inputs(dtype, seed=27)
    loss = loss_fn(emb, labels)
    g_emb, g_w = _grads(loss, emb, loss_fn.weight)
    norms = emb.detach().double().norm(dim=1).clamp(1e-3, 100)
    e64 = emb.detach().double().requires_grad_(True)
    w64 = loss_fn.weight.detach().double().requires_grad_(True)
    target = _adaface(0.4, 0.333, 1e-3, norms.mean(), norms.std())
    ref = reference_loss(e64, w64, labels, target, 64.0)
    r_emb, r_w = _grads(ref, e64, w64)
    tol = {"rtol": 1e-11, "atol": 1e-13} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(loss.double(), ref, **tol)
    torch.testing.assert_close(g_emb.double(), r_emb, **tol)
    torch.testing.assert_close(g_w.double(), r_w, **tol)


@pytest.mark.parametrize("sub_centers", [1, 2])
def test_custom_margin_sees_cosines_clamped_to_one(sub_centers):
    # the product of two unit vectors rounds past 1 when an embedding equals its class center;
    # a custom margin written with acos must still get a cosine in [-1, 1] (as in
    # chunked_margin_cross_entropy and PartialFCLoss), not return NaN
    def acos_arcface(c):
        return torch.cos(torch.acos(c) + 0.5)

    torch.manual_seed(20)
    loss_fn = MarginSoftmaxLoss(200, 64, acos_arcface, 64.0, sub_centers, reduction="none")
    labels = torch.arange(200)
    emb = loss_fn.weight.detach()[labels * sub_centers] * 37.0
    # (with this seed several of these float32 cosines round past 1 here; how many depends on
    # the BLAS, so that is not asserted)
    loss = loss_fn(emb, labels)
    e64, w64 = emb.double(), loss_fn.weight.detach().double()
    cos = (e64 / e64.norm(dim=1, keepdim=True)) @ (w64 / w64.norm(dim=1, keepdim=True)).t()
    cos = cos.reshape(200, 200, sub_centers).amax(dim=2).clamp(-1.0, 1.0)
    logits = 64.0 * cos
    logits[labels, labels] = 64.0 * torch.cos(torch.acos(cos[labels, labels]) + 0.5)
    ref = torch.logsumexp(logits, dim=1) - logits[labels, labels]
    torch.testing.assert_close(loss.double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_adaface_non_finite_batch_does_not_poison_running_stats(bad):
    # mixed-precision training skips a step whose loss is not finite; the running statistics
    # must not keep that batch's NaN (or overflowed norm), or every later loss is NaN too
    torch.manual_seed(21)
    loss_fn = AdaFaceLoss(C, D, margin=0.4, momentum=0.3).double()
    emb, labels = _inputs(torch.float64, seed=22)
    broken = emb.detach().clone()
    broken[3] = bad
    assert not torch.isfinite(loss_fn(broken, labels))
    torch.testing.assert_close(loss_fn.running_mean, torch.tensor(20.0, dtype=torch.float64))
    torch.testing.assert_close(loss_fn.running_std, torch.tensor(100.0, dtype=torch.float64))
    loss = loss_fn(emb, labels)  # the next batch trains as if the broken one never came
    norms = emb.detach().norm(dim=1).clamp(1e-3, 100)
    mean, std = 0.7 * 20 + 0.3 * norms.mean(), 0.7 * 100 + 0.3 * norms.std()
    ref = reference_loss(
        emb.detach(), loss_fn.weight.detach(), labels, _adaface(0.4, 0.333, 1e-3, mean, std), 64.0
    )
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_adaface_running_stats_accumulate_in_float32_for_a_half_precision_module(dtype):
    # updates of momentum * (batch - running) fall below half precision's resolution near 20:
    # bfloat16 buffers would stop short of the batch statistics for good
    loss_fn = AdaFaceLoss(C, D, momentum=0.01).to(dtype)
    assert loss_fn.weight.dtype == dtype
    g = torch.Generator().manual_seed(19)
    mean, std = torch.tensor(20.0, dtype=torch.float64), torch.tensor(100.0, dtype=torch.float64)
    for _ in range(300):
        direction = torch.nn.functional.normalize(torch.randn(32, D, generator=g), dim=1)
        emb = (direction * (25 + 5 * torch.randn(32, 1, generator=g))).to(dtype)
        loss_fn(emb, torch.randint(0, C, (32,), generator=g))
        norms = emb.double().norm(dim=1).clamp(1e-3, 100)
        mean, std = 0.99 * mean + 0.01 * norms.mean(), 0.99 * std + 0.01 * norms.std()
    torch.testing.assert_close(loss_fn.running_mean.double(), mean, rtol=1e-4, atol=0)
    torch.testing.assert_close(loss_fn.running_std.double(), std, rtol=1e-4, atol=0)
    assert loss_fn.running_mean.dtype == loss_fn.running_std.dtype == torch.float32


@pytest.mark.parametrize(
    "make",
    [
        lambda: ArcFaceLoss(C, D),
        lambda: SubCenterArcFaceLoss(C, D, sub_centers=3),
        lambda: SphereFaceLoss(C, D),
        lambda: CombinedMarginLoss(C, D, 1.1, 0.2, 0.1),
        lambda: NormSoftmaxLoss(C, D),
    ],
)
def test_fused_kernel_matches_functional_composition(make):
    torch.manual_seed(8)
    loss_fn = make()
    emb, labels = _inputs(torch.float32, seed=9)
    loss = loss_fn(emb, labels)
    g = _grads(loss, emb, loss_fn.weight)
    cos = torch.nn.functional.normalize(emb) @ torch.nn.functional.normalize(loss_fn.weight).t()
    cos = subcenter_max(cos, loss_fn.sub_centers)
    composed = margin_cross_entropy(cos, labels, loss_fn.margin, loss_fn.scale)
    h = _grads(composed, emb, loss_fn.weight)
    torch.testing.assert_close(loss, composed, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g[0], h[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g[1], h[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sub_centers", [1, 3])
def test_fused_kernel_gradient_matches_finite_differences(sub_centers):
    # (torch.autograd.gradcheck backpropagates repeatedly through one graph, which the kernel
    # refuses by design; central differences need one backward only)
    g = torch.Generator().manual_seed(10)
    emb = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6 * sub_centers, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 6, (5,), generator=g)
    margin = ArcFaceLoss(6, 4, margin=0.3).margin
    weights = torch.rand(5, generator=g, dtype=torch.float64)  # non-uniform upstream gradient

    def f(e, w_):
        return (
            _margin_softmax(e, w_, labels, margin, 4.0, sub_centers=sub_centers) * weights
        ).sum()

    analytic = torch.autograd.grad(f(emb, w), [emb, w])
    h = 1e-6
    for tensor, grad in zip((emb, w), analytic):
        numeric = torch.zeros_like(tensor)
        flat = tensor.detach().view(-1)
        for k in range(flat.numel()):
            old = flat[k].item()
            flat[k] = old + h
            up = f(emb.detach(), w.detach()).item()
            flat[k] = old - h
            down = f(emb.detach(), w.detach()).item()
            flat[k] = old
            numeric.view(-1)[k] = (up - down) / (2 * h)
        torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-8)


def test_reductions():
    torch.manual_seed(11)
    mean_fn = ArcFaceLoss(C, D)
    none_fn = ArcFaceLoss(C, D, reduction="none")
    sum_fn = ArcFaceLoss(C, D, reduction="sum")
    none_fn.load_state_dict(mean_fn.state_dict())
    sum_fn.load_state_dict(mean_fn.state_dict())
    emb, labels = _inputs(torch.float64)
    per = none_fn(emb, labels)
    assert per.shape == (B,)
    torch.testing.assert_close(mean_fn(emb, labels), per.mean())
    torch.testing.assert_close(sum_fn(emb, labels), per.sum())


# ---------------------------------------------------------------- prediction helpers


def test_logits_predict_accuracy():
    torch.manual_seed(12)
    loss_fn = ArcFaceLoss(C, D)
    labels = torch.randperm(C)[:B]
    emb = loss_fn.weight.detach()[labels] * 5
    logits = loss_fn.logits(emb)
    assert logits.shape == (B, C) and logits.dtype == torch.float32
    torch.testing.assert_close(logits[torch.arange(B), labels], torch.ones(B))
    assert torch.equal(loss_fn.predict(emb), labels)
    assert loss_fn.accuracy(emb, labels) == 1.0
    assert loss_fn.accuracy(emb, (labels + 1) % C) == 0.0


def test_subcenter_logits_take_the_best_sub_center():
    torch.manual_seed(13)
    loss_fn = SubCenterArcFaceLoss(C, D, sub_centers=3)
    assert loss_fn.weight.shape == (3 * C, D)
    labels = torch.randint(0, C, (B,))
    which = torch.randint(0, 3, (B,))
    emb = loss_fn.weight.detach()[labels * 3 + which]  # rows c*K .. c*K+K-1 are class c
    assert torch.equal(loss_fn.predict(emb), labels)
    torch.testing.assert_close(loss_fn.logits(emb).amax(dim=1), torch.ones(B))


def test_weight_init_and_state_dict():
    torch.manual_seed(14)
    loss_fn = CosFaceLoss(2000, 64)
    assert list(loss_fn.state_dict()) == ["weight"]
    assert loss_fn.weight.shape == (2000, 64)
    assert loss_fn.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert "num_classes=2000" in repr(loss_fn) and "CosFaceMargin(margin=0.35)" in repr(loss_fn)


def test_module_pickles_and_deepcopies():
    loss_fn = AdaFaceLoss(C, D)
    emb, labels = _inputs(torch.float32)
    for clone in (pickle.loads(pickle.dumps(loss_fn)), copy.deepcopy(loss_fn)):
        torch.testing.assert_close(clone.eval()(emb, labels), loss_fn.eval()(emb, labels))


def test_autocast_bf16_close_to_float32():
    torch.manual_seed(15)
    loss_fn = ArcFaceLoss(C, D)
    emb, labels = _inputs(torch.float32)
    ref = loss_fn(emb, labels)
    g_ref = _grads(ref, emb, loss_fn.weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(emb, labels)
    assert loss.dtype == torch.float32  # embeddings are float32; softmax ran in float32
    g = _grads(loss, emb, loss_fn.weight)
    torch.testing.assert_close(loss, ref, rtol=2e-2, atol=0)
    assert g[0].dtype == emb.dtype and g[1].dtype == loss_fn.weight.dtype
    for a, b in zip(g, g_ref):
        assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99


def _half_vectors() -> torch.Tensor:
    """The 16 vectors (+-1/2, +-1/2, +-1/2, +-1/2): unit norm, pairwise cosines in
    {-1, -1/2, 0, 1/2, 1}, all exact in bfloat16 (so an autocast matmul loses nothing)."""
    bits = (torch.arange(16)[:, None] >> torch.arange(4)) & 1
    return 0.5 - bits.float()


def _arcface_reference_per_sample(emb, weight, labels, sub_centers, m=0.5, s=64.0):
    """Float64 ArcFace per-sample loss with the theta + m > pi fallback, from the paper."""
    e, w = emb.detach().double(), weight.detach().double()
    cos = (e / e.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=1, keepdim=True)).t()
    cos = cos.reshape(len(e), -1, sub_centers).amax(dim=2).clamp(-1, 1)
    rows = torch.arange(len(e))
    target = cos[rows, labels]
    theta = torch.acos(target)
    phi = torch.where(theta + m <= math.pi, torch.cos(theta + m), target - m * math.sin(m))
    logits = s * cos
    logits[rows, labels] = s * phi
    return torch.logsumexp(logits, dim=1) - logits[rows, labels]


@pytest.mark.parametrize("sub_centers", [1, 3])
@pytest.mark.parametrize("mode", ["autocast-bf16", "bf16-module", "fp16-module"])
def test_margin_and_softmax_run_in_float32(sub_centers, mode):
    # cosines are exact in the low dtype, so the loss differs from the float64 truth only by the
    # precision of the margin and softmax math (and of the final cast): a bfloat16 margin or
    # log-sum-exp would be off by about 1e-3 here, far outside these tolerances
    seen = []

    def margin(c):
        seen.append(c.dtype)
        return ArcFaceMargin(0.5)(c)

    g = torch.Generator().manual_seed(23)
    vectors = _half_vectors()
    loss_fn = MarginSoftmaxLoss(16, 4, margin, 64.0, sub_centers, reduction="none")
    with torch.no_grad():  # one distinct vector per class, further sub-centers at random
        loss_fn.weight.copy_(vectors[torch.randint(0, 16, (16 * sub_centers,), generator=g)])
        loss_fn.weight[::sub_centers] = vectors[torch.randperm(16, generator=g)]
    labels = torch.randint(0, 16, (64,), generator=g)
    emb = vectors[torch.randint(0, 16, (64,), generator=g)]
    emb[:16] = loss_fn.weight.detach()[labels[:16] * sub_centers]  # cos = 1 with the target
    emb = emb * 3.0  # norm 1.5: still exact
    ref = _arcface_reference_per_sample(emb, loss_fn.weight, labels, sub_centers)
    assert ref.min() < 1e-3 and ref.max() > 50  # easy and hard samples (cos = -1 included)
    if mode == "autocast-bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(emb, labels)
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    else:
        dtype = torch.bfloat16 if mode == "bf16-module" else torch.float16
        loss_fn = loss_fn.to(dtype)
        loss = loss_fn(emb.to(dtype), labels)
        assert loss.dtype == dtype
        # beyond float32 (whose log-sum-exp minus target logit resolves about 1e-5 at s = 64)
        # the only rounding is the final cast: half an ulp of the low dtype
        rel = torch.finfo(dtype).eps / 2
        torch.testing.assert_close(loss.double(), ref, rtol=rel, atol=1e-5)
    assert seen == [torch.float32]


def test_float16_embeddings_float32_weight():
    torch.manual_seed(16)
    loss_fn = ArcFaceLoss(C, D)
    emb, labels = _inputs(torch.float16)
    loss = loss_fn(emb, labels)
    assert loss.dtype == torch.float16
    ref = loss_fn(emb.detach().float(), labels)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-3)
    g = _grads(loss, emb, loss_fn.weight)
    assert g[0].dtype == torch.float16 and torch.isfinite(g[0]).all()


@pytest.mark.parametrize("sub_centers", [1, 3])
def test_float64_stays_float64_under_autocast(sub_centers):
    # autocast never lowers float64 tensors (nn.Linear stays float64): neither may the loss
    torch.manual_seed(17)
    loss_fn = SubCenterArcFaceLoss(C, D, 0.5, 64.0, sub_centers=sub_centers).double()
    emb, labels = _inputs(torch.float64, seed=18)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(emb, labels)
    g_emb, g_w = _grads(loss, emb, loss_fn.weight)
    e64 = emb.detach().clone().requires_grad_(True)
    w64 = loss_fn.weight.detach().clone().requires_grad_(True)
    ref = reference_loss(e64, w64, labels, lambda t, _n: torch.cos(t + 0.5), 64.0, sub_centers)
    r_emb, r_w = _grads(ref, e64, w64)
    tol = {"rtol": 1e-11, "atol": 1e-13}
    torch.testing.assert_close(loss, ref, **tol)
    torch.testing.assert_close(g_emb, r_emb, **tol)
    torch.testing.assert_close(g_w, r_w, **tol)


def test_double_backward_raises_instead_of_dropping_second_order_terms():
    # a gradient penalty needs d(grad)/d(embeddings); the fused backward is not differentiable,
    # so asking for it must fail loudly rather than silently treat the gradient as a constant
    loss_fn = ArcFaceLoss(C, D).double()
    emb, labels = _inputs(torch.float64)
    (g_emb,) = torch.autograd.grad(loss_fn(emb, labels), emb, create_graph=True)
    with pytest.raises(RuntimeError, match="cannot be differentiated twice"):
        (g_emb.square().sum() + emb.sum()).backward()


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("emb", "labels", "err", "match"),
    [
        (torch.zeros(4, D), torch.tensor([0, 1, 2, C]), ValueError, r"labels must be in \[0, num"),
        (torch.zeros(4, D), torch.tensor([0, 1, -1, 2]), ValueError, "got a label -1"),
        (torch.zeros(4, D), torch.zeros(4), TypeError, "labels must have an integer dtype"),
        (torch.zeros(4, D), torch.zeros(3, dtype=torch.long), ValueError, "one entry per"),
        (torch.zeros(4, D), torch.zeros(4, 1, dtype=torch.long), ValueError, "shape \\(batch,\\)"),
        (torch.zeros(0, D), torch.zeros(0, dtype=torch.long), ValueError, "non-empty"),
        (torch.zeros(4, D + 1), torch.zeros(4, dtype=torch.long), ValueError, "embedding_dim=32"),
        (torch.zeros(4, D, dtype=torch.long), torch.zeros(4, dtype=torch.long), TypeError, "float"),
        (torch.zeros(D), torch.zeros(1, dtype=torch.long), ValueError, "shape \\(batch, dim\\)"),
        ([[0.0] * D], torch.zeros(1, dtype=torch.long), TypeError, "torch.Tensor"),
        (
            torch.zeros(4, D, device="meta"),
            torch.zeros(4, dtype=torch.long),
            ValueError,
            r"embeddings must be on the same device as the class centers \(weight\) \(cpu\), "
            "got meta",
        ),
    ],
)
def test_bad_inputs_raise_before_compute(emb, labels, err, match):
    loss_fn = ArcFaceLoss(C, D)
    with pytest.raises(err, match=match):
        loss_fn(emb, labels)


def test_accuracy_and_logits_validate_too():
    loss_fn = ArcFaceLoss(C, D)
    with pytest.raises(ValueError, match="embedding_dim=32"):
        loss_fn.logits(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="num_classes=40"):
        loss_fn.accuracy(torch.zeros(2, D), torch.tensor([0, 40]))


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: ArcFaceLoss(0, D), "num_classes must be in"),
        (lambda: ArcFaceLoss(C, 2.5), "embedding_dim must be an int"),
        (lambda: ArcFaceLoss(C, D, scale=-1.0), "scale must be in"),
        (lambda: ArcFaceLoss(C, D, margin=3.0), "margin must be in"),
        (lambda: ArcFaceLoss(C, D, margin=28.6), r"in radians.*math\.radians\(28\.6\) = 0\.4992"),
        (lambda: CombinedMarginLoss(C, D, m2=28.6), r"m2 must be in.*radians"),
        (lambda: SubCenterArcFaceLoss(C, D, sub_centers=0), "sub_centers must be in"),
        (lambda: AdaFaceLoss(C, D, momentum=0.0), "momentum must be in"),
        (lambda: CosFaceLoss(C, D, reduction="avg"), "reduction must be"),
        (lambda: MarginSoftmaxLoss(C, D, margin=0.5), "margin must be callable"),
        (lambda: ArcFaceLoss(C, D, chunk_size=0), "chunk_size must be in"),
        (lambda: ArcFaceLoss(C, D, sample_rate=0.0), "sample_rate must be in"),
        (lambda: ArcFaceLoss(C, D, chunksize=3), "unexpected keyword argument 'chunksize'"),
    ],
)
def test_bad_parameters(factory, match):
    with pytest.raises((ValueError, TypeError), match=match):
        factory()


def test_cuda_matches_cpu(device):
    torch.manual_seed(17)
    loss_fn = SubCenterArcFaceLoss(C, D, sub_centers=2)
    emb, labels = _inputs(torch.float32)
    ref = loss_fn(emb, labels)
    g_ref = _grads(ref, emb, loss_fn.weight)
    moved = copy.deepcopy(loss_fn).to(device)
    emb_d = emb.detach().to(device).requires_grad_(True)
    loss = moved(emb_d, labels.to(device))
    g = _grads(loss, emb_d, moved.weight)
    torch.testing.assert_close(loss.cpu(), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g[0].cpu(), g_ref[0], rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(g[1].cpu(), g_ref[1], rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="num_classes=40"):
        moved(emb_d, torch.full((B,), C, device=device))


def test_second_backward_raises_instead_of_using_a_spent_buffer():
    loss_fn = ArcFaceLoss(C, D)
    emb, labels = _inputs(torch.float32)
    loss = loss_fn(emb, labels)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backpropagated only once"):
        loss.backward()


def test_subcenter_positional_arguments_follow_the_peer_order():
    """(num_classes, dim, margin, scale, sub_centers), as ArcFaceLoss and the PML class."""
    loss_fn = SubCenterArcFaceLoss(C, D, 0.4, 32.0, 2)
    assert (loss_fn.margin.margin, loss_fn.scale, loss_fn.sub_centers) == (0.4, 32.0, 2)
    assert loss_fn.weight.shape == (C * 2, D)
