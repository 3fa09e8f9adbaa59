"""Index tuples: the protocol between miners and pair/triplet losses.

Formats (pytorch-metric-learning's, so each library's miners feed the other's losses):

* pairs ``(a1, p, a2, n)``: positive pairs ``(a1[i], p[i])`` and negative pairs
  ``(a2[j], n[j])``;
* triplets ``(a, p, n)``.

Anchors index the query embeddings (rows), positives and negatives index the reference
embeddings (columns; the query batch itself unless ``ref_emb`` is given). When the reference set
*is* the query batch, a sample is never its own positive.

Every helper here is O(B^2) memory or proportional to its output: pairs are converted to
triplets anchor by anchor, never through a ``(#pos, #neg)`` comparison matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "check_indices_tuple",
    "empty_tuple",
    "entries_by_row",
    "label_masks",
    "pairs_to_triplets",
    "to_pairs",
    "to_triplets",
]

IndexTuple = tuple[torch.Tensor, ...]


def empty_tuple(size: int, device: torch.device | str | None = None) -> IndexTuple:
    """``size`` empty LongTensors (3 for triplets, 4 for pairs)."""
    return tuple(torch.empty(0, dtype=torch.long, device=device) for _ in range(size))


def entries_by_row(
    mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The ``True`` entries of a ``(B, R)`` mask, row-major, each with its slot in its row.

    Returns ``(rows, cols, slot, width)``: ``(rows[i], cols[i])`` is the ``i``-th entry and
    ``slot[i]`` the number of entries of its row before it, so ``(rows, slot)`` packs every
    row's entries to the left of a ``(B, width)`` matrix; ``width`` is the largest number of
    entries in a row (0 for an all-false mask). Miners and losses use it to work on each
    anchor's positives (or draws) as one padded matrix instead of ``(B, R)``.
    """
    rows, cols = mask.nonzero(as_tuple=True)
    if rows.numel() == 0:
        return rows, cols, rows.clone(), 0
    per_row = torch.bincount(rows, minlength=mask.shape[0])
    first = torch.cumsum(per_row, 0) - per_row  # index of each row's first entry
    slot = torch.arange(rows.numel(), device=rows.device) - first[rows]
    return rows, cols, slot, int(per_row.max())


def label_masks(
    labels: torch.Tensor, ref_labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean ``(B, R)`` masks of positive and negative pairs.

    Parameters
    ----------
    labels : torch.Tensor
        Shape ``(B,)``.
    ref_labels : torch.Tensor, optional
        Shape ``(R,)``. When omitted the references are the query batch and the diagonal
        (a sample paired with itself) is neither positive nor negative.

    Returns
    -------
    pos, neg : torch.Tensor
        Shape ``(B, R)``, dtype bool.
    """
    same_set = ref_labels is None
    ref = labels if ref_labels is None else ref_labels
    pos = labels.unsqueeze(1) == ref.unsqueeze(0)
    neg = ~pos
    if same_set:
        pos.fill_diagonal_(False)
    return pos, neg


def check_indices_tuple(
    indices_tuple: object, n_query: int, n_ref: int, name: str = "indices_tuple"
) -> IndexTuple:
    """Check a pair ``(a1, p, a2, n)`` or triplet ``(a, p, n)`` tuple of 1-D integer tensors.

    Anchors must lie in ``[0, n_query)``, positives/negatives in ``[0, n_ref)``; paired
    tensors must have equal lengths. Returns the tuple with every tensor as ``torch.long``.
    """
    if not isinstance(indices_tuple, Sequence) or len(indices_tuple) not in (3, 4):
        got = len(indices_tuple) if isinstance(indices_tuple, Sequence) else None
        raise ValueError(
            f"{name} must be a tuple (a, p, n) of triplets or (a1, p, a2, n) of pairs, got "
            + (f"a sequence of length {got}" if got is not None else type(indices_tuple).__name__)
        )
    out = []
    for i, t in enumerate(indices_tuple):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name}[{i}] must have an integer dtype, got {t.dtype}")
        if t.ndim != 1:
            raise ValueError(f"{name}[{i}] must be 1-D, got shape {tuple(t.shape)}")
        out.append(t.long())
    groups = [(0, 1, 2)] if len(out) == 3 else [(0, 1), (2, 3)]
    for g in groups:
        lengths = {out[i].shape[0] for i in g}
        if len(lengths) != 1:
            raise ValueError(
                f"{name} entries {list(g)} must have equal lengths, got "
                f"{[out[i].shape[0] for i in g]}"
            )
    anchors = (0,) if len(out) == 3 else (0, 2)
    for i, t in enumerate(out):
        if t.numel() == 0:
            continue
        bound = n_query if i in anchors else n_ref
        lo, hi = (int(v) for v in torch.aminmax(t))
        if lo < 0 or hi >= bound:
            role = "anchor" if i in anchors else "reference"
            raise ValueError(
                f"{name}[{i}] holds {role} indices that must be in [0, {bound}), "
                f"got {lo if lo < 0 else hi}"
            )
    return tuple(out)


def pairs_to_triplets(
    a1: torch.Tensor, p: torch.Tensor, a2: torch.Tensor, n: torch.Tensor
) -> IndexTuple:
    """Every triplet ``(a, p, n)`` whose positive and negative pair share the anchor.

    The order is the same as pytorch-metric-learning's conversion (positive pairs in order,
    then the anchor's negative pairs in order), but memory is proportional to the output
    instead of ``len(a1) * len(a2)``.
    """
    if a1.numel() == 0 or a2.numel() == 0:
        return empty_tuple(3, a1.device)
    size = int(max(a1.max(), a2.max())) + 1
    order = torch.argsort(a2, stable=True)
    counts = torch.bincount(a2, minlength=size)
    starts = torch.cumsum(counts, 0) - counts
    per_pos = counts[a1]  # how many negatives each positive pair combines with
    total = int(per_pos.sum())
    if total == 0:
        return empty_tuple(3, a1.device)
    pos_idx = torch.repeat_interleave(torch.arange(a1.numel(), device=a1.device), per_pos)
    offset = torch.arange(total, device=a1.device) - torch.repeat_interleave(
        torch.cumsum(per_pos, 0) - per_pos, per_pos
    )
    neg_idx = order[starts[a1[pos_idx]] + offset]
    return a1[pos_idx], p[pos_idx], n[neg_idx]


def to_triplets(indices_tuple: IndexTuple) -> IndexTuple:
    """A checked tuple as triplets (pairs combined per anchor: :func:`pairs_to_triplets`)."""
    return indices_tuple if len(indices_tuple) == 3 else pairs_to_triplets(*indices_tuple)


def to_pairs(indices_tuple: IndexTuple) -> IndexTuple:
    """A checked tuple as pairs: triplets ``(a, p, n)`` become ``(a, p, a, n)``."""
    if len(indices_tuple) == 4:
        return indices_tuple
    a, p, n = indices_tuple
    return a, p, a, n
