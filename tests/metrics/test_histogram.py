"""Histogram metrics: exact counts of all pairs, and the stated EER error bound."""

from __future__ import annotations

import warnings
import weakref

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from metricface.metrics import (
    ScoreHistogram,
    all_pairs_histogram,
    equal_error_rate,
    roc_auc,
    roc_curve,
    tar_at_far,
)


def explicit_pairs(embeddings, labels):
    """Every pair i < j, enumerated in float64: the reference the blockwise path must match."""
    e = torch.nn.functional.normalize(embeddings.double(), dim=1)
    i, j = torch.triu_indices(len(labels), len(labels), 1)
    scores = (e[i] * e[j]).sum(1).clamp(-1, 1).numpy()
    return (labels[i] == labels[j]).numpy(), scores


def clustered(n, n_ids, dim=16, noise=1.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, n_ids, (n,), generator=g)
    centers = torch.randn(n_ids, dim, generator=g, dtype=dtype)
    return centers[labels] + noise * torch.randn(n, dim, generator=g, dtype=dtype), labels


@pytest.mark.parametrize("n, block_size", [(2, 1), (97, 10), (97, 97), (150, 64), (150, 1000)])
def test_all_pairs_counts_every_pair_once(n, block_size):
    emb, labels = clustered(n, 7)
    hist = all_pairs_histogram(emb, labels, bins=300, block_size=block_size)
    y, s = explicit_pairs(emb, labels)
    ref = ScoreHistogram(300).update(y, s)
    assert hist.n_genuine + hist.n_impostor == n * (n - 1) // 2
    np.testing.assert_array_equal(hist.genuine, ref.genuine)
    np.testing.assert_array_equal(hist.impostor, ref.impostor)


def test_all_pairs_float32_and_dot_product():
    emb, labels = clustered(120, 5, dtype=torch.float32)
    hist = all_pairs_histogram(emb, labels, bins=200, block_size=50)
    y, s = explicit_pairs(emb, labels)
    exact = equal_error_rate(y, s)
    lo, hi = hist.eer_bounds()
    # float32 similarities differ from float64 by ~1e-7: a score may change bins, which moves
    # the bound by at most a few pairs.
    slack = 3 / min(hist.n_genuine, hist.n_impostor)
    assert lo - slack <= exact <= hi + slack
    # unnormalised dot products with a matching range
    emb = emb / emb.norm(dim=1, keepdim=True) * 2.0
    dots = all_pairs_histogram(emb, labels, bins=200, range=(-4, 4), normalize=False)
    assert dots.n_genuine == hist.n_genuine
    np.testing.assert_allclose(dots.equal_error_rate(), exact, atol=hi - lo + slack)


@pytest.mark.cuda
def test_all_pairs_on_cuda_matches_cpu():
    emb, labels = clustered(500, 20, dtype=torch.float64)
    cpu = all_pairs_histogram(emb, labels, bins=500, block_size=128)
    gpu = all_pairs_histogram(emb, labels, bins=500, block_size=128, device="cuda")
    np.testing.assert_array_equal(cpu.genuine, gpu.genuine)
    np.testing.assert_array_equal(cpu.impostor, gpu.impostor)


@st.composite
def bounded_scores(draw):
    n_g, n_i = draw(st.integers(1, 60)), draw(st.integers(1, 60))
    elem = st.one_of(
        st.floats(-1, 1, allow_nan=False),
        st.integers(-8, 8).map(lambda k: k / 8),  # exactly on bin edges, and ties
    )
    s = np.array(draw(st.lists(elem, min_size=n_g + n_i, max_size=n_g + n_i)))
    y = np.array([1] * n_g + [0] * n_i)
    return y, s


