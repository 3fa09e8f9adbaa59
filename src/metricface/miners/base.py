"""The common call protocol of every miner, and the chunked triplet enumeration they share.

A miner is called as ``miner(embeddings, labels, ref_emb=None, ref_labels=None)`` and returns
LongTensor index tuples in pytorch-metric-learning's format: ``(anchors, positives,
negatives)`` for triplet miners, ``(a1, positives, a2, negatives)`` for pair miners. Mining never builds a ``B x B x B`` tensor: candidate
triplets are scored one chunk of positive pairs at a time against the ``(B, R)`` distance
matrix, so the working memory is O(B * R) plus the mined output itself.

Internally every miner works on a *dissimilarity* ``D``: the L2 distance for
``distance="euclidean"``, and the negated cosine similarity for ``distance="cosine"``. Both
orderings are exact in floating point, so selections match pytorch-metric-learning's for
either measure.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from metricface._validation import (
    check_embeddings,
    check_labels,
    check_reference_set,
    check_scalar,
)
from metricface.distances import check_distance, pairwise_matrix
from metricface.tuples import empty_tuple, label_masks

__all__ = ["BaseMiner"]

# Elements of one (chunk, R) block scored at a time while enumerating triplets: 2**18 keeps a
# chunk's temporaries to a few MiB at no measurable cost in speed.
DEFAULT_CHUNK_ELEMENTS = 1 << 18

KeepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class BaseMiner(nn.Module):
    """Base class: input checks, the distance matrix, and the ``max_triplets`` cap.

    Parameters
    ----------
    distance : {"euclidean", "cosine"}
        L2 distance of L2-normalised embeddings, or cosine similarity.
    max_triplets : int, optional
        Triplet miners return at most this many triplets, drawn uniformly at random without
        replacement with torch's global RNG (seed it with :func:`torch.manual_seed`). Kept
        triplets stay in enumeration order.
    chunk_elements : int
        Size of the ``(chunk, R)`` blocks scored at a time while enumerating triplets.
    """

    def __init__(
        self,
        distance: str = "euclidean",
        max_triplets: int | None = None,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    ) -> None:
        super().__init__()
        self.distance = check_distance(distance)
        if max_triplets is not None:
            check_scalar(max_triplets, "max_triplets", low=1, integer=True)
        check_scalar(chunk_elements, "chunk_elements", low=1, integer=True)
        self.max_triplets = max_triplets
        self.chunk_elements = int(chunk_elements)

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_emb: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Mine index tuples.

        Parameters
        ----------
        embeddings : torch.Tensor
            Shape ``(B, D)``: the anchors.
        labels : torch.Tensor
            Shape ``(B,)``, integer identity ids.
        ref_emb : torch.Tensor, optional
            Shape ``(R, D)``: where positives and negatives come from; the batch itself when
            omitted (then a sample is never its own positive).
        ref_labels : torch.Tensor, optional
            Shape ``(R,)``; required with ``ref_emb``.

        Returns
        -------
        tuple of torch.Tensor
            ``(a, p, n)`` for triplet miners or ``(a1, p, a2, n)`` for pair miners, each a 1-D
            LongTensor on ``embeddings.device``.
        """
        check_embeddings(embeddings)
        check_labels(labels, embeddings.shape[0])
        labels = labels.to(embeddings.device)
        ref_labels = check_reference_set(embeddings, ref_emb, ref_labels)
        if ref_emb is not None and ref_labels is None:
            raise ValueError("ref_labels is required when ref_emb is given")
        with torch.no_grad():
            mat = pairwise_matrix(embeddings, ref_emb, self.distance)
            dis = -mat if self.distance == "cosine" else mat
            pos, neg = label_masks(labels, ref_labels)
            out = self.mine(dis, pos, neg)
        return tuple(t.long() for t in out)

    def mine(
        self, dis: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Select index tuples from the ``(B, R)`` dissimilarity and label masks."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared machinery
    def _pair_chunks(self, pos: torch.Tensor):
        """Yield ``(a, p)`` chunks of the positive pairs, in row-major order."""
        a_all, p_all = pos.nonzero(as_tuple=True)
        step = max(1, self.chunk_elements // max(1, pos.shape[1]))
        for start in range(0, a_all.numel(), step):
            yield a_all[start : start + step], p_all[start : start + step]

    def _enumerate_triplets(
        self, dis: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, keep: KeepFn
    ) -> tuple[torch.Tensor, ...]:
        """All triplets ``(a, p, n)`` with ``keep(d_ap, d_an)`` true, in ``(a, p, n)`` order.

        ``keep`` receives ``d_ap`` of shape ``(K, 1)`` and ``d_an`` of shape ``(K, R)``. With
        ``max_triplets`` set, a uniform random subset is kept while streaming (each candidate
        gets a random key; the smallest keys survive), so memory stays bounded by the cap.
        """
        cap = self.max_triplets
        parts: list[tuple[torch.Tensor, ...]] = []
        kept: tuple[torch.Tensor, ...] | None = None  # (keys, order, a, p, n) when capped
        seen = 0
        for a, p in self._pair_chunks(pos):
            found = _chunk_triplets(dis, neg, keep, a, p)
            if cap is None:
                # int32 while collecting (indices < 2**31 always): the final int64 output is
                # then the only full-size copy
                parts.append(tuple(t.to(torch.int32) for t in found))
                del found  # not alive while the next chunk is scored or the output is built
                continue
            size, device = found[2].numel(), found[2].device
            order = torch.arange(seen, seen + size, device=device)
            seen += size
            keys = torch.rand(size, device=device)
            cand = (keys, order, *found)
            if kept is not None:
                cand = tuple(torch.cat([x, y]) for x, y in zip(kept, cand))
            if cand[0].numel() > cap:
                best = torch.topk(cand[0], cap, largest=False).indices
                cand = tuple(x[best] for x in cand)
            kept = cand
        if cap is not None:
            if kept is None:
                return empty_tuple(3, dis.device)
            order = torch.argsort(kept[1])
            return tuple(x[order] for x in kept[2:])
        if not parts:
            return empty_tuple(3, dis.device)
        total = sum(part[0].numel() for part in parts)
        out = tuple(torch.empty(total, dtype=torch.long, device=dis.device) for _ in range(3))
        start = 0
        while parts:
            part = parts.pop(0)  # freed as soon as it is copied
            stop = start + part[0].numel()
            for column, values in zip(out, part):
                column[start:stop] = values
            start = stop
        return out

    def _cap(self, triplets: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Apply ``max_triplets`` to an already-built (small) triplet tuple."""
        cap = self.max_triplets
        if cap is None or triplets[0].numel() <= cap:
            return triplets
        keep = torch.randperm(triplets[0].numel(), device=triplets[0].device)[:cap].sort().values
        return tuple(t[keep] for t in triplets)

    def extra_repr(self) -> str:
        return f"distance={self.distance!r}, max_triplets={self.max_triplets}"


def _chunk_triplets(
    dis: torch.Tensor, neg: torch.Tensor, keep: KeepFn, a: torch.Tensor, p: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kept triplets ``(a, p, n)`` of one chunk of positive pairs (its temporaries die here)."""
    mask = keep(dis[a, p].unsqueeze(1), dis[a]) & neg[a]
    rows, n = mask.nonzero(as_tuple=True)
    return a[rows], p[rows], n


class _MarginTripletMiner(BaseMiner):
    """A triplet miner with a ``margin`` (checked, stored and shown in the repr).

    ``_positive_margin = True`` makes a margin ``<= 0`` an error.
    """

    _positive_margin: bool = False

    def __init__(
        self,
        margin: float = 0.2,
        distance: str = "euclidean",
        max_triplets: int | None = None,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    ) -> None:
        super().__init__(distance, max_triplets, chunk_elements)
        if self._positive_margin:
            check_scalar(margin, "margin", low=0, low_inclusive=False)
        else:
            check_scalar(margin, "margin")
        self.margin = float(margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, " + super().extra_repr()
