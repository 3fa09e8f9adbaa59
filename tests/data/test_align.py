"""Face alignment: the similarity fit, 68 -> 5 landmarks and the warp, against float64 references."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from metricface.data import (
    ARCFACE_TEMPLATE,
    align_face,
    estimate_similarity,
    face_template,
    reduce_landmarks,
)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Many tiny warps: one thread is fastest, and threads of a loaded machine stall each call."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------- references
def similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def inverse(matrix: np.ndarray) -> np.ndarray:
    linear = np.linalg.inv(matrix[:, :2])
    return np.hstack([linear, -linear @ matrix[:, 2:]])


def normal_equation_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least squares over x' = a x - b y + tx, y' = b x + a y + ty: the 2N x 4 normal equations.

    ``[[a, -b], [b, a]]`` is a rotation times a scale >= 0 for any ``(a, b)``, so this unconstrained
    linear problem has the same optimum as the similarity fit (no reflection can come out).
    """
    x, y = src[:, 0], src[:, 1]
    one, zero = np.ones_like(x), np.zeros_like(x)
    design = np.empty((2 * len(src), 4))
    design[0::2] = np.stack([x, -y, one, zero], axis=1)
    design[1::2] = np.stack([y, x, zero, one], axis=1)
    a, b, tx, ty = np.linalg.solve(design.T @ design, design.T @ dst.reshape(-1))
    return np.array([[a, -b, tx], [b, a, ty]])


def bilinear_reference(image: np.ndarray, inv: np.ndarray, size: int) -> np.ndarray:
    """Pixel-by-pixel float64 warp: pixel centres at integers, zeros outside ``(H, W, C)``."""
    h, w, c = image.shape
    out = np.zeros((size, size, c))
    for v in range(size):
        for u in range(size):
            sx, sy = apply(inv, np.array([u, v], dtype=np.float64))
            x0, y0 = math.floor(sx), math.floor(sy)
            for y, wy in ((y0, 1 - (sy - y0)), (y0 + 1, sy - y0)):
                for x, wx in ((x0, 1 - (sx - x0)), (x0 + 1, sx - x0)):
                    if 0 <= x < w and 0 <= y < h:
                        out[v, u] += wx * wy * image[y, x]
    return out


def landmarks_for(matrix: np.ndarray, size: int = 112) -> np.ndarray:
    """Source landmarks that ``matrix`` (source -> crop) maps exactly onto the template."""
    return apply(inverse(matrix), face_template(size))


