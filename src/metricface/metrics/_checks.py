"""Input validation for the metrics: arrays, lists or tensors in, float64 numpy out.

Every public metric calls these once, before any sorting, so that bad input fails fast with a
message naming the argument, what was expected and what was given. Torch tensors on any device
are accepted (they are detached and copied to the host); ``bfloat16``/``float16`` are widened.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from metricface._validation import check_scalar

__all__ = ["check_binary_scores", "check_far_targets", "to_numpy"]


def to_numpy(x: Any, name: str) -> np.ndarray:
    """Convert a numpy array, torch tensor (any device), list, tuple or other array-like (an
    object with ``__array__``, such as a pandas Series) to a 1-D numpy array.

    Raises
    ------
    TypeError
        If ``x`` is not array-like, or holds non-numeric data.
    ValueError
        If ``x`` is not one-dimensional.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        arr = t.cpu().numpy()
    elif isinstance(x, (np.ndarray, list, tuple)) or hasattr(x, "__array__"):  # pandas Series
        try:
            arr = np.asarray(x)
        except ValueError as exc:  # ragged nested lists
            raise ValueError(f"{name} must be a 1-D array; could not convert it: {exc}") from None
    else:
        raise TypeError(
            f"{name} must be a numpy array, torch tensor or list, got {type(x).__name__}"
        )
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers or bools, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {tuple(arr.shape)}")
    return arr


def check_binary_scores(
    y_true: Any, y_score: Any, *, require_both: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Validate verification labels and scores.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        1 (or ``True``) for a genuine pair, 0 (or ``False``) for an impostor pair.
    y_score : array-like of shape (n,)
        Finite similarity scores (higher = more alike).
    require_both : bool
        Require at least one genuine and one impostor pair.

    Returns
    -------
    labels : numpy.ndarray of shape (n,), bool
    scores : numpy.ndarray of shape (n,), float64
    """
    labels = to_numpy(y_true, "y_true")
    scores = to_numpy(y_score, "y_score")
    if labels.shape[0] != scores.shape[0]:
        raise ValueError(
            f"y_true and y_score must have the same length, got {labels.shape[0]} and "
            f"{scores.shape[0]}"
        )
    if scores.shape[0] == 0:
        raise ValueError("y_true and y_score must be non-empty, got 0 pairs")
    if labels.dtype != np.bool_:
        bad = np.flatnonzero((labels != 0) & (labels != 1))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"y_true must contain only 0 (impostor) and 1 (genuine) or bools, got "
                f"{labels[i].item()!r} at index {i}"
            )
        labels = labels == 1
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"y_score must be finite, got {scores[i].item()!r} at index {i}")
    if require_both:
        n_gen = int(np.count_nonzero(labels))
        if n_gen == 0 or n_gen == labels.shape[0]:
            raise ValueError(
                "y_true must contain both genuine (1) and impostor (0) pairs, got "
                f"{n_gen} genuine and {labels.shape[0] - n_gen} impostor"
            )
    return labels, scores


def check_far_targets(far: Any, name: str = "far") -> tuple[np.ndarray, bool]:
    """Validate false-accept-rate targets, each in ``(0, 1]``.

    Returns
    -------
    targets : numpy.ndarray of shape (k,), float64
    scalar : bool
        Whether ``far`` was a single number (the caller then returns scalars).
    """
    if isinstance(far, (int, float, np.integer, np.floating)) and not isinstance(far, bool):
        check_scalar(float(far), name, low=0.0, high=1.0, low_inclusive=False)
        return np.array([float(far)]), True
    arr = np.asarray(to_numpy(far, name), dtype=np.float64)
    if arr.size == 0:
        raise ValueError(f"{name} must hold at least one target, got an empty array")
    bad = np.flatnonzero(~(np.isfinite(arr) & (arr > 0) & (arr <= 1)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name} must be in (0, 1], got {arr[i].item()!r} at index {i}")
    return arr, False
