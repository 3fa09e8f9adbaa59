"""Writers of verification ``.bin`` files in the layouts real tools produced, for the tests.

``python2`` emits, opcode by opcode, what Python 2's ``pickle.dump((bins, issame_list), f,
protocol=2)`` wrote for InsightFace's published files (there is no Python 2 here to run): the
images are Python 2 ``str`` objects, i.e. ``SHORT_BINSTRING`` (under 256 bytes) or ``BINSTRING``
opcodes, each memoised with ``BINPUT``/``LONG_BINPUT``; lists are ``EMPTY_LIST`` plus
``APPENDS`` in batches of 1000 (``APPEND`` for a batch of one); bools are ``NEWTRUE`` /
``NEWFALSE``; the pair is ``TUPLE2``. The other layouts are Python 3's own ``pickle.dump``.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

LAYOUTS = ("python2", "python3-protocol2", "python3-protocol4", "python3-protocol5")


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    """Encode an ``(H, W, 3)`` uint8 array as PNG (lossless) or JPEG."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


class _Py2Pickler:
    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")  # PROTO 2
        self.memo = 0

    def put(self) -> None:
        idx, self.memo = self.memo, self.memo + 1
        self.out += b"q" + bytes([idx]) if idx < 256 else b"r" + struct.pack("<I", idx)

    def string(self, data: bytes) -> None:
        if len(data) < 256:
            self.out += b"U" + bytes([len(data)]) + data
        else:
            self.out += b"T" + struct.pack("<i", len(data)) + data
        self.put()

    def boolean(self, value: bool) -> None:
        self.out += b"\x88" if value else b"\x89"

    def list(self, items, save) -> None:
        self.out += b"]"
        self.put()
        for start in range(0, len(items), 1000):
            batch = items[start : start + 1000]
            if len(batch) == 1:
                save(batch[0])
                self.out += b"a"  # APPEND
            else:
                self.out += b"("  # MARK
                for item in batch:
                    save(item)
                self.out += b"e"  # APPENDS


def python2_pickle(bins: list[bytes], issame: list[bool]) -> bytes:
    """The byte stream Python 2 wrote for ``pickle.dump((bins, issame), f, protocol=2)``."""
    p = _Py2Pickler()
    p.list(bins, p.string)
    p.list([bool(v) for v in issame], p.boolean)
    p.out += b"\x86"  # TUPLE2
    p.put()
    p.out += b"."
    return bytes(p.out)


def write_bin(path: Path, bins: list[bytes], issame, layout: str = "python3-protocol4") -> Path:
    """Write ``(bins, issame)`` as a ``.bin`` file in one of :data:`LAYOUTS`."""
    if layout == "python2":
        data = python2_pickle(bins, list(issame))
    else:
        protocol = int(layout[-1])
        data = pickle.dumps((bins, issame), protocol=protocol)
    path.write_bytes(data)
    return path


def pair_images(n_pairs: int, size: int = 16, seed: int = 0, fmt: str = "PNG"):
    """``2 * n_pairs`` random images (genuine pairs share a base image plus noise), their
    encodings and the labels (even pairs genuine)."""
    rng = np.random.default_rng(seed)
    images, issame = [], []
    for i in range(n_pairs):
        base = rng.integers(0, 256, (size, size, 3))
        other = base if i % 2 == 0 else rng.integers(0, 256, (size, size, 3))
        for img in (base, other):
            noise = rng.integers(-10, 11, img.shape)
            images.append(np.clip(img + noise, 0, 255).astype(np.uint8))
        issame.append(i % 2 == 0)
    return images, [encode(img, fmt) for img in images], issame
