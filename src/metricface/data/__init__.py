"""Datasets: identity folders, pair lists, built-in synthetic faces and transform presets."""

from metricface.data.folder import (
    IMAGE_EXTENSIONS,
    IdentityFolder,
    ImageDecodeError,
    decode_image_file,
)
from metricface.data.synthetic import DISTORTIONS, SyntheticFaces

__all__ = [
    "DISTORTIONS",
    "IMAGE_EXTENSIONS",
    "IdentityFolder",
    "ImageDecodeError",
    "SyntheticFaces",
    "decode_image_file",
]