@given(bounded_scores(), st.integers(1, 64))
def test_histogram_eer_within_stated_bound(data, bins):
    y, s = data
    hist = ScoreHistogram(bins).update(y, s)
    exact = equal_error_rate(y, s)
    lo, hi = hist.eer_bounds()
    assert lo - 1e-12 <= exact <= hi + 1e-12
    assert lo - 1e-12 <= hist.equal_error_rate() <= hi + 1e-12
    assert abs(hist.roc_auc() - roc_auc(y, s)) <= hist.auc_error_bound() + 1e-12
    # the width never exceeds the genuine or impostor fraction in the bin where they cross,
    # found here by scanning the bins from the top
    n_g, n_i = y.sum(), (1 - y).sum()
    frr = 1 - np.concatenate(([0], np.cumsum(hist.genuine[::-1]))) / n_g
    far = np.concatenate(([0], np.cumsum(hist.impostor[::-1]))) / n_i
    k = next(k for k in range(bins + 1) if frr[k] <= far[k])
    assert hi - lo <= min(far[k] - far[k - 1], frr[k - 1] - frr[k]) + 1e-12


@given(bounded_scores(), st.integers(1, 64))
def test_histogram_points_are_exact_operating_points(data, bins):
    y, s = data
    hist = ScoreHistogram(bins).update(y, s)
    fpr, tpr, _ = hist.roc_curve()
    efpr, etpr, _ = roc_curve(y, s)
    exact = set(zip(efpr.tolist(), etpr.tolist()))
    assert set(zip(fpr.tolist(), tpr.tolist())) <= exact
    # TAR@FAR from the histogram never exceeds the exact one
    for a in (0.1, 0.5, 1.0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the a * n_impostor < 1 warning is tested elsewhere
            assert hist.tar_at_far(a) <= tar_at_far(y, s, a) + 1e-15


@given(
    st.lists(st.integers(-100, 100), min_size=2, max_size=40),
    st.integers(1, 200),
    st.sampled_from([(-1.0, 1.0), (0.0, 1.0), (-1.0, 0.5)]),
    st.integers(0, 2**32 - 1),
)
@example([29, 10, 57, 30], 100, (0.0, 1.0), 0)
def test_reported_thresholds_reproduce_every_histogram_point(ks, bins, rng_range, seed):
    # Scores rounded to two decimals (as in score files) often sit exactly on a bin edge; a
    # user applying the reported threshold with ``score >= t`` must get the reported counts.
    lo, hi = rng_range
    s = np.clip(np.array(ks) / 100, lo, hi)
    y = np.random.default_rng(seed).integers(0, 2, s.size)
    y[:2] = [0, 1]
    hist = ScoreHistogram(bins, rng_range).update(y, s)
    fpr, tpr, thr = hist.roc_curve()
    direct_far = (s[y == 0][None, :] >= thr[:, None]).mean(1)
    direct_tar = (s[y == 1][None, :] >= thr[:, None]).mean(1)
    np.testing.assert_array_equal(fpr, direct_far)
    np.testing.assert_array_equal(tpr, direct_tar)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tar, t = hist.tar_at_far(0.25, return_threshold=True)
    assert (s[y == 0] >= t).mean() <= 0.25 and (s[y == 1] >= t).mean() == tar


def test_all_pairs_thresholds_reproduce_counts_with_scores_on_edges():
    # 1-d embeddings: every dot product with the first one (1.0) is exactly the other value,
    # and values such as 0.29 and 0.57 sit exactly on edges of 100 bins over (0, 1)
    values = torch.tensor([1.0, 0.29, 0.57, 0.3, 0.1, 0.29, 0.57, 0.9], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 0, 1, 0, 1])
    i, j = torch.triu_indices(8, 8, 1)
    y = (labels[i] == labels[j]).numpy()
    s = (values[i] * values[j]).numpy()
    for dtype in (torch.float64, torch.float32):
        emb = values[:, None].to(dtype)
        hist = all_pairs_histogram(emb, labels, bins=100, range=(0, 1), normalize=False)
        score = s if dtype == torch.float64 else (values[i].float() * values[j].float()).numpy()
        fpr, tpr, thr = hist.roc_curve()
        np.testing.assert_array_equal(fpr, (score[~y][None, :] >= thr[:, None]).mean(1))
        np.testing.assert_array_equal(tpr, (score[y][None, :] >= thr[:, None]).mean(1))


