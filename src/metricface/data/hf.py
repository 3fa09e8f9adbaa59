"""Adapter for face datasets on the Hugging Face Hub (optional ``datasets`` package).

``datasets`` is imported only when a dataset is loaded by name, with an error that says how to
install it; an already-loaded ``datasets.Dataset`` (or any indexable of row dicts) needs no
import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from metricface._optional import require

__all__ = ["HFFaceDataset"]


def _to_tensor(image: Any) -> torch.Tensor:
    """PIL image / HWC array / CHW tensor -> (3, H, W) uint8 RGB tensor."""
    if isinstance(image, torch.Tensor):
        t = image
    else:
        if hasattr(image, "convert"):  # PIL
            image = image.convert("RGB")
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        t = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"image must have 3 channels, got shape {tuple(t.shape)}")
    return t.contiguous()


class HFFaceDataset(Dataset):
    """A Hugging Face dataset of face images with identity labels, as a torch Dataset.

    Parameters
    ----------
    source : str or datasets.Dataset
        A Hub dataset name (loaded with ``datasets.load_dataset(source, split=split)``) or an
        already-loaded dataset (anything indexable by row giving dicts, with ``len``).
    split : str
        Split to load when ``source`` is a name.
    image_column, label_column : str
        Columns with the image (PIL image, array or tensor) and the integer identity label.
    transform : callable, optional
        Applied to the ``(3, H, W)`` uint8 image.

    Attributes
    ----------
    labels : torch.Tensor
        ``(len(self),)`` int64 labels, read once from the label column (for samplers).

    Raises
    ------
    ImportError
        If ``source`` is a name and ``datasets`` is not installed; the message says how to
        install it.
    """

    def __init__(
        self,
        source: Any,
        split: str = "train",
        *,
        image_column: str = "image",
        label_column: str = "label",
        transform: Callable[[torch.Tensor], Any] | None = None,
    ) -> None:
        if isinstance(source, str):
            datasets = require("datasets", purpose="load a dataset from the Hugging Face Hub")
            source = datasets.load_dataset(source, split=split)
        if not hasattr(source, "__getitem__") or not hasattr(source, "__len__"):
            raise TypeError(
                f"source must be a dataset name or an indexable dataset, got "
                f"{type(source).__name__}"
            )
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None, got {type(transform).__name__}")
        if len(source) == 0:
            raise ValueError("source must hold at least one row")
        first = source[0]
        for col in (image_column, label_column):
            if col not in first:
                raise ValueError(f"source has no column {col!r}; columns are {list(first)}")
        self.source = source
        self.image_column = image_column
        self.label_column = label_column
        self.transform = transform
        names = getattr(source, "column_names", None)
        if names is not None:  # a datasets.Dataset reads one column without decoding images
            values = source[label_column]
        else:
            values = [row[label_column] for row in source]
        self.labels = torch.as_tensor(np.asarray(values, dtype=np.int64))
        self.num_classes = int(self.labels.max()) + 1

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        row = self.source[int(index)]
        image = _to_tensor(row[self.image_column])
        if self.transform is not None:
            image = self.transform(image)
        return image, int(row[self.label_column])