def interpolate(channel: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of a ``(H, W)`` array at ``(x, y)`` points inside it."""
    out = []
    for x, y in points:
        x0, y0 = math.floor(x), math.floor(y)
        fx, fy = x - x0, y - y0
        patch = channel[y0 : y0 + 2, x0 : x0 + 2]
        out.append(np.array([1 - fy, fy]) @ patch @ np.array([1 - fx, fx]))
    return np.array(out)


def coordinate_image(h: int, w: int) -> torch.Tensor:
    """A ``(2, H, W)`` float64 image whose channels are each pixel's own x and y."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([x, y]).double()


point_sets = st.integers(0, 2**32 - 1).map(
    lambda seed: ARCFACE_TEMPLATE + np.random.default_rng(seed).normal(0, 6, (5, 2))
)
angles = st.floats(-math.pi, math.pi)
scales = st.floats(-3, 3).map(math.exp)
shifts = st.floats(-1000, 1000)


# ---------------------------------------------------------------------------- templates
def test_arcface_template_is_the_published_one_and_read_only():
    published = [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
    assert ARCFACE_TEMPLATE.dtype == np.float64
    np.testing.assert_array_equal(ARCFACE_TEMPLATE, published)
    np.testing.assert_array_equal(face_template(), published)
    with pytest.raises(ValueError):
        ARCFACE_TEMPLATE[0, 0] = 0.0
    face_template()[0, 0] = 0.0  # a copy
    assert ARCFACE_TEMPLATE[0, 0] == 38.2946


@pytest.mark.parametrize("size", [56, 224, 256])
def test_other_sizes_scale_about_pixel_centres(size):
    np.testing.assert_allclose(
        face_template(size), (ARCFACE_TEMPLATE + 0.5) * size / 112 - 0.5, rtol=0, atol=1e-12
    )


def test_a_224_crop_is_the_112_crop_sampled_twice_as_densely():
    # on a linear image bilinear interpolation is exact, so the mean of each 2x2 block of the
    # 224 crop must equal the 112 crop pixel it covers; plain x2 scaling would be 0.25 px off
    image = coordinate_image(400, 400)
    landmarks = landmarks_for(similarity(0.2, 0.6, -60, -50))
    crop112 = align_face(image, landmarks, size=112)
    crop224 = align_face(image, landmarks, size=224)
    pooled = torch.nn.functional.avg_pool2d(crop224[None], 2)[0]
    torch.testing.assert_close(pooled, crop112, rtol=0, atol=1e-9)


@pytest.mark.parametrize("size", [0, -112, 1.5, True, "112"])
def test_face_template_rejects_bad_sizes(size):
    with pytest.raises((ValueError, TypeError), match="size"):
        face_template(size)


# ---------------------------------------------------------------------------- similarity fit
@given(point_sets, angles, scales, shifts, shifts)
def test_an_exact_similarity_is_recovered(src, angle, scale, tx, ty):
    truth = similarity(angle, scale, tx, ty)
    dst = apply(truth, src)
    est = estimate_similarity(src, dst)
    assert np.abs(apply(est, src) - dst).max() < 1e-6  # pixels
    np.testing.assert_allclose(est[:, :2], truth[:, :2], rtol=0, atol=1e-9 * scale)


@given(point_sets, angles, scales, st.integers(0, 2**32 - 1), st.booleans())
def test_matches_the_normal_equation_least_squares_solution(src, angle, scale, seed, mirror):
    rng = np.random.default_rng(seed)
    dst = apply(similarity(angle, scale, 40, -7), src) + rng.normal(0, 3 * scale, src.shape)
    if mirror:  # the best reflection beats every rotation: the fit must still rotate
        dst[:, 0] *= -1
    est = estimate_similarity(src, dst)
    ref = normal_equation_similarity(src, dst)
    np.testing.assert_allclose(est, ref, rtol=1e-9, atol=1e-9 * (scale + np.abs(ref).max()))
    assert np.linalg.det(est[:, :2]) >= 0


@given(point_sets, angles, scales, st.permutations(range(5)))
def test_the_order_of_the_points_does_not_matter(src, angle, scale, order):
    dst = apply(similarity(angle, scale, 3, 4), src) + np.linspace(-1, 1, 10).reshape(5, 2)
    order = list(order)
    np.testing.assert_allclose(
        estimate_similarity(src[order], dst[order]), estimate_similarity(src, dst), atol=1e-9
    )


def test_a_mirrored_face_gets_the_best_rotation_not_a_reflection():
    src = ARCFACE_TEMPLATE.copy()
    dst = src * [-1, 1]  # the face flipped left-right
    est = estimate_similarity(src, dst)
    assert np.linalg.det(est[:, :2]) > 0
    np.testing.assert_allclose(est, normal_equation_similarity(src, dst), atol=1e-9)
    # the unconstrained orthogonal fit (no fix) would be this reflection, with zero residual
    assert np.abs(apply(est, src) - dst).max() > 1.0


def test_two_points_fix_a_similarity():
    src = np.array([[0.0, 0.0], [2.0, 0.0]])
    dst = np.array([[1.0, 1.0], [1.0, 5.0]])
    np.testing.assert_allclose(estimate_similarity(src, dst), [[0, -2, 1], [2, 0, 1]], atol=1e-12)


def test_batched_over_leading_dimensions_with_broadcasting():
    rng = np.random.default_rng(0)
    src = ARCFACE_TEMPLATE + rng.normal(0, 5, (2, 3, 5, 2))
    dst = ARCFACE_TEMPLATE + rng.normal(0, 5, (2, 3, 5, 2))
    est = estimate_similarity(src, dst)
    assert est.shape == (2, 3, 2, 3)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(est[i, j], normal_equation_similarity(src[i, j], dst[i, j]))
    one = estimate_similarity(src, ARCFACE_TEMPLATE)  # one template for every set
    assert one.shape == (2, 3, 2, 3)
    np.testing.assert_allclose(one[1, 2], estimate_similarity(src[1, 2], ARCFACE_TEMPLATE))
    assert estimate_similarity(src[:0, 0], ARCFACE_TEMPLATE).shape == (0, 2, 3)


def test_numpy_and_torch_give_the_same_float64_result():
    rng = np.random.default_rng(1)
    src = ARCFACE_TEMPLATE + rng.normal(0, 5, (4, 5, 2))
    ours = estimate_similarity(src, ARCFACE_TEMPLATE)
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float64
    for a, b in [
        (torch.tensor(src, dtype=torch.float32), torch.tensor(ARCFACE_TEMPLATE)),
        (torch.tensor(src), ARCFACE_TEMPLATE),
        (src, torch.tensor(ARCFACE_TEMPLATE)),
    ]:
        theirs = estimate_similarity(a, b)
        assert isinstance(theirs, torch.Tensor) and theirs.dtype == torch.float64
        tol = 1e-4 if a.dtype == torch.float32 else 1e-12
        np.testing.assert_allclose(theirs.numpy(), ours, atol=tol)
    lists = estimate_similarity(src[0].tolist(), ARCFACE_TEMPLATE.tolist())
    np.testing.assert_allclose(lists, ours[0])


def _batch_with(bad: np.ndarray, at: tuple[int, ...]) -> np.ndarray:
    points = np.broadcast_to(ARCFACE_TEMPLATE, (2, 3, 5, 2)).copy()
    points[at] = bad
    return points


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.where(np.arange(10).reshape(5, 2) == 3, np.nan, ARCFACE_TEMPLATE), "NaN or inf"),
        (np.where(np.arange(10).reshape(5, 2) == 0, np.inf, ARCFACE_TEMPLATE), "NaN or inf"),
        (np.full((5, 2), 37.5), "all its points coincide"),
        (np.stack([np.arange(5.0), 2 * np.arange(5.0) + 1], axis=1), "lie on one line"),
        (np.array([[0.0, 50], [10, 50], [20, 50], [30, 50], [40, 50]], np.float32), "one line"),
    ],
)
@pytest.mark.parametrize("which", ["src", "dst"])
def test_bad_point_sets_are_named_with_their_batch_index(bad, message, which):
    points = _batch_with(bad, (1, 2))
    args = (points, ARCFACE_TEMPLATE) if which == "src" else (ARCFACE_TEMPLATE, points)
    with pytest.raises(ValueError, match=rf"^{which}\[1, 2\] .*{message}"):
        estimate_similarity(*args)
    single = (bad, ARCFACE_TEMPLATE) if which == "src" else (ARCFACE_TEMPLATE, bad)
    with pytest.raises(ValueError, match=rf"^{which} .*{message}"):
        estimate_similarity(*single)


