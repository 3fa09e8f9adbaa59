"""Plots draw what the metrics compute, into given or new axes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm

from metricface.metrics import equal_error_rate

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
plt = pytest.importorskip("matplotlib.pyplot")

from metricface.plots import plot_det, plot_embeddings, plot_roc, plot_score_histogram  # noqa: E402


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    y = np.repeat([1, 0], [200, 800])
    return y, rng.normal(size=y.size) + 2.0 * y


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_plot_roc_marks_eer_on_log_axis(scores):
    y, s = scores
    ax = plot_roc(y, s, label="model", color="C3")
    eer = equal_error_rate(y, s)
    assert ax.get_xscale() == "log"
    curve, point = ax.get_lines()[:2]
    np.testing.assert_allclose(point.get_xydata(), [[eer, 1 - eer]])
    assert curve.get_label() == "model"
    assert any("EER" in t.get_text() for t in ax.get_legend().get_texts())


def test_plot_roc_thins_huge_curves():
    rng = np.random.default_rng(1)
    y = rng.random(200_000) < 0.5
    ax = plot_roc(y, rng.normal(size=y.size) + y)
    assert len(ax.get_lines()[0].get_xdata()) <= 4002


def test_plot_det_normal_deviate_axes(scores):
    y, s = scores
    _, ax = plt.subplots()
    assert plot_det(y, s, ax=ax) is ax
    eer = equal_error_rate(y, s)
    point = ax.get_lines()[1].get_xydata()
    np.testing.assert_allclose(point, [[norm.ppf(eer), norm.ppf(eer)]])
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert "10" in labels and "0.1" in labels


def test_plot_score_histogram(scores):
    y, s = scores
    ax = plot_score_histogram(y, s, bins=30)
    _, thr = equal_error_rate(y, s, return_threshold=True)
    assert ax.get_lines()[0].get_xdata()[0] == pytest.approx(thr)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts[0] == "genuine (200)" and texts[1] == "impostor (800)"


@pytest.mark.parametrize("method", ["pca", "tsne", "auto"])
def test_plot_embeddings(method):
    if method == "tsne":
        pytest.importorskip("sklearn")
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(10)
    emb = torch.randn(4, 8, generator=g)[labels] + 0.1 * torch.randn(40, 8, generator=g)
    state = torch.random.get_rng_state()
    ax = plot_embeddings(emb, labels, method=method)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    xy = ax.collections[0].get_offsets()
    assert xy.shape == (40, 2) and np.isfinite(xy).all()
    assert "4 identities" in ax.get_title()


def test_plot_embeddings_pca_separates_clusters():
    labels = torch.tensor([0] * 20 + [1] * 20)
    emb = torch.zeros(40, 3)
    emb[:20, 0], emb[20:, 1] = 1.0, 1.0
    emb += 0.01 * torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    xy = np.asarray(plot_embeddings(emb, labels, method="pca").collections[0].get_offsets())
    a, b = xy[:20].mean(0), xy[20:].mean(0)
    assert np.linalg.norm(a - b) > 10 * xy[:20].std(0).max()


def test_plot_bad_input(scores):
    y, s = scores
    with pytest.raises(ValueError, match="method must be"):
        plot_embeddings(torch.randn(5, 3), torch.zeros(5, dtype=torch.long), method="umap")
    with pytest.raises(ValueError, match="same length"):
        plot_roc(y[:-1], s)
    bad = torch.randn(6, 3)
    bad[2, 1] = float("nan")
    for method in ("pca", "tsne"):
        with pytest.raises(ValueError, match="embeddings must contain only finite values"):
            plot_embeddings(bad, torch.zeros(6, dtype=torch.long), method=method)


def test_curves_share_axes_and_keep_the_widest_range(scores):
    y, s = scores
    rng = np.random.default_rng(2)
    y_big = rng.random(50_000) < 0.1
    s_big = rng.normal(size=y_big.size) + 2.5 * y_big
    ax = plot_roc(y_big, s_big, label="big")
    left = ax.get_xlim()[0]
    assert left == pytest.approx(0.5 / (~y_big).sum())
    plot_roc(y, s, ax=ax, label="small")  # coarser resolution must not crop the first curve
    assert ax.get_xlim()[0] == pytest.approx(left)
    det = plot_det(y_big, s_big)
    labels = [t.get_text() for t in det.get_xticklabels()]
    assert "0.01" in labels and "0.0001" not in labels  # down to 0.5 / n_impostor ~ 1e-5
    assert det.get_xlim()[0] == pytest.approx(norm.ppf(0.5 / (~y_big).sum()))


def test_missing_matplotlib_names_the_extra(scores, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # import now fails
    y, s = scores
    with pytest.raises(ImportError, match=r"to plot a ROC curve.*pip install 'metricface\[plot\]'"):
        plot_roc(y, s)


def test_missing_matplotlib_is_reported_before_the_embedding_projection(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    called = []
    monkeypatch.setattr(torch, "pca_lowrank", lambda *a, **k: called.append(1))
    emb = torch.randn(10, 4)
    with pytest.raises(ImportError, match=r"plot embeddings.*metricface\[plot\]"):
        plot_embeddings(emb, torch.arange(10) % 3, method="pca")
    assert not called  # the projection never ran


def test_score_histogram_draws_each_class_density(scores):
    y, s = scores
    ax = plot_score_histogram(y, s, bins=30)
    edges = np.histogram_bin_edges(s, bins=30)
    for patch, mask in zip(ax.patches[:2], (y == 1, y == 0)):
        density, _ = np.histogram(s[mask], bins=edges, density=True)
        heights = np.unique(patch.get_xy()[:, 1])
        np.testing.assert_allclose(heights, np.unique(np.append(density, 0.0)), rtol=1e-12)


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_plot_embeddings_colours_points_by_identity(method):
    if method == "tsne":
        pytest.importorskip("sklearn")
    g = torch.Generator().manual_seed(1)
    ids = torch.tensor([7, 3, 12])
    labels = ids[torch.randint(0, 3, (30,), generator=g)]
    emb = torch.randn(30, 5, generator=g)
    codes = np.asarray(plot_embeddings(emb, labels, method=method).collections[0].get_array())
    # one colour per identity, shared by all its points and by no other identity's
    pairs = set(zip(labels.tolist(), codes.tolist()))
    assert len(pairs) == 3 and len({c for _, c in pairs}) == 3
