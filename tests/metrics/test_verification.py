"""Exact verification metrics against scikit-learn, brute-force counting and invariants."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import brentq

from metricface.metrics import (
    det_curve,
    equal_error_rate,
    kfold_verification_accuracy,
    roc_auc,
    roc_curve,
    tar_at_far,
)

skm = pytest.importorskip("sklearn.metrics")


# ----------------------------------------------------------------------------- references


def brentq_eer(y, s):
    """The EER definition of CONVENTIONS.md, evaluated over scikit-learn's ROC."""
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    return brentq(lambda x: 1 - x - np.interp(x, fpr, tpr), 0, 1, xtol=1e-14)


def counted_auc(y, s):
    g, i = s[y == 1][:, None], s[y == 0][None, :]
    return ((g > i).sum() + 0.5 * (g == i).sum()) / (g.size * i.size)


def brute_tar_at_far(y, s, a):
    """max TAR(t) over every candidate threshold t (distinct scores and +inf) with FAR <= a."""
    g, i = s[y == 1], s[y == 0]
    best = 0.0
    for t in np.unique(s):
        if np.mean(i >= t) <= a:
            best = max(best, np.mean(g >= t))
    return best


# ----------------------------------------------------------------------------- strategies


@st.composite
def scored_pairs(draw, max_n=40, tied=None):
    """Labels with both classes and scores, often with genuine/impostor ties."""
    n_g = draw(st.integers(1, max_n))
    n_i = draw(st.integers(1, max_n))
    if tied is None:
        tied = draw(st.booleans())
    if tied:
        elem = st.integers(-6, 6).map(float)
    else:
        elem = st.floats(-100, 100, allow_nan=False, allow_subnormal=False)
    g = draw(st.lists(elem, min_size=n_g, max_size=n_g))
    i = draw(st.lists(elem, min_size=n_i, max_size=n_i))
    y = np.array([1] * n_g + [0] * n_i)
    s = np.array(g + i, dtype=np.float64)
    perm = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).permutation(y.size)
    return y[perm], s[perm]


# ----------------------------------------------------------------------------- peers


@given(scored_pairs())
def test_roc_identical_to_sklearn(data):
    y, s = data
    fpr, tpr, thr = roc_curve(y, s)
    ref = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_array_equal(fpr, ref[0])
    np.testing.assert_array_equal(tpr, ref[1])
    np.testing.assert_array_equal(thr, ref[2])


@given(scored_pairs())
def test_drop_intermediate_keeps_the_curve(data):
    y, s = data
    fpr, tpr, thr = roc_curve(y, s)
    dfpr, dtpr, dthr = roc_curve(y, s, drop_intermediate=True)
    n_g, n_i = (y == 1).sum(), (y == 0).sum()
    full = np.column_stack((np.rint(fpr * n_i), np.rint(tpr * n_g))).astype(np.int64)
    kept = np.isin(thr, dthr)
    assert kept[0] and kept[-1]
    np.testing.assert_array_equal(fpr[kept], dfpr)
    np.testing.assert_array_equal(tpr[kept], dtpr)
    # every dropped point lies on the segment between the kept points around it ...
    idx = np.flatnonzero(kept)
    for k in np.flatnonzero(~kept):
        a, b = full[idx[idx < k][-1]], full[idx[idx > k][0]]
        ab, ak = b - a, full[k] - a
        assert ab[0] * ak[1] == ab[1] * ak[0]
    # ... and every kept interior point is a real bend
    for a, k, b in zip(idx[:-2], idx[1:-1], idx[2:]):
        ab, ak = full[b] - full[a], full[k] - full[a]
        assert ab[0] * ak[1] != ab[1] * ak[0]
    # at least scikit-learn's drops, and the same derived metrics
    assert set(dthr.tolist()) <= set(skm.roc_curve(y, s)[2].tolist())
    dfnr = det_curve(y, s, drop_intermediate=True)[1]
    np.testing.assert_allclose(dfnr, 1 - dtpr, atol=1e-15)


