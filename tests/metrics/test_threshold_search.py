"""The O(n) EER and TAR@FAR (radix selection) against the sorted operating points, bit for bit."""

from __future__ import annotations

import itertools
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from metricface.metrics import equal_error_rate, tar_at_far, verification_report
from metricface.metrics._checks import check_binary_arrays, check_binary_scores
from metricface.metrics._threshold_search import ThresholdSearch, key_to_score, score_keys
from metricface.metrics.verification import (
    eer_from_points,
    eer_from_search,
    operating_points,
    tar_from_points,
    tar_from_search,
)

I64 = np.iinfo(np.int64)
FLOATS = {
    "float16": (np.float16, torch.float16),
    "bfloat16": (None, torch.bfloat16),
    "float32": (np.float32, torch.float32),
    "float64": (np.float64, torch.float64),
}
TARGETS = np.array([1e-3, 0.05, 0.2, 0.5, 0.75, 1.0])
# (bits, sort_below): the default, and settings that force deep histogram searches
SEARCHES = [(16, 4096), (16, 0), (3, 0), (1, 0), (5, 3)]


def _float_pool(dtype: str) -> list[float]:
    """Values where float order is delicate: extremes, signed zeros, subnormals, ulps."""
    info = torch.finfo(FLOATS[dtype][1])
    one_up = float(torch.nextafter(torch.tensor(1.0), torch.tensor(2.0)).to(FLOATS[dtype][1]))
    return [
        info.max,
        -info.max,
        info.tiny,
        -info.tiny,
        info.smallest_normal / 4,  # a subnormal
        0.0,
        -0.0,
        1.0,
        -1.0,
        one_up,
        0.5,
    ]


@st.composite
def typed_scores(draw, max_n: int = 30):
    """Labels (both classes) and scores of any supported dtype, as numpy or torch input.

    Scores come from a few distinct values (many ties, down to one or two distinct values)
    or are drawn freely; int64 scores sit around 0, +-2**53, 2**62 or the int64 limits.
    """
    dtype = draw(st.sampled_from([*FLOATS, "int64"]))
    n_g, n_i = draw(st.integers(1, max_n)), draw(st.integers(1, max_n))
    if dtype == "int64":
        center = draw(st.sampled_from([0, 2**53, -(2**53), 2**62, I64.max - 9, I64.min + 9]))
        values = st.integers(-9, 9).map(lambda d: center + d) | st.sampled_from([I64.min, I64.max])
    else:
        limit = float(torch.finfo(FLOATS[dtype][1]).max)
        values = st.sampled_from(_float_pool(dtype)) | st.floats(
            -limit, limit, allow_nan=False, allow_infinity=False
        )
    if draw(st.booleans()):  # few distinct values: ties between and within classes
        pool = draw(st.lists(values, min_size=1, max_size=3))
        values = st.sampled_from(pool)
    s = draw(st.lists(values, min_size=n_g + n_i, max_size=n_g + n_i))
    y = np.array([1] * n_g + [0] * n_i)
    perm = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).permutation(y.size)
    y = y[perm]
    if dtype == "int64":
        return y, np.array(s, dtype=np.int64)[perm]
    scores = torch.tensor(s, dtype=torch.float64)[perm].to(FLOATS[dtype][1])
    if FLOATS[dtype][0] is not None and draw(st.booleans()):
        return y, scores.numpy()
    return torch.tensor(y), scores


def _reference(y, s):
    op = operating_points(*check_binary_scores(y, s))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tar = tar_from_points(op, TARGETS)
    return eer_from_points(op), tar


def _same_tar(got, ref):
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])


def _search_equals_reference(y, s, bits, sort_below):
    """Both code paths: numpy (host data) and torch (what tensors on a GPU take; run here on
    CPU tensors)."""
    eer, tar = _reference(y, s)
    labels, scores, n_pos = check_binary_arrays(y, s)
    for xp_labels, xp_scores in (
        (labels, scores),
        (torch.from_numpy(labels), torch.from_numpy(scores)),
    ):
        found = ThresholdSearch(xp_labels, xp_scores, n_pos, bits=bits, sort_below=sort_below)
        assert eer_from_search(found) == eer
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _same_tar(tar_from_search(found, TARGETS), tar)


