"""Batched inference: embed every image a data loader yields.

:func:`embed` runs a model over a loader under ``torch.inference_mode`` with the model in eval
mode (each submodule's train/eval flag is restored afterwards, exactly as it was), optionally
under autocast and with horizontal-flip test-time augmentation, and gathers the embeddings as
one float32 CPU tensor in loader order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from metricface._optional import require
from metricface.numerics import l2_normalize

__all__ = ["embed"]

_IMAGE_KEYS = ("image", "images", "img", "input", "inputs")
_LABEL_KEYS = ("label", "labels", "target", "targets")
_AMP_DTYPES = (torch.bfloat16, torch.float16)


def _split_batch(batch: Any, index: int) -> tuple[torch.Tensor, Any]:
    """Split a batch (tensor, ``(images, labels, ...)`` sequence or dict) into images, labels."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, Mapping):
        image_key = next((k for k in _IMAGE_KEYS if k in batch), None)
        if image_key is None:
            raise ValueError(
                f"batch {index} is a dict without an image entry: expected one of the keys "
                f"{_IMAGE_KEYS}, got {sorted(map(str, batch))}"
            )
        label_key = next((k for k in _LABEL_KEYS if k in batch), None)
        return batch[image_key], None if label_key is None else batch[label_key]
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0], batch[1] if len(batch) > 1 else None
    raise TypeError(
        f"batch {index} must be a tensor of images, an (images, labels) tuple or a dict with an "
        f"'image' entry, got {type(batch).__name__}"
    )


def _as_label_tensor(labels: Any, n: int, index: int) -> torch.Tensor:
    try:
        labels = torch.as_tensor(labels).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(
            f"labels of batch {index} must be {n} integers (one per image), got "
            f"{type(labels).__name__} that does not convert to a tensor"
        ) from exc
    if labels.is_floating_point() or labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(
            f"labels of batch {index} must be {n} integers (one per image), got dtype "
            f"{labels.dtype} and shape {tuple(labels.shape)}"
        )
    return labels.long()


def _forward(model: nn.Module, images: torch.Tensor, index: int) -> torch.Tensor:
    out = model(images)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != images.shape[0]:
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise TypeError(
            f"model must return a tensor of shape (batch, dim) = ({images.shape[0]}, D) for "
            f"batch {index}, got {got}"
        )
    return out.float()


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def embed(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    flip_tta: bool = False,
    normalize: bool = True,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Embed every image of ``loader`` with ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        Maps images ``(B, C, H, W)`` to embeddings ``(B, D)``. It is switched to eval mode for
        the pass and every submodule's mode is restored afterwards. It is not moved: put it on
        ``device`` yourself.
    loader : iterable
        Yields image tensors ``(B, C, H, W)``, ``(images, labels, ...)`` tuples/lists (items
        after the labels are ignored), or dicts with an image entry (``"image"``, ``"images"``,
        ``"img"``, ``"input"`` or ``"inputs"``) and optionally a label entry (``"label"``,
        ``"labels"``, ``"target"`` or ``"targets"``).
    device : torch.device or str, optional
        Where the images are sent; defaults to the model's device.
    amp_dtype : {torch.bfloat16, torch.float16}, optional
        Run the forward pass under autocast with this dtype; embeddings are returned in float32.
    flip_tta : bool
        Add the embedding of the horizontally flipped image (last axis reversed) to that of the
        image, before normalisation.
    normalize : bool
        L2-normalise each (summed) embedding; a zero embedding stays zero.
    progress : bool
        Show a tqdm progress bar (needs ``tqdm``: ``pip install 'metricface[progress]'``).

    Returns
    -------
    embeddings : torch.Tensor, shape (N, D), float32, CPU
        In loader order.
    labels : torch.Tensor, shape (N,), int64, CPU, or None
        The labels the loader yielded, or ``None`` if it yielded none.

    Raises
    ------
    TypeError
        Not a module, an unknown batch structure, a model output that is not ``(B, D)``, or an
        unsupported ``amp_dtype``.
    ValueError
        An empty loader, batches that give labels only sometimes, or non-finite embeddings
        (e.g. float16 overflow).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if amp_dtype is not None and amp_dtype not in _AMP_DTYPES:
        raise TypeError(
            f"amp_dtype must be torch.bfloat16, torch.float16 or None, got {amp_dtype!r}"
        )
    device = _model_device(model) if device is None else torch.device(device)
    batches: Iterable[Any] = loader
    if progress:
        tqdm = require("tqdm.auto", purpose="show a progress bar").tqdm
        total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
        batches = tqdm(loader, total=total, desc="embedding", unit="batch")

    modes = {module: module.training for module in model.modules()}
    model.eval()
    chunks: list[torch.Tensor] = []
    label_chunks: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            for index, batch in enumerate(batches):
                images, labels = _split_batch(batch, index)
                had_labels = bool(label_chunks)
                if index > 0 and had_labels != (labels is not None):
                    raise ValueError(
                        f"batch {index} {'lacks' if labels is None else 'has'} labels while "
                        "earlier batches did the opposite; a loader must give labels for all "
                        "batches or none"
                    )
                images = images.to(device, non_blocking=True)
                with torch.autocast(
                    device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None
                ):
                    out = _forward(model, images, index)
                    if flip_tta:
                        out = out + _forward(model, images.flip(-1), index)
                if normalize:
                    out = l2_normalize(out)
                out = out.cpu()
                if not torch.isfinite(out).all():
                    raise ValueError(
                        f"model produced non-finite embeddings for batch {index}"
                        + (f" under autocast to {amp_dtype}" if amp_dtype is not None else "")
                    )
                chunks.append(out)
                if labels is not None:
                    label_chunks.append(_as_label_tensor(labels, out.shape[0], index))
    finally:
        for module, mode in modes.items():
            module.training = mode
        if progress and hasattr(batches, "close"):
            batches.close()  # type: ignore[union-attr]
    if not chunks:
        raise ValueError("loader must yield at least one batch, got none")
    return torch.cat(chunks), torch.cat(label_chunks) if label_chunks else None
