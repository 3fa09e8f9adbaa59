"""Pairwise distances and similarities between embeddings.

Pair and triplet losses and the miners compare every query embedding with every reference
embedding. Two measures are offered:

``"euclidean"``
    L2 distance between L2-normalised embeddings, in ``[0, 2]`` (smaller = more alike). This is
    pytorch-metric-learning's default ``LpDistance()`` and is computed with :func:`torch.cdist`
    like it, so both libraries produce the same matrices bit for bit in float32/float64.
``"cosine"``
    Cosine similarity, in ``[-1, 1]`` (larger = more alike), like ``CosineSimilarity()``.

Numerics: float16 and bfloat16 inputs are computed in float32 and the matrix is returned in
float32 (losses cast their scalar result back); a float64 input makes the whole matrix float64. :func:`torch.cdist` returns exactly 0 for
duplicated embeddings and its gradient there is 0, never NaN (the square root's infinite slope
at 0 is masked). The matrices are ``(B, R)``: O(B^2) memory, never more.
"""

from __future__ import annotations

from typing import Literal

import torch

from metricface import numerics
from metricface._validation import check_same_device

__all__ = [
    "DISTANCES",
    "cosine_similarity_matrix",
    "euclidean_distance_matrix",
    "is_similarity",
    "l2_normalize",
    "pairwise_matrix",
]

Distance = Literal["euclidean", "cosine"]
#: The accepted values of every ``distance=`` argument.
DISTANCES: tuple[str, ...] = ("euclidean", "cosine")


def _check_rows(t: object, name: str) -> None:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {got}")
    if t.ndim != 2:
        raise ValueError(f"{name} must have shape (rows, dim), got shape {tuple(t.shape)}")


def _check_inputs(x: torch.Tensor, y: torch.Tensor | None) -> None:
    """Check that ``x`` (and ``y`` when given) are 2-D floating tensors of one width and device."""
    _check_rows(x, "x")
    if y is not None:
        _check_rows(y, "y")
        if y.shape[1] != x.shape[1]:
            raise ValueError(f"x and y must have the same dim, got {x.shape[1]} and {y.shape[1]}")
        check_same_device(y, "y", x, "x")


def _common_dtype(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both in their promoted dtype (float64 when either is), as the kernels need one dtype."""
    dtype = torch.promote_types(x.dtype, y.dtype)
    return x.to(dtype), y.to(dtype)


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Scale each row of ``x`` (shape ``(B, D)``) to unit L2 norm; all-zero rows stay zero.

    :func:`metricface.numerics.l2_normalize` along the rows: float32 for half precision.
    """
    return numerics.l2_normalize(x, dim=1, eps=eps)


def euclidean_distance_matrix(
    x: torch.Tensor, y: torch.Tensor | None = None, *, normalize: bool = True
) -> torch.Tensor:
    """L2 distances between the rows of ``x`` and ``y``.

    Parameters
    ----------
    x : torch.Tensor
        Shape ``(B, D)``.
    y : torch.Tensor, optional
        Shape ``(R, D)``; ``x`` when omitted.
    normalize : bool
        L2-normalise both inputs first (the default, as in pytorch-metric-learning).

    Returns
    -------
    torch.Tensor
        Shape ``(B, R)``, float32 or float64.
    """
    _check_inputs(x, y)
    if y is not None:
        x, y = _common_dtype(x, y)
    xw = l2_normalize(x) if normalize else x.to(numerics.compute_dtype(x))
    if y is None:
        yw = xw
    else:
        yw = l2_normalize(y) if normalize else y.to(numerics.compute_dtype(y))
    return torch.cdist(xw, yw, p=2)


def cosine_similarity_matrix(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarities between the rows of ``x`` (``(B, D)``) and ``y`` (``(R, D)``).

    Returns
    -------
    torch.Tensor
        Shape ``(B, R)``, float32 or float64, values in ``[-1, 1]``.
    """
    _check_inputs(x, y)
    if y is not None:
        x, y = _common_dtype(x, y)
    xn = l2_normalize(x)
    yn = xn if y is None else l2_normalize(y)
    with torch.autocast(xn.device.type, enabled=False):  # keep float32 under autocast
        return xn @ yn.T


def is_similarity(distance: str) -> bool:
    """Whether larger values of ``distance`` mean more alike (``"cosine"``)."""
    return distance == "cosine"


def check_distance(distance: object) -> str:
    """Check that ``distance`` is one of :data:`DISTANCES`; return it."""
    if not isinstance(distance, str) or distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    return distance


def pairwise_matrix(
    x: torch.Tensor, y: torch.Tensor | None = None, distance: str = "euclidean"
) -> torch.Tensor:
    """The ``(B, R)`` matrix of ``distance`` (``"euclidean"`` or ``"cosine"``) between rows.

    Parameters
    ----------
    x : torch.Tensor
        Query embeddings, shape ``(B, D)``.
    y : torch.Tensor, optional
        Reference embeddings, shape ``(R, D)``; ``x`` when omitted.
    distance : {"euclidean", "cosine"}
        L2 distance of normalised embeddings, or cosine similarity.

    Returns
    -------
    torch.Tensor
        Shape ``(B, R)``.
    """
    check_distance(distance)
    if distance == "cosine":
        return cosine_similarity_matrix(x, y)
    return euclidean_distance_matrix(x, y)
