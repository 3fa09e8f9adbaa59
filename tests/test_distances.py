"""Pairwise distance matrices against a float64 re-derivation, also under autocast."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from metricface.distances import (
    cosine_similarity_matrix,
    euclidean_distance_matrix,
    l2_normalize,
    pairwise_matrix,
)


def _reference(x, y, distance):
    """float64, written from the definitions: unit rows, then dot products or L2 norms."""
    xn = x.double() / x.double().norm(dim=1, keepdim=True).clamp_min(1e-12)
    yn = y.double() / y.double().norm(dim=1, keepdim=True).clamp_min(1e-12)
    if distance == "cosine":
        return (xn[:, None, :] * yn[None, :, :]).sum(-1)
    return (xn[:, None, :] - yn[None, :, :]).pow(2).sum(-1).sqrt()


@given(
    b=st.integers(1, 9),
    r=st.integers(1, 9),
    seed=st.integers(0, 2**16),
    distance=st.sampled_from(["euclidean", "cosine"]),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
)
def test_matches_float64_definition(b, r, seed, distance, dtype):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(b, 6, generator=g).to(dtype), torch.randn(r, 6, generator=g).to(dtype)
    out = pairwise_matrix(x, y, distance)
    assert out.shape == (b, r)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = 1e-12 if dtype == torch.float64 else 1e-5  # half inputs are exact in float32
    torch.testing.assert_close(out.double(), _reference(x, y, distance), atol=tol, rtol=0)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_autocast_keeps_float32(distance):
    """Miners and losses called inside autocast still compare embeddings in float32."""
    x, y = torch.randn(32, 64), torch.randn(20, 64)
    plain = pairwise_matrix(x, y, distance)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = pairwise_matrix(x, y, distance)
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, plain, atol=1e-6, rtol=0)


def test_self_distance_is_zero_with_zero_gradient():
    x = torch.randn(4, 5)
    x = torch.cat([x, x[:1]]).requires_grad_(True)  # a duplicated row
    d = euclidean_distance_matrix(x)
    assert d.diagonal().eq(0).all() and d[0, 4] == 0
    d.sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(cosine_similarity_matrix(x).diagonal(), torch.ones(5))


def test_unknown_distance_is_a_clear_error():
    with pytest.raises(ValueError, match=r"distance must be one of \('euclidean', 'cosine'\)"):
        pairwise_matrix(torch.randn(2, 3), distance="manhattan")


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize(
    ("x", "y", "error", "match"),
    [
        (
            torch.randn(3, 4).numpy(),
            None,
            TypeError,
            "x must be a floating-point torch.Tensor, got",
        ),
        (torch.arange(6).view(2, 3), None, TypeError, "x must be .* got torch.int64"),
        (torch.randn(4), None, ValueError, r"x must have shape \(rows, dim\), got shape \(4,\)"),
        (torch.randn(2, 4), torch.randn(3, 5), ValueError, "same dim, got 4 and 5"),
        (torch.randn(2, 4), torch.randn(3, 4, device="meta"), ValueError, "y must be on the same"),
    ],
)
def test_bad_inputs_are_named(distance, x, y, error, match):
    with pytest.raises(error, match=match):
        pairwise_matrix(x, y, distance=distance)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("other", [torch.float16, torch.float32])
def test_mixed_float64_and_lower_precision_inputs_compute_in_float64(distance, other):
    # e.g. a float64 memory bank as ref_emb for float32 embeddings
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 6, generator=g, dtype=torch.float64)
    y = torch.randn(4, 6, generator=g).to(other)
    for a, b in ((x, y), (y, x)):
        out = pairwise_matrix(a, b, distance)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, _reference(a, b, distance), atol=1e-12, rtol=0)


def _rows_with_duplicates(n, dim, copies, seed, scale=1.0):
    """``n`` rows of ``dim`` columns in which row ``i`` repeats row ``copies[i]`` when set."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64) * scale
    for i, j in copies.items():
        x[i] = x[j]
    return x


