"""A one-call verification summary: AUC, EER and TAR at several FARs, printable and plottable.

All figures come from one sort of the scores (the operating points of
:mod:`metricface.metrics.verification`). Unlike :func:`~metricface.metrics.tar_at_far`, the
report does not warn about FAR targets below ``1 / n_impostor``: it flags those rows in its
table instead, so that a default report on a small protocol stays readable. It does warn when
the scores rank impostor pairs above genuine ones (AUC below 0.5 and EER above 0.5), the mark of
distances passed where similarities are expected.

:func:`verification_report_from_embeddings` scores every pair of a set of embeddings exactly,
filling the ``N (N - 1) / 2`` scores from blocks of the similarity matrix, so that memory holds
the scores and one block, never a ``(pairs, D)`` tensor.

The report is drawn by :func:`metricface.plots.plot_report` (plotting depends on the metrics,
never the reverse).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from metricface._validation import check_embeddings, check_finite, check_labels, check_scalar
from metricface.metrics._checks import check_binary_scores, check_far_targets
from metricface.metrics.verification import (
    auc_from_points,
    eer_from_points,
    operating_points,
    tar_from_points,
)

__all__ = [
    "VerificationReport",
    "all_pair_scores",
    "verification_report",
    "verification_report_from_embeddings",
]

#: Default FAR targets of the TAR@FAR rows.
DEFAULT_FAR_TARGETS = (1e-4, 1e-3, 1e-2, 1e-1)


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
        The full ROC, as :func:`~metricface.metrics.roc_curve` returns it; drawn by
        :func:`metricface.plots.plot_report`.
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


def verification_report(
    y_true: Any, y_score: Any, far_targets: Any = DEFAULT_FAR_TARGETS
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
        Prints as a table; :func:`metricface.plots.plot_report` draws its ROC or DET curve.

    Warns
    -----
    UserWarning
        When the AUC is below 0.5 and the EER above 0.5: the scores rank impostor pairs above
        genuine ones, as distances do (pass ``-distance``, or a similarity).
    """
    targets, _ = check_far_targets(far_targets, "far_targets")
    op = operating_points(*check_binary_scores(y_true, y_score))
    eer, eer_threshold = eer_from_points(op)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # flagged in the table instead
        tar, tar_thr = tar_from_points(op, targets, "far_targets")
    report = VerificationReport(
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
    _warn_if_reversed(report)
    return report


def _warn_if_reversed(report: VerificationReport) -> None:
    """Warn when the scores rank impostors above genuine pairs, as distances do."""
    if report.auc < 0.5 and report.eer > 0.5:
        warnings.warn(
            f"y_score ranks impostor pairs above genuine ones (AUC {report.auc:.4f}, EER "
            f"{report.eer:.4f}): it looks like a distance, but must be a similarity (higher = "
            "more alike); pass the negated distance",
            UserWarning,
            stacklevel=3,
        )


def _pair_counts(labels: torch.Tensor) -> tuple[int, int]:
    """Numbers of genuine and impostor pairs among all unordered pairs of ``labels``."""
    n = labels.shape[0]
    sizes = torch.unique(labels, return_counts=True)[1].to(torch.int64)
    genuine = int((sizes * (sizes - 1) // 2).sum())
    return genuine, n * (n - 1) // 2 - genuine


def all_pair_scores(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    normalize: bool = True,
    block_size: int = 1 << 22,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Every unordered pair of ``embeddings`` as ``(y_true, y_score)``, scored in blocks.

    Pair ``(i, j)`` with ``i < j`` is genuine when ``labels[i] == labels[j]``. Its score is the
    float64 dot product of the (normalised) embeddings, computed in row blocks of the
    ``(N, N)`` similarity matrix and written straight into the output, so memory holds the
    ``N (N - 1) / 2`` scores and one block, never a ``(pairs, D)`` tensor.

    Parameters
    ----------
    embeddings : torch.Tensor of shape (N, D)
        Floating point, on any device (half precision is widened).
    labels : torch.Tensor of shape (N,)
        Integer identity ids.
    normalize : bool
        L2-normalise the embeddings first (cosine similarity); otherwise plain dot products.
    block_size : int
        About how many similarities one block holds (``8 * block_size`` bytes); rows are taken
        ``block_size // N`` at a time (at least one).
    device : str or torch.device, optional
        Where to compute the blocks; defaults to the device of ``embeddings``.

    Returns
    -------
    y_true : numpy.ndarray of shape (N (N - 1) / 2,), bool
        ``True`` for a genuine pair, in row-major order of the upper triangle: ``(0, 1), (0,
        2), ..., (0, N - 1), (1, 2), ...``.
    y_score : numpy.ndarray of shape (N (N - 1) / 2,), float64
        Similarity of each pair, in the same order.

    Raises
    ------
    TypeError
        If ``embeddings`` is not a floating-point tensor or ``labels`` not an integer tensor.
    ValueError
        If the shapes disagree, fewer than two embeddings are given, or an embedding is not
        finite.
    """
    check_embeddings(embeddings)
    check_finite(embeddings, "embeddings")
    check_labels(labels, embeddings.shape[0])
    check_scalar(block_size, "block_size", low=1, integer=True)
    n = embeddings.shape[0]
    if n < 2:
        raise ValueError(f"embeddings must hold at least 2 rows to form a pair, got {n}")
    dev = torch.device(device) if device is not None else embeddings.device
    x = embeddings.detach().to(device=dev, dtype=torch.float64, copy=True)
    if normalize:  # in place: one (N, D) float64 copy in all
        x.div_(torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min_(1e-12))
    y = labels.detach().to(dev)
    scores = np.empty(n * (n - 1) // 2, dtype=np.float64)
    genuine = np.empty(scores.shape[0], dtype=np.bool_)
    index = torch.arange(n, device=dev)
    start = 0  # pairs (i, j > i) in row-major order: rows i0..i1 fill one contiguous range
    i0 = 0
    with torch.autocast(dev.type, enabled=False):  # similarities in float64 under autocast too
        while i0 < n - 1:
            i1 = min(n - 1, i0 + max(1, block_size // (n - i0)))
            sim = x[i0:i1] @ x[i0:].T  # (rows, n - i0): column c is embedding i0 + c
            upper = index[None, i0:] > index[i0:i1, None]  # j > i
            block = sim[upper].cpu().numpy()
            stop = start + block.shape[0]
            scores[start:stop] = block
            genuine[start:stop] = (y[i0:i1, None] == y[None, i0:])[upper].cpu().numpy()
            start, i0 = stop, i1
    return genuine, scores


def verification_report_from_embeddings(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    far_targets: Any = DEFAULT_FAR_TARGETS,
    *,
    normalize: bool = True,
    block_size: int = 1 << 22,
    device: str | torch.device | None = None,
) -> VerificationReport:
    """Verification report over every unordered pair of ``embeddings``, scored exactly.

    Every pair ``(i, j)`` with ``i < j`` is scored once (:func:`all_pair_scores`: row blocks
    of the ``(N, N)`` similarity matrix in float64): a genuine pair when
    ``labels[i] == labels[j]``, an impostor pair otherwise. The report is then exactly that of
    :func:`verification_report` on those scores, unlike
    :func:`~metricface.metrics.all_pairs_histogram`, which bins the scores to bound memory for
    ``N`` beyond what the scores fit in.

    Parameters
    ----------
    embeddings, labels, normalize, block_size, device
        As for :func:`all_pair_scores`: ``(N, D)`` floating-point embeddings and ``(N,)``
        integer identity ids.
    far_targets : sequence of float
        FAR targets in ``(0, 1]`` for the TAR@FAR rows.

    Returns
    -------
    VerificationReport
        With ``n_genuine + n_impostor == N (N - 1) / 2``.

    Raises
    ------
    TypeError
        If ``embeddings`` is not a floating-point tensor or ``labels`` not an integer tensor.
    ValueError
        If the shapes disagree, an embedding is not finite, or the labels give no genuine pair
        (no identity with two embeddings) or no impostor pair (a single identity); all before
        any pair is scored.

    Notes
    -----
    Memory: about 20 bytes per pair (the float64 scores, their genuine flags and the sort that
    finds the operating points) plus one block, so 10 000 embeddings (5e7 pairs) take about
    1 GB, whatever ``D``.

    Examples
    --------
    >>> from metricface.metrics import verification_report_from_embeddings
    >>> emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> labels = torch.tensor([0, 0, 1, 1])
    >>> report = verification_report_from_embeddings(emb, labels)
    >>> report.n_genuine, report.n_impostor, report.eer
    (2, 4, 0.0)
    """
    check_embeddings(embeddings)
    check_labels(labels, embeddings.shape[0])
    targets, _ = check_far_targets(far_targets, "far_targets")
    n_genuine, n_impostor = _pair_counts(labels.cpu())
    if n_genuine == 0 or n_impostor == 0:
        raise ValueError(
            "labels must give both genuine pairs (an identity with two or more embeddings) and "
            f"impostor pairs (two or more identities), got {n_genuine} genuine and {n_impostor} "
            f"impostor pairs from {labels.shape[0]} embeddings of "
            f"{int(torch.unique(labels).numel())} identities"
        )
    y_true, y_score = all_pair_scores(
        embeddings, labels, normalize=normalize, block_size=block_size, device=device
    )
    with warnings.catch_warnings():  # the reversed-ranking hint speaks of y_score: not here
        warnings.filterwarnings("ignore", message="y_score ranks impostor", category=UserWarning)
        return verification_report(y_true, y_score, targets)
