"""Dataset indices grouped by identity, with vectorised random draws inside and across groups.

Every sampler in this package starts from the same table: the dataset indices sorted by label
(``order``), the start and length of each identity's run in that order, and the identity's
label value. Everything here is NumPy on whole arrays, so a table of millions of labels is
built in a fraction of a second and each draw costs a few vector operations.
"""

from __future__ import annotations

import numpy as np

from metricface._validation import check_label_array, check_scalar
from metricface.distributed import get_rank, get_world_size

__all__ = ["LabelGroups", "check_epoch", "check_seed", "epoch_rng", "resolve_replicas"]


class LabelGroups:
    """Dataset indices grouped by label.

    Parameters
    ----------
    labels : array-like of int, shape (N,)
        One identity label per dataset index (any integers; they need not be contiguous).

    Attributes
    ----------
    order : numpy.ndarray, shape (M,)
        Dataset indices sorted by label (stable), ``M == N`` unless built by :meth:`select`.
    starts, counts : numpy.ndarray, shape (C,)
        Where each identity's run begins in ``order`` and how long it is.
    identities : numpy.ndarray, shape (C,)
        The label value of each run, increasing.
    num_images : int
        ``N``, the length of the dataset the indices refer to.
    """

    def __init__(self, labels: object, name: str = "labels") -> None:
        array = check_label_array(labels, name)
        order = np.argsort(array, kind="stable")
        ordered = array[order]
        if array.size:
            starts = np.concatenate(([0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1))
        else:
            starts = np.zeros(0, dtype=np.int64)
        self._set(order, starts.astype(np.int64), ordered[starts], int(array.size))

    def _set(
        self, order: np.ndarray, starts: np.ndarray, identities: np.ndarray, num_images: int
    ) -> None:
        self.order = order.astype(np.int64, copy=False)
        self.starts = starts
        self.counts = np.diff(np.append(starts, order.size)).astype(np.int64)
        self.identities = identities
        self.num_images = num_images
        # identity number of each position in ``order`` and position of each dataset index
        self.run_of_position = np.repeat(np.arange(starts.size, dtype=np.int64), self.counts)
        self.position = np.full(num_images, -1, dtype=np.int64)
        self.position[self.order] = np.arange(self.order.size, dtype=np.int64)

    @property
    def num_identities(self) -> int:
        return int(self.starts.size)

    def select(self, keep: np.ndarray) -> LabelGroups:
        """The table restricted to the identities where ``keep`` (shape ``(C,)``) is true."""
        out = LabelGroups.__new__(LabelGroups)
        kept_positions = keep[self.run_of_position]
        counts = self.counts[keep]
        starts = np.cumsum(counts) - counts
        out._set(self.order[kept_positions], starts, self.identities[keep], self.num_images)
        return out

    def shuffled_order(self, rng: np.random.Generator) -> np.ndarray:
        """``order`` with each identity's run shuffled independently; shape ``(M,)``."""
        # sort by (run number, rank in a random permutation): the keys are distinct integers,
        # so the result does not depend on the sorting algorithm numpy picks on this machine
        size = self.order.size
        keys = self.run_of_position * size
        keys += rng.permutation(size)
        return self.order[np.argsort(keys)]

    def draw_positive(
        self, anchors: np.ndarray, rng: np.random.Generator, *, include_self: bool
    ) -> np.ndarray:
        """For each anchor (dataset index), a uniformly drawn index with the same label.

        With ``include_self=False`` the anchor itself is excluded; anchors whose identity has
        a single image then get themselves back (callers exclude such anchors when it matters).
        """
        pos = self.position[anchors]
        run = self.run_of_position[pos]
        start, count = self.starts[run], self.counts[run]
        if include_self:
            offset = rng.integers(0, count)
        else:
            others = np.maximum(count - 1, 1)
            offset = (pos - start + 1 + rng.integers(0, others)) % count
        return self.order[start + offset]

    def draw_negative(self, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each anchor, an index drawn uniformly among the images of *other* identities.

        Needs at least two identities.
        """
        run = self.run_of_position[self.position[anchors]]
        start, count = self.starts[run], self.counts[run]
        u = rng.integers(0, self.order.size - count)
        u += np.where(u >= start, count, 0)  # skip over the anchor's own run
        return self.order[u]


def epoch_rng(seed: int, epoch: int, *extra: int) -> np.random.Generator:
    """The random generator of one epoch: the same on every rank and in every process."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, *extra]))


def resolve_replicas(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """Check ``num_replicas``/``rank``, filling them from ``torch.distributed`` when omitted."""
    if num_replicas is None:
        num_replicas = get_world_size()
    check_scalar(num_replicas, "num_replicas", low=1, integer=True)
    if rank is None:
        rank = get_rank()
    check_scalar(rank, "rank", integer=True)
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
    return int(num_replicas), int(rank)


def check_seed(seed: object) -> int:
    check_scalar(seed, "seed", low=0, integer=True)
    return int(seed)  # type: ignore[call-overload]


def check_epoch(epoch: object) -> int:
    check_scalar(epoch, "epoch", low=0, integer=True)
    return int(epoch)  # type: ignore[call-overload]
