"""Exact k-nearest-neighbour search of probe embeddings in a gallery.

:func:`search` scores every probe against the gallery one chunk of gallery rows at a time and
keeps a running top-k, so memory stays at ``O(P * k + chunk_size ** 2)`` whatever the gallery
size: the full ``P x G`` score matrix is never built. The gallery may live on the CPU while the
products run on a GPU (``device="cuda"``); each chunk is moved once.

Tie-breaking
------------
Results are ordered best first; among exactly equal computed scores the gallery row with the
**smaller index comes first**, so results are reproducible for a given chunk size. Scores are
computed in float32 (float64 if either input is float64) by matrix products whose last bits
depend on how the product is blocked, so two gallery rows that tie in exact arithmetic (e.g.
duplicated rows of random floats) may differ by one rounding step and swap places when
``chunk_size`` changes. Where the products are exact (small integers, float64 inputs of few
significant bits) the result equals a stable sort of the full score row for every chunk size.

With ``use_faiss`` the search runs on a flat (exact) faiss index instead; the scores are the
same up to float32 rounding, but the order of tied scores is whatever faiss returns.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Literal

import torch

from metricface._validation import (
    as_tensor,
    check_device,
    check_embeddings,
    check_finite,
    check_scalar,
)
from metricface.numerics import compute_dtype, unit_rows

__all__ = ["check_metric", "check_pair", "prepare_block", "search", "similarity_block"]

Metric = Literal["cosine", "dot", "euclidean"]
_METRICS = ("cosine", "dot", "euclidean")


def check_metric(metric: object) -> None:
    """Raise a ValueError unless ``metric`` is ``"cosine"``, ``"dot"`` or ``"euclidean"``."""
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")


def check_pair(
    probes: object,
    gallery: object,
    device: object = None,
    names: tuple[str, str] = ("probes", "gallery"),
) -> tuple[torch.Tensor, torch.Tensor, torch.device]:
    """Validate a (probes, gallery) pair of embedding matrices and the compute device.

    Returns the two as tensors and the device (the probes' one when ``device`` is ``None``).
    ``names`` are the caller's argument names, used in the error messages.
    """
    p_name, g_name = names
    probes = check_embeddings(as_tensor(probes, p_name), p_name)
    gallery = check_embeddings(as_tensor(gallery, g_name), g_name)
    if probes.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"{p_name} and {g_name} must have the same embedding dimension, got "
            f"{probes.shape[1]} and {gallery.shape[1]}"
        )
    check_finite(probes, p_name)
    check_finite(gallery, g_name)
    return probes, gallery, probes.device if device is None else check_device(device)


def prepare_block(
    x: torch.Tensor, metric: str, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Move and cast one block of embeddings and precompute what :func:`similarity_block` needs.

    Parameters
    ----------
    x : torch.Tensor, shape (N, D)
    metric : {"cosine", "dot", "euclidean"}
    dtype, device
        Where and in which dtype the scores are computed.

    Returns
    -------
    tuple
        ``(rows, squared_norms)``: for ``"cosine"`` the unit rows
        (:func:`metricface.numerics.unit_rows`: no overflow for huge finite rows, all-zero rows
        stay zero) and ``None``; for ``"euclidean"`` the rows and their squared norms
        ``(N,)``; for ``"dot"`` the rows and ``None``.
    """
    x = x.to(device=device, dtype=dtype)
    if metric == "cosine":
        return unit_rows(x)[0], None
    if metric == "euclidean":
        return x, x.square().sum(1)
    return x, None


def similarity_block(p, g) -> torch.Tensor:
    """Similarity block (higher = closer) between two :func:`prepare_block`-d blocks.

    For ``euclidean`` this is minus the distance, so that every metric ranks by "largest".
    The product runs in the blocks' dtype even inside a caller's autocast region.

    Parameters
    ----------
    p, g : tuple
        Probe and gallery blocks from :func:`prepare_block`, ``P`` and ``G`` rows.

    Returns
    -------
    torch.Tensor, shape (P, G)
    """
    (px, pn), (gx, gn) = p, g
    with torch.autocast(px.device.type, enabled=False):
        sim = px @ gx.T
    if pn is None:
        return sim
    sq = (pn[:, None] + gn[None, :] - 2.0 * sim).clamp_min_(0.0)
    return sq.sqrt_().neg_()


def _top_k_stable(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` of each row, largest first, ties broken towards the smaller column.

    ``torch.topk`` picks an arbitrary subset of the entries tied with the k-th value. Rows
    whose ``(k+1)``-th value differs from the k-th (almost all, for real-valued scores) only
    need their k winners re-ordered; the other rows keep exactly the leftmost tied entries.
    """
    cols = values.shape[1]
    if k >= cols:
        order = values.argsort(dim=1, descending=True, stable=True)
        return values.gather(1, order), order
    top = values.topk(k + 1, dim=1)
    boundary_tie = top.values[:, k] == top.values[:, k - 1]
    idx, perm = top.indices[:, :k].sort(dim=1)  # increasing column ...
    vals = top.values[:, :k].gather(1, perm)
    order = vals.argsort(dim=1, descending=True, stable=True)  # ... within equal values
    vals, idx = vals.gather(1, order), idx.gather(1, order)
    if bool(boundary_tie.any()):
        tied_rows = boundary_tie.nonzero()[:, 0]
        sub = values[tied_rows]
        kth = top.values[tied_rows, k - 1 : k]
        greater = sub > kth
        equal = sub == kth
        need = k - greater.sum(1, keepdim=True)
        take = greater | (equal & (equal.cumsum(1) <= need))
        sub_idx = take.nonzero()[:, 1].view(-1, k)  # row-major: columns ascending per row
        sub_vals = sub.gather(1, sub_idx)
        order = sub_vals.argsort(dim=1, descending=True, stable=True)
        vals[tied_rows] = sub_vals.gather(1, order)
        idx[tied_rows] = sub_idx.gather(1, order)
    return vals, idx


def _faiss() -> ModuleType | None:
    try:
        return importlib.import_module("faiss")
    except ImportError:
        return None


def _search_faiss(faiss: ModuleType, probes, gallery, k: int, metric: str):
    p = prepare_block(probes, metric, torch.float32, torch.device("cpu"))[0].contiguous().numpy()
    g = prepare_block(gallery, metric, torch.float32, torch.device("cpu"))[0].contiguous().numpy()
    index = (
        faiss.IndexFlatL2(g.shape[1]) if metric == "euclidean" else faiss.IndexFlatIP(g.shape[1])
    )
    index.add(g)
    scores, indices = index.search(p, k)
    scores = torch.from_numpy(scores).float()
    if metric == "euclidean":  # faiss returns squared distances
        scores = scores.clamp_min_(0.0).sqrt_()
    return scores, torch.from_numpy(indices).long()


def search(
    probes: torch.Tensor,
    gallery: torch.Tensor,
    k: int = 1,
    *,
    metric: Metric = "cosine",
    chunk_size: int = 4096,
    device: torch.device | str | None = None,
    use_faiss: bool | Literal["auto"] = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Find the ``k`` nearest gallery embeddings of every probe (exact search).

    Parameters
    ----------
    probes : torch.Tensor or numpy.ndarray, shape (P, D)
        Query embeddings.
    gallery : torch.Tensor or numpy.ndarray, shape (G, D)
        Embeddings searched in.
    k : int
        Number of neighbours per probe, ``1 <= k <= G``.
    metric : {"cosine", "dot", "euclidean"}
        ``"cosine"``: cosine similarity of the L2-normalised embeddings (higher = closer; an
        all-zero embedding has similarity 0 with everything);
        ``"dot"``: raw inner product (higher = closer); ``"euclidean"``: Euclidean distance
        (lower = closer).
    chunk_size : int
        Gallery rows (and probe rows) scored per step; peak extra memory is about
        ``chunk_size ** 2`` scores. Results depend on it only through float rounding (see
        the module notes on tie-breaking).
    device : torch.device or str, optional
        Where the products run; defaults to the probes' device. The gallery is moved there
        one chunk at a time.
    use_faiss : bool or "auto"
        ``"auto"`` uses faiss (an exact flat index) when it is installed and the search runs
        on the CPU in float32; ``True`` requires it; ``False`` never uses it.

    Returns
    -------
    scores : torch.Tensor, shape (P, k)
        Similarities in decreasing order (``cosine``, ``dot``) or distances in increasing
        order (``euclidean``), float32 (float64 when an input is float64), also when called
        inside an autocast region.
    indices : torch.Tensor, shape (P, k), int64
        Gallery row of each neighbour. Exact ties are ordered by increasing gallery index.
        Both outputs are on the probes' device.

    Raises
    ------
    ValueError
        Empty inputs, mismatched dimensions, NaN/inf values, ``k`` outside ``[1, G]``, or an
        unknown ``metric``.
    ImportError
        ``use_faiss=True`` without faiss installed.
    """
    probes, gallery, device = check_pair(probes, gallery, device)
    check_metric(metric)
    check_scalar(k, "k", low=1, integer=True)
    if k > gallery.shape[0]:
        raise ValueError(f"k must be at most the gallery size ({gallery.shape[0]}), got {k}")
    check_scalar(chunk_size, "chunk_size", low=1, integer=True)
    if use_faiss not in (True, False, "auto"):
        raise ValueError(f"use_faiss must be True, False or 'auto', got {use_faiss!r}")
    out_device = probes.device
    dtype = compute_dtype(probes, gallery)

    if use_faiss is not False:
        faiss = _faiss()
        if use_faiss is True and faiss is None:
            raise ImportError(
                "use_faiss=True needs faiss, which is not installed. Install it with: "
                "pip install faiss-cpu (or faiss-gpu)"
            )
        if faiss is not None and (
            use_faiss is True or (device.type == "cpu" and dtype == torch.float32)
        ):
            scores, indices = _search_faiss(faiss, probes.cpu(), gallery.cpu(), k, metric)
            return scores.to(device=out_device, dtype=dtype), indices.to(out_device)

    n_probes = probes.shape[0]
    p_blocks = [
        prepare_block(probes[s : s + chunk_size], metric, dtype, device)
        for s in range(0, n_probes, chunk_size)
    ]
    best_vals = torch.empty(n_probes, 0, dtype=dtype, device=device)
    best_idx = torch.empty(n_probes, 0, dtype=torch.long, device=device)
    for g_start in range(0, gallery.shape[0], chunk_size):
        g = prepare_block(gallery[g_start : g_start + chunk_size], metric, dtype, device)
        vals_parts, idx_parts = [], []
        for p_start, p in zip(range(0, n_probes, chunk_size), p_blocks):
            vals, idx = _top_k_stable(similarity_block(p, g), k)
            # Earlier chunks hold smaller gallery indices and come first in the concatenation,
            # so a stable sort keeps ties in increasing index order.
            vals = torch.cat([best_vals[p_start : p_start + chunk_size], vals], dim=1)
            idx = torch.cat([best_idx[p_start : p_start + chunk_size], idx + g_start], dim=1)
            order = vals.argsort(dim=1, descending=True, stable=True)[:, :k]
            vals_parts.append(vals.gather(1, order))
            idx_parts.append(idx.gather(1, order))
        best_vals, best_idx = torch.cat(vals_parts), torch.cat(idx_parts)
    if metric == "euclidean":
        best_vals = best_vals.neg()
    return best_vals.to(out_device), best_idx.to(out_device)
