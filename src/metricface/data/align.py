"""Face alignment: a similarity transform from detected landmarks onto a fixed template.

Face recognisers are trained and evaluated on *aligned* crops: five landmarks found by a face
detector (left eye, right eye, nose tip, left and right mouth corner, as seen in the image) are
mapped by a least-squares similarity transform (rotation, uniform scale, translation) onto fixed
positions, :data:`ARCFACE_TEMPLATE` in a 112x112 crop, and the photo is warped with it.

Pixel coordinates
-----------------
Points are ``(x, y)`` in pixels, ``x`` along a row (the column), ``y`` down the image (the row),
and **an integer coordinate is the centre of a pixel**: landmark ``(3.0, 5.0)`` is the centre of
the pixel in column 3, row 5, which covers ``[2.5, 3.5) x [4.5, 5.5)``. This is the convention
of OpenCV's ``warpAffine`` and scikit-image's ``warp``, in which detectors report landmarks and
the ArcFace template is given. Output pixel ``(u, v)`` of an aligned crop is the bilinear
interpolation of the source image at ``M^-1 (u, v)``, where ``M`` maps the landmarks onto the
template; the source is extended with zeros beyond its border (so the half-pixel ring along the
border blends with black, as OpenCV's ``BORDER_CONSTANT`` with value 0 does).

All inputs go through one resampler, :func:`torch.nn.functional.grid_sample` (bilinear,
``padding_mode="zeros"``, ``align_corners=False``), on the tensor's own device, in float32
(float64 for float64 input): a GPU batch in one call, a CPU batch 8 images at a time. With
``align_corners=False`` a normalised grid coordinate ``g`` in ``[-1, 1]`` addresses pixel
coordinate ``x = ((g + 1) W - 1) / 2``, so ``-1`` and ``1`` are the outer edges of the border
pixels; the transform is composed with that normalisation in float64 before the grid is built.
NumPy arrays are viewed as tensors without a copy, and only the window of the source that the
crops read is converted to floating point, so a small face in a large photo costs no more than a
loose crop. uint8 results are rounded to the nearest integer (ties to even). An image warped
alone and the same image in a batch agree to float32 rounding (for uint8, to one grey level,
nearly every pixel exactly).

Templates at other sizes
------------------------
:func:`face_template` scales the 112x112 template to a ``size x size`` crop of the same field of
view: a point at pixel coordinate ``p`` of the 112 crop goes to ``(p + 0.5) * size / 112 - 0.5``,
because pixel centres, not pixel corners, carry the integer coordinates. A 224x224 crop is then
the 112x112 crop sampled twice as densely. (Multiplying the coordinates by ``size / 112``, as
some tools do, shifts the crop by ``(size / 112 - 1) / 2`` pixels: half a pixel at 224.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from metricface._validation import check_scalar

__all__ = [
    "ARCFACE_TEMPLATE",
    "align_face",
    "estimate_similarity",
    "face_template",
    "reduce_landmarks",
]

#: The 5-point ArcFace template of a 112x112 crop, ``(5, 2)`` float64 ``(x, y)`` pixel
#: coordinates (pixel centres at integers) of the left eye, right eye, nose tip, left mouth
#: corner and right mouth corner, "left" meaning the left side of the image. Read-only.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
ARCFACE_TEMPLATE.flags.writeable = False

# iBUG 68-point layout (0-based): outer/inner corners of each eye, nose tip, mouth corners
_EYE_CORNERS = ((36, 39), (42, 45))
_NOSE_TIP, _MOUTH_CORNERS = 30, (48, 54)

# a set of points whose spread is below this fraction of its coordinates' magnitude is one
# point; a set whose thinner principal axis is below this fraction of the wider one is a line
_COINCIDENT_TOL = 1e-9
_COLLINEAR_TOL = 1e-5

# a CPU batch is warped this many images at a time: each converts only its own window to
# floating point, which stays in cache (a whole batch of 256x256 photos is 200 MB of float32)
_CPU_CHUNK = 8


def face_template(size: int = 112) -> np.ndarray:
    """The ArcFace 5-point template for a ``size x size`` crop.

    Parameters
    ----------
    size : int
        Side of the square crop in pixels. 112 gives :data:`ARCFACE_TEMPLATE`; any other size the
        same field of view, scaled about pixel centres: ``(p + 0.5) * size / 112 - 0.5`` (so 224
        gives the 224x224 layout, the 112 crop sampled twice as densely).

    Returns
    -------
    numpy.ndarray
        ``(5, 2)`` float64 ``(x, y)`` pixel coordinates (a new, writeable array).

    Examples
    --------
    >>> from metricface.data import face_template
    >>> face_template(224)[0]  # the left eye at 224x224
    array([ 77.0892, 103.8926])
    """
    check_scalar(size, "size", low=1, integer=True)
    return (ARCFACE_TEMPLATE + 0.5) * (size / 112.0) - 0.5


# ---------------------------------------------------------------------------- point sets
def _points(value: object, name: str) -> np.ndarray:
    """A float64 NumPy copy of a ``(..., N, 2)`` point array (NumPy, torch or nested lists)."""
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} must hold real numbers, got a tensor of dtype {value.dtype}")
        array = value.detach().to("cpu", torch.float64).numpy()
    else:
        try:
            array = np.asarray(value)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{name} must be an array of (x, y) points: {exc}") from exc
        if array.dtype == np.bool_ or array.dtype.kind not in "iuf":
            raise TypeError(
                f"{name} must hold real numbers, got {type(value).__name__} of dtype {array.dtype}"
            )
        array = array.astype(np.float64)
    if array.ndim < 2 or array.shape[-1] != 2:
        raise ValueError(f"{name} must have shape (..., N, 2) of (x, y) points, got {array.shape}")
    return array


def _where(name: str, index: tuple[int, ...]) -> str:
    return f"{name}[{', '.join(map(str, index))}]" if index else name


def _check_points(points: np.ndarray, name: str) -> None:
    """Raise ``ValueError`` naming the first set of ``points`` that is not finite or degenerate."""
    if points.size == 0:
        return
    sets = points.reshape(-1, *points.shape[-2:])
    batch = points.shape[:-2]

    def fail(flat_index: int, what: str) -> None:
        index = tuple(int(i) for i in np.unravel_index(flat_index, batch)) if batch else ()
        values = np.array2string(sets[flat_index], precision=4, separator=", ").replace("\n", "")
        raise ValueError(f"{_where(name, index)} {what}: {values}")

    finite = np.isfinite(sets).all(axis=(1, 2))
    if not finite.all():
        fail(int(np.argmin(finite)), "contains NaN or inf")
    centred = sets - sets.mean(axis=1, keepdims=True)
    spread = np.linalg.svd(centred, compute_uv=False)  # (sets, 2): extent along principal axes
    magnitude = np.abs(sets).max(axis=(1, 2))
    coincide = spread[:, 0] <= _COINCIDENT_TOL * np.maximum(magnitude, 1.0)
    if coincide.any():
        fail(int(np.argmax(coincide)), "is degenerate: all its points coincide")
    if sets.shape[1] >= 3:
        line = spread[:, 1] <= _COLLINEAR_TOL * spread[:, 0]
        if line.any():
            fail(int(np.argmax(line)), "is degenerate: its points lie on one line")


def _similarity(
    src: np.ndarray, dst: np.ndarray, src_name: str, dst_name: str, check_dst: bool = True
) -> np.ndarray:
    """Umeyama's least-squares similarity ``(..., 2, 3)`` from float64 point arrays."""
    n = src.shape[-2]
    if dst.shape[-2] != n:
        raise ValueError(
            f"{src_name} and {dst_name} must hold the same number of points, got shapes "
            f"{src.shape} and {dst.shape}"
        )
    if n < 2:
        raise ValueError(f"{src_name} must hold at least 2 points per set, got shape {src.shape}")
    try:
        batch = np.broadcast_shapes(src.shape[:-2], dst.shape[:-2])
    except ValueError:
        raise ValueError(
            f"the batch shapes of {src_name} {src.shape[:-2]} and {dst_name} {dst.shape[:-2]} "
            "do not broadcast"
        ) from None
    _check_points(src, src_name)
    if check_dst:
        _check_points(dst, dst_name)
    src = np.broadcast_to(src, (*batch, n, 2))
    dst = np.broadcast_to(dst, (*batch, n, 2))

    mean_src, mean_dst = src.mean(axis=-2), dst.mean(axis=-2)
    xs, xd = src - mean_src[..., None, :], dst - mean_dst[..., None, :]
    var_src = (xs**2).sum(axis=(-2, -1)) / n
    cov = np.swapaxes(xd, -1, -2) @ xs / n  # (..., 2, 2): mean of d_i s_i^T
    u, sv, vt = np.linalg.svd(cov)
    # reflection fix: if U V^T is a reflection, flip the axis of the smaller singular value,
    # which gives the best proper rotation (det = +1)
    sign = np.where(np.linalg.det(u) * np.linalg.det(vt) < 0, -1.0, 1.0)
    d = np.stack([np.ones_like(sign), sign], axis=-1)
    rotation = (u * d[..., None, :]) @ vt
    scale = (sv[..., 0] + sign * sv[..., 1]) / var_src
    linear = scale[..., None, None] * rotation
    shift = mean_dst - (linear @ mean_src[..., None])[..., 0]
    return np.concatenate([linear, shift[..., None]], axis=-1)


