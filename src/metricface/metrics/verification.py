"""Verification metrics: ROC, DET, AUC, EER, TAR@FAR and the LFW k-fold accuracy.

Conventions (see the verification guide for the math):

* ``y_true`` is 1 for a genuine pair (same identity) and 0 for an impostor pair; ``y_score`` is a
  similarity, and a pair is accepted when ``score >= threshold``.
* The ROC is the piecewise-linear curve through the operating points ``(FAR(t), TAR(t))`` of every
  distinct score ``t``, plus ``(0, 0)`` (threshold ``+inf``) and ``(1, 1)``. Tied genuine and
  impostor scores therefore form one diagonal segment, the expected curve of random tie breaking.
* The EER is the FAR where that curve meets ``FRR = FAR``, found in closed form on the one
  segment where ``FRR - FAR`` changes sign.

Algorithms:

* Curves (:func:`roc_curve`, :func:`det_curve`, :func:`roc_auc`, k-fold accuracy): one
  ``np.sort`` of all scores finds the distinct thresholds; the scores of the smaller class are
  located among them with a binary search, and cumulative sums give the genuine and impostor
  counts at every threshold (:class:`OperatingPoints`, which the histogram module builds too).
* :func:`equal_error_rate` and :func:`tar_at_far` need the counts at only two adjacent
  thresholds, which a radix selection on the scores' bit patterns finds in ``O(n)`` without a
  sort, on the scores' own device (histograms of the top bits of order-preserving integer keys,
  refined inside one bucket). Both algorithms count exactly, in integers, and give
  bit-identical results (the tests check).

Integer scores keep their exact order (an int64 above ``2**53`` is never rounded to a float);
returned thresholds are floats.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from metricface._validation import check_scalar
from metricface.metrics._checks import (
    check_binary_arrays,
    check_binary_scores,
    check_far_targets,
    to_numpy,
)
from metricface.metrics._threshold_search import ThresholdSearch

__all__ = [
    "det_curve",
    "equal_error_rate",
    "kfold_verification_accuracy",
    "roc_auc",
    "roc_curve",
    "tar_at_far",
]


@dataclass(frozen=True)
class OperatingPoints:
    """Cumulative counts at every threshold, highest threshold first.

    ``thresholds[0]`` is ``+inf`` (accept nothing); ``tps[k]`` / ``fps[k]`` count the genuine /
    impostor scores ``>= thresholds[k]``. Counts are int64 (or float64 for histograms whose
    totals exceed what int64 products allow), non-decreasing, ending at ``n_pos`` / ``n_neg``.
    """

    thresholds: np.ndarray
    tps: np.ndarray
    fps: np.ndarray
    n_pos: int
    n_neg: int

    @property
    def tpr(self) -> np.ndarray:
        return self.tps / self.n_pos

    @property
    def fpr(self) -> np.ndarray:
        return self.fps / self.n_neg


def operating_points(labels: np.ndarray, scores: np.ndarray) -> OperatingPoints:
    """Counts at every distinct score from validated bool ``labels`` and float64 or int64
    ``scores`` (thresholds are returned as float64)."""
    n = scores.shape[0]
    ordered = np.sort(scores)  # ascending; one sort of everything
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    starts = np.flatnonzero(first)  # index of the first copy of each distinct value
    distinct = ordered[starts]
    n_pos = int(np.count_nonzero(labels))
    n_neg = n - n_pos
    # Locate the smaller class among the distinct values: O(m log u) with m <= n / 2.
    minority = labels if n_pos <= n_neg else ~labels
    where = np.searchsorted(distinct, np.sort(scores[minority]))
    per_value = np.bincount(where, minlength=distinct.shape[0])
    # Walk from the highest threshold down: count of scores >= distinct[j].
    ge_all = (n - starts)[::-1]
    ge_min = np.cumsum(per_value[::-1])
    if n_pos <= n_neg:
        tps, fps = ge_min, ge_all - ge_min
    else:
        fps, tps = ge_min, ge_all - ge_min
    zero = np.zeros(1, dtype=np.int64)
    return OperatingPoints(
        thresholds=np.concatenate(([np.inf], distinct[::-1])),
        tps=np.concatenate((zero, tps)),
        fps=np.concatenate((zero, fps)),
        n_pos=n_pos,
        n_neg=n_neg,
    )


def _points(y_true: Any, y_score: Any) -> OperatingPoints:
    return operating_points(*check_binary_scores(y_true, y_score))


# ---------------------------------------------------------------------------------------------
# Metrics from operating points (shared with the histogram module)
# ---------------------------------------------------------------------------------------------


def eer_segment(op: OperatingPoints) -> tuple[int, float]:
    """Index ``k`` and fraction ``s`` such that the EER lies at ``s`` along segment ``k-1 -> k``.

    ``d = FRR - FAR`` is non-increasing along the curve, ``+1`` at ``(0, 0)`` and ``-1`` at
    ``(1, 1)``; ``k`` is the first point with ``d <= 0``.
    """
    n_pos, n_neg = op.n_pos, op.n_neg
    if op.tps.dtype.kind in "iu" and n_pos * n_neg < 2**62:
        d = (n_pos - op.tps) * n_neg - op.fps * n_pos  # d scaled by n_pos * n_neg, exact
    else:  # float64 counts (huge histograms): rounding moves the crossing by ~1e-16
        d = (n_pos - op.tps) * float(n_neg) - op.fps * float(n_pos)
    k = int(np.searchsorted(-d, 0, side="left"))
    da, db = d[k - 1], d[k]
    return k, float(da / (da - db))


def _lerp(a: float, b: float, s: float) -> float:
    """``(1 - s) a + s b``: exact at both ends and free of overflow for any finite ``a, b``."""
    return float((1.0 - s) * a + s * b)


def eer_on_segment(
    tp_a: int, fp_a: int, tp_b: int, fp_b: int, n_pos: int, n_neg: int, t_a: float, t_b: float
) -> tuple[float, float]:
    """EER and its threshold on the ROC segment ``a -> b`` (thresholds ``t_a > t_b``) where
    ``FRR - FAR`` goes from positive to ``<= 0``.

    The counts are integers, so the crossing is a rational number, computed with one rounding:
    the EER is exactly 0.5 on a diagonal ROC, for instance, and mirrored problems give the same
    float. The threshold is interpolated between ``t_a`` and ``t_b`` (``t_b`` when ``t_a`` is
    ``+inf``, the ``(0, 0)`` point).
    """
    tp_a, fp_a, tp_b, fp_b = int(tp_a), int(fp_a), int(tp_b), int(fp_b)
    da = (n_pos - tp_a) * n_neg - fp_a * n_pos  # (FRR - FAR) * n_pos * n_neg, > 0
    db = (n_pos - tp_b) * n_neg - fp_b * n_pos  # <= 0
    den = da - db
    # FAR at the crossing: (fp_a + s (fp_b - fp_a)) / n_neg with s = da / den
    eer = (fp_a * den + da * (fp_b - fp_a)) / (n_neg * den)  # exact integers, one rounding
    s = da / den
    threshold = float(t_b) if not math.isfinite(t_a) else _lerp(t_a, t_b, s)
    return eer, threshold


def eer_from_points(op: OperatingPoints) -> tuple[float, float]:
    """EER and its interpolated score threshold (see :func:`equal_error_rate`)."""
    k, _ = eer_segment(op)
    return eer_on_segment(
        op.tps[k - 1],
        op.fps[k - 1],
        op.tps[k],
        op.fps[k],
        op.n_pos,
        op.n_neg,
        float(op.thresholds[k - 1]),
        float(op.thresholds[k]),
    )


def eer_from_search(search: ThresholdSearch, want_threshold: bool = True) -> tuple[float, float]:
    """EER and its threshold in ``O(n)``: the same numbers as :func:`eer_from_points`.

    The segment is the one between the highest score ``lo`` with ``FRR(lo) <= FAR(lo)``,
    i.e. ``#(genuine < lo) * n_neg <= #(impostor >= lo) * n_pos``, and the next score above it.
    Without ``want_threshold`` the returned threshold is not interpolated (one pass saved).
    """
    n_pos, n_neg = search.n_pos, search.n_neg
    if n_pos * n_neg < 2**62:
        pred = lambda g, i: g * n_neg - i * n_pos <= 0  # noqa: E731  (exact in int64)
    else:
        pred = lambda g, i: g * float(n_neg) - i * float(n_pos) <= 0  # noqa: E731
    bd = search.boundary(pred, want_hi=want_threshold)
    tp_b, fp_b = n_pos - bd.g_below, bd.i_above + bd.i_at  # at lo
    tp_a, fp_a = tp_b - bd.g_at, bd.i_above  # at hi, the next score up
    t_a = bd.hi if bd.hi is not None else math.inf
    return eer_on_segment(tp_a, fp_a, tp_b, fp_b, n_pos, n_neg, t_a, bd.lo)


def auc_from_points(op: OperatingPoints) -> float:
    """Trapezoidal area under the ROC, computed from counts (the Mann-Whitney statistic)."""
    dfp = np.diff(op.fps).astype(np.float64)
    heights = (op.tps[1:] + op.tps[:-1]).astype(np.float64)
    return float(np.dot(dfp, heights) / (2.0 * op.n_pos * op.n_neg))


def _warn_below_resolution(targets: np.ndarray, n_neg: int, name: str) -> None:
    low = targets[targets * n_neg < 1]
    if low.size:
        warnings.warn(
            f"{name} target(s) {low.tolist()} below 1 / n_impostor = {1 / n_neg:.3g}: "
            "with this few impostor pairs the only operating point that meets the target is "
            "FAR = 0, so TAR@FAR is the TAR at zero false accepts",
            UserWarning,
            stacklevel=4,
        )


def tar_from_points(
    op: OperatingPoints, targets: np.ndarray, name: str = "far"
) -> tuple[np.ndarray, np.ndarray]:
    """Largest TAR over thresholds with ``FAR <= target``, and those thresholds."""
    _warn_below_resolution(targets, op.n_neg, name)
    fpr = op.fpr
    idx = np.searchsorted(fpr, targets, side="right") - 1
    return op.tps[idx] / op.n_pos, op.thresholds[idx]


def _max_false_accepts(target: float, n_neg: int) -> int:
    """Largest count ``c`` with ``c / n_neg <= target`` in float64, as :attr:`OperatingPoints.fpr`
    compares it."""
    c = min(n_neg, int(target * n_neg))
    while c < n_neg and (c + 1) / n_neg <= target:
        c += 1
    while c > 0 and c / n_neg > target:
        c -= 1
    return c


def tar_from_search(
    search: ThresholdSearch,
    targets: np.ndarray,
    name: str = "far",
    want_threshold: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`tar_from_points` in ``O(n)`` per target, with the same numbers.

    With at most ``c`` false accepts allowed, the best threshold is the lowest score above
    ``lo``, the highest score with ``#(impostor >= lo) > c``. Without ``want_threshold`` the
    thresholds are NaN (one pass saved per target).
    """
    _warn_below_resolution(targets, search.n_neg, name)
    n_pos, n_neg = search.n_pos, search.n_neg
    found: dict[int, tuple[float, float]] = {}
    for target in targets.tolist():
        c = _max_false_accepts(target, n_neg)
        if c in found:
            continue
        if c >= n_neg:  # accept everything
            found[c] = (n_pos / n_pos, search.min_score)
            continue
        bd = search.boundary(lambda g, i, c=c: i > c, want_hi=want_threshold)
        tar = (n_pos - bd.g_below - bd.g_at) / n_pos
        found[c] = (tar, bd.hi if bd.hi is not None else math.nan)
    rows = [found[_max_false_accepts(t, n_neg)] for t in targets.tolist()]
    return np.array([r[0] for r in rows]), np.array([r[1] for r in rows])


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def _without_collinear(op: OperatingPoints) -> OperatingPoints:
    """Drop interior points on the straight line through their two neighbours.

    Exact test on the integer counts (cross product of consecutive steps); every segment has
    positive length, so runs of collinear points lie on one line and are dropped together.
    """
    dfp, dtp = np.diff(op.fps), np.diff(op.tps)
    bends = dfp[:-1] * dtp[1:] != dfp[1:] * dtp[:-1]
    keep = np.concatenate(([True], bends, [True]))
    return OperatingPoints(op.thresholds[keep], op.tps[keep], op.fps[keep], op.n_pos, op.n_neg)


