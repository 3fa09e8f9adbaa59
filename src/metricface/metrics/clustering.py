"""Clustering quality of embeddings: cluster accuracy, NMI and k-means in torch.

``cluster_accuracy`` maps predicted clusters to true classes one-to-one so as to maximise the
number of matched samples (the Hungarian algorithm on the contingency matrix, as in the deep
clustering literature); unmatched clusters or classes count as errors.
``normalized_mutual_info`` is scikit-learn's ``normalized_mutual_info_score`` (same special
cases, arithmetic mean by default). ``kmeans`` is Lloyd's algorithm with greedy k-means++
seeding, written in torch so it runs on the embeddings' device; ``kmeans_cluster_accuracy``
clusters embeddings with it and scores the partition.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import numpy as np
import torch

from metricface._validation import (
    as_tensor,
    check_device,
    check_embeddings,
    check_finite,
    check_scalar,
)
from metricface.numerics import l2_normalize

__all__ = [
    "KMeansResult",
    "KMeansScores",
    "cluster_accuracy",
    "kmeans",
    "kmeans_cluster_accuracy",
    "normalized_mutual_info",
]


# --------------------------------------------------------------------------- partition scores


def _partition(labels: object, name: str, n: int | None = None) -> np.ndarray:
    """Validate a 1-d labelling (any integers, or strings) and return it as a NumPy array."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must be non-empty, got 0 labels")
    if arr.dtype.kind == "f" or arr.dtype.kind == "c":
        raise TypeError(f"{name} must hold integer (or string) labels, got dtype {arr.dtype}")
    if n is not None and arr.size != n:
        raise ValueError(f"{name} must have the same length as labels_true ({n}), got {arr.size}")
    return arr


def _contingency(labels_true: object, labels_pred: object) -> np.ndarray:
    """Counts ``C[i, j]`` of samples in true class ``i`` and predicted cluster ``j``."""
    t = _partition(labels_true, "labels_true")
    p = _partition(labels_pred, "labels_pred", t.size)
    _, ti = np.unique(t, return_inverse=True)
    _, pi = np.unique(p, return_inverse=True)
    counts = np.zeros((ti.max() + 1, pi.max() + 1), dtype=np.int64)
    np.add.at(counts, (ti, pi), 1)
    return counts


def cluster_accuracy(labels_true: object, labels_pred: object) -> float:
    """Accuracy of a clustering under the best one-to-one cluster-to-class assignment.

    Parameters
    ----------
    labels_true : array-like, shape (N,)
        True classes (integers or strings; numpy arrays, tensors or lists).
    labels_pred : array-like, shape (N,)
        Cluster ids. The number of clusters may differ from the number of classes: samples
        in clusters (or of classes) left without a partner count as errors.

    Returns
    -------
    float
        ``max over one-to-one maps m of #(m(labels_pred) == labels_true) / N``, in ``[0, 1]``;
        invariant to renaming the clusters.
    """
    from scipy.optimize import linear_sum_assignment  # imported here: keeps import light

    counts = _contingency(labels_true, labels_pred)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / counts.sum())


def _entropy(counts: np.ndarray, n: int) -> float:
    p = counts[counts > 0] / n
    return float(-(p * np.log(p)).sum())


def normalized_mutual_info(
    labels_true: object,
    labels_pred: object,
    *,
    average_method: Literal["arithmetic", "geometric", "min", "max"] = "arithmetic",
) -> float:
    """Normalised mutual information between two labellings (natural log; symmetric).

    Parameters
    ----------
    labels_true, labels_pred : array-like, shape (N,)
        The two labellings.
    average_method : {"arithmetic", "geometric", "min", "max"}
        How the two entropies are averaged in the denominator (scikit-learn's default).

    Returns
    -------
    float
        ``MI / mean(H_true, H_pred)`` in ``[0, 1]``. As in scikit-learn, two labellings that
        each put everything in a single cluster score 1.0, and zero mutual information
        scores 0.0.
    """
    if average_method not in ("arithmetic", "geometric", "min", "max"):
        raise ValueError(
            "average_method must be 'arithmetic', 'geometric', 'min' or 'max', got "
            f"{average_method!r}"
        )
    counts = _contingency(labels_true, labels_pred)
    if counts.shape == (1, 1):
        return 1.0
    n = int(counts.sum())
    nz = counts > 0
    outer = counts.sum(1, keepdims=True) * counts.sum(0, keepdims=True)
    c = counts[nz]
    mi = float(np.sum(c / n * (np.log(c) + math.log(n) - np.log(outer[nz]))))
    mi = max(mi, 0.0)
    if mi == 0.0:
        return 0.0
    h_true, h_pred = _entropy(counts.sum(1), n), _entropy(counts.sum(0), n)
    if average_method == "arithmetic":
        norm = (h_true + h_pred) / 2
    elif average_method == "geometric":
        norm = math.sqrt(h_true * h_pred)
    elif average_method == "min":
        norm = min(h_true, h_pred)
    else:
        norm = max(h_true, h_pred)
    return min(mi / norm, 1.0) if norm > 0 else 0.0