def test_nearly_collinear_real_points_are_accepted():
    profile = np.array([[60.0, 50], [61, 51], [70, 70], [62, 90], [63, 91]])  # a side view
    estimate_similarity(profile, ARCFACE_TEMPLATE)


@pytest.mark.parametrize(
    ("src", "dst", "error", "message"),
    [
        (np.zeros((5, 3)), ARCFACE_TEMPLATE, ValueError, r"src must have shape \(\.\.\., N, 2\)"),
        (ARCFACE_TEMPLATE, np.zeros(10), ValueError, r"dst must have shape \(\.\.\., N, 2\)"),
        (ARCFACE_TEMPLATE[:4], ARCFACE_TEMPLATE, ValueError, "same number of points"),
        (ARCFACE_TEMPLATE[:1], ARCFACE_TEMPLATE[:1], ValueError, "at least 2 points"),
        (np.zeros((3, 5, 2)), np.zeros((4, 5, 2)), ValueError, "do not broadcast"),
        (ARCFACE_TEMPLATE.astype(complex), ARCFACE_TEMPLATE, TypeError, "src must hold real"),
        (ARCFACE_TEMPLATE > 50, ARCFACE_TEMPLATE, TypeError, "src must hold real"),
        ("eyes", ARCFACE_TEMPLATE, TypeError, "src must hold real"),
        (ARCFACE_TEMPLATE, torch.ones(5, 2, dtype=torch.bool), TypeError, "dst must hold real"),
    ],
)
def test_bad_shapes_and_types_are_named(src, dst, error, message):
    with pytest.raises(error, match=message):
        estimate_similarity(src, dst)


