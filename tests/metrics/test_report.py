"""verification_report agrees with the individual metrics, prints and plots."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from metricface.metrics import (
    VerificationReport,
    equal_error_rate,
    roc_auc,
    roc_curve,
    tar_at_far,
    verification_report,
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


def test_report_plot(scores):
    plt = pytest.importorskip("matplotlib.pyplot")
    y, s = scores
    rep = verification_report(y, s)
    ax = rep.plot()
    assert ax.get_xscale() == "log"
    _, (a1, a2) = plt.subplots(1, 2)
    assert rep.plot("roc", ax=a1, label="model") is a1
    assert rep.plot("det", ax=a2) is a2
    with pytest.raises(ValueError, match="kind must be 'roc' or 'det'"):
        rep.plot("pr")
    plt.close("all")
