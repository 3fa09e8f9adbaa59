"""Verification metrics: ROC, DET, AUC, EER, TAR@FAR and the LFW k-fold accuracy.

Conventions (see the verification guide for the math):

* ``y_true`` is 1 for a genuine pair (same identity) and 0 for an impostor pair; ``y_score`` is a
  similarity, and a pair is accepted when ``score >= threshold``.
* The ROC is the piecewise-linear curve through the operating points ``(FAR(t), TAR(t))`` of every
  distinct score ``t``, plus ``(0, 0)`` (threshold ``+inf``) and ``(1, 1)``. Tied genuine and
  impostor scores therefore form one diagonal segment, the expected curve of random tie breaking.
* The EER is the FAR where that curve meets ``FRR = FAR``, found in closed form on the one
  segment where ``FRR - FAR`` changes sign.

Algorithm: one ``np.sort`` of all scores finds the distinct thresholds; the scores of the smaller
class are located among them with a binary search, and cumulative sums give the genuine and
impostor counts at every threshold. Everything after the sort is ``O(n)``. All metrics are derived
from these integer counts (:class:`OperatingPoints`), which the histogram module builds too.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from metricface._validation import check_scalar
from metricface.metrics._checks import check_binary_scores, check_far_targets, to_numpy

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
    """Counts at every distinct score from validated bool ``labels`` and float64 ``scores``."""
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
    # d scaled by n_pos * n_neg, in float64: exact while n_pos * n_neg < 2**53; beyond that,
    # rounding can only move the crossing by a relative 1e-16 (d is continuous along the curve).
    d = (op.n_pos - op.tps) * float(op.n_neg) - op.fps * float(op.n_pos)
    k = int(np.searchsorted(-d, 0.0, side="left"))
    da, db = d[k - 1], d[k]
    return k, float(da / (da - db))


def _lerp(a: float, b: float, s: float) -> float:
    """``(1 - s) a + s b``: exact at both ends and free of overflow for any finite ``a, b``."""
    return float((1.0 - s) * a + s * b)


def eer_from_points(op: OperatingPoints) -> tuple[float, float]:
    """EER and its interpolated score threshold (see :func:`equal_error_rate`)."""
    k, s = eer_segment(op)
    eer = _lerp(op.fps[k - 1] / op.n_neg, op.fps[k] / op.n_neg, s)
    ta, tb = float(op.thresholds[k - 1]), float(op.thresholds[k])
    threshold = tb if not math.isfinite(ta) else _lerp(ta, tb, s)
    return eer, threshold


def auc_from_points(op: OperatingPoints) -> float:
    """Trapezoidal area under the ROC, computed from counts (the Mann-Whitney statistic)."""
    dfp = np.diff(op.fps).astype(np.float64)
    heights = (op.tps[1:] + op.tps[:-1]).astype(np.float64)
    return float(np.dot(dfp, heights) / (2.0 * op.n_pos * op.n_neg))


def tar_from_points(
    op: OperatingPoints, targets: np.ndarray, name: str = "far"
) -> tuple[np.ndarray, np.ndarray]:
    """Largest TAR over thresholds with ``FAR <= target``, and those thresholds."""
    low = targets[targets * op.n_neg < 1]
    if low.size:
        warnings.warn(
            f"{name} target(s) {low.tolist()} below 1 / n_impostor = {1 / op.n_neg:.3g}: "
            "with this few impostor pairs the only operating point that meets the target is "
            "FAR = 0, so TAR@FAR is the TAR at zero false accepts",
            UserWarning,
            stacklevel=3,
        )
    fpr = op.fpr
    idx = np.searchsorted(fpr, targets, side="right") - 1
    return op.tps[idx] / op.n_pos, op.thresholds[idx]


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

    Parameters
    ----------
    y_true, y_score : array-like of shape (n,)
        Labels (1 genuine, 0 impostor) and similarity scores.
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
    eer, threshold = eer_from_points(_points(y_true, y_score))
    return (eer, threshold) if return_threshold else eer


def tar_at_far(y_true: Any, y_score: Any, far: Any, return_threshold: bool = False) -> Any:
    """True accept rate at a false accept rate target: ``max TAR(t)`` over ``FAR(t) <= far``.

    Only real operating points are used (no interpolation), so the returned threshold achieves
    the reported TAR with a FAR not above the target. Warns when ``far * n_impostor < 1``.

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
    tar, thr = tar_from_points(_points(y_true, y_score), targets)
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
