"""InsightFace RecordIO packs (``train.rec``, ``train.idx``, ``property``), read without MXNet.

MS1MV2, MS1MV3, Glint360K, WebFace and CASIA-WebFace circulate as MXNet *RecordIO* packs of
aligned 112x112 JPEG crops. The layout, which this module reads and writes byte for byte:

``train.rec``
    Records one after another. Each record is the magic word ``0xced7230a`` (little-endian
    ``uint32``), a length word whose low 29 bits are the length ``L`` of the part that follows
    and whose top 3 bits are a continuation flag, then ``L`` bytes, then zero padding to a
    multiple of 4 bytes. A payload in which the magic word occurs at a 4-byte aligned position
    is split there: the magic word is dropped and the parts are written as consecutive records
    flagged 1 (first), 2 (middle), 3 (last); flag 0 marks a whole payload. A reader joins the
    parts with the magic word between them.
``train.idx``
    Text lines ``key<TAB>byte offset``, one per record, in any order.
``property``
    Optional text ``num_classes,height,width`` in the same folder.

The payload of an image record (MXNet's ``recordio.pack``) is the 24-byte header
``flag: uint32, label: float32, id: uint64, id2: uint64``; when ``flag > 0`` it is followed by
``flag`` float32 labels (the identity is the first) and the scalar label is unused; the
encoded image (JPEG) comes last. An InsightFace pack starts with a *header record*, key 0,
holding no image and the label array ``[a, b]``: keys ``1 .. a-1`` are the images and keys
``a .. b-1`` are one record per identity (the key range of its images), which a reader skips. A
*plain* pack has no header record: every key of the index is an image. Counts above
``2**24`` are not exact in float32; where the header's ``a`` is rounded, records around it are
told apart by whether they hold image bytes.

:class:`RecordFaces` keeps the index as NumPy arrays (16 bytes per image plus the int64
labels: about 100 MB for 5.8 million images, where a dict of offsets takes over 500 MB), finds
every label by reading only the record headers, and checks the framing of every record before
returning, so a truncated pack, a wrong magic word or a stale index fails at once with the key
and offset of the record. Records are read with ``os.pread`` on a file descriptor opened
lazily in each process, so the dataset can be pickled and used by forked DataLoader workers
and by every DDP rank.
"""

from __future__ import annotations

import io
import operator
import os
import struct
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from metricface._validation import check_scalar
from metricface.data.folder import IdentityFolder, ImageDecodeError, decode_image_file

__all__ = ["RecordFaces", "write_record_pack"]

_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", _MAGIC)
_FRAME = struct.Struct("<II")  # magic, continuation flag << 29 | length
_IR = struct.Struct("<IfQQ")  # flag, label, id, id2
_LENGTH_BITS = 29
_MAX_LENGTH = (1 << _LENGTH_BITS) - 1
_EXACT_F32 = 1 << 24  # integers up to here are exact in float32
_CHUNK = 1 << 20  # records per vectorised header read


def _pad4(n: int) -> int:
    return (n + 3) & ~3


if hasattr(os, "pread"):
    _pread = os.pread
else:  # pragma: no cover - Windows
    _pread_lock = threading.Lock()

    def _pread(fd: int, n: int, offset: int) -> bytes:
        with _pread_lock:
            os.lseek(fd, offset, os.SEEK_SET)
            return os.read(fd, n)


