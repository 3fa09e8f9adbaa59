"""A built-in set of procedural face images, so that examples and tests need no download.

Each identity is a fixed random face: head shape, skin tone, hair colour and style, ears, the
position, size and colour of the eyes, the shape of brows, nose and mouth, and a few moles.
Each *image* of an identity varies what a real photo varies: head pose (in-plane rotation,
shift, scale and a small yaw), expression (eye openness, brow raise, smile, open mouth),
illumination (directional light, exposure, colour temperature) and background, plus optional
capture distortions (blur, fog, low light, sensor noise, occlusion).

Images are drawn on the fly with signed-distance shapes on a coordinate grid (a few ms each
on a CPU), and are a pure function of ``(seed, identity, index)``: the same dataset object,
or a new one with the same arguments, returns the same pixels in any process or order.

The set is made hard enough to be a meaningful benchmark: cosine similarity of raw pixels
separates held-out identities poorly (EER around 0.3 with the default settings), while a small
CNN trained on other identities separates them far better.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from metricface._validation import check_scalar

__all__ = ["DISTORTIONS", "SyntheticFaces"]

#: Names accepted by ``SyntheticFaces(distortions=...)``.
DISTORTIONS = ("blur", "fog", "lowlight", "noise", "occlusion")

_SKIN = np.array(
    [
        [0.98, 0.85, 0.74],
        [0.93, 0.76, 0.62],
        [0.84, 0.64, 0.50],
        [0.70, 0.50, 0.36],
        [0.52, 0.36, 0.25],
        [0.36, 0.25, 0.18],
    ]
)
_HAIR = np.array(
    [
        [0.08, 0.06, 0.05],
        [0.25, 0.16, 0.09],
        [0.45, 0.30, 0.16],
        [0.80, 0.65, 0.40],
        [0.60, 0.25, 0.10],
        [0.62, 0.62, 0.62],
    ]
)
_IRIS = np.array([[0.30, 0.18, 0.08], [0.15, 0.30, 0.55], [0.25, 0.40, 0.25], [0.10, 0.07, 0.05]])


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


class _Canvas:
    """An RGB float image in ``[0, 1]`` with shapes composited by soft masks."""

    def __init__(self, size: int, background: torch.Tensor, u: torch.Tensor, v: torch.Tensor):
        self.img = background
        self.u, self.v = u, v  # face-frame coordinates of every pixel, (H, W)
        self.edge = 1.0 / size  # anti-aliasing width: about half a pixel

    def ellipse_sdf(self, cx, cy, ax, ay, angle=0.0) -> torch.Tensor:
        du, dv = self.u - cx, self.v - cy
        if angle:
            c, s = math.cos(angle), math.sin(angle)
            du, dv = c * du + s * dv, -s * du + c * dv
        # (r^2 - 1) / 2 is the first-order expansion of r - 1 at the boundary r = 1: the same
        # soft edge as the true distance, without a sqrt (transcendental ops on small images
        # are slow when torch runs them multi-threaded on a busy CPU)
        r2 = (du / ax) ** 2 + (dv / ay) ** 2
        return (r2 - 1.0) * (0.5 * min(ax, ay))

    def mask(self, sdf: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(-sdf / self.edge)

    def paint(self, mask: torch.Tensor, color: Sequence[float] | torch.Tensor) -> None:
        col = torch.as_tensor(color, dtype=self.img.dtype).view(3, 1, 1)
        self.img = self.img * (1.0 - mask) + col * mask


class SyntheticFaces(Dataset):
    """Procedural face images of ``num_identities`` people, generated deterministically.

    Parameters
    ----------
    num_identities : int
        Number of distinct people. Labels are ``0 .. num_identities - 1``.
    images_per_identity : int
        Images per person; the dataset has ``num_identities * images_per_identity`` items,
        ordered identity by identity.
    image_size : int
        Side of the square RGB image (default 112, the usual aligned-face crop).
    seed : int
        Seed of the whole set. Identity ``i`` of seed ``s`` is the same face in any dataset.
    identity_offset : int
        Which people to draw: label ``k`` renders identity ``identity_offset + k``. Two
        datasets with the same seed and disjoint ranges ``[offset, offset + num_identities)``
        share no person, which is how held-out (open-set) identities are made.
    distortions : sequence of str
        Capture distortions that may be applied, a subset of :data:`DISTORTIONS`
        (``"blur"``, ``"fog"``, ``"lowlight"``, ``"noise"``, ``"occlusion"``); empty for clean
        images.
    distortion_prob : float
        Probability that each listed distortion is applied to an image. Distortions are drawn
        from their own random stream, so a clean and a distorted dataset with the same other
        arguments return the same pose and expression at every index.
    transform : callable, optional
        Applied to the ``(3, H, W)`` image tensor before it is returned.
    dtype : torch.dtype
        ``torch.uint8`` (values 0..255, like :func:`torchvision.io.decode_image`) or a floating
        dtype (values in ``[0, 1]``).
    cache : bool
        Keep every rendered image (before ``transform``) in memory, so later epochs cost no
        drawing: ``len * 3 * image_size**2`` bytes for uint8. Each DataLoader worker process
        keeps its own cache, so use it with ``num_workers=0`` or few workers.

    Attributes
    ----------
    labels : torch.Tensor
        ``(len(self),)`` int64 label of every item, for samplers.
    num_classes : int
        ``num_identities``.

    Examples
    --------
    >>> from metricface.data import SyntheticFaces
    >>> faces = SyntheticFaces(num_identities=3, images_per_identity=2, image_size=64)
    >>> image, label = faces[5]
    >>> image.shape, image.dtype, label
    (torch.Size([3, 64, 64]), torch.uint8, 2)
    """

    def __init__(
        self,
        num_identities: int = 100,
        images_per_identity: int = 20,
        image_size: int = 112,
        seed: int = 0,
        *,
        identity_offset: int = 0,
        distortions: Sequence[str] = (),
        distortion_prob: float = 0.5,
        transform: Callable[[torch.Tensor], Any] | None = None,
        dtype: torch.dtype = torch.uint8,
        cache: bool = False,
    ) -> None:
        check_scalar(num_identities, "num_identities", low=1, integer=True)
        check_scalar(images_per_identity, "images_per_identity", low=1, integer=True)
        check_scalar(image_size, "image_size", low=16, integer=True)
        check_scalar(seed, "seed", low=0, integer=True)
        check_scalar(identity_offset, "identity_offset", low=0, integer=True)
        check_scalar(distortion_prob, "distortion_prob", low=0.0, high=1.0)
        if isinstance(distortions, str):
            distortions = (distortions,)
        unknown = [d for d in distortions if d not in DISTORTIONS]
        if unknown:
            raise ValueError(
                f"distortions must be a subset of {DISTORTIONS}, got unknown {unknown!r}"
            )
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None, got {type(transform).__name__}")
        if dtype != torch.uint8 and not dtype.is_floating_point:
            raise TypeError(f"dtype must be torch.uint8 or a floating dtype, got {dtype}")
        self.num_identities = int(num_identities)
        self.images_per_identity = int(images_per_identity)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.identity_offset = int(identity_offset)
        self.distortions = tuple(distortions)
        self.distortion_prob = float(distortion_prob)
        self.transform = transform
        self.dtype = dtype
        self.num_classes = self.num_identities
        self.labels = torch.arange(self.num_identities).repeat_interleave(self.images_per_identity)
        lin = (torch.arange(self.image_size, dtype=torch.float32) + 0.5) / self.image_size
        self._grid_y, self._grid_x = torch.meshgrid(lin * 2 - 1, lin * 2 - 1, indexing="ij")
        self._faces: dict[int, dict[str, Any]] = {}
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return self.num_identities * self.images_per_identity

    @property
    def targets(self) -> list[int]:
        """Labels as a list (the attribute name torchvision datasets use)."""
        return self.labels.tolist()

    def __repr__(self) -> str:
        return (
            f"SyntheticFaces(num_identities={self.num_identities}, "
            f"images_per_identity={self.images_per_identity}, image_size={self.image_size}, "
            f"seed={self.seed}, identity_offset={self.identity_offset}, "
            f"distortions={self.distortions!r})"
        )

    def __getitem__(self, index: int) -> tuple[Any, int]:
        n = len(self)
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if not -n <= index < n:
            raise IndexError(f"index must be in [-{n}, {n}), got {index}")
        index = int(index) % n
        label = index // self.images_per_identity
        image = self._cache.get(index) if self._cache is not None else None
        if image is None:
            image = self.render(label, index % self.images_per_identity)
            if self._cache is not None:
                self._cache[index] = image
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    # ------------------------------------------------------------------ identity
    def _face(self, identity: int) -> dict[str, Any]:
        face = self._faces.get(identity)
        if face is None:
            face = self._draw_identity(_rng(self.seed, 0, identity))
            if len(self._faces) < 100_000:
                self._faces[identity] = face
        return face

    @staticmethod
    def _draw_identity(r: np.random.Generator) -> dict[str, Any]:
        def pick(palette: np.ndarray, jitter: float) -> np.ndarray:
            # mix two neighbouring palette entries, then jitter: a continuum of colours
            i = r.integers(len(palette) - 1)
            t = r.uniform()
            c = (1 - t) * palette[i] + t * palette[i + 1] + r.normal(0, jitter, 3)
            return np.clip(c, 0.0, 1.0)

        skin = pick(_SKIN, 0.03)
        hair = pick(_HAIR, 0.04)
        n_moles = int(r.integers(0, 4))
        return {
            "face_ax": r.uniform(0.50, 0.66),
            "face_ay": r.uniform(0.66, 0.84),
            "jaw": r.uniform(-0.12, 0.12),  # >0: narrower chin
            "skin": skin,
            "hair": hair,
            "hair_volume": r.uniform(0.02, 0.16),
            "hairline": r.uniform(-0.62, -0.38),
            "hair_side": r.uniform(-0.12, 0.12),  # parting shifts the fringe sideways
            "bald": r.uniform() < 0.12,
            "long_hair": r.uniform() < 0.35,
            "ear_size": r.uniform(0.07, 0.13),
            "eye_y": r.uniform(-0.20, -0.06),
            "eye_dx": r.uniform(0.19, 0.30),
            "eye_ax": r.uniform(0.07, 0.12),
            "eye_ay": r.uniform(0.035, 0.06),
            "eye_tilt": r.uniform(-0.25, 0.25),
            "iris": pick(_IRIS, 0.05),
            "iris_r": r.uniform(0.45, 0.75),
            "brow_gap": r.uniform(0.07, 0.14),
            "brow_len": r.uniform(0.08, 0.15),
            "brow_thick": r.uniform(0.012, 0.035),
            "brow_tilt": r.uniform(-0.35, 0.35),
            "brow_color": np.clip(hair * r.uniform(0.5, 1.0), 0, 1),
            "nose_len": r.uniform(0.12, 0.26),
            "nose_w": r.uniform(0.05, 0.11),
            "nose_shade": r.uniform(0.70, 0.88),
            "mouth_y": r.uniform(0.30, 0.48),
            "mouth_w": r.uniform(0.12, 0.24),
            "lip_thick": r.uniform(0.018, 0.045),
            "lip_color": np.clip(skin * np.array([1.0, 0.6, 0.6]) * r.uniform(0.6, 0.95), 0, 1),
            "beard": r.uniform() < 0.2,
            "glasses": r.uniform() < 0.15,
            "moles": [
                (r.uniform(-0.4, 0.4), r.uniform(-0.1, 0.55), r.uniform(0.015, 0.03))
                for _ in range(n_moles)
            ],
        }

    # ------------------------------------------------------------------ image
    def render(self, label: int, image_index: int) -> torch.Tensor:
        """Draw image ``image_index`` of person ``label`` (no ``transform`` applied).

        Returns
        -------
        torch.Tensor
            ``(3, image_size, image_size)`` image of ``self.dtype``.
        """
        identity = self.identity_offset + int(label)
        f = self._face(identity)
        r = _rng(self.seed, 1, identity, image_index)
        size = self.image_size

        # pose: map image coordinates into the face frame (inverse similarity transform)
        angle = r.normal(0, 0.12)
        scale = r.uniform(0.85, 1.12)
        tx, ty = r.normal(0, 0.06), r.normal(0, 0.05)
        yaw = float(np.clip(r.normal(0, 0.12), -0.3, 0.3))
        c, s = math.cos(angle), math.sin(angle)
        x, y = self._grid_x - tx, self._grid_y - ty
        u = (c * x + s * y) / scale
        v = (-s * x + c * y) / scale

        # background: a random colour with a gradient
        bg = torch.as_tensor(r.uniform(0.1, 0.9, 3), dtype=torch.float32).view(3, 1, 1)
        gdir = r.normal(0, 0.25, 2)
        grad = (gdir[0] * self._grid_x + gdir[1] * self._grid_y).unsqueeze(0)
        canvas = _Canvas(size, (bg + grad).clamp(0, 1).expand(3, size, size).clone(), u, v)

        self._draw_head(canvas, f, yaw, r)
        img = canvas.img

        # illumination: directional shading over the face, exposure, colour temperature
        light = r.normal(0, 0.35, 2)
        shade = 1.0 + light[0] * self._grid_x + light[1] * self._grid_y
        img = img * shade.clamp(0.3, 1.8).unsqueeze(0)
        exposure = math.exp(r.normal(0, 0.25))
        temp = r.normal(0, 0.07)
        tint = torch.tensor([1 + temp, 1.0, 1 - temp], dtype=torch.float32).view(3, 1, 1)
        img = (img * exposure * tint).clamp(0, 1)

        if self.distortions:
            img = self._distort(img, canvas, f, _rng(self.seed, 2, identity, image_index))
        if self.dtype == torch.uint8:
            return (img * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)
        return img.to(self.dtype)

    def _draw_head(self, cv: _Canvas, f: dict[str, Any], yaw: float, r: np.random.Generator):
        ax, ay = f["face_ax"], f["face_ay"]
        face_cy = 0.05
        # yaw: features slide towards one side, the far half of the face narrows
        sx = yaw * 0.35

        # hair behind the head
        if not f["bald"]:
            vol = f["hair_volume"]
            back_ay = ay + vol + (0.35 if f["long_hair"] else 0.0)
            back_cy = face_cy - vol + (0.30 if f["long_hair"] else 0.0)
            cv.paint(cv.mask(cv.ellipse_sdf(0.0, back_cy, ax + vol, back_ay)), f["hair"])
        # ears
        for side in (-1.0, 1.0):
            ex = side * (ax - 0.02) - sx * 0.5
            cv.paint(
                cv.mask(cv.ellipse_sdf(ex, -0.02, f["ear_size"] * 0.6, f["ear_size"])),
                f["skin"] * 0.93,
            )
        # head: an ellipse whose lower half narrows towards the chin
        du = cv.u - sx * 0.3
        dv = cv.v - face_cy
        width = ax * (1.0 - f["jaw"] * (dv / ay).clamp(min=0) ** 2)
        head = ((du / width) ** 2 + (dv / ay) ** 2 - 1.0) * 0.5
        head_mask = cv.mask(head * min(ax, ay))
        cv.paint(head_mask, f["skin"])
        if f["beard"]:
            beard = torch.maximum(head * min(ax, ay), -(cv.v - (f["mouth_y"] - 0.08)))
            cv.paint(cv.mask(beard) * 0.85, f["hair"])
        # fringe: hair covering the head above a wavy hairline
        if not f["bald"]:
            phase = torch.remainder(cv.u * (9.0 / (2 * math.pi)) + f["hair_side"] * 3.2, 1.0)
            wave = 0.04 * (1.0 - 4.0 * (phase - 0.5).abs())  # a triangle wave
            line = f["hairline"] + wave + f["hair_side"] * cv.u
            fringe = torch.maximum(head * min(ax, ay), cv.v - line)
            cv.paint(cv.mask(fringe), f["hair"])

        # expression
        eye_open = float(np.clip(r.normal(1.0, 0.2), 0.25, 1.3))
        brow_raise = r.normal(0, 0.02)
        smile = r.normal(0.0, 0.5)
        mouth_open = max(0.0, r.normal(0.0, 0.02))

        for side in (-1.0, 1.0):
            ex = side * f["eye_dx"] + sx
            ey = f["eye_y"]
            tilt = side * f["eye_tilt"]
            eay = f["eye_ay"] * eye_open
            cv.paint(cv.mask(cv.ellipse_sdf(ex, ey, f["eye_ax"], eay, tilt)), (0.96, 0.95, 0.93))
            ir = f["eye_ay"] * f["iris_r"] * 1.4
            iris = torch.maximum(
                cv.ellipse_sdf(ex + sx * 0.1, ey, ir, ir),
                cv.ellipse_sdf(ex, ey, f["eye_ax"], eay, tilt),
            )
            cv.paint(cv.mask(iris), f["iris"])
            cv.paint(cv.mask(cv.ellipse_sdf(ex + sx * 0.1, ey, ir * 0.4, ir * 0.4)), (0, 0, 0))
            by = ey - f["eye_ay"] - f["brow_gap"] + brow_raise
            brow = cv.ellipse_sdf(ex, by, f["brow_len"], f["brow_thick"], side * f["brow_tilt"])
            cv.paint(cv.mask(brow), f["brow_color"])
            if f["glasses"]:
                rim = (cv.ellipse_sdf(ex, ey, f["eye_ax"] * 1.7, f["eye_ax"] * 1.3)).abs() - 0.01
                cv.paint(cv.mask(rim), (0.1, 0.1, 0.1))

        # nose: a shaded wedge below the eyes
        ny0 = f["eye_y"] + 0.02
        nl = f["nose_len"]
        t = ((cv.v - ny0) / nl).clamp(0, 1)
        half_w = f["nose_w"] * (0.3 + 0.7 * t)
        nose = torch.maximum((cv.u - sx * 1.2).abs() - half_w, (cv.v - ny0 - nl / 2).abs() - nl / 2)
        cv.paint(cv.mask(nose) * 0.6, f["skin"] * f["nose_shade"])
        cv.paint(
            cv.mask(cv.ellipse_sdf(sx * 1.2, ny0 + nl, f["nose_w"] * 0.9, 0.02)),
            f["skin"] * f["nose_shade"] * 0.8,
        )

        # mouth: a curved band (smile bends it), opening shows a dark interior
        mx = cv.u - sx
        curve = f["mouth_y"] - smile * 0.12 * (1 - (mx / f["mouth_w"]).clamp(-1, 1) ** 2)
        dy = cv.v - curve
        lips = torch.maximum(mx.abs() - f["mouth_w"], dy.abs() - f["lip_thick"] - mouth_open)
        cv.paint(cv.mask(lips), f["lip_color"])
        if mouth_open > 0.004:
            inner = torch.maximum(mx.abs() - f["mouth_w"] * 0.8, dy.abs() - mouth_open)
            cv.paint(cv.mask(inner), (0.15, 0.05, 0.05))
        for mu, mv, mr in f["moles"]:
            cv.paint(cv.mask(cv.ellipse_sdf(mu + sx, mv, mr, mr)), f["skin"] * 0.45)

    def _distort(
        self, img: torch.Tensor, cv: _Canvas, f: dict[str, Any], r: np.random.Generator
    ) -> torch.Tensor:
        p = self.distortion_prob
        size = self.image_size
        draws = {name: r.uniform() < p for name in DISTORTIONS}  # fixed order: stable streams
        if "occlusion" in self.distortions and draws["occlusion"]:
            kind = r.integers(3)
            col = torch.as_tensor(r.uniform(0, 1, 3), dtype=torch.float32).view(3, 1, 1)
            if kind == 0:  # sunglasses band over the eyes
                band = (cv.v - f["eye_y"]).abs() - 0.09
                m = torch.sigmoid(-band / cv.edge) * torch.sigmoid(-(cv.u.abs() - 0.5) / cv.edge)
                col = col * 0.2
            elif kind == 1:  # mask over mouth and nose
                m = torch.sigmoid(-(f["mouth_y"] - 0.22 - cv.v) / cv.edge)
                m = m * torch.sigmoid(-(cv.u.abs() - 0.55) / cv.edge)
            else:  # a random rectangle (a hand, a cup, a microphone)
                x0, y0 = r.uniform(-0.9, 0.4, 2)
                w, h = r.uniform(0.25, 0.5, 2)
                gx, gy = self._grid_x, self._grid_y
                m = ((gx > x0) & (gx < x0 + w) & (gy > y0) & (gy < y0 + h)).float()
            img = img * (1 - m) + col * m
        if "blur" in self.distortions and draws["blur"]:
            sigma = r.uniform(0.8, 2.5) * size / 112
            k = int(2 * math.ceil(2.5 * sigma) + 1)
            xs = torch.arange(k, dtype=torch.float32) - k // 2
            g = torch.exp(-(xs**2) / (2 * sigma**2))
            g = g / g.sum()
            x = torch.nn.functional.pad(img.unsqueeze(0), (k // 2,) * 4, mode="replicate")
            x = torch.nn.functional.conv2d(x, g.view(1, 1, 1, k).expand(3, 1, 1, k), groups=3)
            x = torch.nn.functional.conv2d(x, g.view(1, 1, k, 1).expand(3, 1, k, 1), groups=3)
            img = x.squeeze(0)
        if "fog" in self.distortions and draws["fog"]:
            a = r.uniform(0.3, 0.65)
            haze = r.uniform(0.7, 0.95)
            img = img * (1 - a) + haze * a
        if "lowlight" in self.distortions and draws["lowlight"]:
            img = img.clamp(0, 1) ** r.uniform(1.2, 2.0) * r.uniform(0.15, 0.45)
            gen = torch.Generator().manual_seed(int(r.integers(2**62)))
            img = img + torch.randn(img.shape, generator=gen) * 0.02
        if "noise" in self.distortions and draws["noise"]:
            gen = torch.Generator().manual_seed(int(r.integers(2**62)))
            img = img + torch.randn(img.shape, generator=gen) * r.uniform(0.03, 0.1)
        return img.clamp(0, 1)