@given(scored_pairs())
def test_auc_matches_sklearn_and_counting(data):
    y, s = data
    auc = roc_auc(y, s)
    assert auc == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert auc == pytest.approx(counted_auc(y, s), abs=1e-12)
    assert 0.0 <= auc <= 1.0


@given(scored_pairs())
def test_eer_matches_brentq_over_sklearn(data):
    y, s = data
    eer = equal_error_rate(y, s)
    assert eer == pytest.approx(brentq_eer(y, s), abs=1e-10)
    assert 0.0 <= eer <= 1.0


def test_large_random_case_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.random(200_000) < 0.1
    s = np.round(rng.normal(size=y.size) + 2 * y, 3)  # many ties
    assert equal_error_rate(y, s) == pytest.approx(brentq_eer(y, s), abs=1e-10)
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


@given(scored_pairs())
def test_det_is_roc_with_frr(data):
    y, s = data
    fpr, fnr, thr = det_curve(y, s)
    rfpr, rtpr, rthr = roc_curve(y, s)
    np.testing.assert_array_equal(fpr, rfpr)
    np.testing.assert_allclose(fnr, 1 - rtpr, atol=1e-15)
    np.testing.assert_array_equal(thr, rthr)


# ----------------------------------------------------------------------------- hand-checked


def test_hand_checked_with_tie():
    # genuine {3, 2}, impostor {2, 1}: points (0, .5) at t=3, (.5, 1) at t=2, (1, 1) at t=1.
    y, s = [1, 0, 1, 0], [3.0, 2.0, 2.0, 1.0]
    fpr, tpr, thr = roc_curve(y, s)
    np.testing.assert_array_equal(fpr, [0, 0, 0.5, 1])
    np.testing.assert_array_equal(tpr, [0, 0.5, 1, 1])
    np.testing.assert_array_equal(thr, [np.inf, 3, 2, 1])
    # FRR - FAR = 0.5 at t=3 and -0.5 at t=2: the tie segment is crossed half-way.
    assert equal_error_rate(y, s, return_threshold=True) == (0.25, 2.5)
    assert roc_auc(y, s) == 3.5 / 4  # 3 > 2, 3 > 1, 2 > 1 and one tie
    assert tar_at_far(y, s, 0.5, return_threshold=True) == (1.0, 2.0)
    with pytest.warns(UserWarning, match="below 1 / n_impostor"):
        assert tar_at_far(y, s, 0.49, return_threshold=True) == (0.5, 3.0)


def test_all_scores_tied_is_the_diagonal():
    y, s = [1, 1, 0, 0, 0], [0.3] * 5
    fpr, tpr, _ = roc_curve(y, s)
    np.testing.assert_array_equal(fpr, [0, 1])
    np.testing.assert_array_equal(tpr, [0, 1])
    assert equal_error_rate(y, s, return_threshold=True) == (0.5, 0.3)
    assert roc_auc(y, s) == 0.5


def test_separable_scores():
    y, s = [1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]
    eer, thr = equal_error_rate(y, s, return_threshold=True)
    assert eer == 0.0 and 0.2 <= thr <= 0.8
    assert roc_auc(y, s) == 1.0
    # entirely wrong ordering
    assert equal_error_rate(y, [0.1, 0.2, 0.8, 0.9]) == 1.0


def test_extreme_scores_give_finite_thresholds():
    y, s = [1, 0, 1, 0], [1e308, -1e308, -1e308, -1.7e308]
    eer, thr = equal_error_rate(y, s, return_threshold=True)
    with np.errstate(over="ignore"):  # scikit-learn differences the scores
        assert eer == pytest.approx(brentq_eer(y, s), abs=1e-12) and np.isfinite(thr)
    assert kfold_verification_accuracy(y, s, n_folds=2)[0] >= 0.0


def test_eer_where_far_equals_frr_at_a_threshold():
    # 4 genuine, 4 impostor; at t=0.5, FAR = 1/4 (0.6) and FRR = 1/4 (0.4).
    y = [1, 1, 1, 1, 0, 0, 0, 0]
    s = [0.9, 0.8, 0.7, 0.4, 0.6, 0.3, 0.2, 0.1]
    assert equal_error_rate(y, s) == 0.25


