"""Verification metrics from score histograms, for score sets too large to hold or sort.

A :class:`ScoreHistogram` counts genuine and impostor scores in ``bins`` equal-width bins over a
fixed ``range = (lo, hi)``: bin ``j`` holds exactly the scores ``edges[j] <= s < edges[j + 1]``
(the end bins also ``s == hi`` and scores a rounding error past the range), decided by comparing
each score with the float64 edges themselves (``floor((s - lo) * bins / (hi - lo))`` only gives a
first guess, which rounding can put one bin off for a score on an edge, e.g. ``0.29`` with 100
bins over ``(0, 1)``). So "bins ``j`` and above" is exactly the set of scores ``>= edges[j]``:
every histogram operating point is an *exact* operating point of the underlying scores,
reproduced by accepting ``score >= edges[j]``, the threshold it is reported with.

Error bound (stated, and checked by the tests): the exact ROC and the histogram ROC pass through
the same two operating points ``A`` and ``B`` around the EER, and both stay inside the box they
span, so both EERs lie on the part of the line ``FAR = FRR`` inside that box. Hence

.. math::

    |\\mathrm{EER}_{hist} - \\mathrm{EER}| \\le
    \\min(\\mathrm{FAR}_B, \\mathrm{FRR}_A) - \\max(\\mathrm{FAR}_A, \\mathrm{FRR}_B)
    \\le \\min(\\Delta\\mathrm{FAR}, \\Delta\\mathrm{FRR}),

the smaller of the impostor and genuine fractions falling in the single bin where FAR and FRR
cross. For score densities bounded by ``p`` this is at most ``p * (hi - lo) / bins``: halving the
bin width halves the worst case. :meth:`ScoreHistogram.eer_bounds` returns the interval.

:func:`all_pairs_histogram` fills a histogram with all ``N (N - 1) / 2`` pair similarities of a
set of embeddings, block by block on CPU or GPU, never materialising the pairs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from metricface._validation import (
    check_device,
    check_embeddings,
    check_finite,
    check_labels,
    check_scalar,
)
from metricface.metrics._checks import check_binary_scores, check_far_targets
from metricface.metrics.verification import (
    OperatingPoints,
    auc_from_points,
    eer_from_points,
    eer_segment,
    tar_from_points,
)
from metricface.numerics import compute_dtype, l2_normalize

__all__ = ["ScoreHistogram", "all_pairs_histogram"]

# Scores this far (relative to hi - lo) past an end of the range are rounding, not misuse.
_RANGE_SLACK = 1e-4


class ScoreHistogram:
    """Genuine and impostor score counts over fixed, equal-width bins.

    Parameters
    ----------
    bins : int
        Number of bins (more bins, tighter EER bound; memory ``16 * bins`` bytes).
    range : tuple of float
        ``(lo, hi)`` covered by the bins; ``(-1, 1)`` suits cosine similarities.

    Attributes
    ----------
    genuine, impostor : numpy.ndarray of shape (bins,), int64
        Counts per bin.
    """

    def __init__(self, bins: int = 2000, range: tuple[float, float] = (-1.0, 1.0)) -> None:
        check_scalar(bins, "bins", low=1, integer=True)
        lo, hi = (float(v) for v in range)
        check_scalar(lo, "range[0]")
        check_scalar(hi, "range[1]")
        if not lo < hi:
            raise ValueError(f"range must be (lo, hi) with lo < hi, got {range!r}")
        if not np.isfinite(hi - lo):
            raise ValueError(f"range must have a finite width hi - lo, got {range!r}")
        self.bins = int(bins)
        self.range = (lo, hi)
        self.genuine = np.zeros(self.bins, dtype=np.int64)
        self.impostor = np.zeros(self.bins, dtype=np.int64)

    @property
    def edges(self) -> np.ndarray:
        """Bin edges, shape ``(bins + 1,)``; bin ``j`` is ``[edges[j], edges[j + 1])``."""
        return np.linspace(self.range[0], self.range[1], self.bins + 1)

    @property
    def n_genuine(self) -> int:
        """Number of genuine scores counted."""
        return int(self.genuine.sum())

    @property
    def n_impostor(self) -> int:
        """Number of impostor scores counted."""
        return int(self.impostor.sum())

    def update(self, y_true: Any, y_score: Any) -> ScoreHistogram:
        """Add scores; may be called any number of times (e.g. once per batch).

        Parameters
        ----------
        y_true : array-like of shape (n,)
            1 / ``True`` genuine, 0 / ``False`` impostor.
        y_score : array-like of shape (n,)
            Scores inside ``range``. Scores past an end by at most ``1e-4 * (hi - lo)``
            (float32 cosines of identical embeddings reach ``1.0000004``) are counted in the
            end bin, as :func:`all_pairs_histogram` does; a score farther out raises
            ``ValueError``.

        Returns
        -------
        ScoreHistogram
            ``self``, for chaining.
        """
        labels, scores = check_binary_scores(y_true, y_score, require_both=False)
        lo, hi = self.range
        slack = _RANGE_SLACK * (hi - lo)
        outside = np.flatnonzero((scores < lo - slack) | (scores > hi + slack))
        if outside.size:
            i = int(outside[0])
            raise ValueError(
                f"y_score must lie in range={self.range}, got {scores[i].item()!r} at index {i}"
            )
        idx = self._bin_index(scores)
        counts = np.bincount(idx + self.bins * labels, minlength=2 * self.bins)
        self.impostor += counts[: self.bins]
        self.genuine += counts[self.bins :]
        return self

    def _bin_index(self, scores: np.ndarray) -> np.ndarray:
        """Bin ``j`` with ``edges[j] <= s < edges[j + 1]``; scores past an end go to its bin."""
        lo, hi = self.range
        edges = self.edges
        idx = (scores - lo) * (self.bins / (hi - lo))
        idx = np.clip(idx, 0, self.bins - 1).astype(np.int64)  # truncation == floor here
        # the guess can be one bin off for a score on an edge: settle it against the edges
        idx -= (scores < edges[idx]) & (idx > 0)
        idx += (scores >= edges[idx + 1]) & (idx < self.bins - 1)
        return idx

    def merge(self, other: ScoreHistogram) -> ScoreHistogram:
        """Add the counts of a histogram with identical bins (e.g. from another process)."""
        if not isinstance(other, ScoreHistogram):
            raise TypeError(f"other must be a ScoreHistogram, got {type(other).__name__}")
        if other.bins != self.bins or other.range != self.range:
            raise ValueError(
                f"other must have the same bins and range ({self.bins}, {self.range}), got "
                f"({other.bins}, {other.range})"
            )
        self.genuine += other.genuine
        self.impostor += other.impostor
        return self

    def operating_points(self) -> OperatingPoints:
        """Counts at every bin edge, highest threshold first (see :func:`roc_curve`)."""
        n_pos, n_neg = self.n_genuine, self.n_impostor
        if n_pos == 0 or n_neg == 0:
            raise ValueError(
                "the histogram must hold both genuine and impostor scores, got "
                f"{n_pos} genuine and {n_neg} impostor"
            )
        zero = np.zeros(1, dtype=np.int64)
        return OperatingPoints(
            thresholds=np.concatenate(([np.inf], self.edges[-2::-1])),
            tps=np.concatenate((zero, np.cumsum(self.genuine[::-1]))),
            fps=np.concatenate((zero, np.cumsum(self.impostor[::-1]))),
            n_pos=n_pos,
            n_neg=n_neg,
        )

    def roc_curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ROC at the lower edge of every bin: ``fpr, tpr, thresholds`` of shape ``(bins + 1,)``.

        Each point is an exact operating point of the scores that were added.
        """
        op = self.operating_points()
        return op.fpr, op.tpr, op.thresholds

    def roc_auc(self) -> float:
        """Area under the histogram ROC: genuine/impostor pairs in the same bin count 1/2.

        Pairs in different bins are ordered as their scores are, so the error against the
        exact AUC is at most ``sum(genuine * impostor) / (2 * n_genuine * n_impostor)``
        (:meth:`auc_error_bound`).
        """
        return auc_from_points(self.operating_points())

    def auc_error_bound(self) -> float:
        """Worst-case ``|roc_auc() - exact AUC|``: half the fraction of same-bin pairs."""
        same_bin = float(np.dot(self.genuine.astype(np.float64), self.impostor))
        return same_bin / (2.0 * self.n_genuine * self.n_impostor)

    def equal_error_rate(self, return_threshold: bool = False) -> float | tuple[float, float]:
        """EER of the histogram ROC; within :meth:`eer_bounds` of the exact EER."""
        eer, threshold = eer_from_points(self.operating_points())
        return (eer, threshold) if return_threshold else eer

    def eer_bounds(self) -> tuple[float, float]:
        """Interval guaranteed to contain both the exact EER and the histogram EER.

        Its width is the stated worst-case error of :meth:`equal_error_rate`, at most the
        smaller of the impostor and genuine fractions in the bin where FAR and FRR cross.
        """
        op = self.operating_points()
        k, _ = eer_segment(op)
        far_a, far_b = op.fps[k - 1] / op.n_neg, op.fps[k] / op.n_neg
        frr_a, frr_b = 1 - op.tps[k - 1] / op.n_pos, 1 - op.tps[k] / op.n_pos
        return float(max(far_a, frr_b)), float(min(far_b, frr_a))

    def tar_at_far(self, far: Any, return_threshold: bool = False) -> Any:
        """TAR@FAR over the bin-edge operating points.

        A lower bound of the exact TAR@FAR (fewer thresholds to choose from), attained exactly
        by accepting ``score >= threshold`` with the returned bin-edge threshold.
        Arguments and returns as :func:`tar_at_far`.
        """
        targets, scalar = check_far_targets(far)
        tar, thr = tar_from_points(self.operating_points(), targets)
        if scalar:
            tar, thr = float(tar[0]), float(thr[0])
        return (tar, thr) if return_threshold else tar

    def __repr__(self) -> str:
        return (
            f"ScoreHistogram(bins={self.bins}, range={self.range}, "
            f"n_genuine={self.n_genuine}, n_impostor={self.n_impostor})"
        )


