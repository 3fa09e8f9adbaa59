"""Datasets: identity folders, pair lists, verification ``.bin`` sets, IJB-B/C protocol files,
built-in synthetic faces and transform presets."""

from metricface.data.folder import (
    IMAGE_EXTENSIONS,
    IdentityFolder,
    ImageDecodeError,
    decode_image_file,
)
from metricface.data.hf import HFFaceDataset
from metricface.data.ijb import (
    IJBMedia,
    IJBMeta,
    IJBPairs,
    IJBSubjects,
    load_ijb_meta,
    read_ijb_media,
    read_ijb_pairs,
    read_ijb_subjects,
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
from metricface.data.transforms import (
    FACE_MEAN,
    FACE_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    train_transform,
)
from metricface.data.verification_bin import VerificationBin, load_verification_bin

__all__ = [
    "DISTORTIONS",
    "FACE_MEAN",
    "FACE_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "HFFaceDataset",
    "IJBMedia",
    "IJBMeta",
    "IJBPairs",
    "IJBSubjects",
    "IdentityFolder",
    "ImageDecodeError",
    "PairList",
    "PairListDataset",
    "SyntheticFaces",
    "VerificationBin",
    "decode_image_file",
    "eval_transform",
    "load_ijb_meta",
    "load_verification_bin",
    "read_ijb_media",
    "read_ijb_pairs",
    "read_ijb_subjects",
    "read_lfw_pairs",
    "read_pairs_csv",
    "train_transform",
    "write_lfw_pairs",
    "write_pairs_csv",
    "write_submission",
]
