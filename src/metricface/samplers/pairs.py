"""Genuine / impostor pairs for verification-style training: a sampler and a dataset wrapper.

:class:`PairSampler` decides the pairs, ``(i, j, same)`` triples of dataset indices, in the
main process (vectorised, deterministic by seed and epoch, sharded across DDP ranks);
:class:`PairDataset` turns one such triple into ``(image_i, image_j, same)`` by indexing a
dataset that returns ``(image, label)``. Keeping the randomness in the sampler means DataLoader
workers (persistent or not) need no epoch state, and every rank agrees on the pairs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from metricface._validation import check_scalar
from metricface.samplers._groups import (
    LabelGroups,
    check_epoch,
    check_seed,
    epoch_rng,
    resolve_replicas,
)

__all__ = ["PairDataset", "PairSampler"]


class PairSampler(Sampler[tuple[int, int, int]]):
    """Yields ``(i, j, same)``: a genuine pair (``same == 1``) with probability ``pos_prob``.

    Each pair independently is genuine with probability ``pos_prob``. A genuine pair joins an
    anchor with a different image of its identity; an impostor pair joins it with an image
    drawn uniformly from all images of other identities. Anchors walk through shuffled lists of
    the images (genuine anchors through those whose identity has at least two images), so every
    image serves as an anchor about equally often.

    Parameters
    ----------
    labels : array-like of int, shape (N,)
        The identity label of each dataset index.
    pos_prob : float
        Probability of a genuine pair, in ``[0, 1]``.
    num_pairs : int, optional
        Pairs per epoch over all ranks; defaults to ``N``. Rounded up (down with
        ``drop_last=True``) to a multiple of ``num_replicas``.
    num_replicas, rank : int, optional
        DDP layout; taken from ``torch.distributed`` when initialised, else ``1`` and ``0``.
    seed : int
        Non-negative seed, the same on every rank.
    drop_last : bool
        Round ``num_pairs`` down instead of up to a multiple of ``num_replicas``.

    Raises
    ------
    ValueError
        If ``pos_prob > 0`` but no identity has two images, or ``pos_prob < 1`` but there is a
        single identity, and for out-of-range arguments.

    Notes
    -----
    Call :meth:`set_epoch` every epoch (same value on every rank) to draw new pairs.
    """

    def __init__(
        self,
        labels: object,
        pos_prob: float = 0.5,
        *,
        num_pairs: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        check_scalar(pos_prob, "pos_prob", low=0.0, high=1.0)
        if not isinstance(drop_last, bool):
            raise TypeError(f"drop_last must be a bool, got {type(drop_last).__name__}")
        self.pos_prob = float(pos_prob)
        self.seed = check_seed(seed)
        self.num_replicas, self.rank = resolve_replicas(num_replicas, rank)
        self.drop_last = drop_last
        self.epoch = 0
        self._groups = groups = LabelGroups(labels)
        if num_pairs is None:
            num_pairs = groups.num_images
        check_scalar(num_pairs, "num_pairs", low=1, integer=True)
        if self.pos_prob > 0 and not (groups.counts >= 2).any():
            raise ValueError(
                f"pos_prob={self.pos_prob} needs an identity with at least 2 images in labels, "
                "got none"
            )
        if self.pos_prob < 1 and groups.num_identities < 2:
            raise ValueError(
                f"pos_prob={self.pos_prob} needs at least 2 identities in labels for impostor "
                f"pairs, got {groups.num_identities}"
            )
        R = self.num_replicas
        self._per_rank = int(num_pairs) // R if drop_last else -(-int(num_pairs) // R)
        if self._per_rank == 0:
            raise ValueError(
                f"num_pairs must be at least num_replicas={R} with drop_last=True, got {num_pairs}"
            )
        # images whose identity has another image: the anchors of genuine pairs
        multi = groups.counts[groups.run_of_position] >= 2
        self._genuine_anchors = groups.order[multi]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose pairs the next iteration yields (a non-negative int)."""
        self.epoch = check_epoch(epoch)

    def __len__(self) -> int:
        """Pairs this rank yields per epoch (the same on every rank)."""
        return self._per_rank

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(pairs={len(self)}, pos_prob={self.pos_prob}, "
            f"rank={self.rank}/{self.num_replicas}, drop_last={self.drop_last}, "
            f"seed={self.seed}, epoch={self.epoch})"
        )

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        for i, j, same in self.epoch_pairs():
            yield int(i), int(j), int(same)

    def epoch_pairs(self, epoch: int | None = None) -> np.ndarray:
        """This rank's pairs of an epoch.

        Parameters
        ----------
        epoch : int, optional
            Defaults to the epoch last given to :meth:`set_epoch`.

        Returns
        -------
        numpy.ndarray
            Shape ``(len(self), 3)``, int64 columns ``i, j, same`` (``same`` is 1 or 0).
        """
        epoch = self.epoch if epoch is None else check_epoch(epoch)
        total = self._per_rank * self.num_replicas
        rng = epoch_rng(self.seed, epoch)
        same = rng.random(total) < self.pos_prob
        n_genuine = int(same.sum())
        pairs = np.empty((total, 3), dtype=np.int64)
        pairs[:, 2] = same
        if n_genuine:
            anchors = _walk(self._genuine_anchors, n_genuine, rng)
            pairs[same, 0] = anchors
            pairs[same, 1] = self._groups.draw_positive(anchors, rng, include_self=False)
        if n_genuine < total:
            anchors = _walk(self._groups.order, total - n_genuine, rng)
            pairs[~same, 0] = anchors
            pairs[~same, 1] = self._groups.draw_negative(anchors, rng)
        return pairs[self.rank :: self.num_replicas]