def all_pairs_histogram(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    bins: int = 2000,
    range: tuple[float, float] = (-1.0, 1.0),
    *,
    block_size: int | None = None,
    device: str | torch.device | None = None,
    normalize: bool = True,
) -> ScoreHistogram:
    """Histogram of the similarities of all ``N (N - 1) / 2`` pairs of embeddings.

    Pairs ``(i, j)`` with ``i < j`` are visited in ``block_size x block_size`` tiles of the
    similarity matrix (upper triangle only); each tile is binned and counted on ``device`` with
    ``torch.bincount`` into int64 counters, so memory is ``O(block_size**2)`` whatever ``N``.

    Parameters
    ----------
    embeddings : torch.Tensor of shape (N, D)
        Floating point; half precision is computed in float32.
    labels : torch.Tensor of shape (N,)
        Integer identity ids; a pair is genuine when its two ids are equal.
    bins, range
        As :class:`ScoreHistogram`; a similarity on a bin edge goes to the bin above it, as
        there. Similarities outside ``range`` (cosines exceed 1 by rounding) are counted in the
        end bins, which keeps the EER bound valid.
    block_size : int, optional
        Tile side; about four ``block_size**2`` arrays of similarities or int32 bin ids are
        live at once.
        Defaults to 1024 on CPU (cache-sized tiles are fastest) and 8192 on GPUs.
    device : str or torch.device, optional
        Where to compute; defaults to the device of ``embeddings``.
    normalize : bool
        L2-normalise the embeddings first (cosine similarity); otherwise plain dot products.

    Returns
    -------
    ScoreHistogram
    """
    check_embeddings(embeddings)
    check_finite(embeddings, "embeddings")
    check_labels(labels, embeddings.shape[0])
    hist = ScoreHistogram(bins, range)  # validates bins and range
    n = embeddings.shape[0]
    dev = check_device(device) if device is not None else embeddings.device
    if block_size is None:
        block_size = 1024 if dev.type == "cpu" else 8192
    check_scalar(block_size, "block_size", low=1, integer=True)
    dtype = compute_dtype(embeddings)
    x = embeddings.detach().to(device=dev, dtype=dtype)
    if normalize:
        x = l2_normalize(x)
    y = labels.to(dev)
    lo, hi = hist.range
    scale = hist.bins / (hi - lo)
    # Edges in the similarities' dtype, rounded up: for a float32 similarity s and a float64
    # edge e, s >= e exactly when s >= (the smallest float32 >= e).
    edges = hist.edges
    if dtype == torch.float32:
        e32 = edges.astype(np.float32)
        edges = np.where(e32 < edges, np.nextafter(e32, np.float32(np.inf)), e32)
    edges_dev = torch.from_numpy(edges).to(device=dev, dtype=dtype)
    # The first guess of a bin index, (s - lo) * scale, is off by at most a few ulps of
    # max(bins, |lo| * scale) in the dtype it is computed in (float64 beyond 2**16 bins).
    guess_dtype = dtype if hist.bins <= 2**16 else torch.float64
    ulp = torch.finfo(guess_dtype).eps * max(hist.bins, abs(lo) * scale, abs(hi) * scale)
    near = min(0.25, 16 * ulp)
    dump = 2 * hist.bins  # slot for the pairs a diagonal tile must not count
    counts = torch.zeros(dump + 1, dtype=torch.int64, device=dev)
    lower = None
    for i0 in np.arange(0, n, block_size).tolist():
        xi, yi = x[i0 : i0 + block_size], y[i0 : i0 + block_size]
        for j0 in np.arange(i0, n, block_size).tolist():
            with torch.autocast(dev.type, enabled=False):  # scores in float32/64
                sim = xi @ x[j0 : j0 + block_size].T
            # same bin rule as ScoreHistogram.update; truncation of a value >= 0 is floor
            guess = sim.to(guess_dtype).sub_(lo) if guess_dtype != dtype else sim - lo
            guess.mul_(scale).clamp_(0, hist.bins - 1)
            idx = guess.to(torch.int32)
            # only a guess within `near` of an integer can be a bin off: settle those few
            # against the edges, as ScoreHistogram.update does
            centred = guess.frac_().sub_(0.5).abs_()  # 0.5 at an integer, 0 half-way
            pos = (centred > 0.5 - near).nonzero(as_tuple=True)
            del guess, centred
            if pos[0].numel():
                s, j = sim[pos], idx[pos]
                j.sub_(((s < edges_dev[j]) & (j > 0)).to(torch.int32))
                j.add_(((s >= edges_dev[j + 1]) & (j < hist.bins - 1)).to(torch.int32))
                idx[pos] = j
            del sim
            same = yi[:, None] == y[None, j0 : j0 + block_size]
            idx.add_(same.to(torch.int32), alpha=hist.bins)
            if j0 == i0:
                m = idx.shape[0]
                if lower is None or lower.shape[0] != m:
                    lower = torch.ones(m, m, dtype=torch.bool, device=dev).tril_()
                idx.masked_fill_(lower, dump)
            counts += torch.bincount(idx.flatten(), minlength=dump + 1)
    counts_np = counts.cpu().numpy()
    hist.impostor += counts_np[: hist.bins]
    hist.genuine += counts_np[hist.bins : dump]
    return hist