def _like(array: np.ndarray, like: torch.Tensor | None) -> Any:
    return array if like is None else torch.from_numpy(np.ascontiguousarray(array)).to(like.device)


def estimate_similarity(
    src: np.ndarray | torch.Tensor, dst: np.ndarray | torch.Tensor
) -> np.ndarray | torch.Tensor:
    """Least-squares similarity transform (rotation, uniform scale, translation) from src to dst.

    Minimises ``sum_i |s R src_i + t - dst_i|^2`` over rotations ``R`` (proper: no reflection),
    scales ``s >= 0`` and translations ``t`` (Umeyama, 1991). Where the unconstrained optimum
    would mirror the points, the reflection fix flips the weaker principal axis instead, which
    gives the best proper similarity. With exact similarity points the transform is recovered to
    float64 precision.

    Parameters
    ----------
    src, dst : numpy.ndarray or torch.Tensor
        ``(..., N, 2)`` ``(x, y)`` points, ``N >= 2``; point ``i`` of ``src`` corresponds to point
        ``i`` of ``dst``. Leading (batch) dimensions broadcast, e.g. ``(B, 5, 2)`` landmarks
        against one ``(5, 2)`` template.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        ``(..., 2, 3)`` float64 matrices ``[s R | t]``: ``dst ~= src @ M[:, :2].T + M[:, 2]``.
        A tensor (on the device of the first tensor argument) if either argument is a tensor,
        else a NumPy array. The math runs in float64 on the CPU.

    Raises
    ------
    ValueError
        If the shapes do not fit, or a set of points is not finite, has all its points at one
        place, or (with 3 or more points) has them on one line (a failed detection, not a face):
        the message names the argument and the set's index in the batch, e.g. ``src[3]``.
    TypeError
        If a point array does not hold real numbers.

    Examples
    --------
    >>> from metricface.data import estimate_similarity
    >>> src = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> estimate_similarity(src, 2 * src[:, ::-1] * [1, -1] + [5, 5]).round(12) + 0.0
    array([[ 0.,  2.,  5.],
           [-2.,  0.,  5.]])
    """
    like = next((a for a in (src, dst) if isinstance(a, torch.Tensor)), None)
    matrix = _similarity(_points(src, "src"), _points(dst, "dst"), "src", "dst")
    return _like(matrix, like)