# ----------------------------------------------------------------------------- invariants


@pytest.mark.filterwarnings("ignore:far target")
@given(scored_pairs(tied=True), st.integers(2, 4))
def test_invariances(data, k):
    y, s = data
    eer, auc = equal_error_rate(y, s), roc_auc(y, s)
    tar = tar_at_far(y, s, [0.1, 0.5, 1.0])
    rng = np.random.default_rng(0)
    perm = rng.permutation(y.size)
    variants = {
        "increasing transform": (y, np.exp(s / 3) + s**3),
        "shuffle": (y[perm], s[perm]),
        "repeat": (np.repeat(y, k), np.repeat(s, k)),
        "torch": (torch.tensor(y), torch.tensor(s, dtype=torch.float32)),
        "list/bool": ((y == 1).tolist(), s.tolist()),
    }
    for name, (yv, sv) in variants.items():
        assert equal_error_rate(yv, sv) == pytest.approx(eer, abs=1e-12), name
        assert roc_auc(yv, sv) == pytest.approx(auc, abs=1e-12), name
        np.testing.assert_allclose(tar_at_far(yv, sv, [0.1, 0.5, 1.0]), tar, atol=1e-12)


@given(scored_pairs())
def test_mirror_symmetry(data):
    # EER(genuine, impostor) == EER(-impostor, -genuine)
    y, s = data
    assert equal_error_rate(1 - y, -s) == pytest.approx(equal_error_rate(y, s), abs=1e-12)