@given(typed_scores())
def test_public_functions_equal_the_sorted_reference(data):
    y, s = data
    eer, tar = _reference(y, s)
    assert equal_error_rate(y, s, return_threshold=True) == eer
    assert equal_error_rate(y, s) == eer[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _same_tar(tar_at_far(y, s, TARGETS, return_threshold=True), tar)
        np.testing.assert_array_equal(tar_at_far(y, s, TARGETS), tar[0])


@given(typed_scores(max_n=12), st.sampled_from(SEARCHES))
def test_deep_searches_equal_the_sorted_reference(data, search):
    """Few key bits per level and no sorting: every level of the search is exercised."""
    _search_equals_reference(*data, *search)


@given(st.sampled_from(SEARCHES), st.integers(0, 2**32 - 1), st.sampled_from([2, 50, 3000]))
def test_continuous_scores_equal_the_sorted_reference(search, seed, n):
    """Realistic cosine-like scores: the crossing falls inside a histogram bucket."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    y[:2] = [True, False]
    s = np.where(y, rng.normal(0.5, 0.15, n), rng.normal(0.05, 0.1, n)).astype(np.float32)
    _search_equals_reference(y, s, *search)


def test_large_inputs_take_several_histogram_levels():
    rng = np.random.default_rng(1)
    n = 60_000
    y = rng.random(n) < 0.2
    for s in (
        rng.normal(size=n).astype(np.float32),
        np.round(rng.normal(size=n), 2),  # ties, float64
        rng.integers(-(2**62), 2**62, size=n),  # int64, wide
        2**53 + rng.integers(0, 40, size=n),  # int64 ties above 2**53
        np.full(n, 0.25),  # one value
    ):
        eer, tar = _reference(y, s)
        assert equal_error_rate(y, s, return_threshold=True) == eer
        _same_tar(tar_at_far(y, s, TARGETS, return_threshold=True), tar)


# ----------------------------------------------------------------------------- keys


@given(st.sampled_from([np.float32, np.float64]), st.data())
def test_keys_order_like_the_scores(dtype, data):
    pool = _float_pool("float32" if dtype == np.float32 else "float64")
    floats = st.sampled_from(pool) | st.floats(allow_nan=False, allow_infinity=False, width=32)
    s = np.array(data.draw(st.lists(floats, min_size=2, max_size=20)), dtype=dtype)
    keys = score_keys(s)
    for a in range(s.size):
        assert key_to_score(int(keys[a]), s.dtype) == s[a]
        for b in range(s.size):
            assert (keys[a] < keys[b]) == (s[a] < s[b]) and (keys[a] == keys[b]) == (s[a] == s[b])
    torch_keys = score_keys(torch.from_numpy(s))
    np.testing.assert_array_equal(torch_keys.numpy(), keys)


# ----------------------------------------------------------------------------- exact values


def _exact_eer(y, s) -> Fraction:
    """The EER as an exact rational, from ROC points counted directly with Python ints."""
    g = [int(v) for v, t in zip(s, y) if t]
    i = [int(v) for v, t in zip(s, y) if not t]
    pts = [(Fraction(0), Fraction(0))]
    for t in sorted(set(g + i), reverse=True):
        pts.append(
            (Fraction(sum(v >= t for v in i), len(i)), Fraction(sum(v >= t for v in g), len(g)))
        )
    for (fa, ta), (fb, tb) in itertools.pairwise(pts):
        da, db = 1 - ta - fa, 1 - tb - fb
        if da > 0 >= db:
            return fa + da / (da - db) * (fb - fa)
    raise AssertionError("no crossing")


@given(
    st.lists(st.integers(-3, 3), min_size=1, max_size=12),
    st.lists(st.integers(-3, 3), min_size=1, max_size=12),
    st.sampled_from([0, 2**53, 2**62]),
)
def test_eer_is_the_correctly_rounded_exact_crossing(genuine, impostor, offset):
    """Small integer scores (shifted past 2**53): the EER is the exact rational crossing, rounded
    once, whichever path computes it."""
    y = np.array([1] * len(genuine) + [0] * len(impostor))
    s = np.array(genuine + impostor, dtype=np.int64) + offset
    exact = float(_exact_eer(y, s))
    assert equal_error_rate(y, s) == exact
    assert eer_from_points(operating_points(*check_binary_scores(y, s)))[0] == exact


def test_report_rows_equal_the_linear_time_functions():
    rng = np.random.default_rng(3)
    y = rng.random(5000) < 0.4
    s = np.round(rng.normal(size=5000) + y, 3).astype(np.float32)
    report = verification_report(y, s, far_targets=(1e-3, 1e-2, 0.1))
    assert (report.eer, report.eer_threshold) == equal_error_rate(y, s, return_threshold=True)
    tar, thr = tar_at_far(y, s, [1e-3, 1e-2, 0.1], return_threshold=True)
    assert report.tar == tuple(tar.tolist()) and report.tar_thresholds == tuple(thr.tolist())


def test_scores_stay_on_their_device_for_the_search():
    """CPU tensors are searched as numpy views of the same memory (no copy of the scores)."""
    s = torch.rand(100)
    y = torch.rand(100) < 0.5
    _labels, scores, _ = check_binary_arrays(y, s)
    assert isinstance(scores, np.ndarray) and np.shares_memory(scores, s.numpy())


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.int64])
def test_cuda_equals_cpu(dtype):
    g = torch.Generator().manual_seed(0)
    n = 200_000
    y = torch.rand(n, generator=g) < 0.2
    s = torch.randn(n, generator=g, dtype=torch.float64) + y
    if dtype == torch.int64:
        s = (s * 1000).round().to(torch.int64) + 2**53  # ties above 2**53
    else:
        s = s.to(dtype)
    s[:10] = 0.0
    s[10:20] = -0.0 if dtype != torch.int64 else 2**53
    cpu_eer = equal_error_rate(y, s, return_threshold=True)
    cpu_tar = tar_at_far(y, s, TARGETS, return_threshold=True)
    assert equal_error_rate(y.cuda(), s.cuda(), return_threshold=True) == cpu_eer
    _same_tar(tar_at_far(y.cuda(), s.cuda(), TARGETS, return_threshold=True), cpu_tar)
    assert equal_error_rate(y, s.cuda()) == cpu_eer[0]  # labels on the host, scores on CUDA


@pytest.mark.cuda
def test_cuda_searches_keep_the_scores_on_the_device():
    s = torch.rand(1000, device="cuda")
    labels, scores, _ = check_binary_arrays(torch.rand(1000) < 0.5, s)
    assert scores.device == s.device and labels.device == s.device
    found = ThresholdSearch(labels, scores, int(labels.sum()), bits=4, sort_below=0)
    assert found.keys.device == s.device
    y_cpu, s_cpu = labels.cpu().numpy(), s.cpu().numpy()
    assert eer_from_search(found) == _reference(y_cpu, s_cpu)[0]
