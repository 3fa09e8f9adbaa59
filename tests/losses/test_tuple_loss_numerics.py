"""Pair and triplet losses in every dtype: finite on any finite input, half precision = float32.

Zero rows, duplicated rows and rows of tiny or huge norm, in float16, bfloat16, float32 and
float64, through every pair/triplet loss, labels-only, mined tuples and a reference set.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from metricface.losses import ContrastiveLoss, MultiSimilarityLoss, TripletMarginLoss
from metricface.miners import BatchHardMiner, MultiSimilarityMiner, PairMarginMiner

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
HALF = [torch.float16, torch.bfloat16]


def _losses():
    return {
        "contrastive": ContrastiveLoss(),
        "contrastive-cosine": ContrastiveLoss(distance="cosine"),
        "triplet": TripletMarginLoss(margin=0.2),
        "triplet-cosine": TripletMarginLoss(margin=0.2, distance="cosine"),
        "triplet-swap-smooth": TripletMarginLoss(swap=True, smooth_loss=True),
        "multi-similarity": MultiSimilarityLoss(),
        "multi-similarity-euclidean": MultiSimilarityLoss(distance="euclidean"),
    }


MINERS = {
    "labels": None,
    "batch-hard": BatchHardMiner(),
    "pair-margin": PairMarginMiner(0.2, 0.8),
    "multi-similarity": MultiSimilarityMiner(),
}


def _value_and_grad(loss_fn, x, y, mode, miner, ref_x=None):
    """Loss and gradients (of ``x`` and ``ref_x``) of one call in the given ``mode``."""
    x = x.clone().requires_grad_(True)
    kwargs = {}
    if mode == "ref":
        ref_x = ref_x.clone().requires_grad_(True)
        kwargs = {"ref_emb": ref_x, "ref_labels": y.flip(0)}
    elif miner is not None:
        kwargs = {"indices_tuple": miner(x, y)}
    loss = loss_fn(x, y, **kwargs)
    loss.backward()
    return loss.detach(), x.grad, (None if ref_x is None else ref_x.grad)


def _assert_half_matches_float32(half_grad, grad32):
    """The half-precision gradient is the float32 one rounded, saturating where out of range."""
    big = torch.finfo(half_grad.dtype).max
    g = half_grad.float()
    inside = grad32.abs() <= big
    torch.testing.assert_close(
        g[inside],
        grad32[inside],
        rtol=torch.finfo(half_grad.dtype).eps,
        atol=torch.finfo(half_grad.dtype).smallest_normal,
    )
    assert torch.equal(g[~inside], grad32[~inside].sign() * big)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(_losses()))
def test_all_zero_row_gives_finite_gradients(name, dtype):
    # issue 14, defect 1: float16 gave inf gradients for an all-zero embedding row
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    x[3] = 0
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss, grad, _ = _value_and_grad(_losses()[name], x.to(dtype), y, "labels", None)
    assert loss.dtype == grad.dtype == dtype
    assert torch.isfinite(loss.float()) and torch.isfinite(grad.float()).all()


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_forward_pairs_with_a_zero_row_gives_finite_gradients(distance, dtype):
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    x1[2] = 0
    x1, x2 = x1.to(dtype).requires_grad_(True), x2.to(dtype).requires_grad_(True)
    target = torch.tensor([1, -1, 1, -1, 1, -1])
    ContrastiveLoss(distance=distance).forward_pairs(x1, x2, target).backward()
    assert torch.isfinite(x1.grad.float()).all() and torch.isfinite(x2.grad.float()).all()
    assert x1.grad.dtype == dtype


@st.composite
def _batches(draw):
    """Embeddings (float64, finite in ``dtype``) with zero, duplicated, tiny and huge rows."""
    dtype = draw(st.sampled_from(DTYPES))
    n = draw(st.integers(2, 10))
    y = torch.tensor(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**16))))
    x = x.double()
    finfo = torch.finfo(dtype)
    low, high = int(math.log2(finfo.tiny)) - 2, int(math.log2(finfo.max)) - 3
    for i in range(n):
        kind = draw(st.sampled_from(["plain", "zero", "duplicate", "scaled"]))
        if kind == "zero":
            x[i] = 0
        elif kind == "duplicate":
            x[i] = x[draw(st.integers(0, n - 1))]
        elif kind == "scaled":
            x[i] *= 2.0 ** draw(st.integers(low, high))
    x = x.clamp(-finfo.max / 4, finfo.max / 4).to(dtype)
    return x, y, dtype


@given(
    batch=_batches(),
    name=st.sampled_from(list(_losses())),
    mode=st.sampled_from([*MINERS, "ref"]),
)
def test_finite_in_every_dtype_and_half_precision_matches_float32(batch, name, mode):
    x, y, dtype = batch
    loss_fn, miner = _losses()[name], MINERS.get(mode)
    ref_x = x.flip(0) if mode == "ref" else None
    loss, grad, ref_grad = _value_and_grad(loss_fn, x, y, mode, miner, ref_x)
    assert loss.dtype == grad.dtype == dtype
    assert torch.isfinite(loss.float()) and torch.isfinite(grad.float()).all()
    if ref_grad is not None:
        assert torch.isfinite(ref_grad.float()).all()
    if dtype in HALF:
        # the same values in float32: half precision is computed in float32, cast back once
        x32 = x.float()
        loss32, grad32, ref_grad32 = _value_and_grad(
            loss_fn, x32, y, mode, miner, None if ref_x is None else x32.flip(0)
        )
        assert torch.equal(loss, loss32.to(dtype))
        _assert_half_matches_float32(grad, grad32)
        if ref_grad is not None:
            _assert_half_matches_float32(ref_grad, ref_grad32)


@pytest.mark.parametrize("dtype", HALF)
def test_rows_whose_sum_overflows_give_a_finite_loss(dtype):
    # finite float16 rows of norm 1000: their plain sum overflows, which must not turn the
    # zero that keeps the graph into NaN (inf * 0)
    big = torch.full((4, 512), 1000.0, dtype=dtype, requires_grad=True)
    other = torch.randn(4, 512, generator=torch.Generator().manual_seed(2)).to(dtype)
    loss = ContrastiveLoss().forward_pairs(big, other, torch.tensor([1, -1, 1, -1]))
    loss.backward()
    assert torch.isfinite(loss.float()) and torch.isfinite(big.grad.float()).all()
