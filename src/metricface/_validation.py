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

import numpy as np
import torch

__all__ = [
    "as_tensor",
    "check_device",
    "check_embeddings",
    "check_finite",
    "check_label_array",
    "check_labels",
    "check_reference_set",
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


def check_reference_set(
    embeddings: torch.Tensor, ref_emb: torch.Tensor | None, ref_labels: torch.Tensor | None
) -> torch.Tensor | None:
    """Check an optional reference set ``(ref_emb, ref_labels)`` against checked ``embeddings``.

    ``ref_labels`` without ``ref_emb`` is an error; ``ref_emb`` must be a ``(R, D)`` floating
    tensor with the ``D`` and the device of ``embeddings``; ``ref_labels``, when given, ``R`` integer labels.
    Whether ``ref_labels`` is required with ``ref_emb`` is the caller's decision.

    Returns
    -------
    torch.Tensor or None
        ``ref_labels`` on the device of ``embeddings`` (``None`` when not given).
    """
    if ref_emb is None:
        if ref_labels is not None:
            raise ValueError("ref_labels was given without ref_emb; pass both or neither")
        return None
    check_embeddings(ref_emb, "ref_emb")
    check_same_device(ref_emb, "ref_emb", embeddings, "embeddings")
    if ref_emb.shape[1] != embeddings.shape[1]:
        raise ValueError(
            f"ref_emb must have the embedding dimension of embeddings "
            f"({embeddings.shape[1]}), got {ref_emb.shape[1]}"
        )
    if ref_labels is None:
        return None
    check_labels(ref_labels, ref_emb.shape[0], name="ref_labels")
    return ref_labels.to(embeddings.device)


def check_label_array(labels: object, name: str = "labels") -> np.ndarray:
    """Check for a 1-D array-like of integer labels and return it as a NumPy ``int64`` array.

    Accepts a list/tuple of ints, a NumPy array or a CPU/GPU tensor (copied to the host), so
    that code working on whole label sets (e.g. a dataset's ``targets``) takes any of them.

    Returns
    -------
    numpy.ndarray
        Shape ``(N,)``, dtype ``int64`` (a view of ``labels`` when it already is one).
    """
    if isinstance(labels, torch.Tensor):
        check_labels(labels, name=name)
        return labels.detach().cpu().numpy().astype(np.int64, copy=False)
    if isinstance(labels, (str, bytes)) or not hasattr(labels, "__len__"):
        raise TypeError(
            f"{name} must be a 1-D sequence, numpy array or tensor of integer labels, "
            f"got {type(labels).__name__}"
        )
    try:
        array = np.asarray(labels)
    except ValueError as exc:  # ragged nested sequences
        raise ValueError(f"{name} must be 1-D, got a ragged sequence") from exc
    if array.size == 0 and array.dtype.kind == "f":
        array = array.astype(np.int64)  # np.asarray([]) is float64
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype, got {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"{name} must have shape (N,), got shape {array.shape}")
    if array.dtype.kind == "u" and array.size and int(array.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name} must fit in int64, got a label {int(array.max())}")
    return array.astype(np.int64, copy=False)


def as_tensor(value: object, name: str) -> torch.Tensor:
    """Return ``value`` as a tensor: tensors pass through; NumPy arrays, sequences and objects
    with an ``__array__`` method (a pandas Series) convert.

    NumPy arrays share memory where torch can; read-only ones (memory maps, broadcasts,
    pandas' copy-on-write arrays) are copied, as torch tensors cannot be read-only. Anything
    else raises a ``TypeError`` naming ``name``.
    """
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == object or value.dtype.kind in "USV":
            raise TypeError(f"{name} must hold numbers, got a NumPy array of dtype {value.dtype}")
        array = np.ascontiguousarray(value)
        if not array.flags.writeable:
            array = array.copy()
        return torch.from_numpy(array)
    if isinstance(value, (list, tuple)):
        try:
            return torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(
                f"{name} must be a numeric array, got an unconvertible sequence"
            ) from exc
    if hasattr(value, "__array__"):  # pandas Series, xarray, ...: as scikit-learn takes them
        return as_tensor(np.asarray(value), name)
    raise TypeError(f"{name} must be a torch.Tensor or a NumPy array, got {type(value).__name__}")


def check_same_device(
    tensor: torch.Tensor, name: str, other: torch.Tensor, other_name: str
) -> None:
    """Raise a ValueError naming both tensors when ``tensor`` is not on ``other``'s device."""
    if tensor.device != other.device:
        raise ValueError(
            f"{name} must be on the same device as {other_name} ({other.device}), "
            f"got {tensor.device}; move one with .to(device)"
        )


def check_finite(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """Check that a floating-point tensor holds no NaN or infinity (one device read-back).

    Returns
    -------
    torch.Tensor
        ``tensor`` unchanged, for chaining.
    """
    if tensor.is_floating_point() and tensor.numel() > 0:
        # A NaN or inf entry always makes the sum non-finite, so a finite sum (one cheap
        # reduction) proves every entry finite; only then-overflowing sums need the full count.
        if bool(torch.isfinite(tensor.sum())):
            return tensor
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise ValueError(
                f"{name} must contain only finite values, got {bad} NaN or infinite "
                f"entr{'y' if bad == 1 else 'ies'}"
            )
    return tensor


def check_device(device: object, name: str = "device") -> torch.device:
    """Parse a device argument (``torch.device``, a string such as ``"cuda:0"``, or a CUDA index)
    and check that this machine has it, before any work is done there.

    Raises
    ------
    TypeError
        If ``device`` is none of those.
    ValueError
        If it names no device type torch knows (``"bogus"``), or a device this machine lacks
        (``"cuda"`` without CUDA, ``"cuda:3"`` with two GPUs, ``"mps"`` off Apple silicon).
    """
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, (str, int)) and not isinstance(device, bool):
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError):
            raise ValueError(
                f"{name} must be a device such as 'cpu', 'cuda' or 'cuda:0', got {device!r}"
            ) from None
    else:
        raise TypeError(
            f"{name} must be a torch.device, a string such as 'cuda:0' or a CUDA index, got "
            f"{type(device).__name__} {device!r}"
        )
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}={device!r} needs CUDA, which is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"{name}={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name}={device!r} needs MPS, which is not available here")
    return dev