def _reduce(points: Any, name: str) -> Any:
    n = points.shape[-2] if points.ndim >= 2 else None
    if points.ndim < 2 or points.shape[-1] != 2 or n not in (5, 68):
        raise ValueError(
            f"{name} must have shape (..., 5, 2) or (..., 68, 2) (5 points, or the 68 of the "
            f"iBUG layout), got {tuple(points.shape)}"
        )
    if n == 5:
        return points
    if isinstance(points, torch.Tensor):
        p = points if points.is_floating_point() else points.double()
        eyes = [(p[..., a, :] + p[..., b, :]) / 2 for a, b in _EYE_CORNERS]
        rest = [p[..., i, :] for i in (_NOSE_TIP, *_MOUTH_CORNERS)]
        return torch.stack(eyes + rest, dim=-2)
    p = points if points.dtype.kind == "f" else points.astype(np.float64)
    eyes = [(p[..., a, :] + p[..., b, :]) / 2 for a, b in _EYE_CORNERS]
    rest = [p[..., i, :] for i in (_NOSE_TIP, *_MOUTH_CORNERS)]
    return np.stack(eyes + rest, axis=-2)


def reduce_landmarks(points: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Reduce iBUG 68-point landmarks to the 5 points of the ArcFace template.

    Eye centres are the means of the eye corners, points 36/39 and 42/45 (0-based); the nose tip
    is point 30 and the mouth corners points 48 and 54. 5-point landmarks are returned unchanged.

    Parameters
    ----------
    points : numpy.ndarray or torch.Tensor
        ``(..., 68, 2)`` or ``(..., 5, 2)`` ``(x, y)`` points.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        ``(..., 5, 2)`` in the input's kind (and dtype; integer 68-point input gives float64):
        left eye, right eye, nose tip, left mouth corner, right mouth corner.

    Raises
    ------
    ValueError
        If ``points`` has another number of points or a last dimension other than 2.
    """
    if not isinstance(points, (np.ndarray, torch.Tensor)):
        points = np.asarray(points)
    return _reduce(points, "points")


# ---------------------------------------------------------------------------- warping
def _inverse(matrix: np.ndarray) -> np.ndarray:
    """Inverse of ``(..., 2, 3)`` affine matrices (output pixel -> source pixel)."""
    linear = np.linalg.inv(matrix[..., :2])
    shift = -(linear @ matrix[..., 2:])
    return np.concatenate([linear, shift], axis=-1)


def _warp(images: torch.Tensor, inverse: np.ndarray, size: int) -> torch.Tensor:
    """Bilinear, zero-padded warp of ``(B, C, H, W)`` images (any strides) with ``grid_sample``.

    ``inverse`` is ``(B, 2, 3)`` float64: output pixel -> source pixel. Returns float32 (float64
    for float64 images) ``(B, C, size, size)``.
    """
    b, c, h, w = images.shape
    # the window of the source that any output sample reads (bilinear neighbours, plus a margin
    # for rounding): the rest is never converted to floating point
    corners = np.array([[0.0, size - 1.0, 0.0, size - 1.0], [0.0, 0.0, size - 1.0, size - 1.0]])
    reach = (inverse[:, :, :2] @ corners + inverse[:, :, 2:]).transpose(1, 0, 2).reshape(2, -1)
    lo = np.clip(np.floor(reach.min(axis=1, initial=np.inf)) - 2, 0, [w, h]).astype(int)
    hi = np.clip(np.floor(reach.max(axis=1, initial=-np.inf)) + 4, 0, [w, h]).astype(int)
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    if b == 0 or (hi <= lo).any():  # nothing of the image is in view
        out = torch.zeros((b, c, size, size), dtype=dtype, device=images.device)
    else:
        window = images[:, :, lo[1] : hi[1], lo[0] : hi[0]]
        wh, ww = window.shape[-2:]
        shifted = inverse.copy()
        shifted[:, :, 2] -= lo
        # theta maps normalised output coordinates to normalised window coordinates
        # (align_corners=False: pixel x <-> g = (2x + 1) / W - 1)
        half = (size - 1) / 2
        from_output = np.array([[size / 2, 0, half], [0, size / 2, half], [0, 0, 1]])
        to_input = np.array([[2 / ww, 0, 1 / ww - 1], [0, 2 / wh, 1 / wh - 1]])
        square = np.concatenate([shifted, np.broadcast_to([[[0.0, 0.0, 1.0]]], (b, 1, 3))], 1)
        theta = torch.from_numpy(to_input @ square @ from_output).to(images.device, dtype)
        grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)
        out = F.grid_sample(
            window.to(dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
    return out


def _warp_batch(images: torch.Tensor, inverse: np.ndarray, size: int) -> torch.Tensor:
    """:func:`_warp` in the images' dtype; on the CPU a few images at a time (see _CPU_CHUNK)."""
    step = _CPU_CHUNK if images.device.type == "cpu" else max(1, images.shape[0])
    parts = [
        _cast(_warp(images[i : i + step], inverse[i : i + step], size), images.dtype)
        for i in range(0, max(images.shape[0], 1), step)  # an empty batch: one empty part
    ]
    return torch.cat(parts) if len(parts) != 1 else parts[0]


def _cast(out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The warp's floating result in ``dtype``; uint8 is rounded to nearest (ties to even)."""
    if dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.to(dtype)


def _template(template: object, size: int) -> np.ndarray:
    if template is None:
        return face_template(size)
    tmpl = _points(template, "template")
    if tmpl.shape != (5, 2):
        raise ValueError(f"template must have shape (5, 2), got {tmpl.shape}")
    return tmpl


def align_face(image: Any, landmarks: Any, size: int = 112, template: Any = None) -> Any:
    """Warp a face image (or a batch) so that its landmarks land on the 5-point template.

    Parameters
    ----------
    image : PIL.Image.Image, numpy.ndarray or torch.Tensor
        One image: a PIL image (modes ``L``, ``LA``, ``RGB``, ``RGBA`` are kept, any other is
        converted to ``RGB``), a ``(H, W, C)`` or ``(H, W)`` uint8 or floating NumPy array, or a
        ``(C, H, W)`` uint8 or floating tensor; or a batch, a ``(B, C, H, W)`` tensor on any
        device (warped there by :func:`~torch.nn.functional.grid_sample`, on a GPU in one call).
    landmarks : array-like
        ``(5, 2)`` or ``(68, 2)`` ``(x, y)`` source pixel coordinates for one image (68 points
        are reduced by :func:`reduce_landmarks`); ``(B, 5, 2)`` or ``(B, 68, 2)`` for a batch.
        NumPy, torch (any device) or nested lists.
    size : int
        Side of the square output crop (112 or 224 for the usual layouts; see
        :func:`face_template`).
    template : array-like, optional
        ``(5, 2)`` target positions in the ``size x size`` output, in place of
        :func:`face_template(size) <face_template>`.

    Returns
    -------
    PIL.Image.Image, numpy.ndarray or torch.Tensor
        The aligned crop in the input's kind, dtype and channel layout: ``size x size`` PIL image,
        ``(size, size[, C])`` array, ``(C, size, size)`` or ``(B, C, size, size)`` tensor on the
        input's device. Bilinear interpolation at pixel centres, zero (black) beyond the source
        border; uint8 values are rounded to the nearest integer. See the module notes for the
        coordinate conventions.

    Raises
    ------
    ValueError
        If ``landmarks`` or ``template`` has the wrong shape or is degenerate (NaN/inf, all
        points at one place, points on one line; the message names the set, e.g.
        ``landmarks[3]``), or the batch sizes of ``image`` and ``landmarks`` differ.
    TypeError
        If ``image`` is of another kind or dtype.

    Examples
    --------
    >>> from metricface.data import align_face, face_template
    >>> photo = torch.zeros(3, 250, 250, dtype=torch.uint8)
    >>> landmarks = face_template(112) * 1.8 + [20, 30]  # a face 1.8 times larger, shifted
    >>> align_face(photo, landmarks).shape
    torch.Size([3, 112, 112])
    """
    check_scalar(size, "size", low=1, integer=True)
    tmpl = _template(template, size)
    points = _reduce(_points(landmarks, "landmarks"), "landmarks")
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 and not image.is_floating_point():
            raise TypeError(f"image must be a uint8 or floating tensor, got dtype {image.dtype}")
        if image.ndim not in (3, 4):
            raise ValueError(
                "image must be a (C, H, W) tensor or a (B, C, H, W) batch, got shape "
                f"{tuple(image.shape)}"
            )
        single = image.ndim == 3
        batch = image[None] if single else image
    else:
        batch, restore = _image_as_batch(image)
        single = True
    want = (5, 2) if single else (batch.shape[0], 5, 2)
    if points.shape != want:
        expected = "(5, 2) or (68, 2)" if single else "(B, 5, 2) or (B, 68, 2)"
        raise ValueError(
            f"landmarks must have shape {expected} for an image of shape {_shape(image)}, got "
            f"{points.shape}"
        )
    fit = _similarity(points, tmpl, "landmarks", "template", check_dst=template is not None)
    inverse = _inverse(fit).reshape(-1, 2, 3)
    if isinstance(image, torch.Tensor):
        out = _warp_batch(batch, inverse, size)
        return out[0] if single else out
    return restore(_warp(batch, inverse, size)[0])


def _shape(image: Any) -> tuple[int, ...]:
    return tuple(image.shape) if hasattr(image, "shape") else (image.height, image.width)


def _image_as_batch(image: Any) -> tuple[torch.Tensor, Any]:
    """A PIL image or NumPy array as a ``(1, C, H, W)`` tensor view, and the way back."""
    if isinstance(image, np.ndarray):
        if image.dtype not in (np.uint8, np.float16, np.float32, np.float64):
            raise TypeError(f"image must be a uint8 or floating array, got dtype {image.dtype}")
        if image.ndim not in (2, 3):
            raise ValueError(
                f"image must be an (H, W, C) or (H, W) array, got shape {image.shape} (use a "
                "(B, C, H, W) tensor for a batch)"
            )
        array = image
        if not array.flags.writeable or min(array.strides, default=0) < 0:
            array = array.copy()  # torch views only writeable, positively strided memory
    else:
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise TypeError(
                "image must be a PIL image, a NumPy array or a torch tensor, got "
                f"{type(image).__name__}"
            )
        kept = image if image.mode in ("L", "LA", "RGB", "RGBA") else image.convert("RGB")
        array = np.array(kept)
    squeeze = array.ndim == 2
    view = torch.from_numpy(array[..., None] if squeeze else array)

    def restore(chw: torch.Tensor) -> Any:
        out = _cast(chw.permute(1, 2, 0).contiguous(), view.dtype).numpy()
        out = out[..., 0] if squeeze else out
        return out if isinstance(image, np.ndarray) else Image.fromarray(out)

    return view.permute(2, 0, 1)[None], restore