def _walk(pool: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """``length`` items taken in turn from a shuffled ``pool``, reshuffled at every pass."""
    passes = -(-length // pool.size)
    return np.concatenate([rng.permutation(pool) for _ in range(passes)])[:length]


class PairDataset(Dataset):
    """Loads the pair ``(i, j, same)`` of a :class:`PairSampler` from a dataset.

    Parameters
    ----------
    dataset : Dataset
        A map-style dataset whose items are ``(image, label, ...)``.
    check_labels : bool
        Verify that the two items' labels agree with ``same`` (equal labels exactly when
        ``same == 1``) and raise a ``ValueError`` otherwise; this catches a ``labels`` array
        that does not match the dataset.

    Examples
    --------
    ``DataLoader(PairDataset(dataset), sampler=PairSampler(dataset.targets), batch_size=64)``
    yields batches ``(images_1, images_2, same)`` of shapes ``(B, ...)``, ``(B, ...)``,
    ``(B,)``.
    """

    def __init__(self, dataset: Any, *, check_labels: bool = True) -> None:
        if not hasattr(dataset, "__getitem__"):
            raise TypeError(f"dataset must support indexing, got {type(dataset).__name__}")
        self.dataset = dataset
        self.check_labels = check_labels

    def __getitem__(self, pair: tuple[int, int, int]) -> tuple[Any, Any, int]:
        """Return ``(image_i, image_j, same)`` for ``pair = (i, j, same)``."""
        try:
            i, j, same = pair
        except (TypeError, ValueError):
            raise TypeError(
                f"PairDataset is indexed by (i, j, same) triples from a PairSampler, got {pair!r}"
            ) from None
        first, second = self.dataset[i], self.dataset[j]
        if self.check_labels and int(first[1] == second[1]) != int(same):
            a, b = (x.item() if isinstance(x, torch.Tensor) else x for x in (first[1], second[1]))
            raise ValueError(
                f"pair ({i}, {j}, same={same}) disagrees with the dataset's labels {a!r} and "
                f"{b!r}: were the sampler's labels built from this dataset?"
            )
        return first[0], second[0], int(same)

    def __len__(self) -> int:
        return len(self.dataset)