# ---------------------------------------------------------------------------------- index
def _parse_index_slowly(data: bytes, path: Path) -> np.ndarray:
    """Line-by-line parse that names the first malformed line."""
    out = []
    for number, line in enumerate(data.decode("latin-1").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError
            key, offset = int(fields[0]), int(fields[1])
        except ValueError:
            raise ValueError(
                f"index {str(path)!r} line {number}: expected 'key<TAB>offset' with two "
                f"non-negative integers, got {line[:80]!r}"
            ) from None
        out.append((key, offset))
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def _read_index(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Keys and offsets of an ``.idx`` file, sorted by key."""
    data = path.read_bytes()
    lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    try:  # C-speed parse of whitespace-separated integers (5.8M lines in ~0.3 s)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            values = np.fromstring(data, dtype=np.int64, sep=" ")
        ok = values.size == 2 * lines
    except (ValueError, DeprecationWarning):
        ok = False
    pairs = values.reshape(-1, 2) if ok else _parse_index_slowly(data, path)
    if not len(pairs):
        raise ValueError(f"index {str(path)!r} lists no record")
    keys, offsets = pairs[:, 0], pairs[:, 1]
    if keys.min() < 0 or offsets.min() < 0:
        bad = int(np.flatnonzero((keys < 0) | (offsets < 0))[0])
        raise ValueError(
            f"index {str(path)!r} entry {bad + 1}: key and offset must be non-negative, got "
            f"{int(keys[bad])} {int(offsets[bad])}"
        )
    if np.any(keys[1:] < keys[:-1]):
        order = np.argsort(keys, kind="stable")
        keys, offsets = keys[order], offsets[order]
    dup = np.flatnonzero(keys[1:] == keys[:-1])
    if dup.size:
        raise ValueError(f"index {str(path)!r} lists key {int(keys[dup[0]])} more than once")
    return keys, np.ascontiguousarray(offsets)


def _compact(keys: np.ndarray) -> np.ndarray:
    return keys.astype(np.int32) if keys[-1] <= np.iinfo(np.int32).max else keys


# ---------------------------------------------------------------------------------- records
class _Pack:
    """Error messages and record reads for one ``.rec`` file."""

    def __init__(self, path: Path, size: int) -> None:
        self.path, self.size = path, size

    def error(self, key: int, offset: int, what: str) -> ValueError:
        return ValueError(f"{str(self.path)!r}: record key {key} at offset {offset}: {what}")

    def read(self, fd: int, key: int, offset: int) -> bytes:
        """The payload of the record starting at ``offset``, its parts joined."""
        parts: list[bytes] = []
        pos, first = offset, True
        while True:
            head = _pread(fd, 8, pos)
            if len(head) < 8:
                raise self.error(key, offset, f"the pack is truncated: it ends at byte {pos}")
            magic, word = _FRAME.unpack(head)
            if magic != _MAGIC:
                raise self.error(
                    key,
                    offset,
                    f"wrong magic word 0x{magic:08x} at byte {pos} (0xced7230a "
                    "expected): the .idx does not belong to this .rec, or the file is damaged",
                )
            cflag, length = word >> _LENGTH_BITS, word & _MAX_LENGTH
            if cflag not in ((0, 1) if first else (2, 3)):
                what = "start" if first else "continuation"
                raise self.error(
                    key,
                    offset,
                    f"continuation flag {cflag} where a record {what} "
                    "belongs: the .idx does not point at record starts",
                )
            body = _pread(fd, length, pos + 8) if length else b""
            if len(body) < length:
                raise self.error(
                    key,
                    offset,
                    f"the pack is truncated: a part of {length} bytes at byte "
                    f"{pos + 8} runs past its end ({self.size} bytes)",
                )
            parts.append(body)
            if cflag in (0, 3):
                return _MAGIC_BYTES.join(parts)
            pos += 8 + _pad4(length)
            first = False

    def split(self, key: int, offset: int, payload: bytes) -> tuple[int, float, int]:
        """``(flag, label, image offset)`` of an image payload."""
        if len(payload) < _IR.size:
            raise self.error(key, offset, f"{len(payload)} bytes, fewer than the 24-byte header")
        flag, label = _IR.unpack_from(payload)[:2]
        start = _IR.size + 4 * flag
        if start > len(payload):
            raise self.error(
                key,
                offset,
                f"label flag {flag} announces {flag} float32 labels "
                f"({start} bytes with the header) but the payload holds {len(payload)} bytes",
            )
        if flag:
            label = struct.unpack_from("<f", payload, _IR.size)[0]
        return flag, label, start


def _first(mask: np.ndarray) -> int | None:
    where = np.flatnonzero(mask)
    return int(where[0]) if where.size else None


def _scan_chunk(pack: _Pack, words: np.ndarray, keys: np.ndarray, off: np.ndarray):
    """Headers of the records at ``off`` (see :func:`_scan`) from the file's uint32 words."""
    base = off // 4
    last = len(words) - 1

    def word(k: int) -> np.ndarray:
        return np.asarray(words[np.minimum(base + k, last)])

    def check(mask: np.ndarray, what: Callable[[int], str]) -> None:
        i = _first(mask)
        if i is not None:
            raise pack.error(int(keys[i]), int(off[i]), what(i))

    magic = word(0)
    check(
        magic != _MAGIC,
        lambda i: (
            f"wrong magic word 0x{int(magic[i]):08x} (0xced7230a expected): the .idx "
            "does not belong to this .rec, or the file is damaged"
        ),
    )
    lrec = word(1)
    cflag = lrec >> _LENGTH_BITS
    length = (lrec & _MAX_LENGTH).astype(np.int64)
    check(
        cflag > 1,
        lambda i: f"continuation flag {int(cflag[i])}: the .idx does not point at a record start",
    )
    check(
        off + 8 + length > pack.size,
        lambda i: (
            f"the pack is truncated: the record holds {int(length[i])} bytes but the file "
            f"ends {pack.size - int(off[i]) - 8} bytes after its 8-byte frame"
        ),
    )
    whole = cflag == 0
    check(
        whole & (length < _IR.size),
        lambda i: f"{int(length[i])} bytes, fewer than the 24-byte header",
    )
    flag = word(2).astype(np.int64)
    check(
        whole & (_IR.size + 4 * flag > length),
        lambda i: (
            f"label flag {int(flag[i])} announces {int(flag[i])} float32 labels "
            f"({_IR.size + 4 * int(flag[i])} bytes with the header) but the payload holds "
            f"{int(length[i])} bytes"
        ),
    )
    label = np.where(flag == 0, word(3), word(8)).view(np.float32)
    return flag, label, length, whole


def _scan(pack: _Pack, keys: np.ndarray, offsets: np.ndarray):
    """Flag, label (first entry) and payload length of every record, reading headers only.

    Checks every record's framing on the way: offsets inside the file and 4-byte aligned, the
    magic word, a record start, the length inside the file, the label array inside the
    payload. Split records (rare) are read whole.
    """
    i = _first(offsets % 4 != 0)
    if i is not None:
        raise pack.error(int(keys[i]), int(offsets[i]), "offset is not a multiple of 4")
    i = _first(offsets + 8 > pack.size)
    if i is not None:
        raise pack.error(
            int(keys[i]),
            int(offsets[i]),
            f"the index points past the end of the file ({pack.size} bytes): the pack is "
            "truncated or the .idx belongs to another pack",
        )
    n = len(keys)
    flags, labels, lengths = np.empty(n, np.int64), np.empty(n, np.float32), np.empty(n, np.int64)
    split: list[int] = []
    words = np.memmap(pack.path, dtype="<u4", mode="r", shape=(pack.size // 4,))
    try:
        for lo in range(0, n, _CHUNK):
            hi = min(lo + _CHUNK, n)
            flag, label, length, whole = _scan_chunk(pack, words, keys[lo:hi], offsets[lo:hi])
            flags[lo:hi], labels[lo:hi], lengths[lo:hi] = flag, label, length
            split.extend((lo + np.flatnonzero(~whole)).tolist())
    finally:
        del words
    if split:
        fd = _open(pack.path)
        try:
            for i in split:
                key, offset = int(keys[i]), int(offsets[i])
                payload = pack.read(fd, key, offset)
                flags[i], labels[i], _ = pack.split(key, offset, payload)
                lengths[i] = len(payload)
        finally:
            os.close(fd)
    return flags, labels, lengths


def _open(path: Path) -> int:
    return os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))


def _read_property(path: Path) -> tuple[int, tuple[int, int]]:
    text = path.read_text(errors="replace").strip()
    try:
        values = [int(v) for v in text.split(",")]
        if len(values) != 3 or min(values) < 1:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"{str(path)!r} must hold 'num_classes,height,width' (three positive integers), "
            f"got {text[:80]!r}"
        ) from None
    return values[0], (values[1], values[2])


# ---------------------------------------------------------------------------------- dataset
class RecordFaces(Dataset):
    """Face images in an InsightFace / MXNet RecordIO pack, labelled by identity.

    A drop-in for :class:`~metricface.data.folder.IdentityFolder` in training code: items are
    ``(image, label)`` with the image decoded (by Pillow, as ``IdentityFolder`` does) into a
    ``(3, H, W)`` uint8 RGB tensor, and :attr:`labels` / :attr:`num_classes` feed the samplers
    and the class-center losses. See the module documentation for the file layout.

    Parameters
    ----------
    rec_path : str or os.PathLike
        The ``.rec`` file.
    idx_path : str or os.PathLike, optional
        Its index; by default the same path with the suffix ``.idx``.
    transform : callable, optional
        Applied to the decoded ``(3, H, W)`` uint8 image.

    Attributes
    ----------
    labels : numpy.ndarray
        ``(len(self),)`` int64 identity label of every image, for samplers.
    num_classes : int
        Number of class centers a loss needs: ``num_classes`` of the ``property`` file when
        there is one (every label is checked to be below it), else the largest label + 1.
    image_size : tuple of int or None
        ``(height, width)`` from the ``property`` file, ``None`` without one.
    keys, offsets : numpy.ndarray
        ``(len(self),)`` record key and byte offset of every image, in ascending key order
        (the order of the items).
    has_header : bool
        Whether record 0 is an InsightFace header record (keys in its range are images, the
        identity records after them are skipped) or the pack is plain (every key an image).

    Raises
    ------
    FileNotFoundError
        If the ``.rec`` or the ``.idx`` file is missing.
    ValueError
        For a malformed index line, a duplicated key, a record whose framing is broken (wrong
        magic word, an offset past the end, a truncated file, a label array longer than its
        record), a label that is not a non-negative integer, or a ``property`` file that
        disagrees with the labels. The message names the file, the record key and its offset.

    Notes
    -----
    Items follow ascending record key. Under fork (DataLoader workers) and in every DDP rank
    the file is reopened once per process; a pickled dataset carries no open file.

    Examples
    --------
    >>> import io, tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from metricface.data import RecordFaces, write_record_pack
    >>> def jpeg(value):
    ...     buffer = io.BytesIO()
    ...     Image.new("RGB", (112, 112), (value, value, value)).save(buffer, "JPEG")
    ...     return buffer.getvalue()
    >>> folder = tempfile.TemporaryDirectory()
    >>> rec = Path(folder.name) / "train.rec"
    >>> write_record_pack(rec, [(jpeg(10), 0), (jpeg(20), 0), (jpeg(30), 1)])
    3
    >>> faces = RecordFaces(rec)
    >>> len(faces), faces.labels, faces.num_classes, faces.image_size
    (3, array([0, 0, 1]), 2, (112, 112))
    >>> image, label = faces[2]
    >>> image.shape, image.dtype, label
    (torch.Size([3, 112, 112]), torch.uint8, 1)
    >>> folder.cleanup()
    """

    def __init__(
        self,
        rec_path: str | os.PathLike[str],
        idx_path: str | os.PathLike[str] | None = None,
        transform: Callable[[torch.Tensor], Any] | None = None,
    ) -> None:
        rec = Path(rec_path)
        idx = rec.with_suffix(".idx") if idx_path is None else Path(idx_path)
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None, got {type(transform).__name__}")
        if not rec.is_file():
            raise FileNotFoundError(f"record file {str(rec)!r} not found")
        if not idx.is_file():
            raise FileNotFoundError(
                f"index file {str(idx)!r} of {str(rec)!r} not found (pass idx_path= when it "
                "has another name)"
            )
        pack = _Pack(rec, rec.stat().st_size)
        keys, offsets = _read_index(idx)
        flags, raw_labels, lengths = _scan(pack, keys, offsets)
        image = self._image_records(pack, keys, offsets, flags, lengths)
        keys, offsets, raw_labels = keys[image], offsets[image], raw_labels[image]
        if not len(keys):
            raise ValueError(f"{str(rec)!r} holds no image record")
        bad = np.flatnonzero(
            ~np.isfinite(raw_labels) | (raw_labels < 0) | (raw_labels != np.floor(raw_labels))
        )
        if bad.size:
            i = int(bad[0])
            raise pack.error(
                int(keys[i]),
                int(offsets[i]),
                f"label {float(raw_labels[i])!r} is not a non-negative integer identity",
            )
        labels = raw_labels.astype(np.int64)
        num_classes, self.image_size = int(labels.max()) + 1, None
        prop = rec.parent / "property"
        if prop.is_file():
            num_classes, self.image_size = _read_property(prop)
            bad = np.flatnonzero(labels >= num_classes)
            if bad.size:
                i = int(bad[0])
                raise pack.error(
                    int(keys[i]),
                    int(offsets[i]),
                    f"label {int(labels[i])} is not "
                    f"below num_classes={num_classes} of {str(prop)!r}",
                )
        self.rec_path, self.idx_path, self._pack = rec, idx, pack
        self.transform = transform
        self.keys, self.offsets, self.labels = _compact(keys), offsets, labels
        self.num_classes = num_classes
        self._pack_ids = np.arange(num_classes)  # label -> identity label in the pack
        self._name_width = len(str(max(num_classes - 1, 0)))
        self._fd, self._fd_pid = -1, -1

    def _image_records(self, pack, keys, offsets, flags, lengths) -> np.ndarray:
        """Boolean mask of the image records; sets :attr:`has_header`."""
        self.has_header = False
        has_image = lengths > 24 + 4 * flags
        if keys[0] != 0 or flags[0] < 1 or has_image[0]:
            empty = np.flatnonzero(~has_image)
            if empty.size:
                i = int(empty[0])
                raise pack.error(
                    int(keys[i]),
                    int(offsets[i]),
                    "holds no image bytes (a plain "
                    "pack without header record must hold only images)",
                )
            return np.ones(len(keys), bool)
        fd = _open(pack.path)
        try:
            payload = pack.read(fd, 0, int(offsets[0]))
        finally:
            os.close(fd)
        if flags[0] < 2:
            raise pack.error(
                0,
                int(offsets[0]),
                "a header record (no image) whose label array "
                "has 1 entry, where [first identity key, end key] is expected",
            )
        first = float(np.frombuffer(payload, "<f4", 1, _IR.size)[0])
        if not (np.isfinite(first) and first >= 1 and first == int(first)):
            raise pack.error(0, int(offsets[0]), f"header record label {first!r} is not a key")
        self.has_header = True
        ulp = float(np.spacing(np.float32(first))) if first > _EXACT_F32 else 0.0
        image = (keys >= 1) & (keys < first + ulp)
        near = (keys >= first - ulp) & (keys < first + ulp)
        image &= ~near | has_image  # a rounded boundary: identity records hold no image
        empty = np.flatnonzero(image & ~has_image)
        if empty.size:
            i = int(empty[0])
            raise pack.error(
                int(keys[i]),
                int(offsets[i]),
                f"holds no image bytes, but the header record puts image keys below {int(first)}",
            )
        return image

    # ------------------------------------------------------------------ reading
    def _file(self) -> int:
        pid = os.getpid()
        if self._fd_pid != pid:  # first use in this process (a fork inherits a copy)
            self._fd = _open(self.rec_path)
            self._fd_pid = pid
        return self._fd

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fd"], state["_fd_pid"] = -1, -1
        return state

    def __del__(self) -> None:
        if getattr(self, "_fd_pid", -1) == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass

    def _index(self, index: int) -> int:
        try:
            i = operator.index(index)
        except TypeError:
            raise TypeError(f"index must be an int, got {type(index).__name__}") from None
        n = len(self.keys)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for {n} images")
        return i % n

    def raw(self, index: int) -> tuple[bytes, int]:
        """The stored image bytes (usually JPEG) and the label of item ``index``, not decoded."""
        i = self._index(index)
        key, offset = int(self.keys[i]), int(self.offsets[i])
        payload = self._pack.read(self._file(), key, offset)
        start = self._pack.split(key, offset, payload)[2]
        return payload[start:], int(self.labels[i])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        data, label = self.raw(index)
        try:
            image = decode_image_file(io.BytesIO(data))  # type: ignore[arg-type]
        except ImageDecodeError as exc:
            i = self._index(index)
            raise ImageDecodeError(
                f"cannot decode the image of record key {int(self.keys[i])} at offset "
                f"{int(self.offsets[i])} of {str(self.rec_path)!r}: {exc.__cause__}"
            ) from exc.__cause__
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return (
            f"RecordFaces(rec_path={str(self.rec_path)!r}, identities="
            f"{len(np.unique(self.labels))}, images={len(self)})"
        )

    # ------------------------------------------------------------------ identities
    @property
    def targets(self) -> list[int]:
        """Labels as a list (the attribute name torchvision datasets use)."""
        return self.labels.tolist()

    def identity_name(self, label: int) -> str:
        """The name of identity ``label``: its label in the pack, zero-padded.

        All names have the width of the pack's largest label (``num_classes - 1``), so they
        sort in label order; they are the folder names ``python -m metricface unpack-rec``
        writes, hence :class:`~metricface.data.folder.IdentityFolder` on an unpacked tree has
        the same :attr:`label_map` when every identity has images.
        """
        return f"{int(self._pack_ids[label]):0{self._name_width}d}"

    @property
    def classes(self) -> list[str]:
        """Names (:meth:`identity_name`) of the identities that have images, in label order."""
        return [self.identity_name(c) for c in np.unique(self.labels).tolist()]

    @property
    def label_map(self) -> dict[str, int]:
        """Identity name -> label of the identities that have images."""
        return {self.identity_name(c): c for c in np.unique(self.labels).tolist()}

    # ------------------------------------------------------------------ subsets
    def _derive(self, rows: np.ndarray, labels: np.ndarray, pack_ids: np.ndarray) -> RecordFaces:
        new = object.__new__(type(self))
        new.__dict__.update(self.__getstate__())
        new.keys, new.offsets, new.labels = self.keys[rows], self.offsets[rows], labels
        new._pack_ids, new.num_classes = pack_ids, len(pack_ids)
        return new

    def subset(self, indices: Sequence[int] | np.ndarray) -> RecordFaces:
        """The items ``indices`` (in that order) as a dataset with the same labels.

        The result shares the file, :attr:`transform` and :attr:`num_classes`; it is what a
        held-out evaluation set of a few images per identity needs.
        """
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(
                f"indices must lie in [0, {len(self)}), got {rows.min()}..{rows.max()}"
            )
        new = self._derive(rows, self.labels[rows], self._pack_ids)
        return new

    def split_by_identity(self, held_out: float | int, *, seed: int = 0):
        """Open-set split: hold out whole identities (as :meth:`IdentityFolder.split_by_identity
        <metricface.data.folder.IdentityFolder.split_by_identity>`).

        Parameters
        ----------
        held_out : float or int
            Fraction in ``(0, 1)`` or number of identities that go to the second part.
        seed : int
            Seed of the random choice of identities.

        Returns
        -------
        (RecordFaces, RecordFaces)
            ``(train, held_out)``, each relabelled ``0 .. n-1`` in the original label order,
            with :attr:`num_classes` ``n``; :attr:`label_map` keeps the pack's identity names.
        """
        present = np.unique(self.labels)
        k = IdentityFolder._count(self, held_out, len(present), "held_out")  # same rule
        perm = np.random.default_rng(seed).permutation(len(present))
        out = np.zeros(len(present), bool)
        out[perm[:k]] = True
        parts = []
        for chosen in (present[~out], present[out]):
            if not chosen.size:
                raise ValueError(
                    f"held_out={held_out!r} of {len(present)} identities leaves one part empty"
                )
            new_label = np.full(len(self._pack_ids), -1, np.int64)
            new_label[chosen] = np.arange(len(chosen))
            rows = np.flatnonzero(new_label[self.labels] >= 0)
            parts.append(self._derive(rows, new_label[self.labels[rows]], self._pack_ids[chosen]))
        return parts[0], parts[1]


# ---------------------------------------------------------------------------------- writing
def _frame(payload: bytes) -> bytes:
    """One record as MXNet writes it: split at aligned magic words, each part padded."""
    n = len(payload)
    aligned = np.frombuffer(payload, "<u4", n // 4)
    cuts = (np.flatnonzero(aligned == _MAGIC) * 4).tolist()
    if n > _MAX_LENGTH:
        raise ValueError(f"a record holds at most {_MAX_LENGTH} bytes, got {n}")
    out, start = [], 0
    for i, cut in enumerate(cuts):
        out += [
            _FRAME.pack(_MAGIC, ((1 if i == 0 else 2) << _LENGTH_BITS) | (cut - start)),
            payload[start:cut],
        ]
        start = cut + 4
    rest = n - start
    out += [
        _FRAME.pack(_MAGIC, ((3 if cuts else 0) << _LENGTH_BITS) | rest),
        payload[start:],
        b"\0" * (_pad4(rest) - rest),
    ]
    return b"".join(out)


def _label_payload(label: object, what: str) -> tuple[float, bytes, int]:
    """``(scalar label, label array bytes, identity)`` of an int label or a label array."""
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        identity, array = int(label), b""
    elif isinstance(label, (Sequence, np.ndarray, torch.Tensor)) and not isinstance(label, str):
        values = np.asarray(label, dtype=np.float32).reshape(-1)
        if not values.size or values[0] != np.floor(values[0]):
            raise ValueError(
                f"{what}: a label array must start with the integer identity, got {label!r}"
            )
        identity, array = int(values[0]), values.astype("<f4").tobytes()
    else:
        raise TypeError(f"{what}: label must be an int or a sequence of numbers, got {label!r}")
    if not 0 <= identity < _EXACT_F32:
        raise ValueError(
            f"{what}: identity label must be in [0, 2**24) (exact in float32), got {identity}"
        )
    return (0.0 if array else float(identity)), array, identity


def _image_size(data: bytes, what: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            width, height = img.size
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, ...
        raise ValueError(
            f"{what}: cannot read the image size for 'property' ({exc}); pass image_size="
        ) from exc
    return height, width


def write_record_pack(
    path: str | os.PathLike[str],
    items: Iterable[tuple[bytes, Any]],
    *,
    header: bool = True,
    num_classes: int | None = None,
    image_size: tuple[int, int] | None = None,
    write_property: bool = True,
) -> int:
    """Write ``(image bytes, label)`` items as a RecordIO pack that MXNet, InsightFace and
    :class:`RecordFaces` read.

    Writes ``path`` (the ``.rec``), the same path with the suffix ``.idx`` and, with
    ``write_property``, ``property`` in the same folder. Each file is written under a
    temporary name and renamed when complete, so an interrupted run leaves no partial pack.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.rec`` file to write (replaced if it exists).
    items : iterable of (bytes, int or sequence of float)
        Encoded images, stored as given (no re-encoding), with their label: an int identity
        (stored as the scalar label, ``flag = 0``) or a label array whose first entry is the
        identity (``flag`` = its length), as ``mxnet.recordio.pack`` stores them. Identities
        must be in ``[0, 2**24)``. Record keys are ``1, 2, ...`` with a header, ``0, 1, ...``
        without; the ``id`` field of each record is its key.
    header : bool
        Write InsightFace's header record (key 0) and, after the images, one identity record
        per label ``0 .. num_classes - 1`` holding the key range of its images. Needs the items
        grouped by identity (each identity in one run).
    num_classes : int, optional
        Default: the largest identity + 1.
    image_size : (int, int), optional
        ``(height, width)`` for ``property``; by default read from the first image's header.
    write_property : bool
        Write ``property`` (``num_classes,height,width``), replacing one already there.

    Returns
    -------
    int
        The number of images written.

    Raises
    ------
    TypeError, ValueError
        For a label that is not an int or a label array, an identity outside ``[0, 2**24)`` or
        ``num_classes``, image data that is not bytes or is empty, no item, or (with
        ``header``) an identity that reappears after another one; the message names the item.
    """
    rec = Path(path)
    if rec.suffix == ".idx":
        raise ValueError(f"path must name the .rec file, got {str(rec)!r}")
    if num_classes is not None:
        check_scalar(num_classes, "num_classes", low=1, integer=True)
    if image_size is not None:
        if len(image_size) != 2:
            raise ValueError(f"image_size must be (height, width), got {image_size!r}")
        for side in image_size:
            check_scalar(side, "image_size", low=1, integer=True)
    idx, prop = rec.with_suffix(".idx"), rec.parent / "property"
    tmp = {p: p.with_name(f".{p.name}.{os.getpid()}.partial") for p in (rec, idx, prop)}
    try:
        with open(tmp[rec], "wb") as f, open(tmp[idx], "w") as index:

            def write(key: int, payload: bytes) -> None:
                index.write(f"{key}\t{f.tell()}\n")
                f.write(_frame(payload))

            def header_payload(key: int, start: int, end: int) -> bytes:
                return _IR.pack(2, 0.0, key, 0) + struct.pack("<ff", start, end)

            if header:
                write(0, header_payload(0, 0, 0))  # rewritten in place at the end
            ranges: dict[int, tuple[int, int]] = {}
            first = key = 1 if header else 0
            last, size = -1, image_size
            for n, (data, label) in enumerate(items):
                what = f"item {n}"
                if not isinstance(data, (bytes, bytearray, memoryview)) or not len(data):
                    raise TypeError(f"{what}: image data must be non-empty bytes, got {data!r:.40}")
                scalar, array, identity = _label_payload(label, what)
                if num_classes is not None and identity >= num_classes:
                    raise ValueError(
                        f"{what}: identity {identity} is not below num_classes={num_classes}"
                    )
                if header and identity != last and identity in ranges:
                    raise ValueError(
                        f"{what}: identity {identity} appears again after identity {last}; "
                        "with header=True the items must be grouped by identity (sort them, "
                        "or pass header=False)"
                    )
                ranges[identity] = (ranges.get(identity, (key,))[0], key + 1)
                last = identity
                if size is None and write_property:
                    size = _image_size(bytes(data), what)
                flag = len(array) // 4
                write(key, _IR.pack(flag, scalar, key, 0) + array + bytes(data))
                key += 1
            if key == first:
                raise ValueError("items must hold at least one image")
            classes = num_classes if num_classes is not None else max(ranges) + 1
            if header:
                end = first
                for c in range(classes):  # identity c is record key + c; empty ones too
                    start, end = ranges.get(c, (end, end))
                    write(key + c, header_payload(key + c, start, end))
                f.seek(0)
                f.write(_frame(header_payload(0, key, key + classes)))
            f.flush()
            os.fsync(f.fileno())
        if write_property:
            assert size is not None
            tmp[prop].write_text(f"{classes},{size[0]},{size[1]}")
        os.replace(tmp[rec], rec)
        os.replace(tmp[idx], idx)
        if write_property:
            os.replace(tmp[prop], prop)
    finally:
        for t in tmp.values():
            t.unlink(missing_ok=True)
    return key - first
