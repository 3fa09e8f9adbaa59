"""Verification ``.bin`` sets (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``, ``calfw.bin``, ...).

InsightFace distributes its verification benchmarks as one pickle per set holding the tuple
``(bins, issame_list)``: ``bins`` lists ``2N`` encoded images (JPEG or PNG, usually aligned
112x112 crops), pair ``i`` being images ``2i`` and ``2i + 1``, and ``issame_list`` the ``N``
labels (``True`` for a genuine pair). The published files were written by Python 2
(``pickle.dump(..., protocol=2)``): images are Python 2 ``str`` objects (``BINSTRING`` opcodes)
and the labels plain ``bool`` values, so they contain no global at all. Files re-written by
Python 3 hold ``bytes`` (``BINBYTES`` from protocol 3 on; ``_codecs.encode(..., "latin1")``
calls under protocol 2), and some tools store the labels as a NumPy array.

Pickles can run arbitrary code, so these files are read with a restricted unpickler: the only
globals it admits are those the layouts above contain (``_codecs.encode`` for Latin-1 text, and
``numpy.dtype``, ``numpy.ndarray``, ``_reconstruct``, ``scalar`` and ``_frombuffer`` of
``numpy.core``/``numpy._core``), and each of them is replaced by a stand-in of this module that
only builds plain bytes or a NumPy array of a bool, integer or float dtype from raw bytes. Any
other global (``os.system``, ``builtins.eval``, ...) stops the load with a ``ValueError`` naming
it before anything it refers to is called.

Images stay encoded in memory (a ``.bin`` is about 5 KB per image) and are decoded with Pillow
when read (:class:`VerificationBin`); :func:`load_verification_bin` decodes a whole set into one
uint8 tensor (``2N x 3 x 112 x 112`` bytes: 452 MB for LFW's 12,000 images).
"""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from metricface._validation import check_scalar
from metricface.data.folder import ImageDecodeError, decode_image_file

__all__ = ["VerificationBin", "load_verification_bin"]


# --------------------------------------------------------------------------- restricted unpickler


class _Forbidden(pickle.UnpicklingError):
    """A global outside the allow-list (raised from ``find_class``, before any call)."""


class _Sealed(type):
    """Metaclass of the admitted stand-in classes: a pickle's BUILD cannot set their attributes
    (which would outlive the load, e.g. widen what a later load admits)."""

    def __setattr__(cls, name: str, value: object) -> None:
        raise pickle.UnpicklingError(f"setting attributes of {cls.__name__} is not admitted")


class _SealedFunction:
    """An admitted function whose attributes (``__defaults__``...) a pickle cannot set."""

    __slots__ = ("_function",)

    def __init__(self, function: Any) -> None:
        object.__setattr__(self, "_function", function)

    def __call__(self, *args: object) -> Any:
        return self._function(*args)

    def __setattr__(self, name: str, value: object) -> None:
        raise pickle.UnpicklingError(
            f"setting attributes of {self._function.__name__} is not admitted"
        )


