"""Datasets: identity folders, pair lists, built-in synthetic faces and transform presets."""

from metricface.data.folder import (
    IMAGE_EXTENSIONS,
    IdentityFolder,
    ImageDecodeError,
    decode_image_file,
)
from metricface.data.pairs import (
    PairList,
    PairListDataset,
    read_lfw_pairs,
    read_pairs_csv,
    write_lfw_pairs,
    write_pairs_csv,
    write_submission,
)
from metricface.data.synthetic import DISTORTIONS, SyntheticFaces

__all__ = [
    "DISTORTIONS",
    "IMAGE_EXTENSIONS",
    "IdentityFolder",
    "ImageDecodeError",
    "PairList",
    "PairListDataset",
    "SyntheticFaces",
    "decode_image_file",
    "read_lfw_pairs",
    "read_pairs_csv",
    "write_lfw_pairs",
    "write_pairs_csv",
    "write_submission",
]
