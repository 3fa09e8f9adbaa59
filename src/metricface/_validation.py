"""Input checks shared by every public entry point.

Each check runs once, at the public boundary, before any expensive work, and raises a
``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (right kind, bad value) whose
message names the argument, what was expected and what was given. Checks on tensor *values*
(e.g. label range) read back one scalar from the device: that costs a synchronisation on CUDA
but replaces an undecodable device-side assert with a readable error.
"""

from __future__ import annotations

import math
import numbers

import torch

__all__ = [
    "check_embeddings",
    "check_labels",
    "check_scalar",
]


def check_scalar(
    value: object,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    integer: bool = False,
) -> None:
    """Check that ``value`` is a finite real number (an ``int`` if ``integer``) within bounds.

    Raises
    ------
    TypeError
        If ``value`` is not a real number (``bool`` is rejected), or not integral when
        ``integer=True``.
    ValueError
        If ``value`` is NaN/inf or outside ``[low, high]`` (ends open when not inclusive).
    """
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = "an int" if integer else "a real number"
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    if not math.isfinite(float(value)):  # type: ignore[arg-type]
        raise ValueError(f"{name} must be finite, got {value!r}")
    v = float(value)  # type: ignore[arg-type]
    bad_low = low is not None and (v < low if low_inclusive else v <= low)
    bad_high = high is not None and (v > high if high_inclusive else v >= high)
    if bad_low or bad_high:
        lo = "(-inf" if low is None else ("[" if low_inclusive else "(") + f"{low:g}"
        hi = "inf)" if high is None else f"{high:g}" + ("]" if high_inclusive else ")")
        raise ValueError(f"{name} must be in {lo}, {hi}, got {value!r}")


def check_embeddings(embeddings: object, name: str = "embeddings") -> torch.Tensor:
    """Check for a non-empty floating-point tensor of shape ``(B, D)``.

    Returns
    -------
    torch.Tensor
        ``embeddings`` unchanged, for chaining.
    """
    if not isinstance(embeddings, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(embeddings).__name__}")
    if not embeddings.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {embeddings.dtype}")
    if embeddings.ndim != 2:
        raise ValueError(
            f"{name} must have shape (batch, dim), got shape {tuple(embeddings.shape)}"
        )
    if embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(embeddings.shape)}")
    return embeddings


def check_labels(
    labels: object,
    batch_size: int | None = None,
    *,
    num_classes: int | None = None,
    name: str = "labels",
) -> torch.Tensor:
    """Check for an integer tensor of shape ``(batch_size,)`` with values in ``[0, num_classes)``.

    Parameters
    ----------
    labels : object
        The value to check.
    batch_size : int, optional
        Required length (the number of embeddings).
    num_classes : int, optional
        If given, every label must lie in ``[0, num_classes)``; otherwise any integer
        identity id is accepted.
    name : str
        Argument name used in messages.

    Returns
    -------
    torch.Tensor
        ``labels`` unchanged, for chaining.
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype, got {labels.dtype}")
    if labels.ndim != 1:
        raise ValueError(f"{name} must have shape (batch,), got shape {tuple(labels.shape)}")
    if batch_size is not None and labels.shape[0] != batch_size:
        raise ValueError(
            f"{name} must have one entry per embedding ({batch_size}), got {labels.shape[0]}"
        )
    if num_classes is not None and labels.numel() > 0:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} must be in [0, num_classes={num_classes}), got a label {bad}")
    return labels
