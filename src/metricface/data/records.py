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

:class:`RecordFaces` keeps the index as NumPy arrays (int32 keys, int64 offsets and labels: 20
bytes per image, 111 MB for 5.8 million images, where a dict of offsets takes 630 MB), finds
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
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from metricface._validation import check_scalar
from metricface.data._recordio import (
    EXACT_F32,
    IR_HEADER,
    RecordFile,
    first_true,
    frame_record,
    open_readonly,
    read_index,
    scan_headers,
)
from metricface.data.folder import IdentityFolder, ImageDecodeError, decode_image_file

__all__ = ["RecordFaces", "write_record_pack"]


def _image_records(
    pack: RecordFile, keys, offsets, flags, labels, lengths
) -> tuple[np.ndarray, bool]:
    """Boolean mask of the image records, and whether record 0 is a header record."""
    has_image = lengths > IR_HEADER.size + 4 * flags.astype(np.int64)
    if keys[0] != 0 or flags[0] < 1 or has_image[0]:  # a plain pack: every record an image
        i = first_true(~has_image)
        if i is not None:
            raise pack.error(
                int(keys[i]),
                int(offsets[i]),
                "holds no image bytes (a plain pack, without header record, holds only images)",
            )
        return np.ones(len(keys), bool), False
    first = float(labels[0])  # header label [first identity key, end key]: images below first
    if flags[0] < 2 or not (np.isfinite(first) and first >= 1 and first == int(first)):
        raise pack.error(
            0,
            int(offsets[0]),
            "a header record (no image) whose label array does not start "
            "with [first identity key, end key]",
        )
    ulp = float(np.spacing(np.float32(first))) if first > EXACT_F32 else 0.0
    image = (keys >= 1) & (keys < first + ulp)
    near = (keys >= first - ulp) & (keys < first + ulp)
    image &= ~near | has_image  # a rounded boundary: identity records hold no image
    i = first_true(image & ~has_image)
    if i is not None:
        raise pack.error(
            int(keys[i]),
            int(offsets[i]),
            f"holds no image bytes, but the header record puts image keys below {int(first)}",
        )
    return image, True


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
    on_error : {"raise", "skip"}
        What reading an image that does not decode does: raise
        :class:`~metricface.data.folder.ImageDecodeError` naming the record, or warn, record
        its key in :attr:`bad_records` and return another image of the same identity (the
        next one in item order, wrapping around), as ``IdentityFolder(on_error="skip")`` does.

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
    bad_records : list of int
        Keys of the records found undecodable so far with ``on_error="skip"`` (in this
        process: a DataLoader worker keeps its own list).

    Raises
    ------
    FileNotFoundError
        If the ``.rec`` or the ``.idx`` file is missing.
    ValueError
        For an ``on_error`` other than ``"raise"`` or ``"skip"``, a malformed index line, a
        duplicated key, a record whose framing is broken (wrong
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
        *,
        on_error: Literal["raise", "skip"] = "raise",
    ) -> None:
        rec = Path(rec_path)
        idx = rec.with_suffix(".idx") if idx_path is None else Path(idx_path)
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None, got {type(transform).__name__}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if not rec.is_file():
            raise FileNotFoundError(f"record file {str(rec)!r} not found")
        if not idx.is_file():
            raise FileNotFoundError(
                f"index file {str(idx)!r} of {str(rec)!r} not found (pass idx_path= when it "
                "has another name)"
            )
        pack = RecordFile(rec, rec.stat().st_size)
        keys, offsets = read_index(idx)
        flags, raw_labels, lengths = scan_headers(pack, keys, offsets)
        image, self.has_header = _image_records(pack, keys, offsets, flags, raw_labels, lengths)
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
        self.transform, self.on_error = transform, on_error
        self.bad_records: list[int] = []
        self.keys, self.offsets, self.labels = (
            keys.astype(np.int32) if keys[-1] <= np.iinfo(np.int32).max else keys,
            offsets,
            labels,
        )
        self.num_classes = num_classes
        self._pack_ids = np.arange(num_classes)  # label -> identity label in the pack
        self._name_width = len(str(max(num_classes - 1, 0)))
        self._fd, self._fd_pid = -1, -1

    # ------------------------------------------------------------------ reading
    def _file(self) -> int:
        pid = os.getpid()
        if self._fd_pid != pid:  # first use in this process (a fork inherits a copy)
            self._fd = open_readonly(self.rec_path)
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
        start = self._pack.parse(key, offset, payload)[2]
        return payload[start:], int(self.labels[i])

    def _decode(self, i: int) -> torch.Tensor:
        data, _ = self.raw(i)
        try:
            return decode_image_file(io.BytesIO(data))  # type: ignore[arg-type]
        except ImageDecodeError as exc:
            raise ImageDecodeError(
                f"cannot decode the image of record key {int(self.keys[i])} at offset "
                f"{int(self.offsets[i])} of {str(self.rec_path)!r}: {exc.__cause__}"
            ) from exc.__cause__

    def __getitem__(self, index: int) -> tuple[Any, int]:
        i = self._index(index)
        try:
            image = self._decode(i)
        except ImageDecodeError as exc:
            if self.on_error == "raise":
                raise
            image = self._substitute(i, exc)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[i])

    def _substitute(self, i: int, exc: ImageDecodeError) -> torch.Tensor:
        """Another decodable image of item ``i``'s identity (``on_error="skip"``)."""
        key = int(self.keys[i])
        if key not in self.bad_records:
            self.bad_records.append(key)
            warnings.warn(f"{exc}; using another image of the same identity", stacklevel=3)
        same = np.flatnonzero(self.labels == self.labels[i])
        start = int(np.searchsorted(same, i))
        for j in np.concatenate([same[start + 1 :], same[:start]]).tolist():
            if int(self.keys[j]) in self.bad_records:
                continue
            try:
                return self._decode(j)
            except ImageDecodeError:
                self.bad_records.append(int(self.keys[j]))
        raise ImageDecodeError(
            f"no image of identity label {int(self.labels[i])} in {str(self.rec_path)!r} can "
            "be decoded"
        ) from exc

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
        new.bad_records = []
        new.keys, new.offsets, new.labels = self.keys[rows], self.offsets[rows], labels
        new._pack_ids, new.num_classes = pack_ids, len(pack_ids)
        return new

    def subset(self, indices: Sequence[int] | np.ndarray) -> RecordFaces:
        """The items ``indices`` (in that order) as a dataset with the same labels.

        The result shares the file, ``transform``, ``on_error`` and :attr:`num_classes`; it
        is what a held-out evaluation set of a few images per identity needs.
        """
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(
                f"indices must lie in [0, {len(self)}), got {rows.min()}..{rows.max()}"
            )
        return self._derive(rows, self.labels[rows], self._pack_ids)

    def split_by_identity(self, held_out: float | int, *, seed: int = 0):
        """Open-set split: hold out whole identities.

        ``held_out`` (a fraction in ``(0, 1)`` or a number of identities) and ``seed`` choose
        them as in :meth:`IdentityFolder.split_by_identity
        <metricface.data.folder.IdentityFolder.split_by_identity>`, so a pack and its unpacked
        tree split alike.

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
    if not 0 <= identity < EXACT_F32:
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
                f.write(frame_record(payload))

            def header_payload(key: int, start: int, end: int) -> bytes:
                return IR_HEADER.pack(2, 0.0, key, 0) + struct.pack("<ff", start, end)

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
                write(key, IR_HEADER.pack(flag, scalar, key, 0) + array + bytes(data))
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
                f.write(frame_record(header_payload(0, key, key + classes)))
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
