"""Plots for verification results and embeddings (needs ``matplotlib``: ``metricface[plot]``).

Every function draws into ``ax`` when given (so plots compose into a user's figure) or into a new
figure otherwise, and returns the :class:`matplotlib.axes.Axes` (its figure is ``ax.figure``).
A new figure uses matplotlib's constrained layout, so axis labels and a legend placed beside the
axes are never clipped when it is saved. Every plot labels its axes and has a legend.
matplotlib is imported on first use only.

This module builds on :mod:`metricface.metrics` (a :class:`~metricface.metrics.VerificationReport`
holds everything a ROC or DET curve needs); the metrics never import it.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from metricface._optional import require
from metricface._validation import check_embeddings, check_finite, check_labels, check_scalar
from metricface.metrics import VerificationReport, check_binary_scores, verification_report

__all__ = ["plot_det", "plot_embeddings", "plot_report", "plot_roc", "plot_score_histogram"]

# tick positions of a NIST-style DET plot, as error rates
_DET_TICKS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99)


def _axes_or_new(ax: Any, purpose: str) -> Any:
    if ax is not None:
        return ax
    plt = require("matplotlib.pyplot", purpose=purpose)
    _, ax = plt.subplots(figsize=(5.0, 4.5), layout="constrained")
    return ax


def _thin(x: np.ndarray, y: np.ndarray, max_points: int = 4000) -> np.ndarray:
    """Indices of at most ~``max_points`` curve points, spread in log-x and linear y."""
    n = x.shape[0]
    if n <= max_points:
        return np.arange(n)
    positive = x[x > 0]
    grid_x = np.geomspace(positive[0], 1.0, max_points // 2) if positive.size else np.ones(1)
    keep = np.concatenate(
        (
            np.searchsorted(x, grid_x),
            np.searchsorted(y, np.linspace(0.0, 1.0, max_points // 2)),
            [0, n - 1],
        )
    )
    return np.unique(np.clip(keep, 0, n - 1))


def _draw_roc(
    ax: Any, fpr: np.ndarray, tpr: np.ndarray, eer: float, n_neg: int, label: str | None, **kw: Any
) -> Any:
    """ROC on a log FAR axis with the EER point marked."""
    left = min(0.5 / n_neg, 1e-1)  # FAR resolution of the data
    if ax.lines:  # another curve is already there: keep its range visible too
        left = min(left, ax.get_xlim()[0])
    keep = _thin(fpr, tpr)
    fpr, tpr = fpr[keep], tpr[keep]
    (line,) = ax.plot(fpr, tpr, label=label, **kw)
    ax.plot([eer], [1 - eer], "o", color=line.get_color(), label=f"EER = {100 * eer:.2f}%")
    ax.set_xscale("log")
    ax.set_xlim(left, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("False accept rate (FAR)")
    ax.set_ylabel("True accept rate (TAR)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    return ax


def _draw_det(
    ax: Any,
    fpr: np.ndarray,
    fnr: np.ndarray,
    eer: float,
    n_neg: int,
    n_pos: int,
    label: str | None,
    **kw: Any,
) -> Any:
    """DET on normal-deviate axes with the EER point marked."""
    norm = require("scipy.stats").norm
    low = max(min(0.5 / n_neg, 0.5 / n_pos, 1e-3), _DET_TICKS[0])  # resolution of the data
    if ax.lines:  # another curve is already there: keep its range visible too
        low = min(low, float(norm.cdf(ax.get_xlim()[0])))
    keep = _thin(fpr, 1 - fnr)
    fpr, fnr = fpr[keep], fnr[keep]
    ok = (fpr > 0) & (fnr > 0)  # a zero rate is at -inf on this axis
    (line,) = ax.plot(norm.ppf(fpr[ok]), norm.ppf(fnr[ok]), label=label, **kw)
    if 0 < eer < 1:
        z = norm.ppf(eer)
        ax.plot([z], [z], "o", color=line.get_color(), label=f"EER = {100 * eer:.2f}%")
    shown = [v for v in _DET_TICKS if v >= low * (1 - 1e-9)]
    ticks = norm.ppf(shown)
    names = [f"{100 * v:g}" for v in shown]
    lim = (float(norm.ppf(low)), float(ticks[-1]))
    for set_ticks, set_labels, set_lim in (
        (ax.set_xticks, ax.set_xticklabels, ax.set_xlim),
        (ax.set_yticks, ax.set_yticklabels, ax.set_ylim),
    ):
        set_ticks(ticks)
        set_labels(names)
        set_lim(*lim)
    ax.plot(lim, lim, ":", color="grey", lw=0.8)
    ax.set_xlabel("False accept rate (%)")
    ax.set_ylabel("False reject rate (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    return ax


def plot_roc(
    y_true: Any, y_score: Any, *, ax: Any = None, label: str | None = None, **kwargs: Any
) -> Any:
    """Plot the ROC (TAR against FAR on a log axis) and mark the EER point.

    Parameters
    ----------
    y_true, y_score : array-like of shape (n,)
        Labels (1 genuine, 0 impostor) and similarity scores.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into; a new figure is created when omitted.
    label : str, optional
        Legend label of the curve.
    **kwargs
        Passed to ``ax.plot`` for the curve.

    Returns
    -------
    matplotlib.axes.Axes
    """
    return plot_report(verification_report(y_true, y_score), "roc", ax=ax, label=label, **kwargs)


def plot_det(
    y_true: Any, y_score: Any, *, ax: Any = None, label: str | None = None, **kwargs: Any
) -> Any:
    """Plot the DET curve (FRR against FAR on normal-deviate axes, as NIST does).

    On these axes two Gaussian score distributions give a straight line; the EER is where the
    curve crosses the dotted diagonal, and is marked.

    Parameters
    ----------
    y_true, y_score, ax, label, **kwargs
        As for :func:`plot_roc`.

    Returns
    -------
    matplotlib.axes.Axes
    """
    return plot_report(verification_report(y_true, y_score), "det", ax=ax, label=label, **kwargs)


def plot_report(
    report: VerificationReport,
    kind: str = "roc",
    *,
    ax: Any = None,
    label: str | None = None,
    **kwargs: Any,
) -> Any:
    """Plot the ROC or DET curve of a verification report, with the EER marked.

    Parameters
    ----------
    report : metricface.metrics.VerificationReport
        From :func:`~metricface.metrics.verification_report` or
        :func:`~metricface.metrics.verification_report_from_embeddings`.
    kind : {"roc", "det"}
        Which curve: as :func:`plot_roc` or as :func:`plot_det`.
    ax, label, **kwargs
        As for :func:`plot_roc`: axes to draw into (a new figure when omitted), the legend
        label of the curve, and options of ``ax.plot`` for the curve.

    Returns
    -------
    matplotlib.axes.Axes
    """
    if not isinstance(report, VerificationReport):
        raise TypeError(
            f"report must be a metricface.metrics.VerificationReport, got {type(report).__name__}"
        )
    if kind not in ("roc", "det"):
        raise ValueError(f"kind must be 'roc' or 'det', got {kind!r}")
    ax = _axes_or_new(ax, f"plot a {kind.upper()} curve")
    r = report
    if kind == "roc":
        return _draw_roc(ax, r.fpr, r.tpr, r.eer, r.n_impostor, label, **kwargs)
    return _draw_det(ax, r.fpr, 1 - r.tpr, r.eer, r.n_impostor, r.n_genuine, label, **kwargs)


def plot_score_histogram(
    y_true: Any,
    y_score: Any,
    *,
    bins: int = 100,
    ax: Any = None,
    mark_eer: bool = True,
) -> Any:
    """Plot genuine and impostor score densities, with the EER threshold as a vertical line.

    Parameters
    ----------
    y_true, y_score : array-like of shape (n,)
        Labels (1 genuine, 0 impostor) and similarity scores.
    bins : int
        Number of histogram bins over the score range.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into; a new figure is created when omitted.
    mark_eer : bool
        Draw the EER threshold.

    Returns
    -------
    matplotlib.axes.Axes
    """
    labels, scores = check_binary_scores(y_true, y_score)
    ax = _axes_or_new(ax, "plot score histograms")
    edges = np.histogram_bin_edges(scores, bins=bins)
    for mask, name in ((labels, "genuine"), (~labels, "impostor")):
        ax.hist(
            scores[mask],
            bins=edges,
            density=True,
            histtype="stepfilled",
            alpha=0.45,
            label=f"{name} ({int(mask.sum())})",
        )
    if mark_eer:
        with warnings.catch_warnings():  # the histogram itself shows reversed scores
            warnings.filterwarnings("ignore", "y_score ranks impostor", UserWarning)
            report = verification_report(labels, scores, far_targets=(1.0,))
        eer, threshold = report.eer, report.eer_threshold
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"EER threshold ({100 * eer:.2f}%)")
    ax.set_xlabel("Similarity score")
    ax.set_ylabel("Density")
    ax.legend(loc="upper left")
    return ax


def plot_embeddings(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    method: str = "auto",
    ax: Any = None,
    seed: int = 0,
    point_size: float = 8.0,
    max_legend: int = 20,
) -> Any:
    """Scatter a 2-D projection of embeddings, coloured by identity.

    The axes are labelled with the projection's components, the legend (beside the axes) names
    the identities, and the title says which projection was used: t-SNE separates identities
    far better than PCA, so a PCA drawn because scikit-learn is missing says so.

    Parameters
    ----------
    embeddings : torch.Tensor of shape (N, D)
        Embeddings (L2-normalised before projecting).
    labels : torch.Tensor of shape (N,)
        Integer identity ids.
    method : {"auto", "tsne", "pca"}
        ``"tsne"`` uses scikit-learn's t-SNE; ``"pca"`` uses :func:`torch.pca_lowrank`;
        ``"auto"`` picks t-SNE when scikit-learn is installed, PCA otherwise (and then says
        so in the title).
    ax : matplotlib.axes.Axes, optional
        Axes to draw into; a new figure is created when omitted.
    seed : int
        Random state of t-SNE / PCA.
    point_size : float
        Marker size.
    max_legend : int
        Identities named in the legend (the first ``max_legend`` ids in sorted order).

    Returns
    -------
    matplotlib.axes.Axes
    """
    check_embeddings(embeddings)
    check_finite(embeddings, "embeddings")
    check_labels(labels, embeddings.shape[0])
    if method not in ("auto", "tsne", "pca"):
        raise ValueError(f"method must be 'auto', 'tsne' or 'pca', got {method!r}")
    if embeddings.shape[0] < 3:
        raise ValueError(f"embeddings must hold at least 3 points, got {embeddings.shape[0]}")
    check_scalar(max_legend, "max_legend", low=1, integer=True)
    fallback = ""
    if method == "auto":
        try:
            require("sklearn.manifold")
            method = "tsne"
        except ImportError:
            method, fallback = "pca", " (no scikit-learn: no t-SNE)"
    # every missing package is reported before the projection, which can take minutes
    if method == "tsne":
        manifold = require("sklearn.manifold", purpose="project embeddings with t-SNE")
    if ax is None:
        require("matplotlib.pyplot", purpose="plot embeddings")
    x = torch.nn.functional.normalize(embeddings.detach().double().cpu(), dim=1)
    if method == "tsne":
        perplexity = float(min(30.0, (x.shape[0] - 1) / 3))
        tsne = manifold.TSNE(n_components=2, perplexity=perplexity, random_state=seed)
        # t-SNE's OpenMP threads meet at a barrier every iteration; on a busy machine (or beside
        # torch's own thread pool) they wait there for each other: 30 s instead of 0.4 s for
        # 160 points on two shared cores. One thread is fastest at the sizes a scatter shows.
        limits = 1 if x.shape[0] <= 20_000 else None
        with require("threadpoolctl").threadpool_limits(limits=limits, user_api="openmp"):
            xy = tsne.fit_transform(x.numpy())
    else:
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            u, s, _ = torch.pca_lowrank(x, q=min(2, x.shape[1]), center=True)
        finally:
            torch.random.set_rng_state(gen_state)
        xy = (u * s).numpy()
        if xy.shape[1] == 1:
            xy = np.column_stack((xy[:, 0], np.zeros(xy.shape[0])))
    ax = _axes_or_new(ax, "plot embeddings")
    ids, colour = np.unique(labels.cpu().numpy(), return_inverse=True)
    cmap = "tab10" if ids.size <= 10 else "tab20" if ids.size <= 20 else "nipy_spectral"
    points = ax.scatter(xy[:, 0], xy[:, 1], c=colour, cmap=cmap, s=point_size, linewidths=0)
    name, axis = ("PCA", "PC") if method == "pca" else ("t-SNE", "t-SNE")
    ax.set_title(f"{name} of {x.shape[0]} embeddings, {ids.size} identities{fallback}")
    ax.set_xlabel(f"{axis} 1")
    ax.set_ylabel(f"{axis} 2")
    ax.set_xticks([])
    ax.set_yticks([])
    shown = min(ids.size, int(max_legend))
    line2d = require("matplotlib.lines").Line2D
    handles = [
        line2d([], [], ls="", marker="o", markersize=5, color=points.to_rgba(k))
        for k in range(shown)
    ]
    title = "identity" if shown == ids.size else f"identity (first {shown} of {ids.size})"
    ax.legend(
        handles,
        [str(i) for i in ids[:shown].tolist()],
        title=title,
        loc="center left",
        bbox_to_anchor=(1.02, 0.5),
        fontsize="small",
        ncols=1 if shown <= 20 else 2,
    )
    return ax