def roc_curve(
    y_true: Any, y_score: Any, *, drop_intermediate: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Receiver operating characteristic at every distinct score.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        1 / ``True`` for genuine pairs, 0 / ``False`` for impostor pairs. Numpy arrays, lists
        and torch tensors (any device) are accepted.
    y_score : array-like of shape (n,)
        Similarity scores; a pair is accepted when ``score >= threshold``.
    drop_intermediate : bool
        Drop the operating points that lie on the straight line between their neighbours. The
        piecewise-linear curve, and every metric derived from it, is unchanged; fewer points
        are returned (at least the ones ``sklearn.metrics.roc_curve`` drops are dropped).

    Returns
    -------
    fpr : numpy.ndarray of shape (m + 1,)
        False accept rate ``FAR(t)`` (impostor scores ``>= t`` over impostor pairs),
        non-decreasing.
    tpr : numpy.ndarray of shape (m + 1,)
        True accept rate ``TAR(t)``, non-decreasing.
    thresholds : numpy.ndarray of shape (m + 1,)
        ``+inf`` (the ``(0, 0)`` point) followed by the ``m`` distinct scores in decreasing
        order. Identical to ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.
    """
    op = _points(y_true, y_score)
    if drop_intermediate:
        op = _without_collinear(op)
    return op.fpr, op.tpr, op.thresholds


def det_curve(
    y_true: Any, y_score: Any, *, drop_intermediate: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detection error trade-off: false accept vs false reject rate at every distinct score.

    Parameters
    ----------
    y_true, y_score : array-like of shape (n,)
        Labels (1 genuine, 0 impostor) and similarity scores.
    drop_intermediate : bool
        As in :func:`roc_curve`.

    Returns
    -------
    fpr : numpy.ndarray of shape (m + 1,)
        False accept rate, non-decreasing (the points of :func:`roc_curve`).
    fnr : numpy.ndarray of shape (m + 1,)
        False reject rate ``FRR(t) = 1 - TAR(t)``, non-increasing.
    thresholds : numpy.ndarray of shape (m + 1,)
        ``+inf`` followed by the distinct scores in decreasing order.
    """
    op = _points(y_true, y_score)
    if drop_intermediate:
        op = _without_collinear(op)
    return op.fpr, (op.n_pos - op.tps) / op.n_pos, op.thresholds


def roc_auc(y_true: Any, y_score: Any) -> float:
    """Area under the ROC curve.

    Equal to ``(#(g > i) + #(g == i) / 2) / (n_genuine * n_impostor)`` over all genuine /
    impostor score pairs ``(g, i)``, and to ``sklearn.metrics.roc_auc_score``.

    Returns
    -------
    float
        AUC in ``[0, 1]``.
    """
    return auc_from_points(_points(y_true, y_score))


def equal_error_rate(
    y_true: Any, y_score: Any, return_threshold: bool = False
) -> float | tuple[float, float]:
    """Equal error rate: the FAR where the piecewise-linear ROC meets ``FRR = FAR``.

    Computed in closed form on the one ROC segment where ``FRR - FAR`` changes sign; equal to
    ``brentq(lambda x: 1 - x - np.interp(x, fpr, tpr), 0, 1)`` over the ROC. Invariant under
    strictly increasing transforms of the scores and never increased by raising a genuine score.
    The crossing is computed exactly from integer counts (one rounding at the end): a diagonal
    ROC gives exactly 0.5.

    ``O(n)``, without sorting the scores: the segment is found by a radix selection on the
    scores' bit patterns (see :mod:`metricface.metrics.verification`), on the scores' device
    for tensors on an accelerator (no copy to the host). The result is identical to reading
    the segment off :func:`roc_curve`.

    Parameters
    ----------
    y_true, y_score : array-like of shape (n,)
        Labels (1 genuine, 0 impostor) and similarity scores (floating-point of any precision,
        or integers, whose order is exact even above ``2**53``).
    return_threshold : bool
        Also return the score threshold linearly interpolated between the two operating points
        of that segment (the upper one's score when the segment starts at ``(0, 0)``).

    Returns
    -------
    eer : float
        In ``[0, 1]``; at most 0.5 exactly when the ROC passes on or above ``(0.5, 0.5)``, e.g.
        whenever ``TAR(t) >= FAR(t)`` at every threshold (a high AUC alone does not imply it).
    threshold : float
        Only when ``return_threshold=True``.
    """
    search = ThresholdSearch(*check_binary_arrays(y_true, y_score))
    eer, threshold = eer_from_search(search, want_threshold=return_threshold)
    return (eer, threshold) if return_threshold else eer


def tar_at_far(y_true: Any, y_score: Any, far: Any, return_threshold: bool = False) -> Any:
    """True accept rate at a false accept rate target: ``max TAR(t)`` over ``FAR(t) <= far``.

    Only real operating points are used (no interpolation), so the returned threshold achieves
    the reported TAR with a FAR not above the target. Warns when ``far * n_impostor < 1``.
    ``O(n)`` per target without sorting the scores, as :func:`equal_error_rate`; identical to
    reading the operating points off :func:`roc_curve`.

    Parameters
    ----------
    y_true, y_score : array-like of shape (n,)
        Labels (1 genuine, 0 impostor) and similarity scores.
    far : float or array-like of shape (k,)
        Target(s) in ``(0, 1]``.
    return_threshold : bool
        Also return the threshold(s); ``+inf`` when only "accept nothing" meets the target.

    Returns
    -------
    tar : float or numpy.ndarray of shape (k,)
        Matching the shape of ``far``.
    threshold : float or numpy.ndarray of shape (k,)
        Only when ``return_threshold=True``.
    """
    targets, scalar = check_far_targets(far)
    search = ThresholdSearch(*check_binary_arrays(y_true, y_score))
    tar, thr = tar_from_search(search, targets, want_threshold=return_threshold)
    if scalar:
        tar, thr = float(tar[0]), float(thr[0])
    return (tar, thr) if return_threshold else tar


def best_accuracy_threshold(op: OperatingPoints) -> tuple[float, float]:
    """Threshold maximising accuracy on the data behind ``op``, and that accuracy.

    Among equally accurate operating points the highest threshold wins; the returned threshold
    is the midpoint between that score and the next lower distinct score, so the accepted set
    of this data is unchanged while held-out scores get a margin on both sides. When accepting
    everything is best the threshold is ``-inf`` (held-out scores below this data's lowest are
    accepted too), as rejecting everything gives ``+inf``.
    """
    correct = op.tps + (op.n_neg - op.fps)
    j = int(np.argmax(correct))
    t = op.thresholds
    if j == t.shape[0] - 1:
        threshold = -math.inf
    elif j == 0:
        threshold = float(t[j])
    else:
        mid = 0.5 * t[j] + 0.5 * t[j + 1]
        threshold = float(mid if mid > t[j + 1] else t[j])
    return threshold, float(correct[j] / (op.n_pos + op.n_neg))


def kfold_verification_accuracy(
    y_true: Any,
    y_score: Any,
    n_folds: int = 10,
    *,
    folds: Any = None,
    return_thresholds: bool = False,
) -> tuple[float, float] | tuple[float, float, np.ndarray]:
    """Accuracy under the LFW k-fold protocol.

    For each fold, the threshold that maximises accuracy on the other ``n_folds - 1`` folds is
    chosen (exactly, over every distinct score, see below) and the accuracy of accepting
    ``score >= threshold`` is measured on the held-out fold.

    Parameters
    ----------
    y_true, y_score : array-like of shape (n,)
        Labels (1 genuine, 0 impostor) and similarity scores, in protocol order.
    n_folds : int
        Number of folds (10 for LFW). Ignored when ``folds`` is given.
    folds : array-like of shape (n,), optional
        Fold id of every pair. By default the pairs are cut, in order, into ``n_folds``
        contiguous folds of (nearly) equal size, as LFW's ``pairs.txt`` is laid out.
    return_thresholds : bool
        Also return the threshold chosen for each fold.

    Returns
    -------
    mean : float
        Mean held-out accuracy over folds.
    std : float
        Population standard deviation (``ddof=0``) of the per-fold accuracies, the "+-" figure
        common face-recognition evaluation code prints. The LFW protocol's standard error of
        the mean is ``np.std(accs, ddof=1) / sqrt(n_folds)``, a different number.
    thresholds : numpy.ndarray of shape (n_folds,)
        Only when ``return_thresholds=True``. The midpoint between the best training score and
        the next lower one (``+inf`` if rejecting every pair is best, ``-inf`` if accepting
        every pair is).
    """
    labels, scores = check_binary_scores(y_true, y_score)
    beyond = (scores > 2**53) | (scores < -(2**53)) if scores.dtype.kind == "i" else None
    if beyond is not None and beyond.any():
        i = int(np.argmax(beyond))
        raise ValueError(
            "y_score must be within +-2**53 for kfold_verification_accuracy, whose thresholds "
            f"are float64 midpoints between scores, got {int(scores[i])} at index {i}"
        )
    n = scores.shape[0]
    if folds is None:
        check_scalar(n_folds, "n_folds", low=2, high=n, integer=True)
        fold_id = np.repeat(
            np.arange(n_folds), [len(c) for c in np.array_split(np.arange(n), n_folds)]
        )
    else:
        fold_id = to_numpy(folds, "folds")
        if fold_id.dtype.kind not in "iu":
            raise TypeError(f"folds must hold integer fold ids, got dtype {fold_id.dtype}")
        if fold_id.shape[0] != n:
            raise ValueError(f"folds must have one id per pair ({n}), got {fold_id.shape[0]}")
    ids = np.unique(fold_id)
    if ids.shape[0] < 2:
        raise ValueError(f"folds must contain at least 2 distinct fold ids, got {ids.tolist()}")
    accs = np.empty(ids.shape[0])
    thresholds = np.empty(ids.shape[0])
    for f, fid in enumerate(ids):
        test = fold_id == fid
        train = ~test
        threshold, _ = best_accuracy_threshold(operating_points(labels[train], scores[train]))
        accepted = scores[test] >= threshold
        accs[f] = np.mean(accepted == labels[test])
        thresholds[f] = threshold
    mean, std = float(accs.mean()), float(accs.std())
    return (mean, std, thresholds) if return_thresholds else (mean, std)