def _text(value: object) -> str | None:
    """Python 2 ``str`` arrives as ``bytes`` (``encoding="bytes"``); Python 3 ``str`` as is."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value if isinstance(value, str) else None


def _latin1(text: object, encoding: object = "utf-8") -> bytes:
    """Stand-in for ``_codecs.encode``: Python 3 writes ``bytes`` as ``encode(text, "latin1")``
    under protocol 2; nothing else is accepted."""
    if not isinstance(text, str) or _text(encoding) not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(
            f"_codecs.encode is admitted only as encode(<str>, 'latin1'), got a "
            f"{type(text).__name__} and encoding {encoding!r}"
        )
    return text.encode("latin-1")


class _Dtype(metaclass=_Sealed):
    """Stand-in for ``numpy.dtype``: plain bool / integer / float dtypes only."""

    _SPEC = re.compile(r"^[biuf]\d{1,2}$")

    def __init__(self, spec: object, align: object = False, copy: object = False) -> None:
        text = _text(spec)
        if text is None or not self._SPEC.match(text):
            raise pickle.UnpicklingError(
                f"only bool, integer and float NumPy dtypes are admitted, got dtype {spec!r}"
            )
        self.dtype = np.dtype(text)

    def __setstate__(self, state: object) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
        if not isinstance(state, tuple) or len(state) < 5 or any(s is not None for s in state[2:5]):
            raise pickle.UnpicklingError(
                "only plain NumPy dtypes are admitted, got a structured or sub-array dtype"
            )
        order = _text(state[1])
        if order not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError(f"unknown NumPy byte order {state[1]!r}")
        if order in "<>":
            self.dtype = self.dtype.newbyteorder(order)


class _NDArrayType(metaclass=_Sealed):
    """Stand-in for the ``numpy.ndarray`` class (only passed on to ``_reconstruct``)."""


def _array_from_bytes(raw: object, dtype: object, shape: object, fortran: bool) -> np.ndarray:
    if not isinstance(dtype, _Dtype):
        raise pickle.UnpicklingError(f"a NumPy array needs a dtype, got {type(dtype).__name__}")
    if isinstance(raw, pickle.PickleBuffer):
        raw = raw.raw()
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise pickle.UnpicklingError(
            f"NumPy arrays are admitted only with raw data, got {type(raw).__name__} "
            "(object arrays are refused)"
        )
    if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise pickle.UnpicklingError(f"bad NumPy array shape {shape!r}")
    flat = np.frombuffer(raw, dtype=dtype.dtype)
    if flat.size != int(np.prod(shape)):
        raise pickle.UnpicklingError(
            f"NumPy array data holds {flat.size} values, its shape {shape} needs {np.prod(shape)}"
        )
    return flat.reshape(shape, order="F" if fortran else "C").copy()


class _Array:
    """Stand-in for an array made by ``_reconstruct``: filled by its ``__setstate__``."""

    array: np.ndarray | None = None

    def __setstate__(self, state: object) -> None:
        # (version, shape, dtype, is_fortran, rawdata) or, from old NumPy, without the version
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]
        if not isinstance(state, tuple) or len(state) != 4:
            raise pickle.UnpicklingError("bad NumPy array state")
        shape, dtype, fortran, raw = state
        self.array = _array_from_bytes(raw, dtype, shape, bool(fortran))


def _reconstruct(subtype: object, shape: object = None, typecode: object = None) -> _Array:
    if subtype is not _NDArrayType:
        raise pickle.UnpicklingError("_reconstruct is admitted only for numpy.ndarray")
    return _Array()


def _frombuffer(buffer: object, dtype: object, shape: object, order: object = "C") -> _Array:
    out = _Array()
    out.array = _array_from_bytes(buffer, dtype, shape, _text(order) == "F")
    return out


def _scalar(dtype: object, data: object = b"") -> Any:
    return _array_from_bytes(data, dtype, (), False)[()]


_ALLOWED: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _SealedFunction(_latin1),
    ("numpy", "dtype"): _Dtype,
    ("numpy", "ndarray"): _NDArrayType,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _SealedFunction(_reconstruct)
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _SealedFunction(_scalar)
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _SealedFunction(_frombuffer)


class _BinUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Forbidden(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not admitted")


def _plain(value: object) -> object:
    """Replace a finished array stand-in by its array."""
    if isinstance(value, _Array):
        if value.array is None:
            raise pickle.UnpicklingError("a NumPy array without data")
        return value.array
    return value


def _encoded_images(bins: object, path: str) -> list[bytes]:
    bins = _plain(bins)
    if isinstance(bins, np.ndarray) or not isinstance(bins, (list, tuple)):
        raise ValueError(
            f"{path}: the first item must be a list of encoded images, got {type(bins).__name__}"
        )
    out = []
    for i, item in enumerate(bins):
        item = _plain(item)
        if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
            item = item.tobytes()
        if not isinstance(item, (bytes, bytearray)):
            raise ValueError(
                f"{path}: image {i} must be encoded image bytes, got {type(item).__name__}"
            )
        out.append(bytes(item))
    return out


def _labels(issame: object, path: str) -> np.ndarray:
    issame = _plain(issame)
    if isinstance(issame, (list, tuple)):
        values = [_plain(v) for v in issame]
        if not all(isinstance(v, (bool, int, np.bool_, np.integer)) for v in values):
            bad = next(v for v in values if not isinstance(v, (bool, int, np.bool_, np.integer)))
            raise ValueError(f"{path}: issame must hold bools, got a {type(bad).__name__}")
        issame = np.asarray(values) if values else np.zeros(0, dtype=bool)
    if not isinstance(issame, np.ndarray) or issame.ndim != 1 or issame.dtype.kind not in "biu":
        raise ValueError(
            f"{path}: the second item must be the list of pair labels (bools), got "
            f"{type(issame).__name__}"
        )
    if issame.dtype != np.bool_:
        bad = np.flatnonzero((issame != 0) & (issame != 1))
        if bad.size:
            raise ValueError(
                f"{path}: issame must be 0/1 or bools, got {issame[bad[0]].item()!r} at pair "
                f"{bad[0]}"
            )
    return issame.astype(bool)


def _read_bin(path: str) -> tuple[list[bytes], np.ndarray]:
    """Restricted-unpickle a ``.bin`` file and check its layout; nothing is decoded."""
    with open(path, "rb") as f:
        data = f.read()  # from memory, a corrupted length fails short instead of reading on
    try:
        obj = _BinUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Forbidden as exc:
        raise ValueError(
            f"{path} is not a verification .bin file: it refers to the global {exc}, which such "
            "files never contain; refusing to load it (nothing it names was called)"
        ) from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        KeyError,
        IndexError,
        OverflowError,
        MemoryError,  # a corrupted length asking for more memory than there is
    ) as exc:
        raise ValueError(f"{path} is not a readable verification .bin file: {exc}") from exc
    del data
    obj = _plain(obj)
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        got = f"a {type(obj).__name__}" + (
            f" of {len(obj)} items" if isinstance(obj, (tuple, list)) else ""
        )
        raise ValueError(f"{path}: expected the pair (images, issame), got {got}")
    images, issame = _encoded_images(obj[0], path), _labels(obj[1], path)
    if len(images) != 2 * len(issame):
        raise ValueError(
            f"{path}: {len(issame)} pair labels need {2 * len(issame)} images, the file holds "
            f"{len(images)}"
        )
    if not issame.size:
        raise ValueError(f"{path}: the file holds no pairs")
    return images, issame


# --------------------------------------------------------------------------- dataset


def _size_arg(image_size: object) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        h, w = image_size
    else:
        h = w = image_size
    check_scalar(h, "image_size", low=1, integer=True)
    check_scalar(w, "image_size", low=1, integer=True)
    return int(h), int(w)


class VerificationBin(Dataset):
    """The image pairs of one verification ``.bin`` file, kept encoded and decoded on access.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.bin`` file.
    image_size : int or (int, int), optional
        ``(H, W)`` of the returned images; images of another size are resized to it (bilinear,
        antialiased). By default every image must have the size of the first one.
    name : str, optional
        Name of the set (default: the file name without its extension, e.g. ``"lfw"``).

    Attributes
    ----------
    issame : numpy.ndarray, shape (N,), bool
        ``True`` where pair ``i`` (images ``2i`` and ``2i + 1``) shows one person.
    image_size : (int, int)
        ``(H, W)`` of every returned image.

    Raises
    ------
    ValueError
        The file is not a verification ``.bin`` (a pickle of ``(images, issame)`` with
        ``2N`` images for ``N`` labels), refers to any global outside the allow-list (see the
        module notes), or holds images of different sizes while ``image_size`` is not given.
    ImageDecodeError
        An image whose header cannot be read; the message names the file and the image index.

    Notes
    -----
    Reading the file reads every image header (not the pixels), so a damaged or inconsistent
    file fails here rather than in the middle of an evaluation. ``ds[i]`` decodes image ``i``
    into a ``(3, H, W)`` uint8 RGB tensor; ``len(ds)`` is ``2N``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        image_size: int | tuple[int, int] | None = None,
        name: str | None = None,
    ) -> None:
        size = _size_arg(image_size)
        self.path = os.fspath(path)
        self.name = Path(self.path).stem if name is None else str(name)
        self._images, self.issame = _read_bin(self.path)
        first = self._header_size(0)
        if size is None:
            for i in range(1, len(self._images)):
                if self._header_size(i) != first:
                    raise ValueError(
                        f"{self.path}: image {i} is {self._header_size(i)[0]}x"
                        f"{self._header_size(i)[1]} (HxW) while image 0 is {first[0]}x{first[1]}; "
                        "pass image_size=... to resize them to one size"
                    )
        else:
            for i in range(1, len(self._images)):
                self._header_size(i)  # every header readable
        self.image_size: tuple[int, int] = first if size is None else size

    def _error(self, index: int, exc: Exception) -> ImageDecodeError:
        return ImageDecodeError(f"{self.path}: image {index} cannot be decoded: {exc}")

    def _header_size(self, index: int) -> tuple[int, int]:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(self._images[index])) as img:
                w, h = img.size
        except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, ...
            raise self._error(index, exc) from None
        return h, w

    def __len__(self) -> int:
        return len(self._images)

    @property
    def num_pairs(self) -> int:
        """Number of pairs ``N``."""
        return int(self.issame.shape[0])

    def __repr__(self) -> str:
        h, w = self.image_size
        return f"VerificationBin(name={self.name!r}, pairs={self.num_pairs}, image_size=({h}, {w}))"

    def encoded(self, index: int) -> bytes:
        """The encoded (JPEG/PNG) bytes of image ``index``, as stored in the file."""
        return self._images[index]

    def __getitem__(self, index: int) -> torch.Tensor:
        try:
            image = decode_image_file(io.BytesIO(self._images[index]))  # type: ignore[arg-type]
        except ImageDecodeError as exc:
            raise self._error(index, exc.__cause__ or exc) from None
        if tuple(image.shape[1:]) != self.image_size:
            from torchvision.transforms.v2.functional import resize

            image = resize(image, list(self.image_size), antialias=True)
        return image

    def images(self) -> torch.Tensor:
        """Decode every image.

        Returns
        -------
        torch.Tensor, shape (2N, 3, H, W), uint8
            Pair ``i`` is ``images[2 * i]`` and ``images[2 * i + 1]``.
        """
        h, w = self.image_size
        out = torch.empty((len(self), 3, h, w), dtype=torch.uint8)
        for i in range(len(self)):
            out[i] = self[i]
        return out