# ---------------------------------------------------------------------------- 68 -> 5
def test_68_points_reduce_to_eye_centres_nose_and_mouth_corners():
    rng = np.random.default_rng(2)
    points = rng.uniform(0, 200, (3, 68, 2))
    five = reduce_landmarks(points)
    assert five.shape == (3, 5, 2)
    for p, f in zip(points, five):
        np.testing.assert_array_equal(
            f, [(p[36] + p[39]) / 2, (p[42] + p[45]) / 2, p[30], p[48], p[54]]
        )
    tensor = reduce_landmarks(torch.tensor(points, dtype=torch.float32))
    assert tensor.dtype == torch.float32 and tensor.shape == (3, 5, 2)
    np.testing.assert_allclose(tensor.numpy(), five, rtol=1e-6)
    ints = reduce_landmarks(np.arange(136).reshape(68, 2))
    assert ints.dtype == np.float64 and ints[0].tolist() == [75.0, 76.0]  # (72 + 78) / 2
    np.testing.assert_array_equal(reduce_landmarks(points[0].tolist()), five[0])


def test_5_points_pass_through_and_other_counts_are_refused():
    points = np.ones((5, 2))
    assert reduce_landmarks(points) is points
    for shape in [(10, 2), (68, 3), (68,)]:
        with pytest.raises(ValueError, match=r"points must have shape \(\.\.\., 5, 2\) or"):
            reduce_landmarks(np.ones(shape))


# ---------------------------------------------------------------------------- the warp
def test_warp_matches_a_pixel_by_pixel_float64_reference_border_included():
    rng = np.random.default_rng(3)
    image = rng.uniform(0, 255, (30, 40, 3))
    # a small crop that hangs over the top-left corner of the image: the zero border counts
    matrix = similarity(0.35, 0.8, 4.0, 9.0)
    size = 24
    landmarks = apply(inverse(matrix), face_template(size))
    ref = bilinear_reference(image, inverse(matrix), size)
    assert (ref == 0).all(axis=2).any() and (ref != 0).all(axis=2).any()
    ours = align_face(image, landmarks, size=size)
    assert ours.dtype == np.float64
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)
    as_float32 = align_face(image.astype(np.float32), landmarks, size=size)
    np.testing.assert_allclose(as_float32, ref, rtol=0, atol=2e-3)
    as_uint8 = align_face(image.round().astype(np.uint8), landmarks, size=size)
    ref8 = bilinear_reference(image.round(), inverse(matrix), size)
    diff = np.abs(as_uint8.astype(float) - np.rint(ref8))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # rounded to nearest (ties: float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_landmarks_land_exactly_on_the_template(dtype):
    # channel 0 / 1 of the source hold each pixel's own x / y, so the crop's value at a template
    # point says which source point landed there; bilinear is exact on this linear image
    image = coordinate_image(420, 300).to(dtype)
    landmarks = landmarks_for(similarity(-0.4, 0.45, -20, -35))
    crop = align_face(image, landmarks).double().numpy()
    found = np.stack(
        [interpolate(crop[0], ARCFACE_TEMPLATE), interpolate(crop[1], ARCFACE_TEMPLATE)]
    )
    tol = 1e-9 if dtype == torch.float64 else 1e-3
    np.testing.assert_allclose(found.T, landmarks, rtol=0, atol=tol)


def _blob_image(landmarks: np.ndarray, shape=(260, 240), sigma=4.0) -> np.ndarray:
    y, x = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    blobs = sum(np.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * sigma**2)) for px, py in landmarks)
    return np.repeat((20 + 230 * blobs)[..., None], 3, axis=2).round().astype(np.uint8)


