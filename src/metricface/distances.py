"""Pairwise distances and similarities between embeddings.

Pair and triplet losses and the miners compare every query embedding with every reference
embedding. Two measures are offered:

``"euclidean"``
    L2 distance between L2-normalised embeddings, in ``[0, 2]`` (smaller = more alike). This is
    pytorch-metric-learning's default ``LpDistance()``; both compute it with
    :func:`torch.cdist`, so the two libraries' matrices agree to rounding in float32/float64.
``"cosine"``
    Cosine similarity, in ``[-1, 1]`` (larger = more alike), like ``CosineSimilarity()``.

Numerics: float16 and bfloat16 inputs are computed in float32 and the matrix is returned in
float32 (losses cast their scalar result back); a float64 input makes the whole matrix float64.
Gradients reach half-precision inputs through :func:`metricface.numerics.to_compute_dtype`, so
they saturate at the input dtype's largest finite value instead of overflowing to ``inf``.

Exact zeros: the L2 distance between two identical rows is exactly 0, at any batch size and
with any BLAS, and its gradient is 0, never NaN. :func:`torch.cdist` alone does not give that
beyond 25 rows, where it switches to the Gram-matrix form ``||x||^2 + ||y||^2 - 2 x.y``, whose
rounding (about ``sqrt(D * eps)``: 3e-4 to 1e-3 in float32) does not cancel for identical
rows. Here the rows are first centred on their mean (distances do not change under a
translation, identical rows stay identical, and the Gram form's error, proportional to the
squared norms, shrinks for a batch of similar embeddings); then every entry whose squared
value lies within that form's rounding-error bound (which covers reduced-precision float32
matmuls such as TF32) is recomputed from the difference ``||x_i - y_j||``: exactly 0 for
identical rows, and accurate to the input's precision for near-duplicates. The matrices are
``(B, R)``: O(B^2) memory, never more.
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
    """Both in their compute dtype (float64 when either is), as the kernels need one dtype."""
    return numerics.to_compute_dtype(x, y), numerics.to_compute_dtype(y, x)


# Entries recomputed from differences beyond this fraction of the matrix: the whole matrix is
# then computed from differences (no index tensors for most of its entries).
_DENSE_RECOMPUTE_FRACTION = 8
# Rows of differences formed at once while recomputing entries (memory: this many elements).
_RECOMPUTE_CHUNK_ELEMENTS = 1 << 18
# torch.cdist uses its Gram-matrix form only when either side has more rows than this.
_CDIST_MM_MIN_ROWS = 25
_REDUCED_ROUNDOFF = {"tf32": 2.0**-11, "bf16": 2.0**-8}


def _setting(read) -> object:
    """A precision setting, or ``None`` where this torch lacks it or refuses to read it.

    torch >= 2.9 raises on the legacy getters once its ``fp32_precision`` API has been used.
    """
    try:
        return read()
    except (AttributeError, RuntimeError):
        return None


def _matmul_input_roundoff(dtype: torch.dtype, device: torch.device) -> float:
    """Unit roundoff of a matmul's inputs under the current float32 precision settings.

    A float32 matmul may round its inputs to TF32 (10 mantissa bits) or bfloat16 (7) where
    :func:`torch.set_float32_matmul_precision`, the backend's ``fp32_precision`` (torch >=
    2.9) or ``allow_tf32`` allow it; the largest roundoff that any of them permits is returned.
    """
    u = torch.finfo(dtype).eps / 2
    if dtype != torch.float32:
        return u
    backends = torch.backends
    legacy = {"high": "tf32", "medium": "bf16"}
    settings = [legacy.get(_setting(torch.get_float32_matmul_precision))]
    if device.type == "cuda":
        settings.append(_setting(lambda: backends.cuda.matmul.fp32_precision))
        if _setting(lambda: backends.cuda.matmul.allow_tf32):
            settings.append("tf32")
    else:
        settings.append(_setting(lambda: backends.mkldnn.matmul.fp32_precision))
    return max([u] + [_REDUCED_ROUNDOFF[s] for s in settings if s in _REDUCED_ROUNDOFF])


def _gram_error_factor(dim: int, dtype: torch.dtype, device: torch.device) -> float:
    """``c`` such that ``c (||x||^2 + ||y||^2)`` bounds the rounding error of a Gram-form entry.

    :func:`torch.cdist`'s Gram-matrix form computes ``-2 x.y + ||x||^2 + ||y||^2`` as one dot
    product of length ``D + 2`` whose terms sum in absolute value to at most
    ``2 (||x||^2 + ||y||^2)``, the norms being sums of ``D`` squares. With unit roundoff ``u``
    of the accumulation, ``u_in`` of the matmul's inputs and ``gamma_n = n u / (1 - n u)``,
    the error is at most ``(2 (gamma_{D+2} + 2 u_in) + gamma_D) (||x||^2 + ||y||^2)``;
    returned with a factor 2 to spare.
    """
    u = torch.finfo(dtype).eps / 2
    n = dim + 2
    gamma = n * u / (1 - n * u)
    u_in = _matmul_input_roundoff(dtype, device)
    return 2.0 * (2.0 * (gamma + 2.0 * u_in) + gamma)


def _difference_distances(
    x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """``||x[rows] - y[cols]||`` from the differences, chunk by chunk: shape ``(K,)``.

    :func:`torch.cdist`'s difference kernel on ``(K, 1, D)`` batches: exactly 0 for identical
    rows, with a zero gradient (and a finite second derivative) there.
    """
    step = max(1, _RECOMPUTE_CHUNK_ELEMENTS // max(1, x.shape[1]))
    parts = [
        torch.cdist(
            x[rows[s : s + step]].unsqueeze(1),
            y[cols[s : s + step]].unsqueeze(1),
            compute_mode="donot_use_mm_for_euclid_dist",
        ).view(-1)
        for s in range(0, rows.numel(), step)
    ]
    return torch.cat(parts)


def _l2_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L2 distances: exactly 0 between identical rows (``y is x``: the self-distances).

    :func:`torch.cdist` on the rows centred on their mean (a translation: the distances do
    not change, identical rows stay identical, and the Gram form's rounding error, which
    grows with the rows' norms, shrinks for a batch of similar embeddings); every entry
    within that error of 0 is recomputed from the differences.
    """
    same = y is x
    if x.shape[0] <= _CDIST_MM_MIN_ROWS and y.shape[0] <= _CDIST_MM_MIN_ROWS:
        return torch.cdist(x, y, p=2)  # the difference kernel: exact zeros already
    with torch.no_grad():
        center = (x if same else torch.cat([x, y])).mean(dim=0)
        center = torch.where(torch.isfinite(center), center, torch.zeros_like(center))
    xc = x - center
    yc = xc if same else y - center
    d = torch.cdist(xc, yc, p=2)
    if d.numel() == 0:
        return d
    with torch.no_grad():
        factor = _gram_error_factor(x.shape[1], x.dtype, x.device)
        sq_x = xc.square().sum(dim=1)
        sq_y = sq_x if same else yc.square().sum(dim=1)
        largest_bound = (factor * (sq_x.max() + sq_y.max())).sqrt()
    if same:  # a row and itself: exactly 0, set below; the search skips them
        inf = d.new_full((d.shape[0],), float("inf"))
        d = d.diagonal_scatter(inf) if d.requires_grad else d.fill_diagonal_(float("inf"))
    with torch.no_grad():
        # one reduction against the largest bound; the per-entry bound only where it matters
        suspect = bool(d.amin() <= largest_bound)
        if suspect:
            close = d.square() <= factor * (sq_x[:, None] + sq_y[None, :])
            count = int(torch.count_nonzero(close))
        if same:  # the zero gradient there comes from diagonal_scatter
            d.fill_diagonal_(0.0)
    if not suspect or count == 0:
        return d
    if count * _DENSE_RECOMPUTE_FRACTION > d.numel():  # e.g. many copies of a few rows
        return torch.cdist(xc, yc, p=2, compute_mode="donot_use_mm_for_euclid_dist")
    rows, cols = close.nonzero(as_tuple=True)
    exact = _difference_distances(xc, yc, rows, cols)
    if d.requires_grad:
        return d.index_put((rows, cols), exact)
    return d.index_put_((rows, cols), exact)


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
    xw = l2_normalize(x) if normalize else numerics.to_compute_dtype(x)
    if y is None:
        yw = xw
    else:
        yw = l2_normalize(y) if normalize else numerics.to_compute_dtype(y)
    with torch.autocast(xw.device.type, enabled=False):  # keep float32 under autocast
        return _l2_distances(xw, yw)


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