def load_verification_bin(
    path: str | os.PathLike[str], *, image_size: int | tuple[int, int] | None = None
) -> tuple[torch.Tensor, np.ndarray]:
    """Read and decode a verification ``.bin`` file (``lfw.bin``, ``cfp_fp.bin``, ...).

    Parameters
    ----------
    path : str or os.PathLike
        The file, as written by Python 2 or Python 3 tools (see the module notes).
    image_size : int or (int, int), optional
        Resize images of another size to ``(H, W)``; by default all images must share one size.

    Returns
    -------
    images : torch.Tensor, shape (2N, 3, H, W), uint8
        RGB images; pair ``i`` is ``images[2 * i]`` and ``images[2 * i + 1]``.
    issame : numpy.ndarray, shape (N,), bool
        ``True`` for a genuine pair.

    Raises
    ------
    ValueError
        Not a verification ``.bin``, a global outside the allow-list (named in the message;
        nothing is called), image and label counts that disagree, or images of different sizes
        without ``image_size``.
    ImageDecodeError
        An undecodable image; the message names the file and the image index.

    Examples
    --------
    >>> import io, pickle, tempfile
    >>> from PIL import Image
    >>> from metricface.data import load_verification_bin
    >>> def jpeg(value):
    ...     buf = io.BytesIO()
    ...     Image.new("RGB", (112, 112), (value, value, value)).save(buf, format="JPEG")
    ...     return buf.getvalue()
    >>> bins = [jpeg(v) for v in (0, 10, 200, 30)]      # two pairs
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = os.path.join(tmp.name, "tiny.bin")
    >>> with open(path, "wb") as f:
    ...     pickle.dump((bins, [True, False]), f, protocol=4)
    >>> images, issame = load_verification_bin(path)
    >>> images.shape, images.dtype, issame
    (torch.Size([4, 3, 112, 112]), torch.uint8, array([ True, False]))
    >>> tmp.cleanup()
    """
    ds = VerificationBin(path, image_size=image_size)
    return ds.images(), ds.issame
