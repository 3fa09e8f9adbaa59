"""Properties every margin-softmax loss keeps for any input (hypothesis).

Each example also draws how the classes are scored (dense, chunked, sampled) and the number of
sub-centers, so the properties are checked for every combination of margin and option.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from metricface.losses import (
    AdaFaceLoss,
    ArcFaceLoss,
    CombinedMarginLoss,
    CosFaceLoss,
    NormSoftmaxLoss,
    SphereFaceLoss,
    SubCenterArcFaceLoss,
)

C, D = 7, 5

FACTORIES = {
    "normsoftmax": lambda **o: NormSoftmaxLoss(C, D, **o),
    "arcface": lambda **o: ArcFaceLoss(C, D, **o),
    "arcface-easy": lambda **o: ArcFaceLoss(C, D, easy_margin=True, **o),
    "cosface": lambda **o: CosFaceLoss(C, D, **o),
    "sphereface": lambda **o: SphereFaceLoss(C, D, **o),
    "sphereface-m4": lambda **o: SphereFaceLoss(C, D, margin=4, **o),
    "combined": lambda **o: CombinedMarginLoss(C, D, 1.2, 0.3, 0.2, **o),
    "subcenter": lambda **o: SubCenterArcFaceLoss(C, D, **{"sub_centers": 3, **o}),
    "adaface": lambda **o: AdaFaceLoss(C, D, **o),
}
# how the classes are scored: all at once, in chunks of 3 of the 7, or a sample of 3 of them
MODES = {"dense": {}, "chunked": {"chunk_size": 3}, "sampled": {"sample_rate": 0.5}}
NAMES = list(FACTORIES)
NORM_INVARIANT = [n for n in NAMES if n != "adaface"]  # AdaFace's margin reads the norm
DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def _make(name, seed=0, options=None):
    torch.manual_seed(seed)
    return FACTORIES[name](**(options or {}))


@st.composite
def scoring(draw):
    """Options of one way to score the classes: mode and number of sub-centers."""
    return dict(
        MODES[draw(st.sampled_from(list(MODES)))], sub_centers=draw(st.sampled_from([1, 3]))
    )


def _finite_losses_and_grads(loss_fn, emb, labels):
    emb = emb.detach().requires_grad_(True)
    loss = loss_fn(emb, labels)
    g_emb, g_w = torch.autograd.grad(loss, [emb, loss_fn.weight])
    assert torch.isfinite(loss).all(), loss
    assert torch.isfinite(g_emb).all() and torch.isfinite(g_w).all()
    return loss


@st.composite
def batches(draw, dtype_name):
    """Any finite embeddings of a dtype (huge, tiny, zero rows included) and labels."""
    b = draw(st.integers(1, 6))
    limit = float(torch.finfo(DTYPES[dtype_name]).max)
    width = 16 if dtype_name == "float16" else (32 if dtype_name != "float64" else 64)
    elems = st.floats(-limit, limit, allow_nan=False, allow_infinity=False, width=width)
    arr = draw(hnp.arrays(np.float64, (b, D), elements=elems))
    labels = draw(hnp.arrays(np.int64, (b,), elements=st.integers(0, C - 1)))
    emb = torch.from_numpy(arr).to(DTYPES[dtype_name])
    return emb, torch.from_numpy(labels)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@given(data=st.data(), name=st.sampled_from(NAMES))
def test_finite_for_any_finite_embeddings(dtype_name, data, name):
    emb, labels = data.draw(batches(dtype_name))
    emb = torch.nan_to_num(emb)  # casting to bfloat16 can round the largest values to inf
    loss = _finite_losses_and_grads(_make(name, options=data.draw(scoring())), emb, labels)
    assert loss.dtype == emb.dtype


@given(data=st.data(), name=st.sampled_from(NAMES))
def test_finite_under_autocast_bf16(data, name):
    emb, labels = data.draw(batches("float32"))
    loss_fn = _make(name, options=data.draw(scoring()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _finite_losses_and_grads(loss_fn, emb, labels)


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("name", NAMES)
def test_finite_at_class_center_opposite_and_duplicates(name, dtype):
    loss_fn = _make(name, seed=1)
    k = loss_fn.sub_centers
    with torch.no_grad():  # identical sub-centers, so "opposite" means cos = -1 for all of them
        loss_fn.weight.view(C, k, D)[:] = loss_fn.weight.view(C, k, D)[:, :1].clone()
    labels = torch.tensor([0, 3, 3, 6, 2, 2])
    centers = loss_fn.weight.detach()[labels * k] * 50  # cos = 1 with the target
    emb = torch.cat([centers[:3], -centers[3:]])  # and cos = -1
    emb = torch.cat([emb, emb]).to(dtype)  # every embedding twice
    labels = torch.cat([labels, labels])
    cos = loss_fn.logits(emb.double())[torch.arange(12), labels]
    if dtype == torch.float64:
        torch.testing.assert_close(cos[:3], torch.ones(3, dtype=torch.float64))
        torch.testing.assert_close(cos[3:6], -torch.ones(3, dtype=torch.float64))
    _finite_losses_and_grads(loss_fn, emb, labels)
    # all-zero embeddings and all-equal embeddings
    _finite_losses_and_grads(loss_fn, torch.zeros(4, D, dtype=dtype), torch.tensor([0, 1, 1, 2]))
    _finite_losses_and_grads(loss_fn, torch.ones(4, D, dtype=dtype), torch.tensor([0, 1, 1, 2]))


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@given(
    data=st.data(),
    name=st.sampled_from(NAMES),
    module_in_dtype=st.booleans(),
    kinds=st.lists(st.sampled_from(["random", "center", "opposite", "repeat"]), min_size=1),
)
def test_finite_with_centers_opposites_and_duplicates_mixed(
    dtype_name, data, name, module_in_dtype, kinds
):
    # any mix of rows equal to their class center (cos = 1), opposite to it (cos = -1) and
    # repeats of an earlier row, at any finite scale; with a float32 module or one cast to the
    # embeddings' dtype (a .half() head)
    dtype = DTYPES[dtype_name]
    loss_fn = _make(name, seed=data.draw(st.integers(0, 3)), options=data.draw(scoring()))
    if module_in_dtype:
        loss_fn = loss_fn.to(dtype)
    kinds = kinds[:8]
    emb = torch.zeros(len(kinds), D, dtype=dtype)
    labels = torch.zeros(len(kinds), dtype=torch.long)
    limit = float(torch.finfo(dtype).max)
    centers = loss_fn.weight.detach().to(torch.float64)
    for i, kind in enumerate(kinds):
        labels[i] = data.draw(st.integers(0, C - 1))
        if kind == "repeat" and i > 0:
            j = data.draw(st.integers(0, i - 1))
            emb[i], labels[i] = emb[j], labels[j]
        elif kind in ("center", "opposite"):
            scale = data.draw(st.floats(1e-30, limit / 100, allow_subnormal=False))
            row = centers[labels[i] * loss_fn.sub_centers] * scale
            emb[i] = (row if kind == "center" else -row).to(dtype)
        else:
            emb[i] = data.draw(batches(dtype_name))[0][0]
    emb = torch.nan_to_num(emb)
    loss = _finite_losses_and_grads(loss_fn, emb, labels)
    assert loss.dtype == dtype


@given(data=st.data(), name=st.sampled_from(NORM_INVARIANT), factor=st.floats(1e-3, 1e3))
def test_invariant_to_embedding_norm(data, name, factor):
    emb, labels = data.draw(batches("float64"))
    emb = emb.clamp(-1e6, 1e6)
    # the premise: rescaling keeps every direction (a subnormal entry times 1e-3 underflows)
    emb = torch.where(emb.abs() < 1e-290, 0.0, emb)
    loss_fn = _make(name, options=data.draw(scoring())).double()
    rescaled = emb * torch.linspace(1, factor, len(emb), dtype=torch.float64).unsqueeze(1)
    torch.manual_seed(0)  # sampled: the same classes (they depend on the label set only)
    loss = loss_fn(rescaled, labels)
    torch.manual_seed(0)
    torch.testing.assert_close(loss, loss_fn(emb, labels))


@given(data=st.data(), name=st.sampled_from(NAMES))
def test_invariant_to_batch_permutation(data, name):
    emb, labels = data.draw(batches("float64"))
    emb = emb.clamp(-1e6, 1e6)
    perm = torch.tensor(data.draw(st.permutations(list(range(len(emb))))), dtype=torch.long)
    loss_fn = _make(name, options=data.draw(scoring())).double()
    loss_fn.eval()  # AdaFace: fixed statistics, so both calls see the same margin
    emb = emb.requires_grad_(True)
    torch.manual_seed(0)  # sampled: the same classes (they depend on the label set only)
    loss = loss_fn(emb, labels)
    (g,) = torch.autograd.grad(loss, [emb])
    emb_p = emb.detach()[perm].requires_grad_(True)
    torch.manual_seed(0)
    loss_p = loss_fn(emb_p, labels[perm])
    (g_p,) = torch.autograd.grad(loss_p, [emb_p])
    torch.testing.assert_close(loss_p, loss)
    torch.testing.assert_close(g_p, g[perm])


@pytest.mark.parametrize("name", ["arcface", "cosface", "sphereface", "combined", "adaface"])
def test_margin_raises_the_loss_over_no_margin(name):
    torch.manual_seed(3)
    loss_fn = _make(name).double().eval()
    plain = NormSoftmaxLoss(C, D, scale=loss_fn.scale).double()
    plain.load_state_dict({"weight": loss_fn.weight.detach()})
    emb = torch.randn(32, D, dtype=torch.float64) * 20
    labels = torch.randint(0, C, (32,))
    # per-sample: a margin never makes the target logit larger
    loss_fn.reduction = plain.reduction = "none"
    assert (loss_fn(emb, labels) >= plain(emb, labels) - 1e-12).all()
