"""Input validation for the metrics: arrays, lists or tensors in, validated tensors or arrays out.

Every public metric calls these once, before any sorting, so that bad input fails fast with a
message naming the argument, what was expected and what was given. Torch tensors on any device
are accepted: :func:`check_binary_arrays` keeps accelerator tensors there (the ``O(n)`` EER
and TAR@FAR run on that device) and gives numpy arrays otherwise; :func:`check_binary_scores`
copies everything to the host for the sorted curves.
``bfloat16``/``float16`` are widened exactly; integer scores stay integers, so their order is
exact even above ``2**53``.
"""

from __future__ import annotations

import math
from typing import Any, Union

import numpy as np
import torch

from metricface._validation import check_scalar

__all__ = [
    "Array",
    "check_binary_arrays",
    "check_binary_scores",
    "check_far_targets",
    "host",
    "to_numpy",
]


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


Array = Union[np.ndarray, torch.Tensor]


def host(x: Array) -> np.ndarray:
    """``x`` as a numpy array (a device tensor is copied to the host)."""
    return x if isinstance(x, np.ndarray) else x.cpu().numpy()


def _native(x: Any, name: str) -> Array:
    """:func:`to_numpy`'s checks, but a tensor on an accelerator stays there (detached);
    everything else becomes a numpy array (sharing memory where it can).

    float16/bfloat16 widen to float32; unsigned integers to int64 (a ``uint64`` value above
    ``2**63 - 1`` raises ``ValueError``); bools stay bools.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.is_complex():
            raise TypeError(f"{name} must hold real numbers or bools, got dtype {t.dtype}")
        if t.ndim != 1:
            raise ValueError(f"{name} must be one-dimensional, got shape {tuple(t.shape)}")
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        if t.device.type != "cpu" and not _UNSIGNED.get(t.dtype):
            return t
        arr = _native(t.cpu().numpy(), name)  # few ops exist for torch's wide unsigned types
        return arr if t.device.type == "cpu" else torch.from_numpy(arr).to(t.device)
    arr = to_numpy(x, name)
    if arr.dtype.kind == "u" and arr.dtype.itemsize > 1:
        if arr.dtype.itemsize == 8 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
            i = int(np.argmax(arr > np.iinfo(np.int64).max))
            raise ValueError(
                f"{name} of dtype uint64 must be below 2**63, got {int(arr[i])} at index {i}"
            )
        arr = arr.astype(np.int64)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    elif not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


_UNSIGNED = {torch.uint16: True, torch.uint32: True, torch.uint64: True}


def _kind(x: Array) -> str:
    """numpy's dtype kind ("b", "i", "u", "f") of an array or tensor."""
    if isinstance(x, np.ndarray):
        return x.dtype.kind
    if x.dtype == torch.bool:
        return "b"
    return "f" if x.dtype.is_floating_point else "i"


def _first(mask: Array) -> int:
    """Index of the first true entry of a non-empty 1-D mask with at least one."""
    return int(mask.nonzero()[0][0])


def check_binary_arrays(
    y_true: Any, y_score: Any, *, require_both: bool = True
) -> tuple[Array, Array, int]:
    """Validate verification labels and scores, leaving them where they are.

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
    labels : numpy.ndarray or torch.Tensor of shape (n,), bool
    scores : numpy.ndarray or torch.Tensor of shape (n,)
        float32 or float64 for floating-point scores (float16/bfloat16 widened exactly),
        int64 for integer and bool scores: never rounded, so the order of the scores is
        exact. Torch tensors (both, on the scores' device) when the scores are on an
        accelerator, numpy arrays otherwise.
    n_pos : int
        Number of genuine pairs.
    """
    labels = _native(y_true, "y_true")
    scores = _native(y_score, "y_score")
    if labels.shape[0] != scores.shape[0]:
        raise ValueError(
            f"y_true and y_score must have the same length, got {labels.shape[0]} and "
            f"{scores.shape[0]}"
        )
    if scores.shape[0] == 0:
        raise ValueError("y_true and y_score must be non-empty, got 0 pairs")
    on_device = isinstance(scores, torch.Tensor)
    if on_device:  # labels join the scores on their device (tensors without a host trip)
        if isinstance(labels, torch.Tensor):
            labels = labels.to(scores.device)
        else:
            labels = torch.tensor(labels, device=scores.device)
    else:
        labels = host(labels)
    if _kind(labels) != "b":
        if _kind(labels) == "f":
            ok = not bool(((labels != 0) & (labels != 1)).any())
        else:
            ok = 0 <= int(labels.min()) and int(labels.max()) <= 1
        if not ok:
            i = _first((labels != 0) & (labels != 1))
            raise ValueError(
                f"y_true must contain only 0 (impostor) and 1 (genuine) or bools, got "
                f"{labels[i].item()!r} at index {i}"
            )
        labels = labels == 1
    if _kind(scores) == "f":
        # a NaN or inf makes the sum non-finite: one reduction proves them all finite
        with np.errstate(over="ignore", invalid="ignore"):  # huge finite scores may overflow
            total = float(scores.sum())
        if not math.isfinite(total):
            bad = ~(torch.isfinite(scores) if on_device else np.isfinite(scores))
            if bool(bad.any()):
                i = _first(bad)
                raise ValueError(f"y_score must be finite, got {scores[i].item()!r} at index {i}")
    elif on_device:
        scores = scores.to(torch.int64)
    else:
        scores = scores.astype(np.int64, copy=False)
    n_pos = int(torch.count_nonzero(labels) if on_device else np.count_nonzero(labels))
    if require_both and (n_pos == 0 or n_pos == labels.shape[0]):
        raise ValueError(
            "y_true must contain both genuine (1) and impostor (0) pairs, got "
            f"{n_pos} genuine and {labels.shape[0] - n_pos} impostor"
        )
    return labels, scores, n_pos


def check_binary_scores(
    y_true: Any, y_score: Any, *, require_both: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Validate verification labels and scores as the metrics do, and copy them to the host.

    Returns
    -------
    labels : numpy.ndarray of shape (n,), bool
    scores : numpy.ndarray of shape (n,)
        float64 for floating-point scores, int64 for integer scores (exact: integers above
        ``2**53`` are not rounded).
    """
    labels, scores, _ = check_binary_arrays(y_true, y_score, require_both=require_both)
    scores = host(scores)
    if scores.dtype.kind == "f":
        scores = scores.astype(np.float64, copy=False)
    return host(labels), scores


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