@given(scored_pairs(), st.integers(0, 10**6), st.sampled_from([0.5, 1.0, 3.0, 1e3]))
def test_improving_a_score_never_hurts(data, pick, delta):
    y, s = data
    targets = [0.05, 0.2, 0.5, 1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = (equal_error_rate(y, s), roc_auc(y, s), tar_at_far(y, s, targets))
        for cls, sign in ((1, 1.0), (0, -1.0)):  # raise a genuine / lower an impostor
            idx = np.flatnonzero(y == cls)
            s2 = s.copy()
            s2[idx[pick % idx.size]] += sign * delta
            assert equal_error_rate(y, s2) <= before[0] + 1e-12
            assert roc_auc(y, s2) >= before[1] - 1e-12
            assert np.all(tar_at_far(y, s2, targets) >= before[2] - 1e-12)


@given(scored_pairs())
def test_roc_points_by_direct_counting(data):
    y, s = data
    fpr, tpr, thr = roc_curve(y, s)
    g, i = s[y == 1], s[y == 0]
    assert (fpr[0], tpr[0], thr[0]) == (0.0, 0.0, np.inf)
    for f, t, th in zip(fpr[1:], tpr[1:], thr[1:]):
        assert f == np.mean(i >= th) and t == np.mean(g >= th)
    assert fpr[-1] == 1.0 and tpr[-1] == 1.0
    assert np.all(np.diff(thr) < 0)


@given(scored_pairs())
def test_eer_at_most_half_when_roc_above_diagonal(data):
    y, s = data
    fpr, tpr, _ = roc_curve(y, s)
    if np.all(tpr >= fpr):
        assert equal_error_rate(y, s) <= 0.5
    else:  # and symmetric: the eer is >= 0.5 when the curve is never above the diagonal
        if np.all(tpr <= fpr):
            assert equal_error_rate(y, s) >= 0.5


@given(scored_pairs(), st.lists(st.floats(1e-3, 1.0), min_size=1, max_size=6))
def test_tar_at_far_definition_and_monotonicity(data, targets):
    y, s = data
    targets = np.sort(np.array(targets))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tar, thr = tar_at_far(y, s, targets, return_threshold=True)
    assert np.all(np.diff(tar) >= 0)
    g, i = s[y == 1], s[y == 0]
    for a, t, th in zip(targets, tar, thr):
        assert t == brute_tar_at_far(y, s, a)
        assert np.mean(i >= th) <= a and np.mean(g >= th) == t


def test_tar_at_far_scalar_and_warning():
    y = np.array([1] * 10 + [0] * 50)
    s = np.linspace(0, 1, 60)[::-1]
    assert isinstance(tar_at_far(y, s, 0.1), float)
    with pytest.warns(UserWarning, match="below 1 / n_impostor"):
        tar, thr = tar_at_far(y, s, 1e-3, return_threshold=True)
    assert tar == 1.0 and np.mean(s[y == 0] >= thr) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tar_at_far(y, s, 0.02)  # 0.02 * 50 = 1: no warning


def test_tar_at_far_inf_threshold_when_nothing_meets_target():
    y, s = [1, 0, 0], [0.1, 0.9, 0.8]
    with pytest.warns(UserWarning):
        assert tar_at_far(y, s, 0.1, return_threshold=True) == (0.0, np.inf)


# ----------------------------------------------------------------------------- k-fold


@given(scored_pairs(max_n=30), st.integers(2, 5))
def test_kfold_thresholds_are_optimal_on_training_folds(data, n_folds):
    y, s = data
    if y.size < n_folds:
        return
    mean, std, thr = kfold_verification_accuracy(y, s, n_folds, return_thresholds=True)
    folds = np.array_split(np.arange(y.size), n_folds)
    candidates = np.concatenate(([np.inf], np.unique(s)))
    accs = []
    for f, test in enumerate(folds):
        train = np.setdiff1d(np.arange(y.size), test)
        train_acc = [np.mean((s[train] >= t) == y[train]) for t in candidates]
        # the chosen threshold is as accurate on the training folds as the best candidate
        assert np.mean((s[train] >= thr[f]) == y[train]) == max(train_acc)
        accs.append(np.mean((s[test] >= thr[f]) == y[test]))
    assert mean == pytest.approx(np.mean(accs), abs=1e-12)
    assert std == pytest.approx(np.std(accs), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_kfold_close_to_best_fixed_threshold(seed):
    """Held-out accuracy >= in-sample best accuracy minus fold noise.

    6000 pairs (LFW size), two unit-variance Gaussians 2 apart (Bayes accuracy ~0.84). The best
    fixed threshold's in-sample accuracy overfits by O(1/sqrt(n)); the held-out mean differs
    from it by the sampling noise of the 10 chosen thresholds. 4 standard errors of a 6000-pair
    accuracy (4 * sqrt(.16 * .84 / 6000) = 0.019) covers both with a wide margin and the seeds
    are fixed, yet a wrong threshold direction, fold or tie rule costs far more (>= 0.3).
    """
    rng = np.random.default_rng(seed)
    y = np.tile([1] * 300 + [0] * 300, 10)
    s = rng.normal(size=y.size) + 2.0 * y

    def best_accuracy(y, s):  # max over thresholds t of #(g >= t) + #(i < t), by binary search
        g, i, t = np.sort(s[y == 1]), np.sort(s[y == 0]), np.unique(s)
        correct = g.size - np.searchsorted(g, t) + np.searchsorted(i, t)
        return correct.max() / y.size

    best_fixed = best_accuracy(y, s)
    mean, std = kfold_verification_accuracy(y, s)
    assert mean >= best_fixed - 0.019
    # and never above the oracle that picks each fold's best threshold on that fold itself
    oracle = np.mean([best_accuracy(y[f], s[f]) for f in np.split(np.arange(y.size), 10)])
    assert mean <= oracle
    assert 0 < std < 0.05


def test_kfold_custom_folds_and_validation():
    y = np.array([1, 0] * 10)
    s = np.where(y == 1, 100.0, -100.0) + np.arange(20.0)  # separable with a wide gap
    folds = np.arange(20) % 4
    mean, std = kfold_verification_accuracy(y, s, folds=folds)
    assert mean == 1.0 and std == 0.0
    with pytest.raises(ValueError, match="n_folds"):
        kfold_verification_accuracy(y, s, n_folds=1)
    with pytest.raises(ValueError, match="n_folds"):
        kfold_verification_accuracy(y, s, n_folds=21)
    with pytest.raises(ValueError, match="folds must have one id per pair"):
        kfold_verification_accuracy(y, s, folds=folds[:-1])
    with pytest.raises(ValueError, match="at least 2 distinct"):
        kfold_verification_accuracy(y, s, folds=np.zeros(20, dtype=int))
    with pytest.raises(TypeError, match="folds must hold integer"):
        kfold_verification_accuracy(y, s, folds=folds.astype(float))


# ----------------------------------------------------------------------------- inputs


def test_accepts_tensors_any_dtype():
    y = torch.tensor([1, 0, 1, 0, 1], dtype=torch.bool)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        s = torch.tensor([0.9, 0.1, 0.5, 0.6, 0.8], dtype=dtype, requires_grad=True)
        assert equal_error_rate(y, s) == pytest.approx(1 / 3)


@pytest.mark.cuda
def test_accepts_cuda_tensors():
    y = torch.tensor([1, 0, 1, 0], device="cuda")
    s = torch.tensor([0.9, 0.1, 0.5, 0.6], device="cuda")
    assert roc_auc(y, s) == 0.75


BAD = [
    (([1, 0], [0.1, np.nan]), ValueError, r"y_score must be finite, got nan at index 1"),
    (([1, 0], [0.1, np.inf]), ValueError, r"y_score must be finite, got inf"),
    (([1, 1], [0.1, 0.2]), ValueError, r"both genuine \(1\) and impostor \(0\).*2 genuine"),
    (([0, 0], [0.1, 0.2]), ValueError, r"0 genuine and 2 impostor"),
    (([1, 0, 1], [0.1, 0.2]), ValueError, r"same length, got 3 and 2"),
    (([1, 0, 2], [0.1, 0.2, 0.3]), ValueError, r"y_true must contain only 0.*got 2 at index 2"),
    (([1, -1], [0.1, 0.2]), ValueError, r"got -1 at index 1"),
    (([], []), ValueError, r"non-empty"),
    (([[1, 0]], [[0.1, 0.2]]), ValueError, r"y_true must be one-dimensional, got shape \(1, 2\)"),
    ((["a", "b"], [0.1, 0.2]), TypeError, r"y_true must hold real numbers"),
    (([1, 0], "ab"), TypeError, r"y_score must be a numpy array, torch tensor or list, got str"),
]


@pytest.mark.parametrize("args, exc, match", BAD)
@pytest.mark.parametrize(
    "fn", [roc_curve, det_curve, roc_auc, equal_error_rate, kfold_verification_accuracy]
)
def test_bad_input(fn, args, exc, match):
    with pytest.raises(exc, match=match):
        fn(*args)


@pytest.mark.parametrize(
    "far, exc, match",
    [
        (0.0, ValueError, r"far must be in \(0, 1\], got 0.0"),
        (1.5, ValueError, r"far must be in \(0, 1\], got 1.5"),
        ([0.1, -0.2], ValueError, r"far must be in \(0, 1\], got -0.2 at index 1"),
        (np.nan, ValueError, r"far must be finite"),
        ([], ValueError, r"far must hold at least one target"),
        ("0.1", TypeError, r"far must be a numpy array"),
    ],
)
def test_bad_far(far, exc, match):
    with pytest.raises(exc, match=match):
        tar_at_far([1, 0], [0.2, 0.1], far)


def test_kfold_accept_all_threshold_accepts_lower_held_out_scores():
    """All genuine pairs: accepting everything is optimal, also below the training scores."""
    y = np.ones(10, dtype=int)
    y[0] = 0  # one impostor with the top score: accept-all stays best on every training split
    s = np.array([9.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.4, 0.3, 0.2])
    mean, _, thr = kfold_verification_accuracy(y, s, n_folds=2, return_thresholds=True)
    folds = np.array_split(np.arange(10), 2)
    # fold 2 holds the lowest scores: only a -inf threshold accepts them all
    assert thr[1] == -np.inf
    assert mean == pytest.approx(
        np.mean([np.mean((s[f] >= t) == y[f]) for f, t in zip(folds, thr)])
    )


# ----------------------------------------------------------------------------- audit additions


@st.composite
def increasing_map(draw, scores):
    """Any strictly increasing map of the distinct scores: random positive gaps, random offset."""
    distinct = np.unique(scores)
    gaps = draw(
        st.lists(
            st.floats(1e-3, 1e3, allow_nan=False),
            min_size=distinct.size,
            max_size=distinct.size,
        )
    )
    values = draw(st.floats(-1e3, 1e3)) + np.cumsum(gaps)
    assert np.all(np.diff(values) > 0)
    return values[np.searchsorted(distinct, scores)]


@given(st.data())
def test_any_strictly_increasing_transform_keeps_roc_eer_and_auc(data):
    y, s = data.draw(scored_pairs())
    t = data.draw(increasing_map(s))
    fpr, tpr, _ = roc_curve(y, s)
    tfpr, ttpr, _ = roc_curve(y, t)
    np.testing.assert_array_equal(tfpr, fpr)
    np.testing.assert_array_equal(ttpr, tpr)
    assert equal_error_rate(y, t) == pytest.approx(equal_error_rate(y, s), abs=1e-12)
    assert roc_auc(y, t) == pytest.approx(roc_auc(y, s), abs=1e-12)


@given(scored_pairs())
def test_swapping_classes_and_negating_scores_maps_the_roc_onto_itself(data):
    # Genuine pairs become impostors and the score order reverses: the point (FAR, TAR) at one
    # threshold becomes (1 - TAR, 1 - FAR) at the next, so the curve is its own reflection
    # in the anti-diagonal.
    y, s = data
    fpr, tpr, _ = roc_curve(y, s)
    mfpr, mtpr, _ = roc_curve(1 - y, -s)
    np.testing.assert_allclose(mfpr, 1 - tpr[::-1], atol=1e-15)
    np.testing.assert_allclose(mtpr, 1 - fpr[::-1], atol=1e-15)
    assert roc_auc(1 - y, -s) == pytest.approx(roc_auc(y, s), abs=1e-12)
    # and against scikit-learn's curve of the mirrored problem
    ref = skm.roc_curve(1 - y, -s, drop_intermediate=False)
    np.testing.assert_array_equal(mfpr, ref[0])
    np.testing.assert_array_equal(mtpr, ref[1])


@given(
    st.lists(st.integers(-6, 6).map(float), min_size=1, max_size=40),
    st.data(),
)
def test_eer_at_most_half_when_genuine_scores_dominate(impostor, data):
    """Scores better than chance by construction: every genuine score is an impostor score
    raised by a non-negative amount (often zero: ties), so TAR(t) >= FAR(t) at every t."""
    i = np.array(impostor)
    raise_by = data.draw(
        st.lists(st.sampled_from([0.0, 0.5, 1.0, 7.0]), min_size=i.size, max_size=i.size)
    )
    g = i + np.array(raise_by)
    y = np.array([1] * g.size + [0] * i.size)
    s = np.concatenate((g, i))
    fpr, tpr, _ = roc_curve(y, s)
    assert np.all(tpr >= fpr)  # the construction is better than chance everywhere
    eer = equal_error_rate(y, s)
    assert 0.0 <= eer <= 0.5
    assert eer == pytest.approx(brentq_eer(y, s), abs=1e-10)


@pytest.mark.parametrize("args, exc, match", BAD)
def test_bad_input_tar_at_far(args, exc, match):
    with pytest.raises(exc, match=match):
        tar_at_far(*args, 0.1)


@pytest.mark.parametrize("fn", [roc_curve, roc_auc, equal_error_rate, tar_at_far])
def test_negative_infinity_and_torch_nan_are_refused(fn):
    extra = (0.5,) if fn is tar_at_far else ()
    with pytest.raises(ValueError, match=r"y_score must be finite, got -inf at index 0"):
        fn([1, 0], [-np.inf, 0.2], *extra)
    with pytest.raises(ValueError, match=r"y_score must be finite, got nan at index 2"):
        fn(torch.tensor([1, 0, 1]), torch.tensor([0.1, 0.2, float("nan")]), *extra)


# ----------------------------------------------------------------------------- issue 14


@pytest.mark.parametrize(
    "counts", [(1, 4, 2), (1, 4, 4), (3, 0, 5), (2, 7, 1), (5, 1, 6), (1, 0, 1)]
)
@pytest.mark.parametrize("impostor_copies", [1, 2, 3])
def test_eer_is_exactly_half_on_a_diagonal_roc(counts, impostor_copies):
    """Genuine and impostor scores with the same distribution over {-1, 0, 1}: the ROC is the
    diagonal, so the EER is 0.5 exactly (interpolating rounded rates gave 0.49999999999999994,
    which failed test_eer_at_most_half_when_roc_above_diagonal)."""
    values = np.repeat([-1.0, 0.0, 1.0], counts)
    s = np.concatenate((values, np.tile(values, impostor_copies)))
    y = np.array([1] * values.size + [0] * (values.size * impostor_copies))
    fpr, tpr, _ = roc_curve(y, s)
    np.testing.assert_array_equal(fpr, tpr)
    assert equal_error_rate(y, s) == 0.5
    assert equal_error_rate(1 - y, -s) == 0.5


BIG = 2**53


@pytest.mark.parametrize(
    "cast", [np.array, torch.tensor, lambda v: torch.tensor(v).numpy().astype(np.uint64)]
)
def test_integer_scores_above_2_53_keep_their_order(cast):
    """int64 scores above 2**53 used to be cast to float64, where BIG and BIG + 1 merge."""
    y = [0, 1, 0, 1]
    s = cast([BIG, BIG + 1, BIG + 2, BIG + 3])
    assert roc_auc([0, 1], cast([BIG, BIG + 1])) == 1.0
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, np.asarray(s)), abs=0) == 0.75
    fpr, tpr, _ = roc_curve(y, s)
    ref = skm.roc_curve(y, np.asarray(s).astype(np.int64), drop_intermediate=False)
    np.testing.assert_array_equal(fpr, ref[0])
    np.testing.assert_array_equal(tpr, ref[1])
    # points (0, .5), (.5, .5), (.5, 1), (1, 1): FRR = FAR = 0.5 at the second point
    assert equal_error_rate(y, s) == 0.5
    assert brentq_eer(y, np.asarray(s).astype(np.int64)) == pytest.approx(0.5, abs=1e-10)
    assert tar_at_far(y, s, 0.5) == 1.0
    with pytest.warns(UserWarning, match="below 1 / n_impostor"):
        assert tar_at_far(y, s, 0.49, return_threshold=True) == (0.5, float(BIG + 3))


def test_integer_scores_at_the_int64_limits():
    lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    y = [1, 0, 1, 0]
    s = np.array([hi, hi - 1, lo + 1, lo])
    assert roc_auc(y, s) == 0.75
    assert equal_error_rate(y, s) == 0.5
    assert tar_at_far(y, s, 0.5, return_threshold=True) == (1.0, float(lo + 1))
    with pytest.warns(UserWarning, match="below 1 / n_impostor"):
        assert tar_at_far(y, s, 0.49, return_threshold=True) == (0.5, float(hi))


def test_uint64_scores_beyond_int64_are_refused():
    with pytest.raises(ValueError, match=r"y_score of dtype uint64 must be below 2\*\*63"):
        roc_auc([0, 1], np.array([1, 2**63], dtype=np.uint64))


def test_kfold_refuses_integer_scores_beyond_float64_precision():
    y = np.array([1, 0] * 10)
    s = np.arange(20, dtype=np.int64) + BIG
    with pytest.raises(ValueError, match=r"y_score must be within \+-2\*\*53.*index 1"):
        kfold_verification_accuracy(y, s)
    assert kfold_verification_accuracy(y, s - BIG, n_folds=2)[0] >= 0.0
