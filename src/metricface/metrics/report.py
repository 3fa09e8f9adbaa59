"""A one-call verification summary: AUC, EER and TAR at several FARs, printable and plottable.

All figures come from one sort of the scores (the operating points of
:mod:`metricface.metrics.verification`). Unlike :func:`~metricface.metrics.tar_at_far`, the
report does not warn about FAR targets below ``1 / n_impostor``: it flags those rows in its
table instead, so that a default report on a small protocol stays readable.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metricface.metrics._checks import check_binary_scores, check_far_targets
from metricface.metrics.verification import (
    auc_from_points,
    eer_from_points,
    operating_points,
    tar_from_points,
)

__all__ = ["VerificationReport", "verification_report"]


@dataclass(frozen=True)
class VerificationReport:
    """Verification metrics of one score set (see :func:`verification_report`).

    Attributes
    ----------
    n_genuine, n_impostor : int
        Number of genuine / impostor pairs.
    auc : float
        Area under the ROC.
    eer, eer_threshold : float
        Equal error rate and its interpolated score threshold.
    far_targets, tar, tar_thresholds : tuple of float
        TAR@FAR for each target, and the thresholds achieving it.
    fpr, tpr, thresholds : numpy.ndarray of shape (m + 1,)
        The full ROC, as :func:`~metricface.metrics.roc_curve` returns it (used by :meth:`plot`).
    """

    n_genuine: int
    n_impostor: int
    auc: float
    eer: float
    eer_threshold: float
    far_targets: tuple[float, ...]
    tar: tuple[float, ...]
    tar_thresholds: tuple[float, ...]
    fpr: np.ndarray = field(repr=False)
    tpr: np.ndarray = field(repr=False)
    thresholds: np.ndarray = field(repr=False)

    def below_resolution(self, far: float) -> bool:
        """Whether ``far * n_impostor < 1`` (only FAR = 0 meets that target)."""
        return far * self.n_impostor < 1

    def as_dict(self) -> dict[str, float]:
        """Scalar metrics keyed ``auc``, ``eer``, ``eer_threshold`` and ``tar@far=<a>``."""
        out = {"auc": self.auc, "eer": self.eer, "eer_threshold": self.eer_threshold}
        out.update({f"tar@far={a:g}": t for a, t in zip(self.far_targets, self.tar)})
        return out

    def __str__(self) -> str:
        rows = [
            ("AUC", f"{self.auc:.6f}", ""),
            ("EER", f"{100 * self.eer:.4f} %", f"{self.eer_threshold:.6g}"),
        ]
        flagged = False
        for a, t, th in zip(self.far_targets, self.tar, self.tar_thresholds):
            mark = " *" if self.below_resolution(a) else ""
            flagged = flagged or bool(mark)
            rows.append((f"TAR @ FAR={a:g}{mark}", f"{100 * t:.4f} %", f"{th:.6g}"))
        w = max(len(r[0]) for r in rows)
        lines = [
            f"Verification: {self.n_genuine} genuine, {self.n_impostor} impostor pairs",
            f"{'metric':<{w}}  {'value':>10}  {'threshold':>10}",
            "-" * (w + 24),
        ]
        lines += [f"{m:<{w}}  {v:>10}  {th:>10}" for m, v, th in rows]
        if flagged:
            lines.append("* below 1 / n_impostor: the TAR at zero false accepts")
        return "\n".join(line.rstrip() for line in lines)

    def plot(self, kind: str = "roc", *, ax: Any = None, label: str | None = None) -> Any:
        """Plot the ROC (``kind="roc"``) or DET (``kind="det"``) curve with the EER marked.

        Parameters
        ----------
        kind : {"roc", "det"}
            Which curve.
        ax : matplotlib.axes.Axes, optional
            Axes to draw into; a new figure is created when omitted.
        label : str, optional
            Legend label of the curve.

        Returns
        -------
        matplotlib.axes.Axes
        """
        from metricface import plots  # plots imports matplotlib lazily itself

        if kind not in ("roc", "det"):
            raise ValueError(f"kind must be 'roc' or 'det', got {kind!r}")
        ax = plots.axes_or_new(ax, f"plot a {kind.upper()} curve")
        if kind == "roc":
            return plots.draw_roc(ax, self.fpr, self.tpr, self.eer, self.n_impostor, label)
        fnr = 1 - self.tpr
        return plots.draw_det(ax, self.fpr, fnr, self.eer, self.n_impostor, self.n_genuine, label)


def verification_report(
    y_true: Any, y_score: Any, far_targets: Any = (1e-4, 1e-3, 1e-2, 1e-1)
) -> VerificationReport:
    """Compute AUC, EER and TAR@FAR in one pass over the sorted scores.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        1 / ``True`` for genuine pairs, 0 / ``False`` for impostor pairs.
    y_score : array-like of shape (n,)
        Similarity scores (accept when ``score >= threshold``).
    far_targets : sequence of float
        FAR targets in ``(0, 1]`` for the TAR@FAR rows.

    Returns
    -------
    VerificationReport
        Prints as a table; ``.plot()`` draws the ROC or DET curve.
    """
    targets, _ = check_far_targets(far_targets, "far_targets")
    op = operating_points(*check_binary_scores(y_true, y_score))
    eer, eer_threshold = eer_from_points(op)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # flagged in the table instead
        tar, tar_thr = tar_from_points(op, targets, "far_targets")
    return VerificationReport(
        n_genuine=op.n_pos,
        n_impostor=op.n_neg,
        auc=auc_from_points(op),
        eer=eer,
        eer_threshold=eer_threshold,
        far_targets=tuple(targets.tolist()),
        tar=tuple(tar.tolist()),
        tar_thresholds=tuple(tar_thr.tolist()),
        fpr=op.fpr,
        tpr=op.tpr,
        thresholds=op.thresholds,
    )
