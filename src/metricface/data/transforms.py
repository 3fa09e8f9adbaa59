"""Transform presets for aligned face crops, built on :mod:`torchvision.transforms.v2`.

Aligned face crops (112x112 for IResNets, 224x224 for ImageNet-layout ResNets) are already
centred and scaled by a landmark alignment, so augmentation stays mild: a horizontal flip, a
slightly re-scaled crop and a small colour jitter. Stronger geometric augmentation moves the
eyes and mouth away from where the network expects them and usually hurts verification.

Both presets accept ``(3, H, W)`` uint8 tensors (what :class:`~metricface.data.IdentityFolder`
and :class:`~metricface.data.SyntheticFaces` return), PIL images of any mode (RGBA, grey and
palette images are converted to RGB) or ``tv_tensors.Image`` and return float32 ``(3, S, S)``
tensors normalised with ``mean``/``std``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torchvision.transforms import v2

from metricface._validation import check_scalar

__all__ = [
    "FACE_MEAN",
    "FACE_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "eval_transform",
    "train_transform",
]

#: Normalisation mean of the ArcFace/InsightFace recipes, which map pixels to ``[-1, 1]``.
FACE_MEAN = (0.5, 0.5, 0.5)
#: Normalisation standard deviation of the ArcFace/InsightFace recipes.
FACE_STD = (0.5, 0.5, 0.5)
#: Normalisation mean expected by torchvision's ImageNet ResNets.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
#: Normalisation standard deviation expected by torchvision's ImageNet ResNets.
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check(image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
    check_scalar(image_size, "image_size", low=1, integer=True)
    for name, value in (("mean", mean), ("std", std)):
        if len(value) != 3:
            raise ValueError(f"{name} must have 3 entries (R, G, B), got {value!r}")
    if min(std) <= 0:
        raise ValueError(f"std must be positive, got {std!r}")


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _to_image() -> list[v2.Transform]:
    """PIL images of any mode (RGBA, grey, palette) to RGB, then everything to an image tensor."""
    return [v2.Lambda(_pil_to_rgb, Image.Image), v2.ToImage()]


def _resize(image_size: int) -> v2.Transform:
    return v2.Resize((image_size, image_size), antialias=True)


def _compose(steps: list[v2.Transform], mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """``steps``, then conversion to float32 in ``[0, 1]`` and per-channel normalisation."""
    return v2.Compose(
        [*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    )


def eval_transform(
    image_size: int = 112,
    *,
    mean: Sequence[float] = FACE_MEAN,
    std: Sequence[float] = FACE_STD,
) -> v2.Compose:
    """Deterministic preprocessing: resize to ``image_size`` (if needed) and normalise.

    Parameters
    ----------
    image_size : int
        Output side (112 for IResNets, 224 for ImageNet-layout ResNets).
    mean, std : sequence of 3 floats
        Per-channel normalisation of pixels scaled to ``[0, 1]``; :data:`FACE_MEAN` /
        :data:`FACE_STD` by default, :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD` for
        torchvision-pretrained ResNets.

    Returns
    -------
    torchvision.transforms.v2.Compose
        ``image -> (3, image_size, image_size)`` float32 tensor.
    """
    _check(image_size, mean, std)
    return _compose([*_to_image(), _resize(image_size)], mean, std)


def train_transform(
    image_size: int = 112,
    *,
    flip: bool = True,
    crop_scale: tuple[float, float] = (0.85, 1.0),
    color_jitter: float = 0.15,
    mean: Sequence[float] = FACE_MEAN,
    std: Sequence[float] = FACE_STD,
) -> v2.Compose:
    """Mild training augmentation for aligned face crops.

    Parameters
    ----------
    image_size : int
        Output side.
    flip : bool
        Random horizontal flip (faces are nearly symmetric).
    crop_scale : (float, float)
        Area range of the random crop (aspect ratio within 5 %), resized to ``image_size``;
        ``(1.0, 1.0)`` disables it.
    color_jitter : float
        Brightness, contrast and saturation jitter strength; 0 disables it.
    mean, std : sequence of 3 floats
        Normalisation, as in :func:`eval_transform`.

    Returns
    -------
    torchvision.transforms.v2.Compose
        ``image -> (3, image_size, image_size)`` float32 tensor; random draws use torch's
        global generator (seed it, or the DataLoader worker seeds, for reproducibility).
    """
    _check(image_size, mean, std)
    lo, hi = crop_scale
    check_scalar(lo, "crop_scale[0]", low=0.0, high=1.0, low_inclusive=False)
    check_scalar(hi, "crop_scale[1]", low=lo, high=1.0)
    check_scalar(color_jitter, "color_jitter", low=0.0, high=1.0)
    steps: list[v2.Transform] = _to_image()
    if lo < 1.0:
        steps.append(
            v2.RandomResizedCrop(
                (image_size, image_size), scale=(lo, hi), ratio=(0.95, 1.05), antialias=True
            )
        )
    else:
        steps.append(_resize(image_size))
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if color_jitter > 0:
        steps.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    return _compose(steps, mean, std)
