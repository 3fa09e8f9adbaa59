"""Template protocols (IJB-B, IJB-C): pooled image features, 1:1 and 1:N template scores.

A *template* is a set of face images of one person; a *media* is one still or one video whose
frames share a media id. Template features follow the convention of InsightFace's IJB
evaluation code, on which published IJB-B/C tables are computed:

1. optional per-image weights (the face detector's score) multiply each image feature;
2. the images of one media **within one template** are averaged;
3. a template's media averages are **summed**, and the sum is L2-normalised.

Whether image features are L2-normalised before step 1 is a choice: InsightFace's published
setting keeps each feature's norm (it down-weights blurred or non-face crops, whose features are
short) and sums the raw features of an image and its mirror image (flip test). That is the
default here (``normalize_images=False``); ``normalize_images=True`` normalises every image
feature first (InsightFace's "N0" variant). Feed raw network outputs, e.g.
``embed(..., flip_tta=True, normalize=False)``, to reproduce the published numbers.

Pair scores are cosine similarities of template features. 1:1 verification reports TAR at FAR
1e-6 ... 1e-1 (:func:`~metricface.metrics.verification_report`); 1:N identification searches
every probe template in each gallery separately (IJB-C ``G1`` and ``G2``): probes whose subject
is not enrolled in that gallery are the non-mated searches, and the true positive
identification rate ``TPIR`` at a false positive identification rate ``FPIR`` is
:func:`~metricface.metrics.open_set_identification`'s DIR at rank 1 (``FPIR <= target``; a
threshold equal to a non-mated score that InsightFace's script counts as a false alarm budget
of ``ceil(FPIR * n) - 1`` is counted here as ``floor(FPIR * n)``, the NIST definition). Rank-k
rates are the CMC of the mated probes (:func:`~metricface.metrics.cmc_curve`).

Speed
-----
Pooling is one sparse-by-dense matrix product per chunk of images (a ``templates x images``
matrix holding each image's pooling weight), so the features are read once and no
per-template Python loop runs. Pair scoring takes the distinct templates on each side of the pair list: where their
product is at most a few times the number of pairs (IJB's gallery x probe design: 3,531 x
19,593 templates for 15.7M pairs), it computes the template-by-template score blocks with
matrix products and picks the pairs from them, which is tens of times faster than gathering
two feature rows per pair; otherwise it gathers rows in chunks. Scores are computed in the
features' dtype (float32 unless float64), so they match a float64 re-derivation to float32
rounding.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from metricface._validation import as_tensor, check_embeddings, check_label_array, check_scalar
from metricface.metrics._checks import check_far_targets, to_numpy
from metricface.metrics.identification import (
    OpenSetResult,
    _fpir_targets,
    cmc_curve,
    open_set_identification,
)
from metricface.metrics.report import VerificationReport, verification_report
from metricface.metrics.verification import OperatingPoints, _without_collinear
from metricface.numerics import unit_rows

__all__ = [
    "IJB_FAR_TARGETS",
    "IJBReport",
    "TemplateIdentification",
    "ijb_report",
    "template_features",
    "template_identification",
    "template_pair_scores",
]

#: The FAR targets of the IJB-B/C one-to-one verification table.
IJB_FAR_TARGETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)

# Score template-by-template blocks when they hold at most this many entries per pair: a block
# entry costs a fraction of a multiply-add inside a matrix product, a gathered pair a whole
# feature row read twice from memory (about 100x more on a CPU).
_DENSE_FACTOR = 32


# --------------------------------------------------------------------------- validation


def _features(features: object, name: str = "features") -> torch.Tensor:
    x = check_embeddings(as_tensor(features, name), name)
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if not bool(torch.isfinite(x.sum())):
        bad = (~torch.isfinite(x)).any(1)
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise ValueError(f"{name} must be finite, got NaN or inf in row {row}")
    return x


def _ids(values: object, name: str, n: int | None = None) -> np.ndarray:
    ids = check_label_array(values, name)
    if n is not None and ids.shape[0] != n:
        raise ValueError(f"{name} must have one entry per image ({n}), got {ids.shape[0]}")
    return ids


def _weights(weights: object, n: int) -> np.ndarray | None:
    if weights is None:
        return None
    w = to_numpy(weights, "weights").astype(np.float64)
    if w.shape[0] != n:
        raise ValueError(f"weights must have one entry per image ({n}), got {w.shape[0]}")
    bad = np.flatnonzero(~(np.isfinite(w) & (w >= 0)))
    if bad.size:
        raise ValueError(
            f"weights must be finite and >= 0, got {w[bad[0]]!r} for image {int(bad[0])}"
        )
    return w


class _TemplateIndex:
    """Row of each template id in ``unique`` (ids in any order, each once).

    Ids are looked up in a table indexed by ``id - min(id)`` when their range is at most a few
    times their number (IJB's ids are small integers), else by binary search.
    """

    _TABLE_FACTOR = 64

    def __init__(self, unique: object, name: str = "unique_templates") -> None:
        self.name = name
        self.unique = _ids(unique, name)
        order = np.argsort(self.unique, kind="stable")
        ordered = self.unique[order]
        dup = np.flatnonzero(ordered[1:] == ordered[:-1])
        if dup.size:
            raise ValueError(f"{name} must be distinct, got template {ordered[dup[0]]} twice")
        self.sorted, self.order = ordered, order
        self.table = None
        if ordered.size:
            self.low = int(ordered[0])
            span = int(ordered[-1]) - self.low + 1
            if span <= self._TABLE_FACTOR * ordered.size + 1024:
                self.table = np.full(span, -1, dtype=np.int64)
                self.table[ordered - self.low] = order

    def rows(self, ids: object, name: str) -> np.ndarray:
        ids = _ids(ids, name)
        if self.table is not None:
            offset = ids - self.low
            inside = (offset >= 0) & (offset < self.table.shape[0])
            rows = self.table[np.where(inside, offset, 0)]
            missing = np.flatnonzero((rows < 0) | ~inside)
        else:
            pos = np.searchsorted(self.sorted, ids)
            np.minimum(pos, self.sorted.shape[0] - 1, out=pos)
            missing = np.flatnonzero(self.sorted[pos] != ids)
            rows = self.order[pos]
        if missing.size:
            i = int(missing[0])
            where = "has no image" if self.name == "templates" else f"is not in {self.name}"
            raise ValueError(
                f"{name} names template {ids[i]} (entry {i}), which {where}; {missing.size} "
                f"entr{'y' if missing.size == 1 else 'ies'} of {name} name such templates"
            )
        return rows


def _distinct(rows: np.ndarray, ids: np.ndarray, name: str) -> None:
    seen = np.zeros(int(rows.max()) + 1, dtype=np.int64)
    np.add.at(seen, rows, 1)
    if int(seen.max()) > 1:
        twice = ids[np.flatnonzero(seen[rows] > 1)[0]]
        raise ValueError(f"{name} must list each template once, got template {twice} twice")


# --------------------------------------------------------------------------- pooling


def _template_sums(
    x: torch.Tensor,
    t_row: np.ndarray,
    n_templates: int,
    scale: np.ndarray,
    normalize_images: bool,
    device: torch.device,
    chunk_rows: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``(T, D)`` sums of ``scale * image`` (unit images with ``normalize_images``) per template."""
    scale_t = torch.from_numpy(scale).to(dtype)
    out = torch.zeros((n_templates, x.shape[1]), dtype=dtype, device=device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        for start in range(0, x.shape[0], chunk_rows):
            chunk = x[start : start + chunk_rows].to(device=device, dtype=dtype)
            if normalize_images:  # exact directions at any finite norm; zero rows stay zero
                chunk = unit_rows(chunk)[0]
            # template = sum of scale * image over its images: one sparse (T x chunk) product
            rows = t_row[start : start + chunk_rows]
            order = np.argsort(rows, kind="stable")
            crow = np.concatenate(([0], np.cumsum(np.bincount(rows, minlength=n_templates))))
            sums = torch.sparse_csr_tensor(
                torch.from_numpy(crow),
                torch.from_numpy(order),
                scale_t[start : start + chunk_rows][torch.from_numpy(order)],
                size=(n_templates, chunk.shape[0]),
                check_invariants=False,
            ).to(device)
            with torch.autocast(device.type, enabled=False):
                out += sums @ chunk
    return out


def _pool(
    x: torch.Tensor,
    templates: np.ndarray,
    medias: np.ndarray,
    weights: np.ndarray | None,
    normalize_images: bool,
    device: torch.device,
    chunk_rows: int,
) -> tuple[torch.Tensor, np.ndarray]:
    unique, t_row = np.unique(templates, return_inverse=True)
    m_unique, m_row = np.unique(medias, return_inverse=True)
    # one group per (template, media): a media shared by two templates is averaged in each
    _, group, counts = np.unique(
        t_row.astype(np.int64) * m_unique.shape[0] + m_row, return_inverse=True, return_counts=True
    )
    scale = 1.0 / counts[group]  # mean over the media, then a plain sum over media
    if weights is not None:
        scale = scale * weights
    # in the features' dtype; again in float64 only when a sum overflows it (finite features
    # or weights whose sums pass float32's range)
    for dtype in dict.fromkeys((x.dtype, torch.float64)):
        out = _template_sums(
            x, t_row, unique.shape[0], scale, normalize_images, device, chunk_rows, dtype
        )
        if bool(torch.isfinite(out).all()):
            break
    else:
        raise ValueError(
            "features times weights overflow float64 when summed into templates; scale them "
            "down (only their directions matter)"
        )
    return _normalized(out, unique, "template").to(x.dtype), unique


def _normalized(feats: torch.Tensor, ids: np.ndarray, what: str) -> torch.Tensor:
    """Rows scaled to unit length (via the max-abs entry, so no finite row overflows)."""
    peak = feats.abs().amax(1)
    zero = (peak == 0).cpu().numpy()
    if zero.any():
        raise ValueError(
            f"{what} {ids[np.flatnonzero(zero)[0]]} has an all-zero feature (are all its "
            "weights 0?), so it has no direction to compare"
        )
    return unit_rows(feats)[0]


def template_features(
    features: Any,
    templates: Any,
    medias: Any,
    weights: Any = None,
    *,
    normalize_images: bool = False,
    device: torch.device | str | None = None,
    chunk_size: int = 1 << 17,
) -> tuple[torch.Tensor, np.ndarray]:
    """Pool per-image features into L2-normalised template features.

    ``template = normalize( sum over the template's medias of mean over the media's images of
    (w_i * f_i) )``, the InsightFace IJB convention (see the module notes).

    Parameters
    ----------
    features : torch.Tensor or numpy.ndarray, shape (N, D)
        One feature per image (float16/bfloat16 are widened to float32).
    templates, medias : array-like of int, shape (N,)
        Template id and media id of each image (e.g. from
        :func:`~metricface.data.read_ijb_media`). A media id shared by several templates is
        pooled separately in each.
    weights : array-like of float, shape (N,), optional
        Non-negative per-image weights (detector scores), multiplied into the features before
        pooling.
    normalize_images : bool
        L2-normalise each image feature before weighting (default: keep its norm, as the
        published IJB numbers do).
    device : torch.device or str, optional
        Where the sums run; defaults to the features' device.
    chunk_size : int
        Images processed per step (memory only).

    Returns
    -------
    template_feats : torch.Tensor, shape (T, D)
        Unit-length rows, in the features' dtype (float32 or float64), on ``device``.
    unique_templates : numpy.ndarray, shape (T,), int64
        Template id of each row, increasing.

    Raises
    ------
    ValueError
        Mismatched lengths, non-finite features (the message names the row), negative or
        non-finite weights, or a template whose pooled feature is zero.

    Examples
    --------
    >>> from metricface.metrics import template_features
    >>> feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 3.0], [2.0, 2.0]])
    >>> templates = [7, 7, 7, 9]
    >>> medias = [1, 2, 2, 5]          # template 7: a still and a two-frame video
    >>> pooled, ids = template_features(feats, templates, medias)
    >>> ids
    array([7, 9])
    >>> pooled                         # 7: [1, 0] + mean([0, 1], [0, 3]) = [1, 2], normalised
    tensor([[0.4472, 0.8944],
            [0.7071, 0.7071]])
    """
    x = _features(features)
    n = x.shape[0]
    templates_np, medias_np = _ids(templates, "templates", n), _ids(medias, "medias", n)
    w = _weights(weights, n)
    check_scalar(chunk_size, "chunk_size", low=1, integer=True)
    dev = x.device if device is None else torch.device(device)
    return _pool(x, templates_np, medias_np, w, bool(normalize_images), dev, chunk_size)


# --------------------------------------------------------------------------- 1:1 scores


def _blocks(block: np.ndarray, n_blocks: int):
    """Indices of the pairs in each block, in pair order: a mask per block when there are few
    blocks (a linear scan each), one stable sort otherwise."""
    if n_blocks <= 32:
        for b in range(n_blocks):
            yield np.flatnonzero(block == b)
        return
    order = np.argsort(block, kind="stable")
    bounds = np.concatenate(([0], np.cumsum(np.bincount(block, minlength=n_blocks))))
    for b in range(n_blocks):
        yield order[bounds[b] : bounds[b + 1]]


def _scores_by_rows(
    feats: torch.Tensor, r1: np.ndarray, r2: np.ndarray, chunk_size: int
) -> np.ndarray:
    """Dot products ``feats[r1[k]] . feats[r2[k]]`` of unit rows, blocked or gathered."""
    n_rows, dim = feats.shape
    n = r1.shape[0]
    out = torch.empty(n, dtype=feats.dtype, device=feats.device)
    u1 = np.flatnonzero(np.bincount(r1, minlength=n_rows))
    u2 = np.flatnonzero(np.bincount(r2, minlength=n_rows))
    if u1.shape[0] * u2.shape[0] <= _DENSE_FACTOR * n:
        local = np.empty(n_rows, dtype=np.int64)
        local[u1] = np.arange(u1.shape[0])
        l1 = local[r1]
        local[u2] = np.arange(u2.shape[0])
        l2 = torch.from_numpy(local[r2])
        step = max(1, chunk_size // u2.shape[0])
        n_blocks = -(-u1.shape[0] // step)
        right = feats[torch.from_numpy(u2).to(feats.device)]
        for b, idx in enumerate(_blocks(l1 // step, n_blocks)):
            if idx.size == 0:
                continue
            lo = b * step
            left = feats[torch.from_numpy(u1[lo : lo + step]).to(feats.device)]
            with torch.autocast(feats.device.type, enabled=False):
                block_scores = left @ right.T
            i = torch.from_numpy(l1[idx] - lo).to(feats.device)
            j = l2[torch.from_numpy(idx)].to(feats.device)
            out[torch.from_numpy(idx).to(feats.device)] = block_scores[i, j]
    else:
        step = max(1, chunk_size // dim)
        r1_t, r2_t = torch.from_numpy(r1), torch.from_numpy(r2)
        for start in range(0, n, step):
            a = feats[r1_t[start : start + step].to(feats.device)]
            b = feats[r2_t[start : start + step].to(feats.device)]
            out[start : start + step] = (a * b).sum(1)
    return out.cpu().numpy()


def _prepared(
    template_feats: Any,
    unique_templates: Any,
    device: torch.device | str | None,
    normalize: bool = True,
) -> tuple[torch.Tensor, _TemplateIndex]:
    feats = _features(template_feats, "template_feats")
    index = _TemplateIndex(unique_templates)
    if index.unique.shape[0] != feats.shape[0]:
        raise ValueError(
            f"unique_templates must name each row of template_feats ({feats.shape[0]}), got "
            f"{index.unique.shape[0]} ids"
        )
    dev = feats.device if device is None else torch.device(device)
    feats = feats.to(dev)
    return (_normalized(feats, index.unique, "template") if normalize else feats), index


def template_pair_scores(
    template_feats: Any,
    unique_templates: Any,
    t1: Any,
    t2: Any,
    *,
    device: torch.device | str | None = None,
    chunk_size: int = 1 << 24,
) -> np.ndarray:
    """Cosine similarity of template pairs (1:1 verification scores).

    Parameters
    ----------
    template_feats : torch.Tensor or numpy.ndarray, shape (T, D)
        Template features (normalised here; :func:`template_features` returns unit rows).
    unique_templates : array-like of int, shape (T,)
        Template id of each row (distinct, any order).
    t1, t2 : array-like of int, shape (P,)
        Template ids of the two sides of each pair.
    device : torch.device or str, optional
        Where the products run; defaults to the features' device.
    chunk_size : int
        Largest number of scores (or feature entries) held in one temporary block; memory
        only, results change by float rounding at most.

    Returns
    -------
    numpy.ndarray, shape (P,)
        Scores in ``[-1, 1]``, in pair order, in the features' dtype (float32 or float64).

    Raises
    ------
    ValueError
        ``t1`` and ``t2`` of different lengths, or a pair naming a template that has no row
        (the message names the template id), checked before any score is computed.
    """
    feats, index = _prepared(template_feats, unique_templates, device)
    r1, r2 = index.rows(t1, "t1"), index.rows(t2, "t2")
    if r1.shape[0] != r2.shape[0] or r1.shape[0] == 0:
        raise ValueError(
            f"t1 and t2 must be non-empty and of equal length, got {r1.shape[0]} and {r2.shape[0]}"
        )
    check_scalar(chunk_size, "chunk_size", low=1, integer=True)
    return _scores_by_rows(feats, r1, r2, chunk_size)


# --------------------------------------------------------------------------- 1:N


@dataclass(frozen=True)
class TemplateIdentification:
    """1:N template identification against one gallery (see :func:`template_identification`).

    Attributes
    ----------
    n_probes, n_mated : int
        Probe templates searched, and how many of them have their subject in the gallery.
    n_gallery, n_subjects : int
        Gallery templates and distinct gallery subjects.
    fpir_targets, tpir, thresholds, fpir : tuple of float
        TPIR (DIR at rank 1) at each FPIR target, the score threshold reaching it and the FPIR
        actually reached; NaN when every probe is mated (no non-mated search to count).
    ranks, rank_rates : tuple
        Rank ``k`` and the fraction of mated probes whose subject ranks ``<= k`` (CMC).
    cmc : numpy.ndarray
        The CMC of the mated probes up to the largest rank, shape ``(max(ranks),)``.
    open_set : OpenSetResult or None
        The full open-set result (its DIR/FPIR curve), ``None`` when every probe is mated.
    """

    n_probes: int
    n_mated: int
    n_gallery: int
    n_subjects: int
    fpir_targets: tuple[float, ...]
    tpir: tuple[float, ...]
    thresholds: tuple[float, ...]
    fpir: tuple[float, ...]
    ranks: tuple[int, ...]
    rank_rates: tuple[float, ...]
    cmc: np.ndarray = field(repr=False)
    open_set: OpenSetResult | None = field(repr=False, default=None)


def _check_ranks(ranks: Sequence[int]) -> tuple[int, ...]:
    values = tuple(ranks) if isinstance(ranks, Sequence) else (ranks,)
    if not values:
        raise ValueError("ranks must hold at least one rank, got none")
    for r in values:
        check_scalar(r, "ranks", low=1, integer=True)
    return tuple(int(r) for r in values)


def _fpir(fpir: Any) -> tuple[float, ...]:
    return tuple(_fpir_targets(fpir).tolist())


def _subject_rows(index: _TemplateIndex, sets: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows and subjects of a ``(templates, subjects)`` pair, each template listed once."""
    if not isinstance(sets, (tuple, list)) or len(sets) != 2:
        raise TypeError(f"{name} must be a (templates, subjects) pair, got {type(sets).__name__}")
    ids = _ids(sets[0], f"{name} templates")
    subjects = _ids(sets[1], f"{name} subjects", ids.shape[0])
    if ids.shape[0] == 0:
        raise ValueError(f"{name} must list at least one template, got none")
    rows = index.rows(ids, f"{name} templates")
    _distinct(rows, ids, f"{name} templates")
    return rows, subjects


def _identify(
    feats: torch.Tensor,
    gallery: tuple[np.ndarray, np.ndarray],
    probes: tuple[np.ndarray, np.ndarray],
    fpir: tuple[float, ...],
    ranks: tuple[int, ...],
    chunk_size: int,
    name: str,
) -> TemplateIdentification:
    (g_rows, g_subj), (p_rows, p_subj) = gallery, probes
    where = f"gallery {name}" if name else "the gallery"
    n_subjects = int(np.unique(g_subj).shape[0])
    if max(ranks) > n_subjects:
        raise ValueError(
            f"ranks must be at most the number of subjects of {where} ({n_subjects}), "
            f"got {max(ranks)}"
        )
    mated = np.isin(p_subj, g_subj)
    if not mated.any():
        raise ValueError(f"no probe's subject is enrolled in {where}")
    g_feats = feats[torch.from_numpy(g_rows).to(feats.device)]
    p_feats = feats[torch.from_numpy(p_rows).to(feats.device)]
    open_set = None
    nan = (math.nan,) * len(fpir)
    tpir, thresholds, reached = nan, nan, nan
    if not mated.all():
        open_set = open_set_identification(
            p_feats, p_subj, g_feats, g_subj, fpir=fpir, rank=1, chunk_size=chunk_size
        )
        tpir = tuple(open_set.dir.tolist())
        thresholds = tuple(open_set.thresholds.tolist())
        reached = tuple(open_set.fpir.tolist())
    mated_t = torch.from_numpy(mated).to(feats.device)
    cmc = cmc_curve(
        p_feats[mated_t], p_subj[mated], g_feats, g_subj, max_rank=max(ranks), chunk_size=chunk_size
    )
    return TemplateIdentification(
        n_probes=int(p_rows.shape[0]),
        n_mated=int(mated.sum()),
        n_gallery=int(g_rows.shape[0]),
        n_subjects=n_subjects,
        fpir_targets=fpir,
        tpir=tpir,
        thresholds=thresholds,
        fpir=reached,
        ranks=ranks,
        rank_rates=tuple(float(cmc[r - 1]) for r in ranks),
        cmc=cmc,
        open_set=open_set,
    )


def template_identification(
    template_feats: Any,
    unique_templates: Any,
    gallery_templates: Any,
    gallery_subjects: Any,
    probe_templates: Any,
    probe_subjects: Any,
    *,
    fpir: Any = (0.01, 0.1),
    ranks: Sequence[int] = (1, 5, 10),
    device: torch.device | str | None = None,
    chunk_size: int = 4096,
) -> TemplateIdentification:
    """1:N identification of probe templates in a gallery of templates (open set).

    Probes whose subject is not in the gallery are non-mated searches; TPIR at FPIR is
    :func:`~metricface.metrics.open_set_identification` at rank 1 and the rank-k rates are
    :func:`~metricface.metrics.cmc_curve` of the mated probes, both on the template features
    (cosine similarity; a subject with several gallery templates is scored by its best).

    Parameters
    ----------
    template_feats : torch.Tensor or numpy.ndarray, shape (T, D)
        Template features, e.g. from :func:`template_features`.
    unique_templates : array-like of int, shape (T,)
        Template id of each row.
    gallery_templates, gallery_subjects : array-like of int, shape (G,)
        Gallery templates (each once) and their subjects (e.g. IJB-C ``G1``).
    probe_templates, probe_subjects : array-like of int, shape (P,)
        Probe templates (each once) and their subjects.
    fpir : float or sequence of float
        FPIR targets in ``[0, 1]``.
    ranks : sequence of int
        Ranks of the CMC to report.
    device : torch.device or str, optional
        Where scores are computed.
    chunk_size : int
        Gallery rows scored per step (memory only).

    Returns
    -------
    TemplateIdentification

    Raises
    ------
    ValueError
        A template without a row (named), a template listed twice, mismatched lengths, no
        mated probe, or a rank above the number of gallery subjects.
    """
    feats, index = _prepared(template_feats, unique_templates, device, normalize=False)
    gallery = _subject_rows(index, (gallery_templates, gallery_subjects), "gallery")
    probes = _subject_rows(index, (probe_templates, probe_subjects), "probes")
    check_scalar(chunk_size, "chunk_size", low=1, integer=True)
    return _identify(feats, gallery, probes, _fpir(fpir), _check_ranks(ranks), chunk_size, "")


# --------------------------------------------------------------------------- report


def _roc_corners(report: VerificationReport) -> VerificationReport:
    """The report with only the bends of its ROC kept: the same piecewise-linear curve (and
    plot) in tens of thousands of points instead of one per distinct score (millions)."""
    op = OperatingPoints(
        report.thresholds,
        np.rint(report.tpr * report.n_genuine).astype(np.int64),
        np.rint(report.fpr * report.n_impostor).astype(np.int64),
        report.n_genuine,
        report.n_impostor,
    )
    op = _without_collinear(op)
    return dataclasses.replace(report, fpr=op.fpr, tpr=op.tpr, thresholds=op.thresholds)


@dataclass(frozen=True)
class IJBReport:
    """IJB-B/C results: the 1:1 TAR@FAR table and the 1:N rates per gallery (:func:`ijb_report`).

    Attributes
    ----------
    name : str
        Benchmark name, e.g. ``"IJBC"``.
    n_images, n_templates : int
        Images pooled and templates formed.
    verification : VerificationReport or None
        1:1 results (AUC, EER, TAR at each FAR target); its ROC keeps only the points where the
        curve bends (``roc_curve(..., drop_intermediate=True)``), so
        :func:`metricface.plots.plot_report` draws the exact curve. ``None`` without pairs.
    identification : dict of str to TemplateIdentification
        1:N results per gallery name, empty without galleries.
    scores : numpy.ndarray or None
        1:1 pair scores in pair-list order (save them to compare models later).
    """

    name: str
    n_images: int
    n_templates: int
    verification: VerificationReport | None
    identification: dict[str, TemplateIdentification]
    scores: np.ndarray | None = field(repr=False, default=None)

    def as_dict(self) -> dict[str, float]:
        """Flat metrics for logging: ``tar@far=1e-06``, ..., ``eer``, ``auc``, and per gallery
        (and their ``mean`` when there are several) ``G1/tpir@fpir=0.01``, ``G1/rank-1``, ...;
        fractions, not percentages."""
        out: dict[str, float] = {}
        if self.verification is not None:
            v = self.verification
            out.update({f"tar@far={a:g}": t for a, t in zip(v.far_targets, v.tar)})
            out.update(eer=v.eer, auc=v.auc)
        for name, heads, values in self._identification_rows():
            out.update({f"{name}/{h}": x for h, x in zip(heads, values)})
        return out

    def _identification_rows(self) -> list[tuple[str, list[str], list[float]]]:
        """(gallery, column names, rates) per gallery, plus their mean over galleries."""
        rows = []
        for name, r in self.identification.items():
            heads = [f"tpir@fpir={a:g}" for a in r.fpir_targets]
            heads += [f"rank-{k}" for k in r.ranks]
            rows.append((name, heads, [*r.tpir, *r.rank_rates]))
        if len(rows) > 1:
            rows.append(("mean", rows[0][1], np.mean([v for *_, v in rows], axis=0).tolist()))
        return rows

    def format(self) -> str:
        """The results as a plain-text table (rates in percent)."""
        lines = [f"{self.name}: {self.n_images} images in {self.n_templates} templates"]
        if self.verification is not None:
            v = self.verification
            lines.append(
                f"1:1 verification: {v.n_genuine + v.n_impostor} pairs ({v.n_genuine} genuine), "
                f"AUC {100 * v.auc:.2f} %, EER {100 * v.eer:.2f} %"
            )
            heads = [f"{a:g}" + ("*" if v.below_resolution(a) else "") for a in v.far_targets]
            width = max(7, *(len(h) for h in heads))
            lines.append("FAR      " + "  ".join(f"{h:>{width}}" for h in heads))
            lines.append("TAR (%)  " + "  ".join(f"{100 * t:>{width}.2f}" for t in v.tar))
            if any(v.below_resolution(a) for a in v.far_targets):
                lines.append("* below 1 / n_impostor: the TAR at zero false accepts")
        rows = self._identification_rows()
        if rows:
            heads = [h.upper() if h.startswith("tpir") else h for h in rows[0][1]]
            name_w = max(7, *(len(n) for n, *_ in rows))
            width = max(8, *(len(h) for h in heads))
            lines.append("1:N identification (%), mixed-media probes")
            lines.append(f"{'gallery':<{name_w}}  " + "  ".join(f"{h:>{width}}" for h in heads))
            for name, _, values in rows:
                cells = ["-" if math.isnan(x) else f"{100 * x:.2f}" for x in values]
                lines.append(f"{name:<{name_w}}  " + "  ".join(f"{c:>{width}}" for c in cells))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _check_pair_labels(labels: Any, n: int) -> np.ndarray:
    y = to_numpy(labels, "pair labels")
    if y.shape[0] != n:
        raise ValueError(f"pair labels must have one entry per pair ({n}), got {y.shape[0]}")
    if y.dtype != np.bool_:
        bad = np.flatnonzero((y != 0) & (y != 1))
        if bad.size:
            raise ValueError(f"pair labels must be 0 or 1, got {y[bad[0]]!r} at pair {bad[0]}")
        y = y == 1
    n_gen = int(y.sum())
    if n_gen in (0, n):
        raise ValueError(f"pairs must hold genuine and impostor pairs, got {n_gen} genuine of {n}")
    return y


def ijb_report(
    features: Any,
    templates: Any,
    medias: Any,
    *,
    weights: Any = None,
    normalize_images: bool = False,
    pairs: Any = None,
    galleries: Mapping[str, Any] | None = None,
    probes: Any = None,
    far_targets: Any = IJB_FAR_TARGETS,
    fpir: Any = (0.01, 0.1),
    ranks: Sequence[int] = (1, 5, 10),
    name: str = "IJB",
    device: torch.device | str | None = None,
    chunk_size: int = 1 << 24,
) -> IJBReport:
    """Score an IJB-style template benchmark from per-image features.

    Every input is checked (lengths, finite features, that every template a pair, gallery or
    probe list names has images) before the features are pooled; then templates are pooled
    once (:func:`template_features`) and scored for 1:1 verification
    (:func:`template_pair_scores`, :func:`~metricface.metrics.verification_report`) and for
    1:N identification in each gallery (:func:`template_identification`).

    Parameters
    ----------
    features : torch.Tensor or numpy.ndarray, shape (N, D)
        One feature per image, in the order of ``templates`` / ``medias``.
    templates, medias : array-like of int, shape (N,)
        Template and media id of each image.
    weights : array-like of float, shape (N,), optional
        Detector scores, multiplied into the features before pooling.
    normalize_images : bool
        L2-normalise image features before pooling (see :func:`template_features`).
    pairs : tuple of three arrays, optional
        1:1 pairs ``(t1, t2, labels)``: template ids of each side and labels (1 / ``True`` =
        same subject), e.g. an :class:`~metricface.data.IJBPairs`.
    galleries : mapping of str to tuple of two arrays, optional
        1:N galleries by name, each ``(templates, subjects)`` (e.g. ``{"G1": ..., "G2": ...}``
        of :class:`~metricface.data.IJBSubjects`); needs ``probes``.
    probes : tuple of two arrays, optional
        1:N probe templates and their subjects ``(templates, subjects)``, searched in every
        gallery.
    far_targets : sequence of float
        FAR targets of the 1:1 table (default 1e-6 ... 1e-1).
    fpir : float or sequence of float
        FPIR targets of the 1:N table.
    ranks : sequence of int
        CMC ranks of the 1:N table.
    name : str
        Benchmark name shown in the table.
    device : torch.device or str, optional
        Where pooling and scoring run; defaults to the features' device.
    chunk_size : int
        Largest temporary block, in entries (memory only).

    Returns
    -------
    IJBReport
        ``format()`` prints the table, ``as_dict()`` flattens it, ``plot()`` draws the ROC.

    Raises
    ------
    ValueError
        Any malformed input (see above), before any pooling or scoring.

    Examples
    --------
    Four templates of two subjects; templates 1 and 3 (subject 10) are close:

    >>> from metricface.metrics import ijb_report
    >>> feats = torch.tensor([[1.0, 0.1], [0.9, 0.0], [0.0, 1.0], [1.0, 0.2], [0.1, 1.0]])
    >>> report = ijb_report(
    ...     feats, templates=[1, 1, 2, 3, 4], medias=[1, 1, 2, 3, 4],
    ...     pairs=([1, 1, 2, 2], [3, 4, 3, 4], [1, 0, 0, 1]), far_targets=[0.5, 1.0],
    ...     name="toy")
    >>> print(report.format())
    toy: 5 images in 4 templates
    1:1 verification: 4 pairs (2 genuine), AUC 100.00 %, EER 0.00 %
    FAR          0.5        1
    TAR (%)   100.00   100.00
    """
    x = _features(features)
    n = x.shape[0]
    templates_np, medias_np = _ids(templates, "templates", n), _ids(medias, "medias", n)
    w = _weights(weights, n)
    check_scalar(chunk_size, "chunk_size", low=1, integer=True)
    index = _TemplateIndex(np.unique(templates_np), "templates")
    pair_rows = labels = None
    if pairs is not None:
        if not isinstance(pairs, (tuple, list)) or len(pairs) != 3:
            raise TypeError(f"pairs must be a (t1, t2, labels) triple, got {type(pairs).__name__}")
        r1, r2 = index.rows(pairs[0], "pairs t1"), index.rows(pairs[1], "pairs t2")
        if r1.shape[0] != r2.shape[0] or r1.shape[0] == 0:
            raise ValueError(
                f"pairs t1 and t2 must be non-empty and of equal length, got {r1.shape[0]} and "
                f"{r2.shape[0]}"
            )
        labels = _check_pair_labels(pairs[2], r1.shape[0])
        pair_rows = (r1, r2)
        targets, _ = check_far_targets(far_targets, "far_targets")
    galleries = dict(galleries or {})
    if bool(galleries) != (probes is not None):
        raise ValueError("galleries and probes must be given together for 1:N identification")
    sets, probe_set = {}, None
    if galleries:
        fpir_t, ranks_t = _fpir(fpir), _check_ranks(ranks)
        probe_set = _subject_rows(index, probes, "probes")
        for g_name, g in galleries.items():
            sets[str(g_name)] = _subject_rows(index, g, f"gallery {g_name}")
    dev = x.device if device is None else torch.device(device)
    feats, _ = _pool(x, templates_np, medias_np, w, bool(normalize_images), dev, 1 << 17)
    verification = scores = None
    if pair_rows is not None:
        unit = _normalized(feats, index.unique, "template")  # as template_pair_scores does
        scores = _scores_by_rows(unit, *pair_rows, chunk_size)
        verification = _roc_corners(verification_report(labels, scores, targets))
    identification = {
        g_name: _identify(feats, g, probe_set, fpir_t, ranks_t, 4096, g_name)
        for g_name, g in sets.items()
    }
    return IJBReport(
        name=str(name),
        n_images=n,
        n_templates=int(index.unique.shape[0]),
        verification=verification,
        identification=identification,
        scores=scores,
    )
