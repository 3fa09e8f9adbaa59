"""Datasets: identity folders, RecordIO packs, pair lists, synthetic faces, transform presets."""

from metricface.data.folder import (
    IMAGE_EXTENSIONS,
    IdentityFolder,
    ImageDecodeError,
    decode_image_file,
)
from metricface.data.hf import HFFaceDataset
from metricface.data.pairs import (
    PairList,
    PairListDataset,
    read_lfw_pairs,
    read_pairs_csv,
    write_lfw_pairs,
    write_pairs_csv,
    write_submission,
)
from metricface.data.records import RecordFaces, write_record_pack
from metricface.data.synthetic import DISTORTIONS, SyntheticFaces
from metricface.data.transforms import (
    FACE_MEAN,
    FACE_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    train_transform,
)

__all__ = [
    "DISTORTIONS",
    "FACE_MEAN",
    "FACE_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "HFFaceDataset",
    "IdentityFolder",
    "ImageDecodeError",
    "PairList",
    "PairListDataset",
    "RecordFaces",
    "SyntheticFaces",
    "decode_image_file",
    "eval_transform",
    "read_lfw_pairs",
    "read_pairs_csv",
    "train_transform",
    "write_lfw_pairs",
    "write_pairs_csv",
    "write_record_pack",
    "write_submission",
]