@given(
    n=st.integers(26, 90),  # torch.cdist switches to its Gram-matrix form beyond 25 rows
    dim=st.sampled_from([2, 16, 128, 512]),
    seed=st.integers(0, 2**16),
    normalize=st.booleans(),
    scale=st.sampled_from([1e-3, 1.0, 30.0]),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
    data=st.data(),
)
def test_duplicated_rows_are_exactly_zero_at_any_size(n, dim, seed, normalize, scale, dtype, data):
    # issue 14, defect 3: from 26 rows, duplicated rows were 3.5e-4 to 6.9e-4 apart in float32
    copies = data.draw(st.dictionaries(st.integers(1, n - 1), st.integers(0, n - 1), max_size=8))
    x = _rows_with_duplicates(n, dim, copies, seed, scale).to(dtype)
    d = euclidean_distance_matrix(x, normalize=normalize)
    rows = l2_normalize(x) if normalize else x  # the rows compared (distinct inputs may
    same = (rows[:, None, :] == rows[None, :, :]).all(-1)  # normalise to one in low precision)
    assert torch.equal(d[same], torch.zeros_like(d[same]))
    assert (d[~same] > 0).all()
    # every other entry is still the float64 distance, to float32 accuracy
    xr = x.double()
    if normalize:
        xr = xr / xr.norm(dim=1, keepdim=True).clamp_min(1e-12)
    ref = (xr[:, None, :] - xr[None, :, :]).pow(2).sum(-1).sqrt()
    tol = 1e-12 if dtype == torch.float64 else 2e-3 * max(1.0, float(ref.max()))
    torch.testing.assert_close(d.double(), ref, atol=tol, rtol=1e-6)


@pytest.mark.parametrize("precision", ["highest", "high", "medium"])
def test_duplicated_rows_are_zero_with_reduced_precision_matmuls(precision):
    x = _rows_with_duplicates(64, 512, {40: 3, 41: 3, 63: 10}, seed=0).float()
    y = x[[3, 10, 20]].clone()
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        d = euclidean_distance_matrix(x, y)
    finally:
        torch.set_float32_matmul_precision(saved)
    for row, col in [(3, 0), (40, 0), (41, 0), (10, 1), (63, 1), (20, 2)]:
        assert d[row, col] == 0


def test_duplicated_rows_have_zero_gradient_beyond_25_rows():
    x = _rows_with_duplicates(40, 64, {30: 2, 31: 2}, seed=1).float().requires_grad_(True)
    d = euclidean_distance_matrix(x)
    d[2, 30].backward()  # the distance between two copies: no direction to move them
    assert torch.equal(x.grad, torch.zeros_like(x.grad))
    x.grad = None
    euclidean_distance_matrix(x).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    ("backend", "value"),
    [("", "tf32"), ("mkldnn.matmul", "bf16"), ("mkldnn.matmul", "tf32"), ("cuda.matmul", "tf32")],
)
def test_the_fp32_precision_settings_of_recent_torch_are_read(backend, value):
    # torch >= 2.9 refuses its legacy precision getters once fp32_precision has been set
    owner = torch.backends
    for name in filter(None, backend.split(".")):
        owner = getattr(owner, name)
    if not hasattr(owner, "fp32_precision"):
        pytest.skip("this torch has no fp32_precision setting")
    saved = owner.fp32_precision
    owner.fp32_precision = value
    try:
        x = _rows_with_duplicates(40, 64, {30: 2}, seed=2).float()
        d = euclidean_distance_matrix(x)
    finally:
        owner.fp32_precision = saved
    assert d[2, 30] == 0 and d[30, 2] == 0 and (d.diagonal() == 0).all()


def test_a_batch_of_near_copies_matches_float64():
    # early in training the embeddings of a batch can all be close: the Gram form on rows
    # centred on their mean still resolves them, and the result matches float64
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 512, generator=g) + 0.005 * torch.randn(200, 512, generator=g)
    d = euclidean_distance_matrix(x)
    xn = torch.nn.functional.normalize(x.double(), dim=1)
    ref = (xn[:, None, :] - xn[None, :, :]).pow(2).sum(-1).sqrt()
    torch.testing.assert_close(d.double(), ref, atol=1e-6, rtol=1e-4)
