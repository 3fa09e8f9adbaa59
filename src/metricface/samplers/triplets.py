"""Clean anchor / distorted positive / other-identity negative triplets from a labelled dataset.

The use case is robustness training: the network must map a distorted image (blur, occlusion,
low resolution, compression, ...) of a person close to a clean one and away from other people.
Item ``index`` of :class:`DistortedTripletDataset` is built around dataset image ``index`` as
the clean anchor. The positive and negative picks and the distortion's random state are drawn
from ``(seed, epoch, index)`` alone, so the triplets do not depend on the DataLoader's worker
count or on which DDP rank loads them: shard with
:class:`torch.utils.data.distributed.DistributedSampler` as for any dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from metricface.samplers._groups import LabelGroups, check_epoch, check_seed, epoch_rng

__all__ = ["DistortedTripletDataset"]

_POSITIVES = ("any", "same", "other")


class DistortedTripletDataset(Dataset):
    """Items ``(anchor, distort(positive), negative)`` built around each dataset image.

    Parameters
    ----------
    dataset : Dataset
        A map-style dataset of ``N`` items ``(image, label, ...)`` (or bare images); the
        labels it returns are checked against ``labels``.
    distort : callable
        Applied to the positive image (e.g. a torchvision transform). Its draws from torch's
        global random generator are made reproducible: it runs under a forked generator seeded
        from ``(seed, epoch, index)``. Randomness from Python's ``random`` or NumPy's global
        state is not controlled.
    labels : array-like of int, shape (N,), optional
        The label of each dataset index; defaults to ``dataset.targets`` (torchvision's
        ``ImageFolder`` and ``DatasetFolder`` provide it).
    positive : {"any", "same", "other"}
        Which image of the anchor's identity is distorted: ``"any"`` (default) draws uniformly
        among all of them, the anchor included; ``"same"`` always distorts the anchor image
        itself; ``"other"`` draws among the identity's other images (the anchor itself for an
        identity with a single image).
    seed : int
        Non-negative seed.
    return_labels : bool
        Also return the anchor's and the negative's labels: items become
        ``(anchor, positive, negative, anchor_label, negative_label)``.

    Notes
    -----
    The negative is drawn uniformly from all images of other identities. Call
    :meth:`set_epoch` every epoch to draw new positives, negatives and distortions. DataLoader
    workers hold copies of the dataset: with ``persistent_workers=True`` they do not see
    :meth:`set_epoch`, so leave persistent workers off (the default) when relying on it.
    """

    def __init__(
        self,
        dataset: Any,
        distort: Callable[[Any], Any],
        *,
        labels: object = None,
        positive: Literal["any", "same", "other"] = "any",
        seed: int = 0,
        return_labels: bool = False,
    ) -> None:
        if not callable(distort):
            raise TypeError(f"distort must be callable, got {type(distort).__name__}")
        if positive not in _POSITIVES:
            raise ValueError(f"positive must be one of {_POSITIVES}, got {positive!r}")
        if labels is None:
            labels = getattr(dataset, "targets", None)
            if labels is None:
                raise ValueError(
                    "labels must be given when the dataset has no `targets` attribute, "
                    f"got labels=None for a {type(dataset).__name__}"
                )
        self._groups = groups = LabelGroups(labels)
        if hasattr(dataset, "__len__") and len(dataset) != groups.num_images:
            raise ValueError(
                f"labels must have one entry per dataset item ({len(dataset)}), "
                f"got {groups.num_images}"
            )
        if groups.num_identities < 2:
            raise ValueError(
                "labels must hold at least 2 identities to draw negatives, "
                f"got {groups.num_identities}"
            )
        self.dataset = dataset
        self.distort = distort
        self.positive = positive
        self.seed = check_seed(seed)
        self.return_labels = bool(return_labels)
        self.epoch = 0
        self._labels = np.empty(groups.num_images, dtype=np.int64)
        self._labels[groups.order] = groups.identities[groups.run_of_position]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose triplets are returned from now on (a non-negative int)."""
        self.epoch = check_epoch(epoch)

    def __len__(self) -> int:
        return self._groups.num_images

    def triplet_indices(self, index: int, epoch: int | None = None) -> tuple[int, int, int]:
        """The dataset indices ``(anchor, positive, negative)`` of item ``index``."""
        return self._draw(index, self.epoch if epoch is None else check_epoch(epoch))[:3]

    def _draw(self, index: int, epoch: int) -> tuple[int, int, int, int]:
        """Anchor, positive, negative and the distortion's seed of item ``index``."""
        n = self._groups.num_images
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if not -n <= index < n:
            raise IndexError(f"index must be in [-{n}, {n}), got {index}")
        index = int(index) % n
        rng = epoch_rng(self.seed, epoch, index)
        anchor = np.array([index])
        if self.positive == "same":
            positive = index
        else:
            drawn = self._groups.draw_positive(anchor, rng, include_self=self.positive == "any")
            positive = int(drawn[0])
        negative = int(self._groups.draw_negative(anchor, rng)[0])
        return index, positive, negative, int(rng.integers(0, 2**63 - 1))

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        """Return ``(anchor, distorted_positive, negative)`` (plus labels if asked)."""
        a, p, n, seed = self._draw(index, self.epoch)
        anchor = self._image(a)
        positive = self._image(p)
        negative = self._image(n)
        # seed only the CPU generator (torch.manual_seed would reseed CUDA's too) and restore
        # it afterwards, so the caller's random stream is left untouched
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            positive = self.distort(positive)
        if self.return_labels:
            return anchor, positive, negative, int(self._labels[a]), int(self._labels[n])
        return anchor, positive, negative

    def _image(self, index: int) -> Any:
        item = self.dataset[index]
        if isinstance(item, (tuple, list)) and len(item) >= 2:
            if int(item[1]) != self._labels[index]:
                raise ValueError(
                    f"dataset item {index} has label {int(item[1])} but labels[{index}] is "
                    f"{int(self._labels[index])}: were the labels built from this dataset?"
                )
            return item[0]
        return item
