"""Closed-set (CMC, top-k accuracy) and open-set (DIR at FPIR) identification metrics.

A *probe* is searched against a *gallery* of enrolled embeddings. The gallery may hold several
embeddings per identity: each gallery **identity** is scored by its best-matching embedding (the
maximum score over that identity's gallery rows), and identities, not rows, are ranked.

Rank of the genuine identity
    ``1 + #(other gallery identities whose score >= the genuine identity's score)``. A tie
    counts **against** the genuine match: an impostor identity tied with it ranks first, so the
    result never depends on the order of the gallery and never flatters a degenerate model
    (a model that maps everything to one point has rank = number of identities, not 1).

Closed set
    Every probe's identity is enrolled. ``CMC(R)`` is the fraction of probes whose genuine rank
    is ``<= R``; top-k accuracy is ``CMC(k)``.

Open set (NIST FRVT/IJB style)
    Some probes are *non-mated* ("unknown"): their identity is not in the gallery. For a score
    threshold ``T`` and a rank ``R``, the detection and identification rate
    ``DIR(T, R)`` is the fraction of mated probes whose genuine rank is ``<= R`` *and* whose
    genuine score is ``>= T``; the false positive identification rate ``FPIR(T)`` is the
    fraction of non-mated probes whose best score (over the whole gallery) is ``>= T``.
    Hence ``DIR(T, R) <= CMC(R)`` and ``FPIR`` is non-increasing in ``T``.

Scores are similarities (higher = more alike). From embeddings, ``metric="cosine"`` (default)
or ``"dot"`` give them directly; ``metric="euclidean"`` uses the *negated* distance, so the
thresholds it reports are negative distances. Embedding-based functions move the gallery to
the compute device once, then score it in chunks: they never build the full probe x gallery
matrix.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from metricface._validation import as_tensor, check_finite, check_labels, check_scalar
from metricface.metrics.verification import _max_false_accepts
from metricface.numerics import compute_dtype as _compute_dtype
from metricface.search import Metric
from metricface.search import check_metric as _check_metric
from metricface.search import check_pair as _check_pair
from metricface.search import prepare_block as _prepare
from metricface.search import similarity_block as _similarity

__all__ = [
    "OpenSetResult",
    "cmc_curve",
    "cmc_curve_from_scores",
    "open_set_identification",
    "open_set_identification_from_scores",
    "top_k_accuracy",
]


@dataclass(frozen=True)
class _ProbeSummary:
    """Per probe: genuine identity score and rank (mated probes), best score over the gallery."""

    genuine_score: np.ndarray  # (P,) float64, NaN for probes whose identity is not enrolled
    rank: np.ndarray  # (P,) int64, 0 for probes whose identity is not enrolled
    top_score: np.ndarray  # (P,) float64
    enrolled: np.ndarray  # (P,) bool: the probe's label is a gallery identity
    n_identities: int
    score_dtype: type  # numpy float type the scores were computed in (float32 or float64)


@dataclass(frozen=True)
class OpenSetResult:
    """Open-set identification at the requested FPIR targets, plus the full DIR/FPIR curve.

    Attributes
    ----------
    rank : int
        The rank ``R`` used for DIR.
    fpir_targets : numpy.ndarray, shape (n_targets,)
        The requested FPIR values.
    dir : numpy.ndarray, shape (n_targets,)
        ``DIR(T, R)`` at the threshold chosen for each target.
    thresholds : numpy.ndarray, shape (n_targets,)
        The smallest threshold ``T`` with ``FPIR(T) <= target`` among the values of the dtype
        the scores were computed in (float32 unless an input is float64), stored as float64,
        so that ``score >= T`` gives the reported rates also on float32 scores; ``-inf`` when
        every non-mated probe may be accepted. A probe is accepted when ``score >= T``.
    fpir : numpy.ndarray, shape (n_targets,)
        The FPIR actually reached at that threshold (``<=`` the target).
    curve_fpir, curve_dir, curve_thresholds : numpy.ndarray, shape (n_points,)
        Every operating point, thresholds decreasing from ``+inf`` (nothing accepted) through
        each distinct relevant score; for plotting DIR against FPIR.
    """

    rank: int
    fpir_targets: np.ndarray
    dir: np.ndarray
    thresholds: np.ndarray
    fpir: np.ndarray
    curve_fpir: np.ndarray
    curve_dir: np.ndarray
    curve_thresholds: np.ndarray


# --------------------------------------------------------------------------- per-probe summary


def _labels(labels: object, n: int, name: str) -> torch.Tensor:
    return check_labels(as_tensor(labels, name), n, name=name).long()


def _index_identities(probe_labels: torch.Tensor, gallery_labels: torch.Tensor):
    """Gallery identity index of every gallery row and probe (probes: -1 when not enrolled)."""
    ids, gallery_index = torch.unique(gallery_labels.cpu(), sorted=True, return_inverse=True)
    p = probe_labels.cpu()
    pos = torch.searchsorted(ids, p).clamp_(max=ids.numel() - 1)
    enrolled = ids[pos] == p
    return gallery_index, torch.where(enrolled, pos, torch.full_like(pos, -1)), ids.numel()


def _summarise(
    blocks: Iterator[tuple[int, torch.Tensor]], probe_index: torch.Tensor, n_identities: int
) -> _ProbeSummary:
    """Reduce per-identity score blocks ``(start, (p, n_identities))`` to a summary."""
    n = probe_index.numel()
    genuine = np.full(n, np.nan)
    rank = np.zeros(n, dtype=np.int64)
    top = np.empty(n)
    score_dtype: type = np.float64
    for start, ident in blocks:
        score_dtype = np.float32 if ident.dtype == torch.float32 else np.float64
        stop = start + ident.shape[0]
        idx = probe_index[start:stop].to(ident.device)
        ok = idx >= 0
        g = ident.gather(1, idx.clamp(min=0)[:, None])  # (p, 1)
        # ties count against the genuine identity: it is counted among the ">=" itself
        r = (ident >= g).sum(1)
        top[start:stop] = ident.max(1).values.double().cpu().numpy()
        ok_np = ok.cpu().numpy()
        genuine[start:stop][ok_np] = g[:, 0].double().cpu().numpy()[ok_np]
        rank[start:stop][ok_np] = r.cpu().numpy()[ok_np]
    return _ProbeSummary(genuine, rank, top, probe_index.numpy() >= 0, n_identities, score_dtype)


def _blocks_from_embeddings(
    probes, gallery, gallery_index, n_identities, metric, device, chunk_size
) -> Iterator[tuple[int, torch.Tensor]]:
    dtype = _compute_dtype(probes, gallery)
    gallery_index = gallery_index.to(device)
    gx, gn = _prepare(gallery, metric, dtype, device)  # once, not once per probe block
    # Per-identity maxima are (p, n_identities): size the probe block so both they and one
    # (p, chunk) score block stay near chunk_size ** 2 entries.
    step = max(1, min(chunk_size, chunk_size**2 // max(n_identities, chunk_size)))
    for start in range(0, probes.shape[0], step):
        p = _prepare(probes[start : start + step], metric, dtype, device)
        ident = torch.full((p[0].shape[0], n_identities), -math.inf, dtype=dtype, device=device)
        for g_start in range(0, gallery.shape[0], chunk_size):
            stop = g_start + chunk_size
            sim = _similarity(p, (gx[g_start:stop], None if gn is None else gn[g_start:stop]))
            cols = gallery_index[g_start:stop].expand(sim.shape[0], -1)
            ident.scatter_reduce_(1, cols, sim, reduce="amax")
        yield start, ident


# A check of the caller's own arguments, given which probes are enrolled and the number of gallery
# identities; it runs before any score is computed.
_Check = Callable[[np.ndarray, int], None]


def _summary_from_embeddings(
    probe_embeddings,
    probe_labels,
    gallery_embeddings,
    gallery_labels,
    metric,
    device,
    chunk_size,
    check: _Check,
) -> _ProbeSummary:
    probes, gallery, device = _check_pair(
        probe_embeddings, gallery_embeddings, device, ("probe_embeddings", "gallery_embeddings")
    )
    probe_labels = _labels(probe_labels, probes.shape[0], "probe_labels")
    gallery_labels = _labels(gallery_labels, gallery.shape[0], "gallery_labels")
    _check_metric(metric)
    check_scalar(chunk_size, "chunk_size", low=1, integer=True)
    gallery_index, probe_index, n_ids = _index_identities(probe_labels, gallery_labels)
    check(probe_index.numpy() >= 0, n_ids)
    blocks = _blocks_from_embeddings(
        probes, gallery, gallery_index, n_ids, metric, device, chunk_size
    )
    return _summarise(blocks, probe_index, n_ids)


def _summary_from_scores(scores, probe_labels, gallery_labels, check: _Check) -> _ProbeSummary:
    scores = as_tensor(scores, "scores")
    if not scores.is_floating_point():
        scores = scores.double()
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(
            "scores must be a non-empty matrix of shape (n_probes, n_gallery), got shape "
            f"{tuple(scores.shape)}"
        )
    check_finite(scores, "scores")
    probe_labels = _labels(probe_labels, scores.shape[0], "probe_labels")
    gallery_labels = _labels(gallery_labels, scores.shape[1], "gallery_labels")
    gallery_index, probe_index, n_ids = _index_identities(probe_labels, gallery_labels)
    check(probe_index.numpy() >= 0, n_ids)
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    ident = torch.full((scores.shape[0], n_ids), -math.inf, dtype=scores.dtype)
    ident = ident.to(scores.device)
    cols = gallery_index.to(scores.device).expand(scores.shape[0], -1)
    ident.scatter_reduce_(1, cols, scores, reduce="amax")
    return _summarise(iter([(0, ident)]), probe_index, n_ids)


# --------------------------------------------------------------------------- closed set


def _check_rank(value: object, name: str, n_identities: int) -> None:
    check_scalar(value, name, low=1, integer=True)
    if value > n_identities:  # type: ignore[operator]
        raise ValueError(
            f"{name} must be at most the number of gallery identities ({n_identities}), got {value}"
        )


def _closed_set_check(max_rank: object, name: str = "max_rank", optional: bool = True) -> _Check:
    def check(enrolled: np.ndarray, n_identities: int) -> None:
        if not enrolled.all():
            missing = int((~enrolled).sum())
            raise ValueError(
                "closed-set identification needs every probe identity in the gallery, got "
                f"{missing} probe(s) whose label is not a gallery label; use "
                "open_set_identification for galleries that miss some probe identities"
            )
        if max_rank is not None or not optional:
            _check_rank(max_rank, name, n_identities)

    return check


def _cmc(summary: _ProbeSummary, max_rank: int | None) -> np.ndarray:
    """CMC up to ``max_rank`` of a summary that passed :func:`_closed_set_check`."""
    max_rank = summary.n_identities if max_rank is None else max_rank
    counts = np.bincount(summary.rank, minlength=summary.n_identities + 1)[1 : max_rank + 1]
    return np.cumsum(counts) / summary.rank.size


def cmc_curve(
    probe_embeddings: torch.Tensor,
    probe_labels: torch.Tensor,
    gallery_embeddings: torch.Tensor,
    gallery_labels: torch.Tensor,
    *,
    max_rank: int | None = None,
    metric: Metric = "cosine",
    device: torch.device | str | None = None,
    chunk_size: int = 4096,
) -> np.ndarray:
    """Cumulative match characteristic of closed-set identification.

    Parameters
    ----------
    probe_embeddings : torch.Tensor or numpy.ndarray, shape (P, D)
    probe_labels : torch.Tensor or numpy.ndarray, shape (P,), integer
        Identity of each probe; every one must occur in ``gallery_labels``.
    gallery_embeddings : torch.Tensor or numpy.ndarray, shape (G, D)
    gallery_labels : torch.Tensor or numpy.ndarray, shape (G,), integer
        Identity of each gallery row; an identity may have several rows (scored by its best).
    max_rank : int, optional
        Length of the curve, at most the number of gallery identities (the default).
    metric : {"cosine", "dot", "euclidean"}
        How embeddings are compared (see the module notes).
    device : torch.device or str, optional
        Where the scores are computed; defaults to the probes' device.
    chunk_size : int
        Gallery rows scored per step (memory only; results do not depend on it).

    Returns
    -------
    numpy.ndarray, shape (max_rank,), float64
        ``cmc[r - 1]`` is the fraction of probes whose genuine identity ranks ``<= r``
        (ties counted against the genuine identity). Non-decreasing; ``cmc[0]`` is rank-1
        accuracy.

    Raises
    ------
    ValueError
        Empty or mismatched inputs, NaN/inf embeddings, ``max_rank`` out of range, or a probe
        identity missing from the gallery.
    """
    summary = _summary_from_embeddings(
        probe_embeddings, probe_labels, gallery_embeddings, gallery_labels,
        metric, device, chunk_size, _closed_set_check(max_rank),
    )  # fmt: skip
    return _cmc(summary, max_rank)


def cmc_curve_from_scores(
    scores: torch.Tensor,
    probe_labels: torch.Tensor,
    gallery_labels: torch.Tensor,
    *,
    max_rank: int | None = None,
) -> np.ndarray:
    """Cumulative match characteristic from a precomputed probe x gallery score matrix.

    Parameters
    ----------
    scores : torch.Tensor or numpy.ndarray, shape (P, G)
        Similarity of every probe to every gallery row (higher = more alike).
    probe_labels : torch.Tensor or numpy.ndarray, shape (P,), integer
    gallery_labels : torch.Tensor or numpy.ndarray, shape (G,), integer
    max_rank : int, optional
        Length of the curve, at most the number of gallery identities (the default).

    Returns
    -------
    numpy.ndarray, shape (max_rank,), float64
        As :func:`cmc_curve`.
    """
    summary = _summary_from_scores(
        scores, probe_labels, gallery_labels, _closed_set_check(max_rank)
    )
    return _cmc(summary, max_rank)


def top_k_accuracy(
    probe_embeddings: torch.Tensor,
    probe_labels: torch.Tensor,
    gallery_embeddings: torch.Tensor,
    gallery_labels: torch.Tensor,
    k: int = 1,
    *,
    metric: Metric = "cosine",
    device: torch.device | str | None = None,
    chunk_size: int = 4096,
) -> float:
    """Fraction of probes whose genuine identity ranks in the top ``k`` (``CMC(k)``).

    Parameters are those of :func:`cmc_curve`; ``k`` is at most the number of gallery
    identities. Ties count against the genuine identity.

    Returns
    -------
    float
        Top-``k`` identification accuracy in ``[0, 1]``.
    """
    summary = _summary_from_embeddings(
        probe_embeddings, probe_labels, gallery_embeddings, gallery_labels,
        metric, device, chunk_size, _closed_set_check(k, "k", optional=False),
    )  # fmt: skip
    return float(_cmc(summary, k)[-1])


# --------------------------------------------------------------------------- open set


def _fpir_targets(fpir: Sequence[float] | float) -> np.ndarray:
    targets = None
    if fpir is not None and not isinstance(fpir, (str, bytes)):  # numpy parses "0.1", None
        try:
            targets = np.atleast_1d(np.asarray(fpir, dtype=np.float64))
        except (TypeError, ValueError):  # "a", [0.1, "b"], None, ...
            pass
    if targets is None:
        raise TypeError(
            f"fpir must be a number or a 1-d sequence of numbers, got {type(fpir).__name__} "
            f"{fpir!r}"
        )
    if targets.ndim != 1 or targets.size == 0:
        raise ValueError(f"fpir must be a number or a 1-d sequence of numbers, got {fpir!r}")
    if not np.all((targets >= 0) & (targets <= 1)):
        raise ValueError(f"fpir targets must be in [0, 1], got {targets.tolist()}")
    return targets


def _mated(enrolled: np.ndarray, unknown: object) -> np.ndarray:
    """Which probes are mated: the enrolled ones, or those ``unknown`` marks ``False``."""
    if unknown is None:
        mated = enrolled
    else:
        mask = as_tensor(unknown, "unknown")
        if mask.dtype != torch.bool or mask.shape != (enrolled.size,):
            raise ValueError(
                f"unknown must be a boolean mask of shape ({enrolled.size},), got "
                f"dtype {mask.dtype} and shape {tuple(mask.shape)}"
            )
        mated = ~mask.cpu().numpy()
        if np.any(mated & ~enrolled):
            raise ValueError(
                "unknown marks as known (False) some probes whose label is not a gallery label"
            )
    n_mated, n_non = int(mated.sum()), int((~mated).sum())
    if n_mated == 0 or n_non == 0:
        raise ValueError(
            "open-set identification needs both mated probes (identity in the gallery) and "
            f"non-mated probes (unknown), got {n_mated} mated and {n_non} non-mated"
        )
    return mated


def _open_set_check(rank: object, unknown: object) -> _Check:
    def check(enrolled: np.ndarray, n_identities: int) -> None:
        _check_rank(rank, "rank", n_identities)
        _mated(enrolled, unknown)

    return check


def _open_set(
    summary: _ProbeSummary, targets: np.ndarray, rank: int, unknown: object
) -> OpenSetResult:
    """DIR/FPIR of a summary that passed :func:`_open_set_check` at validated ``targets``."""
    mated = _mated(summary.enrolled, unknown)
    n_mated, n_non = int(mated.sum()), int((~mated).sum())
    non_mated_top = np.sort(summary.top_score[~mated])[::-1]  # decreasing
    hit = summary.rank[mated] <= rank
    genuine_hits = np.sort(summary.genuine_score[mated][hit])  # increasing

    def dir_at(t: np.ndarray) -> np.ndarray:
        return (genuine_hits.size - np.searchsorted(genuine_hits, t, side="left")) / n_mated

    def fpir_at(t: np.ndarray) -> np.ndarray:
        asc = non_mated_top[::-1]
        return (n_non - np.searchsorted(asc, t, side="left")) / n_non

    thresholds = np.empty_like(targets)
    for i, a in enumerate(targets):
        allowed = _max_false_accepts(a, n_non)  # false alarms permitted: c / n_non <= a
        if 0 < a * n_non < 1:
            warnings.warn(
                f"fpir target {a:g} is below the resolution of {n_non} non-mated probes "
                f"(1/{n_non} = {1 / n_non:.3g}); the threshold admits no false alarm",
                UserWarning,
                stacklevel=3,
            )
        if allowed >= n_non:
            thresholds[i] = -math.inf
        else:  # just above the (allowed + 1)-th best non-mated score, in the scores' dtype
            # (a float64 threshold between two float32 scores would round back onto the
            # boundary score when a user compares float32 scores with it)
            f = summary.score_dtype
            thresholds[i] = np.nextafter(f(non_mated_top[allowed]), f(math.inf))
    curve_t = np.unique(np.concatenate([non_mated_top, genuine_hits]))[::-1]
    curve_t = np.concatenate([[math.inf], curve_t])
    return OpenSetResult(
        rank=int(rank),
        fpir_targets=targets,
        dir=dir_at(thresholds),
        thresholds=thresholds,
        fpir=fpir_at(thresholds),
        curve_fpir=fpir_at(curve_t),
        curve_dir=dir_at(curve_t),
        curve_thresholds=curve_t,
    )


def open_set_identification(
    probe_embeddings: torch.Tensor,
    probe_labels: torch.Tensor,
    gallery_embeddings: torch.Tensor,
    gallery_labels: torch.Tensor,
    *,
    fpir: Sequence[float] | float = (0.001, 0.01, 0.1),
    rank: int = 1,
    unknown: torch.Tensor | None = None,
    metric: Metric = "cosine",
    device: torch.device | str | None = None,
    chunk_size: int = 4096,
) -> OpenSetResult:
    """Open-set identification: DIR at given FPIR targets (NIST style).

    Parameters
    ----------
    probe_embeddings : torch.Tensor or numpy.ndarray, shape (P, D)
    probe_labels : torch.Tensor or numpy.ndarray, shape (P,), integer
        Identity of each probe. Unless ``unknown`` is given, a probe whose label is not in
        ``gallery_labels`` (e.g. ``-1``) is non-mated.
    gallery_embeddings : torch.Tensor or numpy.ndarray, shape (G, D)
    gallery_labels : torch.Tensor or numpy.ndarray, shape (G,), integer
    fpir : float or sequence of float
        FPIR targets in ``[0, 1]``. A warning is issued when a target is below ``1 / n``
        for ``n`` non-mated probes.
    rank : int
        The rank ``R`` of ``DIR(T, R)``; 1 (the usual report) by default.
    unknown : torch.Tensor or numpy.ndarray, shape (P,), bool, optional
        Explicit non-mated mask; the labels of probes marked ``True`` are then ignored. Probes
        marked ``False`` must have a gallery label.
    metric, device, chunk_size
        As in :func:`cmc_curve`.

    Returns
    -------
    OpenSetResult
        DIR, thresholds and reached FPIR per target, and the full DIR/FPIR curve.

    Raises
    ------
    ValueError
        Bad inputs (as in :func:`cmc_curve`), targets outside ``[0, 1]``, or no mated or no
        non-mated probe.
    """
    targets = _fpir_targets(fpir)
    summary = _summary_from_embeddings(
        probe_embeddings, probe_labels, gallery_embeddings, gallery_labels,
        metric, device, chunk_size, _open_set_check(rank, unknown),
    )  # fmt: skip
    return _open_set(summary, targets, rank, unknown)


def open_set_identification_from_scores(
    scores: torch.Tensor,
    probe_labels: torch.Tensor,
    gallery_labels: torch.Tensor,
    *,
    fpir: Sequence[float] | float = (0.001, 0.01, 0.1),
    rank: int = 1,
    unknown: torch.Tensor | None = None,
) -> OpenSetResult:
    """Open-set identification from a precomputed probe x gallery score matrix.

    Parameters
    ----------
    scores : torch.Tensor or numpy.ndarray, shape (P, G)
        Similarity of every probe to every gallery row (higher = more alike).
    probe_labels, gallery_labels, fpir, rank, unknown
        As in :func:`open_set_identification`.

    Returns
    -------
    OpenSetResult
    """
    targets = _fpir_targets(fpir)
    summary = _summary_from_scores(
        scores, probe_labels, gallery_labels, _open_set_check(rank, unknown)
    )
    return _open_set(summary, targets, rank, unknown)
