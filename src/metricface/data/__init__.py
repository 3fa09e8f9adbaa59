"""Datasets: identity folders, RecordIO packs, pair lists, synthetic faces, transform presets."""

from metricface.data.align import (
    ARCFACE_TEMPLATE,
    align_face,
    estimate_similarity,
    face_template,
    reduce_landmarks,
)
from metricface.data.folder import (
    IMAGE_EXTENSIONS,
    IdentityFolder,
    ImageDecodeError,
    decode_image_file,
)
from metricface.data.hf import HFFaceDataset
from metricface.data.landmarks import (
    LandmarkTable,
    read_ijb_landmarks,
    read_vggface2_landmarks,
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
    "ARCFACE_TEMPLATE",
    "DISTORTIONS",
    "FACE_MEAN",
    "FACE_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "HFFaceDataset",
    "IdentityFolder",
    "ImageDecodeError",
    "LandmarkTable",
    "PairList",
    "PairListDataset",
    "RecordFaces",
    "SyntheticFaces",
    "align_face",
    "decode_image_file",
    "estimate_similarity",
    "eval_transform",
    "face_template",
    "read_ijb_landmarks",
    "read_lfw_pairs",
    "read_pairs_csv",
    "read_vggface2_landmarks",
    "reduce_landmarks",
    "train_transform",
    "write_lfw_pairs",
    "write_pairs_csv",
    "write_record_pack",
    "write_submission",
]
