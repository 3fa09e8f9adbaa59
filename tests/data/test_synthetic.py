"""SyntheticFaces: shapes, determinism, identity splits, distortions and difficulty."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import roc_curve

from metricface.data import DISTORTIONS, SyntheticFaces


def _eer(same: np.ndarray, score: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(same, score)
    return brentq(lambda x: 1 - x - np.interp(x, fpr, tpr), 0, 1)


def _pair_eer(features: np.ndarray, labels: np.ndarray) -> float:
    z = features / np.linalg.norm(features, axis=1, keepdims=True)
    iu = np.triu_indices(len(labels), 1)
    return _eer(labels[iu[0]] == labels[iu[1]], (z @ z.T)[iu])


def _stack(ds) -> np.ndarray:
    return torch.stack([ds[i][0] for i in range(len(ds))]).float().flatten(1).numpy() / 255


def test_shapes_dtypes_and_labels():
    ds = SyntheticFaces(3, 4, image_size=48)
    assert len(ds) == 12
    img, label = ds[7]
    assert img.shape == (3, 48, 48) and img.dtype == torch.uint8
    assert label == 1 and isinstance(label, int)
    assert ds.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert ds.num_classes == 3
    assert torch.equal(ds[-1][0], ds[11][0])
    fl = SyntheticFaces(3, 4, image_size=48, dtype=torch.float32)[7][0]
    assert fl.dtype == torch.float32 and 0 <= fl.min() and fl.max() <= 1
    # the float image is the uint8 one before rounding
    assert (fl * 255 - img.float()).abs().max() <= 0.5 + 1e-3
    assert SyntheticFaces(2, 2)[0][0].shape == (3, 112, 112)
    # images are not flat: a face on a background
    assert img.float().std() > 10


def test_deterministic_in_any_order_and_object():
    a = SyntheticFaces(5, 3, image_size=32, seed=4, distortions=DISTORTIONS)
    b = SyntheticFaces(5, 3, image_size=32, seed=4, distortions=DISTORTIONS)
    forward = [a[i][0] for i in range(len(a))]
    backward = [b[i][0] for i in reversed(range(len(b)))][::-1]
    for x, y in zip(forward, backward):
        assert torch.equal(x, y)
    c = SyntheticFaces(5, 3, image_size=32, seed=5)
    assert not torch.equal(a[0][0], c[0][0])
    # images of one identity differ from each other
    assert not torch.equal(forward[0], forward[1])


def test_cache_returns_the_same_images():
    plain = SyntheticFaces(3, 2, image_size=32)
    cached = SyntheticFaces(3, 2, image_size=32, cache=True)
    for _ in range(2):
        for i in range(len(plain)):
            assert torch.equal(cached[i][0], plain[i][0])
    assert len(cached._cache) == len(plain)


def test_identity_offset_gives_disjoint_people():
    full = SyntheticFaces(6, 2, image_size=32)
    held_out = SyntheticFaces(2, 2, image_size=32, identity_offset=4)
    # label k of the held-out set is global identity 4 + k of the full set, same pixels
    for k in range(2):
        for j in range(2):
            assert torch.equal(held_out[2 * k + j][0], full[2 * (4 + k) + j][0])
    assert held_out.labels.tolist() == [0, 0, 1, 1]
    train = SyntheticFaces(4, 2, image_size=32)
    train_imgs = {bytes(train[i][0].numpy()) for i in range(len(train))}
    assert not any(bytes(held_out[i][0].numpy()) in train_imgs for i in range(len(held_out)))


def test_distortions_share_pose_with_clean_images():
    clean = SyntheticFaces(2, 3, image_size=32)
    off = SyntheticFaces(2, 3, image_size=32, distortions=DISTORTIONS, distortion_prob=0.0)
    on = SyntheticFaces(2, 3, image_size=32, distortions=("fog",), distortion_prob=1.0)
    for i in range(len(clean)):
        assert torch.equal(clean[i][0], off[i][0])
        assert not torch.equal(clean[i][0], on[i][0])
    # fog lowers contrast
    assert on[0][0].float().std() < clean[0][0].float().std()
    dark = SyntheticFaces(2, 3, image_size=32, distortions="lowlight", distortion_prob=1.0)
    assert dark[0][0].float().mean() < clean[0][0].float().mean()


def test_transform_is_applied():
    ds = SyntheticFaces(2, 2, image_size=32, transform=lambda x: x.float().mean())
    value, label = ds[3]
    assert value.ndim == 0 and label == 1


def test_raw_pixels_are_poor_and_a_learned_projection_is_better():
    train = SyntheticFaces(100, 6, image_size=32, seed=0)
    test = SyntheticFaces(30, 6, image_size=32, seed=0, identity_offset=100)
    x, xt, yt = _stack(train), _stack(test), test.labels.numpy()
    raw = _pair_eer(xt - xt.mean(1, keepdims=True), yt)
    assert raw > 0.3  # pose, lighting and background dominate the pixels
    pca = PCA(80, random_state=0).fit(x)
    lda = LinearDiscriminantAnalysis().fit(pca.transform(x), train.labels.numpy())
    learned = _pair_eer(lda.transform(pca.transform(xt)), yt)
    assert learned < raw - 0.1  # identity is learnable from other identities


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_identities": 0}, ValueError, "num_identities"),
        ({"images_per_identity": 1.5}, TypeError, "images_per_identity"),
        ({"image_size": 8}, ValueError, "image_size"),
        ({"distortions": ("rain",)}, ValueError, "distortions"),
        ({"distortion_prob": 2.0}, ValueError, "distortion_prob"),
        ({"transform": 3}, TypeError, "transform"),
        ({"dtype": torch.int32}, TypeError, "dtype"),
        ({"identity_offset": -1}, ValueError, "identity_offset"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        SyntheticFaces(**{"num_identities": 2, "images_per_identity": 2, **kwargs})


def test_bad_index():
    ds = SyntheticFaces(2, 2, image_size=32)
    with pytest.raises(IndexError, match="index"):
        ds[4]
    with pytest.raises(TypeError, match="index"):
        ds[1.0]