def test_bound_shrinks_with_bin_width_and_is_tight_on_gaussians():
    rng = np.random.default_rng(0)
    y = rng.random(200_000) < 0.2
    s = np.tanh(rng.normal(size=y.size) * 0.3 + 0.5 * y)
    exact = equal_error_rate(y, s)
    widths = []
    for bins in (100, 1000, 10000):  # nested bin edges: each bound inside the previous one
        hist = ScoreHistogram(bins).update(y, s)
        lo, hi = hist.eer_bounds()
        assert lo <= exact <= hi
        assert abs(hist.equal_error_rate() - exact) <= hi - lo
        widths.append(hi - lo)
    assert widths[0] >= widths[1] >= widths[2]
    assert widths[2] < 1e-3


def test_incremental_update_and_merge():
    rng = np.random.default_rng(1)
    y = rng.random(1000) < 0.3
    s = rng.uniform(-1, 1, size=1000)
    whole = ScoreHistogram(50).update(y, s)
    parts = ScoreHistogram(50).update(y[:300], s[:300]).update(torch.tensor(y[300:]), s[300:])
    other = ScoreHistogram(50).update(y[:10], s[:10])
    np.testing.assert_array_equal(whole.genuine, parts.genuine)
    np.testing.assert_array_equal(whole.impostor, parts.impostor)
    merged = ScoreHistogram(50).update(y[10:], s[10:]).merge(other)
    np.testing.assert_array_equal(whole.impostor, merged.impostor)
    assert whole.roc_auc() == pytest.approx(merged.roc_auc())
    assert "n_genuine=" in repr(whole)


def test_update_accepts_float32_cosines_rounded_past_the_range():
    # cosines of duplicated embeddings computed in float32 come out as 1.0000001 and the like
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 512, generator=gen)
    cos = torch.nn.functional.cosine_similarity(x, x.clone())
    cos = torch.cat([cos, -cos, torch.zeros(10)])
    assert cos.max() > 1 and cos.min() < -1
    y = torch.cat([torch.ones(400), torch.zeros(410)]).long()
    hist = ScoreHistogram(100).update(y, cos)
    assert hist.genuine[-1] == 400 and hist.impostor[0] == 400 and hist.impostor[50] == 10
    ref = ScoreHistogram(100).update(y, cos.clamp(-1, 1))
    np.testing.assert_array_equal(hist.genuine, ref.genuine)
    np.testing.assert_array_equal(hist.impostor, ref.impostor)
    with pytest.raises(ValueError, match=r"y_score must lie in range=\(-1.0, 1.0\), got 1.01"):
        ScoreHistogram(100).update([1, 0], [0.2, 1.01])


def test_histogram_bad_input():
    with pytest.raises(ValueError, match="bins must be in"):
        ScoreHistogram(0)
    with pytest.raises(ValueError, match="lo < hi"):
        ScoreHistogram(10, range=(1, -1))
    with pytest.raises(ValueError, match=r"range must have a finite width hi - lo, got \(-1e\+308"):
        ScoreHistogram(10, range=(-1e308, 1e308))  # edges would be NaN and inf
    with pytest.raises(ValueError, match=r"y_score must lie in range=\(-1.0, 1.0\), got 1.5"):
        ScoreHistogram(10).update([1, 0], [0.2, 1.5])
    with pytest.raises(ValueError, match="both genuine and impostor"):
        ScoreHistogram(10).update([1, 1], [0.2, 0.5]).equal_error_rate()
    with pytest.raises(ValueError, match="same bins and range"):
        ScoreHistogram(10).merge(ScoreHistogram(20))
    with pytest.raises(TypeError, match="must be a ScoreHistogram"):
        ScoreHistogram(10).merge([1, 2])
    emb, labels = clustered(10, 2)
    with pytest.raises(ValueError, match="labels must have one entry per embedding"):
        all_pairs_histogram(emb, labels[:-1])
    with pytest.raises(ValueError, match="block_size must be in"):
        all_pairs_histogram(emb, labels, block_size=0)
    with pytest.raises(TypeError, match=r"embeddings must be a torch\.Tensor"):
        all_pairs_histogram(emb.numpy(), labels)
    bad = emb.clone()
    bad[2, 0] = float("nan")
    with pytest.raises(ValueError, match="embeddings must contain only finite values, got 1 NaN"):
        all_pairs_histogram(bad, labels)


