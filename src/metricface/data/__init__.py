"""Datasets: identity folders, RecordIO packs, verification ``.bin`` sets, IJB-B/C protocol
files, face alignment and landmark files, pair lists, synthetic faces, transform presets."""

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
from metricface.data.verification_bin import VerificationBin, load_verification_bin

__all__ = [
    "ARCFACE_TEMPLATE",
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
    "LandmarkTable",
    "PairList",
    "PairListDataset",
    "RecordFaces",
    "SyntheticFaces",
    "VerificationBin",
    "align_face",
    "decode_image_file",
    "estimate_similarity",
    "eval_transform",
    "face_template",
    "load_ijb_meta",
    "load_verification_bin",
    "read_ijb_landmarks",
    "read_ijb_media",
    "read_ijb_pairs",
    "read_ijb_subjects",
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
