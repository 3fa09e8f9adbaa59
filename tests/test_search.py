"""Gallery search: chunked running top-k against a full-matrix float64 reference."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import metricface.search as search_module
from metricface.search import search


def reference_search(probes, gallery, k, metric):
    """Full score matrix in float64, then a stable sort (ties: smaller gallery index first)."""
    p, g = probes.double(), gallery.double()
    if metric == "cosine":
        p = p / p.norm(dim=1, keepdim=True)
        g = g / g.norm(dim=1, keepdim=True)
        key = p @ g.T
        scores = key
    elif metric == "dot":
        key = scores = p @ g.T
    else:
        scores = (p[:, None, :] - g[None, :, :]).pow(2).sum(-1).sqrt()
        key = -scores
    order = torch.argsort(key, dim=1, descending=True, stable=True)[:, :k]
    return scores.gather(1, order), order


@st.composite
def integer_problem(draw):
    dim = draw(st.integers(1, 4))
    n_gallery = draw(st.integers(1, 25))
    n_probes = draw(st.integers(1, 6))
    values = st.integers(-2, 2)
    g = draw(st.lists(st.lists(values, min_size=dim, max_size=dim), min_size=n_gallery,
                      max_size=n_gallery))  # fmt: skip
    p = draw(st.lists(st.lists(values, min_size=dim, max_size=dim), min_size=n_probes,
                      max_size=n_probes))  # fmt: skip
    k = draw(st.integers(1, n_gallery))
    chunk = draw(st.integers(1, n_gallery + 2))
    return torch.tensor(p, dtype=torch.float64), torch.tensor(g, dtype=torch.float64), k, chunk


@given(integer_problem(), st.sampled_from(["dot", "euclidean"]))
def test_chunked_search_equals_full_matrix_with_exact_ties(problem, metric):
    # Small integers make every score exact in float64, so ties are real and must be broken
    # towards the smaller gallery index for every chunk size.
    probes, gallery, k, chunk = problem
    scores, indices = search(probes, gallery, k, metric=metric, chunk_size=chunk, use_faiss=False)
    ref_scores, ref_indices = reference_search(probes, gallery, k, metric)
    assert torch.equal(indices, ref_indices)
    assert torch.equal(scores, ref_scores)


@settings(max_examples=20)
@given(st.integers(0, 2**31 - 1), st.integers(1, 40), st.sampled_from(["cosine", "euclidean"]))
@example(255, 1, "euclidean")  # two gallery rows within float32 rounding of each other
def test_float32_search_matches_float64_reference(seed, chunk, metric):
    gen = torch.Generator().manual_seed(seed)
    probes = torch.randn(7, 16, generator=gen)
    gallery = torch.randn(60, 16, generator=gen)
    scores, indices = search(probes, gallery, 5, metric=metric, chunk_size=chunk, use_faiss=False)
    ref_scores, ref_indices = reference_search(probes, gallery, 5, metric)
    assert scores.dtype == torch.float32 and indices.dtype == torch.int64
    torch.testing.assert_close(scores.double(), ref_scores, atol=2e-5, rtol=0)
    # the returned rows really have the reported scores (in float64) ...
    all_scores, all_order = reference_search(probes, gallery, gallery.shape[0], metric)
    by_index = torch.empty_like(all_scores).scatter_(1, all_order, all_scores)
    torch.testing.assert_close(by_index.gather(1, indices), ref_scores, atol=2e-5, rtol=0)
    # ... and are the float64 top-k, in order, wherever rounding cannot swap neighbours
    gap_next = (all_scores[:, :5] - all_scores[:, 1:6]).abs()
    gap_prev = torch.cat([torch.full((7, 1), float("inf")), gap_next[:, :4]], dim=1)
    clear = torch.minimum(gap_prev, gap_next) > 1e-5
    assert torch.equal(indices[clear], ref_indices[clear])


def test_duplicate_gallery_rows_come_in_index_order():
    gallery = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 2.0], [1.0, 0.0], [1.0, 0.0]])
    probes = torch.tensor([[1.0, 0.0]])
    for chunk in (1, 2, 3, 5):
        scores, indices = search(probes, gallery, 4, chunk_size=chunk, use_faiss=False)
        assert indices.tolist() == [[1, 3, 4, 0]]
        torch.testing.assert_close(scores, torch.tensor([[1.0, 1.0, 1.0, 0.0]]))


def test_euclidean_returns_increasing_distances():
    gallery = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]])
    scores, indices = search(torch.zeros(1, 2), gallery, 3, metric="euclidean", use_faiss=False)
    assert indices.tolist() == [[0, 2, 1]]
    torch.testing.assert_close(scores, torch.tensor([[0.0, 1.0, 5.0]]))


def test_accepts_numpy_and_half_inputs():
    rng = np.random.default_rng(0)
    p, g = rng.normal(size=(4, 8)), rng.normal(size=(20, 8))
    s64, _i64 = search(p, g, 3, use_faiss=False)
    assert s64.dtype == torch.float64
    s16, _i16 = search(torch.from_numpy(p).half(), torch.from_numpy(g).half(), 3, use_faiss=False)
    assert s16.dtype == torch.float32
    torch.testing.assert_close(s16.double(), s64, atol=5e-3, rtol=0)


def test_device_matches_cpu(device):
    gen = torch.Generator().manual_seed(1)
    p, g = torch.randn(30, 32, generator=gen), torch.randn(500, 32, generator=gen)
    ref = search(p, g, 10, chunk_size=64, use_faiss=False)
    out = search(p.to(device), g, 10, chunk_size=64, use_faiss=False)  # gallery streamed
    assert out[0].device.type == device.type
    torch.testing.assert_close(out[0].cpu(), ref[0], atol=1e-5, rtol=0)
    assert torch.equal(out[1].cpu(), ref[1])


def test_use_faiss_true_without_faiss_raises(monkeypatch):
    monkeypatch.setattr(search_module, "_faiss", lambda: None)
    with pytest.raises(ImportError, match="faiss-cpu"):
        search(torch.randn(2, 3), torch.randn(4, 3), 1, use_faiss=True)
    # "auto" falls back to the torch path
    _s, i = search(torch.ones(1, 3), torch.eye(3), 1, use_faiss="auto")
    assert i.tolist() == [[0]]


class _FakeFlatIndex:
    """Stand-in for faiss.IndexFlatIP / IndexFlatL2 (numpy brute force) to test the glue code."""

    def __init__(self, dim, l2):
        self.dim, self.l2, self.data = dim, l2, None

    def add(self, x):
        assert x.dtype == np.float32 and x.flags.c_contiguous and x.shape[1] == self.dim
        self.data = x

    def search(self, q, k):
        if self.l2:
            d = ((q[:, None, :] - self.data[None]) ** 2).sum(-1)
            idx = np.argsort(d, axis=1, kind="stable")[:, :k]
        else:
            d = q @ self.data.T
            idx = np.argsort(-d, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(d, idx, 1).astype(np.float32), idx.astype(np.int64)


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "dot"])
def test_faiss_path_glue_matches_torch_path(monkeypatch, metric):
    fake = types.ModuleType("faiss")
    fake.IndexFlatIP = lambda d: _FakeFlatIndex(d, l2=False)
    fake.IndexFlatL2 = lambda d: _FakeFlatIndex(d, l2=True)
    monkeypatch.setitem(sys.modules, "faiss", fake)
    gen = torch.Generator().manual_seed(2)
    p, g = torch.randn(5, 6, generator=gen), torch.randn(40, 6, generator=gen)
    s_f, i_f = search(p, g, 4, metric=metric, use_faiss=True)
    s_t, i_t = search(p, g, 4, metric=metric, use_faiss=False)
    torch.testing.assert_close(s_f, s_t, atol=1e-5, rtol=0)
    assert torch.equal(i_f, i_t)
    # float64 inputs get float64 scores on either path, as documented
    s_f64, _ = search(p.double(), g, 4, metric=metric, use_faiss=True)
    assert s_f64.dtype == torch.float64
    torch.testing.assert_close(s_f64, s_t.double(), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"gallery": torch.randn(5, 4)}, ValueError, "same embedding dimension, got 3 and 4"),
        ({"k": 6}, ValueError, r"k must be at most the gallery size \(5\), got 6"),
        ({"k": 0}, ValueError, "k must be in"),
        ({"k": 1.5}, TypeError, "k must be an int"),
        ({"probes": torch.empty(0, 3)}, ValueError, "probes must be non-empty"),
        ({"gallery": torch.empty(0, 3)}, ValueError, "gallery must be non-empty"),
        (
            {"probes": torch.tensor([[0.0, float("nan"), 1.0]])},
            ValueError,
            "probes must contain only finite",
        ),
        (
            {"gallery": torch.full((5, 3), float("inf"))},
            ValueError,
            "gallery must contain only finite",
        ),
        ({"metric": "manhattan"}, ValueError, "metric must be one of"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be in"),
        ({"use_faiss": "yes"}, ValueError, "use_faiss must be"),
        ({"probes": [[1, 2, 3]]}, TypeError, "probes must have a floating-point dtype"),
        ({"probes": "abc"}, TypeError, "probes must be a torch.Tensor or a NumPy array"),
    ],
)
def test_validation(kwargs, error, match):
    args = {"probes": torch.randn(2, 3), "gallery": torch.randn(5, 3), "k": 2}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        search(args.pop("probes"), args.pop("gallery"), args.pop("k"), **args)


def test_finite_check_handles_overflowing_sums():
    # the sum of these finite values overflows to inf: validation must still accept them
    big = torch.full((3, 2), 3e38)
    scores, indices = search(torch.ones(1, 2), big, 2, use_faiss=False)
    assert indices.tolist() == [[0, 1]]
    torch.testing.assert_close(scores, torch.ones(1, 2))  # the norm did not overflow
    with pytest.raises(ValueError, match="got 1 NaN or infinite entry"):
        search(torch.ones(1, 2), torch.tensor([[1.0, -float("inf")], [1.0, 1.0]]), 1)


@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
def test_autocast_context_does_not_lower_precision(metric):
    # Evaluation is often called inside a training step's autocast region; the scores must
    # still be float32 products (CPU autocast would run matmuls in bfloat16).
    gen = torch.Generator().manual_seed(3)
    probes, gallery = torch.randn(9, 32, generator=gen), torch.randn(80, 32, generator=gen)
    expected = search(probes, gallery, 6, metric=metric, chunk_size=16, use_faiss=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores, indices = search(probes, gallery, 6, metric=metric, chunk_size=16, use_faiss=False)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, expected[0], atol=0, rtol=0)
    assert torch.equal(indices, expected[1])


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor a torch op returns."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
def test_search_never_builds_the_probe_by_gallery_matrix(metric):
    n_probes, n_gallery, dim, chunk, k = 300, 2000, 4, 64, 5
    g = torch.Generator().manual_seed(0)
    probes = torch.randn(n_probes, dim, generator=g, dtype=torch.float64)
    gallery = torch.randn(n_gallery, dim, generator=g, dtype=torch.float64)
    with _LargestTensor() as full:  # the recorder sees a full score matrix
        probes @ gallery.T
    assert full.largest == n_probes * n_gallery
    with _LargestTensor() as mem:
        scores, indices = search(
            probes, gallery, k, metric=metric, chunk_size=chunk, use_faiss=False
        )
    # one chunk x chunk block of scores, the running top-k, or a copy of the inputs
    assert mem.largest <= max(chunk * chunk, n_gallery * dim, n_probes * 2 * k)
    assert mem.largest < n_probes * n_gallery // 100
    ref_scores, ref_indices = reference_search(probes, gallery, k, metric)
    torch.testing.assert_close(scores, ref_scores, atol=1e-12, rtol=0)
    assert torch.equal(indices, ref_indices)


def test_unknown_or_missing_device_is_a_clear_error(monkeypatch):
    p, g = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"device must be a device such as .*got 'bogus'"):
        search(p, g, 2, device="bogus")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device='cuda' needs CUDA"):
        search(p, g, 2, device="cuda", use_faiss=False)
