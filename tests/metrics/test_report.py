"""verification_report agrees with the individual metrics and prints; the all-pairs form agrees
with explicitly listed pairs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from metricface.metrics import (
    VerificationReport,
    all_pair_scores,
    equal_error_rate,
    roc_auc,
    roc_curve,
    tar_at_far,
    verification_report,
    verification_report_from_embeddings,
)


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    y = np.repeat([1, 0], [300, 2700])
    return y, rng.normal(size=y.size) + 2.5 * y


def test_report_matches_individual_metrics(scores):
    y, s = scores
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the report flags low targets instead of warning
        rep = verification_report(y, s)
    assert isinstance(rep, VerificationReport)
    assert (rep.n_genuine, rep.n_impostor) == (300, 2700)
    assert rep.auc == roc_auc(y, s)
    assert (rep.eer, rep.eer_threshold) == equal_error_rate(y, s, return_threshold=True)
    assert rep.far_targets == (1e-4, 1e-3, 1e-2, 1e-1)
    with pytest.warns(UserWarning):
        tar, thr = tar_at_far(y, s, list(rep.far_targets), return_threshold=True)
    assert rep.tar == tuple(tar) and rep.tar_thresholds == tuple(thr)
    for got, ref in zip((rep.fpr, rep.tpr, rep.thresholds), roc_curve(y, s)):
        np.testing.assert_array_equal(got, ref)
    d = rep.as_dict()
    assert d["eer"] == rep.eer and d["tar@far=0.01"] == rep.tar[2]


def test_report_table(scores):
    y, s = scores
    rep = verification_report(y, s, far_targets=[1e-4, 0.05])
    text = str(rep)
    assert "300 genuine, 2700 impostor" in text
    assert f"{100 * rep.eer:.4f} %" in text
    assert "TAR @ FAR=0.0001 *" in text  # 1e-4 * 2700 < 1: flagged
    assert "TAR @ FAR=0.05 " in text and "TAR @ FAR=0.05 *" not in text
    assert text.splitlines()[-1].startswith("* below 1 / n_impostor")
    assert "fpr" not in repr(rep)  # the curve arrays stay out of the repr


def test_report_validation():
    with pytest.raises(ValueError, match=r"far_targets must be in \(0, 1\], got 0.0"):
        verification_report([1, 0], [0.3, 0.2], far_targets=[0.1, 0.0])
    with pytest.raises(ValueError, match="y_score must be finite"):
        verification_report([1, 0], [0.3, np.nan])


def test_report_warns_when_scores_look_like_distances(scores):
    y, s = scores
    with pytest.warns(UserWarning, match="looks like a distance"):
        rep = verification_report(y, -s)  # distances: lower = more alike
    assert rep.auc < 0.5 and rep.eer > 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verification_report(y, s)
        verification_report([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5])  # AUC = EER = 0.5: no hint


def _explicit_pairs(emb, labels, normalize=True):
    """The reference: every pair (i < j) listed, scored one by one in float64."""
    x = torch.as_tensor(emb, dtype=torch.float64)
    if normalize:
        x = x / x.norm(dim=1, keepdim=True)
    i, j = torch.triu_indices(len(labels), len(labels), 1)
    return (labels[i] == labels[j]).numpy(), (x[i] * x[j]).sum(1).numpy()


@given(
    data=st.integers(4, 40).flatmap(
        lambda n: st.tuples(
            hnp.arrays(np.int8, (n, 3), elements=st.integers(-3, 3)),
            hnp.arrays(np.int64, n, elements=st.integers(0, 3)),
        )
    ),
    block_size=st.integers(1, 200),
)
def test_report_from_embeddings_equals_explicit_pairs(data, block_size):
    """Integer embeddings score exactly in float64: both sides see the same ties."""
    emb, labels = torch.tensor(data[0], dtype=torch.float32), torch.tensor(data[1])
    y, s = _explicit_pairs(emb, labels, normalize=False)
    got_y, got_s = all_pair_scores(emb, labels, normalize=False, block_size=block_size)
    np.testing.assert_array_equal(got_y, y)  # the same pairs, in the same order
    np.testing.assert_array_equal(got_s, s)
    assume(0 < y.sum() < len(y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ref = verification_report(y, s)
        got = verification_report_from_embeddings(
            emb, labels, normalize=False, block_size=block_size
        )
    assert got.as_dict() == ref.as_dict()
    assert (got.n_genuine, got.n_impostor) == (ref.n_genuine, ref.n_impostor)
    for a, b in zip((got.fpr, got.tpr, got.thresholds), (ref.fpr, ref.tpr, ref.thresholds)):
        np.testing.assert_array_equal(a, b)


def test_report_from_embeddings_cosine_matches_explicit_pairs():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(30).repeat_interleave(5)
    emb = torch.randn(30, 16, generator=g)[labels] + 0.8 * torch.randn(150, 16, generator=g)
    y, s = _explicit_pairs(emb, labels)
    ref = verification_report(y, s)
    for block_size in (500, 1 << 22):
        got = verification_report_from_embeddings(emb.half(), labels, block_size=block_size)
        half = verification_report(*_explicit_pairs(emb.half().float(), labels))
        assert got.as_dict() == pytest.approx(half.as_dict(), abs=1e-12)
    got = verification_report_from_embeddings(emb, labels, far_targets=[0.01, 0.1])
    assert (got.n_genuine, got.n_impostor) == (150 * 4 // 2, 150 * 149 // 2 - 300)
    assert got.eer == pytest.approx(ref.eer, abs=1e-12) and 0 < got.eer < 0.5
    assert got.far_targets == (0.01, 0.1)


def test_report_from_embeddings_validation():
    emb = torch.randn(4, 3)
    with pytest.raises(ValueError, match="got 0 genuine and 6 impostor"):
        verification_report_from_embeddings(emb, torch.arange(4))  # no genuine pair
    with pytest.raises(ValueError, match="got 6 genuine and 0 impostor"):
        verification_report_from_embeddings(emb, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="one entry per embedding"):
        verification_report_from_embeddings(emb, torch.tensor([0, 0, 1]))
    with pytest.raises(TypeError, match="integer dtype"):
        verification_report_from_embeddings(emb, torch.tensor([0.0, 0, 1, 1]))
    bad = emb.clone()
    bad[1, 1] = float("inf")
    with pytest.raises(ValueError, match="finite"):
        verification_report_from_embeddings(bad, torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="at least 2 rows to form a pair, got 1"):
        all_pair_scores(emb[:1], torch.tensor([0]))
    with pytest.raises(ValueError, match="block_size"):
        verification_report_from_embeddings(emb, torch.tensor([0, 0, 1, 1]), block_size=0)