def test_all_pairs_under_autocast_equals_float32():
    """Scores are binned from float32 products even inside a bfloat16 autocast region."""
    emb, labels = clustered(40, 4)
    plain = all_pairs_histogram(emb, labels, bins=2000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = all_pairs_histogram(emb, labels, bins=2000)
    assert np.array_equal(plain.genuine, auto.genuine)
    assert np.array_equal(plain.impostor, auto.impostor)


class _LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages that torch ops create and that are still referenced.

    Every op output's storage is counted from its creation until the last tensor that views it
    is garbage collected; inputs are counted while a view of them is alive.
    """

    def __init__(self):
        super().__init__()
        self.refs, self.sizes, self.live, self.peak, self.largest = {}, {}, 0, 0, 0

    def _release(self, key):
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.live -= self.sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key not in self.refs:
                    self.refs[key] = 0
                    self.sizes[key] = storage.nbytes()
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                self.largest = max(self.largest, t.numel())
                self.refs[key] += 1
                weakref.finalize(t, self._release, key)
        return out


def test_all_pairs_memory_is_bounded_by_the_block_not_the_pairs():
    """1200 embeddings give 719,400 pairs; with 100 x 100 tiles no tensor holds more than one
    tile and the live tensors stay within a few tiles, far below one float per pair."""
    n, dim, block, bins = 1200, 8, 100, 200
    emb, labels = clustered(n, 30, dim=dim, dtype=torch.float32)
    with _LiveTensorBytes() as full:  # the tracker sees a materialised pair matrix
        sims = emb @ emb.T
        del sims
    assert full.peak >= n * n * 4
    with _LiveTensorBytes() as mem:
        hist = all_pairs_histogram(emb, labels, bins=bins, block_size=block)
    assert hist.n_genuine + hist.n_impostor == n * (n - 1) // 2
    assert mem.largest <= max(block * block, n * dim, 2 * bins + 1)
    # a few tiles of 8-byte values, two copies of the embeddings and the counters
    bound = 6 * 8 * block * block + 2 * 4 * n * dim + 8 * (2 * bins + 1)
    assert mem.peak <= bound < (n * (n - 1) // 2) * 4 // 5
    # and it does not grow with the number of pairs: 4x the pairs, same tiles
    emb2, labels2 = clustered(2 * n, 30, dim=dim, dtype=torch.float32)
    with _LiveTensorBytes() as mem2:
        all_pairs_histogram(emb2, labels2, bins=bins, block_size=block)
    assert mem2.peak - mem.peak <= 2 * 4 * n * dim  # only the extra embeddings


@given(
    st.integers(2, 40),
    st.integers(1, 4),
    st.integers(1, 45),
    st.sampled_from([4, 8, 13, 32]),
    st.sampled_from([torch.float32, torch.float64]),
    st.integers(0, 2**32 - 1),
)
def test_all_pairs_of_integer_embeddings_equal_explicit_pairs(n, dim, block, bins, dtype, seed):
    """Small integer embeddings: every dot product is exact and many lie on bin edges, so each
    pair must land in exactly the bin ScoreHistogram gives its explicitly computed score."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randint(-2, 3, (n, dim), generator=g).to(dtype)
    labels = torch.randint(0, 3, (n,), generator=g)
    rng = (-4.0 * dim, 4.0 * dim)
    hist = all_pairs_histogram(emb, labels, bins, rng, block_size=block, normalize=False)
    i, j = torch.triu_indices(n, n, 1)
    scores = (emb[i].double() * emb[j].double()).sum(1).numpy()
    ref = ScoreHistogram(bins, rng).update((labels[i] == labels[j]).numpy(), scores)
    np.testing.assert_array_equal(hist.genuine, ref.genuine)
    np.testing.assert_array_equal(hist.impostor, ref.impostor)


def test_all_pairs_unknown_or_missing_device_is_a_clear_error(monkeypatch):
    emb, labels = torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match=r"device must be a device such as .*got 'bogus'"):
        all_pairs_histogram(emb, labels, device="bogus")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device='cuda' needs CUDA"):
        all_pairs_histogram(emb, labels, device="cuda")