def test_features_drawn_at_the_landmarks_appear_at_the_template_points():
    landmarks = landmarks_for(similarity(0.3, 0.55, 5, -12))
    crop = np.asarray(align_face(Image.fromarray(_blob_image(landmarks)), landmarks))
    weight = crop[..., 0].astype(np.float64) - 20
    y, x = np.mgrid[:112, :112]
    for tx, ty in ARCFACE_TEMPLATE:
        near = ((x - tx) ** 2 + (y - ty) ** 2 < 7**2) * weight
        centroid = np.array([(near * x).sum(), (near * y).sum()]) / near.sum()
        np.testing.assert_allclose(centroid, [tx, ty], atol=0.05)


def test_each_input_kind_comes_back_in_its_kind():
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (150, 130, 3), dtype=np.uint8)
    landmarks = landmarks_for(similarity(0.1, 0.9, 0, 0))
    for mode in ["RGB", "L", "RGBA", "LA"]:
        out = align_face(Image.fromarray(rgb).convert(mode), landmarks)
        assert isinstance(out, Image.Image) and out.mode == mode and out.size == (112, 112)
    palette = Image.fromarray(rgb).convert("P")
    assert align_face(palette, landmarks).mode == "RGB"
    assert align_face(rgb[..., 0], landmarks).shape == (112, 112)
    assert align_face(rgb.astype(np.float32) / 255, landmarks).dtype == np.float32
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    out = align_face(chw, torch.tensor(landmarks), size=64)
    assert out.shape == (3, 64, 64) and out.dtype == torch.uint8
    np.testing.assert_array_equal(
        align_face(Image.fromarray(rgb), landmarks), align_face(rgb, landmarks)
    )
    np.testing.assert_array_equal(
        align_face(chw, landmarks).permute(1, 2, 0).numpy(), align_face(rgb, landmarks)
    )


def test_read_only_and_reversed_arrays_are_accepted_without_warnings():
    rgb = np.random.default_rng(5).integers(0, 256, (120, 110, 3), dtype=np.uint8)
    landmarks = landmarks_for(similarity(0.0, 1.0, 0, 0))
    expected = align_face(rgb, landmarks)
    frozen = rgb.copy()
    frozen.flags.writeable = False
    flipped = rgb[:, ::-1][:, ::-1]  # negative strides, same pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(align_face(frozen, landmarks), expected)
        np.testing.assert_array_equal(align_face(flipped, landmarks), expected)


def test_68_point_landmarks_give_the_crop_of_their_5_point_reduction():
    rng = np.random.default_rng(6)
    image = rng.integers(0, 256, (3, 140, 140), dtype=np.uint8)
    points68 = rng.uniform(30, 110, (68, 2))
    five = reduce_landmarks(points68)
    torch.testing.assert_close(
        align_face(torch.from_numpy(image), points68), align_face(torch.from_numpy(image), five)
    )


def _batch(n: int = 4, dtype=torch.uint8):
    rng = np.random.default_rng(7)
    images = torch.from_numpy(rng.integers(0, 256, (n, 3, 150, 170), dtype=np.uint8))
    if dtype != torch.uint8:
        images = images.to(dtype) / 255
    mats = [
        similarity(rng.uniform(-0.5, 0.5), rng.uniform(0.5, 1.2), *rng.uniform(-30, 5, 2))
        for _ in range(n)
    ]
    mats[-1] = similarity(0.2, 0.5, -10, -10)  # this crop reaches beyond the image
    return images, np.stack([landmarks_for(m) for m in mats])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_a_batch_agrees_with_the_images_warped_one_by_one(dtype, device):
    images, landmarks = _batch(dtype=dtype)
    batch = align_face(images.to(device), torch.tensor(landmarks, device=device)).cpu()
    assert batch.shape == (4, 3, 112, 112) and batch.dtype == dtype
    for image, points, crop in zip(images, landmarks, batch):
        hwc = image.permute(1, 2, 0).numpy()
        for single in (
            align_face(image, points),
            torch.from_numpy(align_face(hwc, points)).permute(2, 0, 1),
        ):
            diff = (crop.double() - single.double()).abs()
            if dtype == torch.uint8:
                assert diff.max() <= 1 and (diff == 0).double().mean() > 0.99
            else:
                assert diff.max() < 1e-4
    assert (batch[-1, :, -10:, -10:] == 0).all()  # the zero border