# --------------------------------------------------------------------------- k-means


class KMeansResult(NamedTuple):
    """Output of :func:`kmeans`.

    Attributes
    ----------
    labels : torch.Tensor, shape (N,), int64
        Cluster of each point (nearest final center).
    centers : torch.Tensor, shape (K, D)
        Cluster centers.
    inertia : float
        Sum of squared distances of the points to their centers.
    n_iter : int
        Lloyd iterations run by the best initialisation.
    """

    labels: torch.Tensor
    centers: torch.Tensor
    inertia: float
    n_iter: int


_BLOCK_ENTRIES = 2**24  # entries of one (rows x K) distance block: 64 MiB in float32


def _sq_dist_argmin(x, x_sq, centers):
    """Nearest center (ties: lowest index) and its squared distance, in row chunks.

    Each chunk's ``(rows, K)`` distance block holds at most ``_BLOCK_ENTRIES`` entries, so
    memory does not grow with the number of clusters times the number of points.
    """
    chunk = max(1, _BLOCK_ENTRIES // centers.shape[0])
    c_sq = centers.square().sum(1)
    labels, dists = [], []
    for s in range(0, x.shape[0], chunk):
        d = (x_sq[s : s + chunk, None] - 2.0 * x[s : s + chunk] @ centers.T + c_sq).clamp_min_(0)
        v, i = d.min(1)
        labels.append(i)
        dists.append(v)
    return torch.cat(labels), torch.cat(dists)


def _kmeans_pp(x, x_sq, k: int, gen: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding (2 + log k candidates per step, keep the best)."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=gen))
    centers = [x[first]]
    closest = _sq_dist_argmin(x, x_sq, x[first : first + 1])[1]
    for _ in range(1, k):
        weights = closest.double().cpu()
        total = float(weights.sum())
        if total <= 0:  # every point already coincides with a center: pick uniformly
            cand = torch.randint(n, (trials,), generator=gen)
        else:
            u = torch.rand(trials, generator=gen, dtype=torch.float64) * total
            cand = torch.searchsorted(weights.cumsum(0), u).clamp_(max=n - 1)
        cand_x = x[cand.to(x.device)]
        # squared distance of every point to every candidate, then the potential per candidate
        d = (x_sq[:, None] - 2.0 * x @ cand_x.T + cand_x.square().sum(1)).clamp_min_(0)
        new_closest = torch.minimum(closest[:, None], d)
        best = int(new_closest.double().sum(0).argmin())
        centers.append(cand_x[best])
        closest = new_closest[:, best]
    return torch.stack(centers)


def _lloyd(x, x_sq, centers, max_iter: int, tol: float):
    k = centers.shape[0]
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 (read after the loop)
        labels, dists = _sq_dist_argmin(x, x_sq, centers)
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centers).index_add_(0, labels, x)
        new = sums / counts.clamp_min(1)[:, None].to(x.dtype)
        empty = (counts == 0).nonzero()[:, 0]
        if empty.numel():  # re-seed empty clusters at the points farthest from their center
            far = dists.topk(empty.numel()).indices
            new[empty] = x[far]
        shift = float((new - centers).square().sum())
        centers = new
        if shift <= tol:
            break
    labels = _sq_dist_argmin(x, x_sq, centers)[0]
    inertia = float((x - centers[labels]).double().square().sum())  # direct, not expanded
    return labels, centers, inertia, n_iter


def kmeans(
    x: torch.Tensor,
    n_clusters: int,
    *,
    seed: int = 0,
    n_init: int = 1,
    max_iter: int = 300,
    tol: float = 1e-4,
    device: torch.device | str | None = None,
) -> KMeansResult:
    """k-means clustering (greedy k-means++ seeding, then Lloyd iterations) in torch.

    Parameters
    ----------
    x : torch.Tensor or numpy.ndarray, shape (N, D)
        Points to cluster (computed in float32, or float64 if ``x`` is float64, also inside
        an autocast region).
    n_clusters : int
        Number of clusters ``K``, ``1 <= K <= N``.
    seed : int
        Seeds a private CPU generator: the same seed gives the same seeding on every device,
        and the global RNG is untouched.
    n_init : int
        Number of seedings; the run with the lowest inertia is kept.
    max_iter : int
        Maximum Lloyd iterations per run.
    tol : float
        Stop when the squared center shift is at most ``tol`` times the mean per-feature
        variance of ``x`` (scikit-learn's convention).
    device : torch.device or str, optional
        Where to compute; defaults to ``x``'s device.

    Returns
    -------
    KMeansResult
        ``labels`` (N,) and ``centers`` (K, D) on the compute device, ``inertia``, ``n_iter``.
        An emptied cluster is re-seeded at the point farthest from its center.
    """
    x = check_embeddings(as_tensor(x, "x"), "x")
    check_finite(x, "x")
    check_scalar(n_clusters, "n_clusters", low=1, integer=True)
    if n_clusters > x.shape[0]:
        raise ValueError(
            f"n_clusters must be at most the number of points ({x.shape[0]}), got {n_clusters}"
        )
    check_scalar(n_init, "n_init", low=1, integer=True)
    check_scalar(max_iter, "max_iter", low=1, integer=True)
    check_scalar(tol, "tol", low=0)
    check_scalar(seed, "seed", integer=True)
    device = x.device if device is None else check_device(device)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(device=device, dtype=dtype)
    mean = x.mean(0)
    x = x - mean  # centred data keeps the expanded squared distances accurate
    x_sq = x.square().sum(1)
    abs_tol = tol * float(x.var(0, unbiased=False).mean()) if x.shape[0] > 1 else 0.0
    gen = torch.Generator().manual_seed(seed)
    best: KMeansResult | None = None
    with torch.autocast(device.type, enabled=False):  # distances in float32 even under autocast
        for _ in range(n_init):
            init = _kmeans_pp(x, x_sq, n_clusters, gen)
            run = KMeansResult(*_lloyd(x, x_sq, init, max_iter, abs_tol))
            if best is None or run.inertia < best.inertia:
                best = run
    assert best is not None
    return best._replace(centers=best.centers + mean)


class KMeansScores(NamedTuple):
    """Output of :func:`kmeans_cluster_accuracy`.

    Attributes
    ----------
    accuracy : float
        :func:`cluster_accuracy` of the k-means partition.
    nmi : float
        :func:`normalized_mutual_info` of the k-means partition.
    labels_pred : numpy.ndarray, shape (N,)
        The k-means cluster of each embedding.
    """

    accuracy: float
    nmi: float
    labels_pred: np.ndarray


def kmeans_cluster_accuracy(
    embeddings: torch.Tensor,
    labels: object,
    n_clusters: int | None = None,
    *,
    seed: int = 0,
    normalize: bool = True,
    n_init: int = 1,
    max_iter: int = 300,
    device: torch.device | str | None = None,
) -> KMeansScores:
    """Cluster embeddings with :func:`kmeans` and score the partition against identities.

    Parameters
    ----------
    embeddings : torch.Tensor or numpy.ndarray, shape (N, D)
    labels : array-like, shape (N,)
        True identity of each embedding.
    n_clusters : int, optional
        Defaults to the number of distinct identities in ``labels``.
    seed, n_init, max_iter, device
        Passed to :func:`kmeans`.
    normalize : bool
        L2-normalise the embeddings first (default), so that k-means groups by angle as face
        embeddings are compared.

    Returns
    -------
    KMeansScores
        ``accuracy`` (best one-to-one assignment), ``nmi`` and the predicted clusters.
    """
    x = check_embeddings(as_tensor(embeddings, "embeddings"), "embeddings")
    y = _partition(labels, "labels")
    if y.size != x.shape[0]:
        raise ValueError(f"labels must have one entry per embedding ({x.shape[0]}), got {y.size}")
    if n_clusters is None:
        n_clusters = int(np.unique(y).size)
    if normalize:
        check_finite(x, "embeddings")
        x = l2_normalize(x)
    result = kmeans(x, n_clusters, seed=seed, n_init=n_init, max_iter=max_iter, device=device)
    pred = result.labels.cpu().numpy()
    return KMeansScores(cluster_accuracy(y, pred), normalized_mutual_info(y, pred), pred)
