"""Plots draw what the metrics compute, into given or new axes."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm

from metricface.metrics import equal_error_rate

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
plt = pytest.importorskip("matplotlib.pyplot")

from metricface.metrics import verification_report  # noqa: E402
from metricface.plots import (  # noqa: E402
    plot_det,
    plot_embeddings,
    plot_report,
    plot_roc,
    plot_score_histogram,
)


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
    axis = "PC" if method == "pca" else "t-SNE"
    assert (ax.get_xlabel(), ax.get_ylabel()) == (f"{axis} 1", f"{axis} 2")


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


def test_plot_report_draws_the_curves_of_plot_roc_and_plot_det(scores):
    y, s = scores
    rep = verification_report(y, s)
    _, (a1, a2, b1, b2) = plt.subplots(1, 4)
    assert plot_report(rep, ax=a1, label="model") is a1
    assert plot_report(rep, "det", ax=a2) is a2
    plot_roc(y, s, ax=b1, label="model")
    plot_det(y, s, ax=b2)
    for ours, ref in ((a1, b1), (a2, b2)):
        for la, lb in zip(ours.get_lines(), ref.get_lines(), strict=True):
            np.testing.assert_array_equal(la.get_xydata(), lb.get_xydata())
    assert a1.get_legend().get_texts()[0].get_text() == "model"
    with pytest.raises(ValueError, match="kind must be 'roc' or 'det'"):
        plot_report(rep, "pr")
    with pytest.raises(TypeError, match="report must be a metricface.metrics.VerificationReport"):
        plot_report((y, s))


def _clipped(fig) -> bool:
    """Whether anything drawn (labels, ticks, legend, title) reaches beyond the saved figure."""
    fig.canvas.draw()
    drawn = fig.get_tightbbox(fig.canvas.get_renderer())  # inches, like bbox_inches
    page = fig.bbox_inches
    tol = 1e-3
    return (
        drawn.x0 < page.x0 - tol
        or drawn.y0 < page.y0 - tol
        or drawn.x1 > page.x1 + tol
        or drawn.y1 > page.y1 + tol
    )


def test_new_figures_label_their_axes_have_a_legend_and_clip_nothing(scores):
    """A DET y-label used to be cut off at default save settings; now nothing is."""
    y, s = scores
    rng = np.random.default_rng(2)
    y_big = rng.random(400_000) < 0.1  # DET ticks down to 0.001 %: the widest tick labels
    s_big = rng.normal(size=y_big.size) + 2.5 * y_big
    labels = torch.arange(20).repeat_interleave(4)
    emb = torch.randn(20, 8)[labels] + 0.2 * torch.randn(80, 8)
    for ax in (
        plot_roc(y, s),
        plot_det(y, s),
        plot_det(y_big, s_big),
        plot_score_histogram(y, s),
        plot_embeddings(emb, labels, method="pca"),
    ):
        assert ax.get_xlabel() and ax.get_ylabel(), ax.get_title()
        assert ax.get_legend() is not None and ax.get_legend().get_texts()
        assert not _clipped(ax.figure), ax.get_xlabel()


def test_plot_embeddings_names_its_projection_and_the_identities(monkeypatch):
    import sys

    labels = torch.tensor([5, 9, 30] * 4)
    emb = torch.randn(12, 4, generator=torch.Generator().manual_seed(0))
    ax = plot_embeddings(emb, labels, method="pca", max_legend=2)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("PC 1", "PC 2")
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["5", "9"]
    assert legend.get_title().get_text() == "identity (first 2 of 3)"
    # the legend's colours are those of the identities' points
    codes = np.asarray(ax.collections[0].get_array())
    for handle, k in zip(legend.legend_handles, (0, 1)):
        point = ax.collections[0].to_rgba(codes[codes == k][:1])[0]
        np.testing.assert_allclose(matplotlib.colors.to_rgba(handle.get_color()), point)
    assert "no scikit-learn" not in ax.get_title()
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)  # scikit-learn missing
    ax = plot_embeddings(emb, labels)
    assert ax.get_title().startswith("PCA of 12 embeddings, 3 identities")
    assert "no scikit-learn: no t-SNE" in ax.get_title()


def _imports(path: Path) -> list[tuple[str, str]]:
    """Every ``(module, name)`` a file imports, function-level (lazy) imports included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names]
    return found


SRC = Path(__file__).resolve().parents[1] / "src" / "metricface"


def test_plots_depend_on_metrics_never_the_reverse_and_only_on_public_names():
    for path in (SRC / "metrics").glob("*.py"):
        for module, name in _imports(path):
            assert "plots" not in ([*module.split("."), name]), (path.name, module, name)
    for module, name in _imports(SRC / "plots.py"):
        if module.startswith("metricface.metrics"):
            assert not any(p.startswith("_") for p in [*module.split("."), name]), (module, name)