def test_a_cpu_batch_is_warped_in_chunks_that_keep_each_images_landmarks():
    rng = np.random.default_rng(8)
    images = torch.from_numpy(rng.integers(0, 256, (19, 3, 60, 70), dtype=np.uint8))
    mats = [
        similarity(rng.uniform(-1, 1), rng.uniform(1.5, 3), *rng.uniform(-60, 0, 2))
        for _ in range(19)
    ]
    landmarks = np.stack([landmarks_for(m) for m in mats])
    batch = align_face(images, landmarks)
    for image, points, crop in zip(images, landmarks, batch):
        diff = (crop.int() - align_face(image[None], points[None])[0].int()).abs()
        assert diff.max() <= 1 and (diff == 0).double().mean() > 0.99


def test_a_face_out_of_view_gives_black_and_an_empty_batch_gives_an_empty_batch():
    image = torch.full((3, 50, 50), 200, dtype=torch.uint8)
    far = face_template() + 1000
    assert (align_face(image, far) == 0).all()
    empty = align_face(torch.zeros(0, 3, 50, 50), np.zeros((0, 5, 2)))
    assert empty.shape == (0, 3, 112, 112)


@pytest.mark.parametrize(
    ("image", "landmarks", "kwargs", "error", "message"),
    [
        (
            np.zeros((50, 50, 3), np.uint8),
            np.zeros((4, 2)),
            {},
            ValueError,
            r"landmarks must have shape \(\.\.\., 5, 2\)",
        ),
        (
            np.zeros((50, 50, 3), np.uint8),
            np.ones((2, 5, 2)),
            {},
            ValueError,
            r"landmarks must have shape \(5, 2\)",
        ),
        (torch.zeros(2, 3, 50, 50), np.ones((3, 5, 2)), {}, ValueError, r"\(B, 5, 2\)"),
        (
            torch.zeros(3, 50, 50),
            np.full((5, 2), np.nan),
            {},
            ValueError,
            "^landmarks contains NaN",
        ),
        (
            torch.zeros(3, 3, 50, 50),
            _batch_with(np.ones((5, 2)), (0, 2))[0, :3],
            {},
            ValueError,
            r"^landmarks\[2\] .*coincide",
        ),
        (torch.zeros(50, 50), ARCFACE_TEMPLATE, {}, ValueError, r"\(C, H, W\) tensor"),
        (
            np.zeros((2, 50, 50, 3), np.uint8),
            ARCFACE_TEMPLATE,
            {},
            ValueError,
            r"\(H, W, C\) or \(H, W\) array",
        ),
        (
            torch.zeros(3, 50, 50, dtype=torch.int32),
            ARCFACE_TEMPLATE,
            {},
            TypeError,
            "uint8 or floating tensor",
        ),
        (np.zeros((50, 50), np.int16), ARCFACE_TEMPLATE, {}, TypeError, "uint8 or floating array"),
        ([[0, 1], [2, 3]], ARCFACE_TEMPLATE, {}, TypeError, "PIL image, a NumPy array or a torch"),
        (np.zeros((50, 50)), ARCFACE_TEMPLATE, {"size": 0}, ValueError, "size"),
        (
            np.zeros((50, 50)),
            ARCFACE_TEMPLATE,
            {"template": np.ones((4, 2))},
            ValueError,
            r"template must have shape \(5, 2\)",
        ),
        (
            np.zeros((50, 50)),
            ARCFACE_TEMPLATE,
            {"template": np.ones((5, 2))},
            ValueError,
            "^template .*coincide",
        ),
    ],
)
def test_bad_input_is_named(image, landmarks, kwargs, error, message):
    with pytest.raises(error, match=message):
        align_face(image, landmarks, **kwargs)


def test_a_custom_template_is_used():
    image = coordinate_image(200, 200)
    template = np.array([[10.0, 10], [50, 10], [30, 30], [15, 50], [45, 50]])
    landmarks = apply(inverse(similarity(0.1, 0.5, 3, 3)), template)
    crop = align_face(image, landmarks, size=64, template=template).numpy()
    found = np.stack([interpolate(crop[0], template), interpolate(crop[1], template)])
    np.testing.assert_allclose(found.T, landmarks, atol=1e-9)
