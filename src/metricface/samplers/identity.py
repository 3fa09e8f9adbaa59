"""P identities x K images per batch, visiting every image each epoch, sharded for DDP.

How an epoch is built (all vectorised over the label array):

1. Each eligible identity's images are shuffled and cut into ``ceil(n / K)`` *K-groups*. The
   slots of an identity are filled cyclically from its shuffled images, so the last group is
   padded with images drawn again from the start of the same shuffled list: an identity with
   ``n < K`` images repeats each of them ``K // n`` or ``K // n + 1`` times, an identity with
   ``n >= K`` never repeats an image inside one group.
2. The epoch has ``B`` batches: at least ``ceil(groups / P)`` and at least as many as the
   largest identity has groups (an identity appears at most once per batch), rounded up to a
   multiple of ``num_replicas`` so every rank gets the same number of batches. Slots left over
   are filled with extra K-groups of identities (continuing their cyclic fill), spread as
   evenly as their room allows.
3. The groups are laid out identity by identity (in a random identity order) in a ``P x B``
   grid read row by row, and every row's columns are permuted at random. Column ``b`` is batch
   ``b``. An identity occupies consecutive positions of at most ``B``, so before the
   permutation its groups sit in distinct columns; the permutation of a row is drawn so that a
   run continuing from the previous row keeps avoiding the columns it already uses. Hence no
   batch holds an identity twice, while which identities meet in a batch changes at random.
4. Batches are shuffled and rank ``r`` takes batches ``r, r + R, r + 2R, ...``.

With ``drop_last=True`` step 2 rounds *down* instead: ``B = floor(groups / P)`` (to a
multiple of ``num_replicas``), an identity keeps at most ``B`` of its groups, and the groups
that do not fit are left out, chosen at random each epoch.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from metricface._validation import check_scalar
from metricface.samplers._groups import (
    LabelGroups,
    check_epoch,
    check_seed,
    epoch_rng,
    resolve_replicas,
)

__all__ = ["IdentityBatchSampler"]


class IdentityBatchSampler(Sampler[list[int]]):
    """Batches of ``P`` distinct identities x ``K`` images, for ``DataLoader(batch_sampler=...)``.

    Every image of every eligible identity is visited at least once per epoch (images of an
    identity whose count is not a multiple of ``K`` are padded with repeats of its own images,
    never dropped); an identity never appears twice in a batch; the order depends only on
    ``seed`` and the epoch; under DDP every rank receives disjoint batches and the same number
    of them. See the module documentation for the construction.

    Parameters
    ----------
    labels : array-like of int, shape (N,)
        The identity label of each dataset index (list, NumPy array or tensor), e.g. a
        torchvision ``ImageFolder``'s ``targets``.
    identities_per_batch : int
        ``P``, the number of distinct identities in a batch; at most the number of eligible
        identities.
    images_per_identity : int
        ``K``, the number of images of each identity in a batch (``>= 1``).
    num_replicas : int, optional
        Number of DDP ranks. Taken from ``torch.distributed`` when initialised, else 1.
    rank : int, optional
        This process's rank in ``[0, num_replicas)``. Taken from ``torch.distributed`` when
        initialised, else 0.
    seed : int
        Non-negative seed; every rank must use the same one.
    drop_last : bool
        ``False`` (default): round the number of batches up and fill the spare slots with
        extra K-groups, so nothing is skipped. ``True``: round down and leave out randomly
        chosen K-groups instead (some images are not visited in that epoch).
    min_images : int
        Identities with fewer images are left out with a :class:`UserWarning`. The default 2
        excludes identities with a single image, which cannot form a positive pair;
        ``min_images=1`` keeps them (their K slots then repeat that one image).

    Raises
    ------
    TypeError, ValueError
        For labels that are not a 1-D integer array, ``K < 1``, ``P`` larger than the
        number of eligible identities, ``rank`` outside ``[0, num_replicas)``, and so on.

    Notes
    -----
    Call :meth:`set_epoch` at the start of every epoch (on every rank, with the same value), as
    with :class:`torch.utils.data.DistributedSampler`; otherwise each epoch repeats the
    same batches.

    Each batch lists its identities' images together: ``[a, a, b, b, ...]`` for ``K = 2``.
    """

    def __init__(
        self,
        labels: object,
        identities_per_batch: int,
        images_per_identity: int,
        *,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        drop_last: bool = False,
        min_images: int = 2,
    ) -> None:
        check_scalar(identities_per_batch, "identities_per_batch", low=1, integer=True)
        check_scalar(images_per_identity, "images_per_identity", low=1, integer=True)
        check_scalar(min_images, "min_images", low=1, integer=True)
        if not isinstance(drop_last, bool):
            raise TypeError(f"drop_last must be a bool, got {type(drop_last).__name__}")
        self.seed = check_seed(seed)
        self.num_replicas, self.rank = resolve_replicas(num_replicas, rank)
        self.identities_per_batch = P = int(identities_per_batch)
        self.images_per_identity = K = int(images_per_identity)
        self.min_images = int(min_images)
        self.drop_last = drop_last
        self.epoch = 0

        groups = LabelGroups(labels)
        keep = groups.counts >= self.min_images
        excluded = int(groups.num_identities - keep.sum())
        if excluded:
            warnings.warn(
                f"IdentityBatchSampler leaves out {excluded} of {groups.num_identities} "
                f"identities ({int(groups.counts[~keep].sum())} images) with fewer than "
                f"min_images={self.min_images} images; pass min_images=1 to keep them",
                UserWarning,
                stacklevel=2,
            )
            groups = groups.select(keep)
        if groups.num_identities < P:
            raise ValueError(
                f"identities_per_batch must be at most the number of identities with at least "
                f"min_images={self.min_images} images ({groups.num_identities}), got {P}"
            )
        self._groups = groups
        # K-groups each identity forms from its own images
        self._num_groups = -(-groups.counts // K)
        total = int(self._num_groups.sum())
        R = self.num_replicas
        if drop_last:
            per_rank = total // (P * R)
            if per_rank == 0:
                raise ValueError(
                    f"drop_last=True leaves no batch: the data forms {total} groups of "
                    f"images_per_identity={K}, fewer than identities_per_batch * num_replicas "
                    f"= {P * R}; use drop_last=False"
                )
        else:
            largest = int(self._num_groups.max())
            needed = max(-(-total // P), largest)
            per_rank = -(-needed // R)
            spare = per_rank * R * P - total
            if largest > -(-total // P) and spare > total // 4:
                label = groups.identities[int(np.argmax(self._num_groups))]
                warnings.warn(
                    f"identity {label} forms {largest} groups of images_per_identity={K}, "
                    f"more than the {-(-total // P)} batches the data would otherwise fill: "
                    f"the epoch has {per_rank * R} batches and {spare} of its "
                    f"{per_rank * R * P} groups repeat images; drop_last=True caps that "
                    "identity instead",
                    UserWarning,
                    stacklevel=2,
                )
        self._per_rank = int(per_rank)

    # ------------------------------------------------------------------ public API
    @property
    def batch_size(self) -> int:
        """``P * K``, the length of every batch."""
        return self.identities_per_batch * self.images_per_identity

    @property
    def identities(self) -> np.ndarray:
        """Label values of the eligible identities, increasing; shape ``(C,)``."""
        return self._groups.identities

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields (a non-negative int)."""
        self.epoch = check_epoch(epoch)

    def __len__(self) -> int:
        """Number of batches this rank yields per epoch (the same on every rank)."""
        return self._per_rank

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(identities_per_batch={self.identities_per_batch}, "
            f"images_per_identity={self.images_per_identity}, identities={self.identities.size}, "
            f"batches={len(self)}, rank={self.rank}/{self.num_replicas}, "
            f"drop_last={self.drop_last}, seed={self.seed}, epoch={self.epoch})"
        )

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.epoch_batches():
            yield batch.tolist()

    def epoch_batches(self, epoch: int | None = None) -> np.ndarray:
        """This rank's batches of an epoch as an array.

        Parameters
        ----------
        epoch : int, optional
            Defaults to the epoch last given to :meth:`set_epoch`.

        Returns
        -------
        numpy.ndarray
            Shape ``(len(self), P * K)``, dataset indices; row ``i`` is the ``i``-th batch.
        """
        epoch = self.epoch if epoch is None else check_epoch(epoch)
        return self._global_batches(epoch)[self.rank :: self.num_replicas]

    # ------------------------------------------------------------------ construction
    def _global_batches(self, epoch: int) -> np.ndarray:
        groups, P, K = self._groups, self.identities_per_batch, self.images_per_identity
        B = self._per_rank * self.num_replicas
        rng = epoch_rng(self.seed, epoch)
        shuffled = groups.shuffled_order(rng)
        per_identity = self._groups_per_identity(B, rng)

        # lay the K-groups out identity by identity, in a random identity order
        ids = rng.permutation(groups.num_identities)
        runs = per_identity[ids]
        run_of = np.repeat(ids, runs)  # identity of each of the B * P positions
        local = np.arange(B * P) - np.repeat(np.cumsum(runs) - runs, runs)  # group number

        columns = self._row_permutations(B, P, run_of, local, per_identity, rng)
        position_of = np.empty((B, P), dtype=np.int64)  # (batch, slot) -> position
        position_of[columns.ravel(), np.arange(B * P) // B] = np.arange(B * P)
        position_of = position_of[rng.permutation(B)]

        ident = run_of[position_of]
        slots = local[position_of][..., None] * K + np.arange(K)
        slots %= groups.counts[ident][..., None]
        slots += groups.starts[ident][..., None]
        return shuffled[slots].reshape(B, P * K)

    def _groups_per_identity(self, B: int, rng: np.random.Generator) -> np.ndarray:
        """How many K-groups each identity contributes to an epoch of ``B`` batches."""
        counts = np.minimum(self._num_groups, B)  # at most once per batch
        change = B * self.identities_per_batch - int(counts.sum())
        if change < 0:  # drop_last: leave out randomly chosen groups
            counts = counts - rng.multivariate_hypergeometric(counts, -change)
        elif change > 0:  # fill spare slots, spread evenly over the identities with room
            counts = counts + _spread(B - counts, change, rng)
        return counts

    @staticmethod
    def _row_permutations(
        B: int,
        P: int,
        run_of: np.ndarray,
        local: np.ndarray,
        per_identity: np.ndarray,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """A column permutation per row of the ``P x B`` grid; shape ``(P, B)``.

        A run that starts in row ``q - 1`` and continues into row ``q`` must not land on a
        column it already holds in row ``q - 1``: its head in row ``q`` is placed on columns
        drawn from the ones its tail left free.
        """
        columns = np.empty((P, B), dtype=np.int64)
        columns[0] = rng.permutation(B)
        for q in range(1, P):
            tail = int(local[q * B])  # groups of this position's run already in row q - 1
            if tail == 0:
                columns[q] = rng.permutation(B)
                continue
            head = int(per_identity[run_of[q * B]]) - tail
            taken = columns[q - 1, B - tail :]
            free = np.ones(B, dtype=bool)
            free[taken] = False
            allowed = rng.permutation(np.flatnonzero(free))
            rest = rng.permutation(np.concatenate((allowed[head:], taken)))
            columns[q] = np.concatenate((allowed[:head], rest))
        return columns


def _spread(room: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``total`` units over bins with capacities ``room`` as evenly as they allow.

    Every bin gets ``min(room, level)`` for the largest level that fits, and the remainder
    goes one unit each to randomly chosen bins that still have room.
    """
    lo, hi = 0, int(room.max())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if int(np.minimum(room, mid).sum()) <= total:
            lo = mid
        else:
            hi = mid - 1
    out = np.minimum(room, lo)
    rest = total - int(out.sum())
    if rest:
        out[rng.choice(np.flatnonzero(room > lo), size=rest, replace=False)] += 1
    return out
