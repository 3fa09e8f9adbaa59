"""The MXNet RecordIO format: record framing, the ``.idx`` index and the image-record header.

Shared by :mod:`metricface.data.records` (see its documentation for the layout). Reading the
headers of millions of records goes through a memory map and NumPy, never a Python loop.
"""

from __future__ import annotations

import os
import struct
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
FRAME = struct.Struct("<II")  # magic, continuation flag << 29 | length
IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2
LENGTH_BITS = 29
MAX_LENGTH = (1 << LENGTH_BITS) - 1
EXACT_F32 = 1 << 24  # integers up to here are exact in float32
CHUNK = 1 << 20  # records per vectorised header read


def pad4(n: int) -> int:
    return (n + 3) & ~3


if hasattr(os, "pread"):
    pread = os.pread
else:  # pragma: no cover - Windows
    _pread_lock = threading.Lock()

    def pread(fd: int, n: int, offset: int) -> bytes:
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


def read_index(path: Path) -> tuple[np.ndarray, np.ndarray]:
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
    return keys.copy(), offsets.copy()  # contiguous; the parsed text can go


# ---------------------------------------------------------------------------------- records
class RecordFile:
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
            head = pread(fd, 8, pos)
            if len(head) < 8:
                raise self.error(key, offset, f"the pack is truncated: it ends at byte {pos}")
            magic, word = FRAME.unpack(head)
            if magic != MAGIC:
                raise self.error(
                    key,
                    offset,
                    f"wrong magic word 0x{magic:08x} at byte {pos} (0xced7230a "
                    "expected): the .idx does not belong to this .rec, or the file is damaged",
                )
            cflag, length = word >> LENGTH_BITS, word & MAX_LENGTH
            if cflag not in ((0, 1) if first else (2, 3)):
                what = "start" if first else "continuation"
                raise self.error(
                    key,
                    offset,
                    f"continuation flag {cflag} where a record {what} "
                    "belongs: the .idx does not point at record starts",
                )
            body = pread(fd, length, pos + 8) if length else b""
            if len(body) < length:
                raise self.error(
                    key,
                    offset,
                    f"the pack is truncated: a part of {length} bytes at byte "
                    f"{pos + 8} runs past its end ({self.size} bytes)",
                )
            parts.append(body)
            if cflag in (0, 3):
                return MAGIC_BYTES.join(parts)
            pos += 8 + pad4(length)
            first = False

    def parse(self, key: int, offset: int, payload: bytes) -> tuple[int, float, int]:
        """``(flag, label, image offset)`` of an image payload."""
        if len(payload) < IR_HEADER.size:
            raise self.error(key, offset, f"{len(payload)} bytes, fewer than the 24-byte header")
        flag, label = IR_HEADER.unpack_from(payload)[:2]
        start = IR_HEADER.size + 4 * flag
        if start > len(payload):
            raise self.error(
                key,
                offset,
                f"label flag {flag} announces {flag} float32 labels "
                f"({start} bytes with the header) but the payload holds {len(payload)} bytes",
            )
        if flag:
            label = struct.unpack_from("<f", payload, IR_HEADER.size)[0]
        return flag, label, start


def first_true(mask: np.ndarray) -> int | None:
    where = np.flatnonzero(mask)
    return int(where[0]) if where.size else None


def _scan_chunk(pack: RecordFile, words: np.ndarray, keys: np.ndarray, off: np.ndarray):
    """Headers of the records at ``off`` (see :func:`scan_headers`) from the file's uint32 words."""
    base = off // 4
    last = len(words) - 1

    def word(k: int) -> np.ndarray:
        return np.asarray(words[np.minimum(base + k, last)])

    def check(mask: np.ndarray, what: Callable[[int], str]) -> None:
        i = first_true(mask)
        if i is not None:
            raise pack.error(int(keys[i]), int(off[i]), what(i))

    magic = word(0)
    check(
        magic != MAGIC,
        lambda i: (
            f"wrong magic word 0x{int(magic[i]):08x} (0xced7230a expected): the .idx "
            "does not belong to this .rec, or the file is damaged"
        ),
    )
    lrec = word(1)
    cflag = lrec >> LENGTH_BITS
    length = (lrec & MAX_LENGTH).astype(np.int64)
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
        whole & (length < IR_HEADER.size),
        lambda i: f"{int(length[i])} bytes, fewer than the 24-byte header",
    )
    flag = word(2).astype(np.int64)
    check(
        whole & (IR_HEADER.size + 4 * flag > length),
        lambda i: (
            f"label flag {int(flag[i])} announces {int(flag[i])} float32 labels "
            f"({IR_HEADER.size + 4 * int(flag[i])} bytes with the header) but the payload holds "
            f"{int(length[i])} bytes"
        ),
    )
    label = np.where(flag == 0, word(3), word(8)).view(np.float32)
    return flag, label, length, whole


def scan_headers(pack: RecordFile, keys: np.ndarray, offsets: np.ndarray):
    """Flag, label (first entry) and payload length of every record, reading headers only.

    Checks every record's framing on the way: offsets inside the file and 4-byte aligned, the
    magic word, a record start, the length inside the file, the label array inside the
    payload. Split records (rare) are read whole.
    """
    i = first_true(offsets % 4 != 0)
    if i is not None:
        raise pack.error(int(keys[i]), int(offsets[i]), "offset is not a multiple of 4")
    i = first_true(offsets + 8 > pack.size)
    if i is not None:
        raise pack.error(
            int(keys[i]),
            int(offsets[i]),
            f"the index points past the end of the file ({pack.size} bytes): the pack is "
            "truncated or the .idx belongs to another pack",
        )
    n = len(keys)
    flags, labels, lengths = np.empty(n, np.int32), np.empty(n, np.float32), np.empty(n, np.int32)
    split: list[int] = []
    words = np.memmap(pack.path, dtype="<u4", mode="r", shape=(pack.size // 4,))
    try:
        for lo in range(0, n, CHUNK):
            hi = min(lo + CHUNK, n)
            flag, label, length, whole = _scan_chunk(pack, words, keys[lo:hi], offsets[lo:hi])
            flags[lo:hi], labels[lo:hi], lengths[lo:hi] = flag, label, length
            split.extend((lo + np.flatnonzero(~whole)).tolist())
    finally:
        del words
    if split:
        fd = open_readonly(pack.path)
        try:
            for i in split:
                key, offset = int(keys[i]), int(offsets[i])
                payload = pack.read(fd, key, offset)
                flags[i], labels[i], _ = pack.parse(key, offset, payload)
                lengths[i] = len(payload)
        finally:
            os.close(fd)
    return flags, labels, lengths


def open_readonly(path: Path) -> int:
    return os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))


def frame_record(payload: bytes) -> bytes:
    """One record as MXNet writes it: split at aligned magic words, each part padded."""
    n = len(payload)
    if n > MAX_LENGTH:
        raise ValueError(f"a record holds at most {MAX_LENGTH} bytes, got {n}")
    aligned = np.frombuffer(payload, "<u4", n // 4)
    cuts = (np.flatnonzero(aligned == MAGIC) * 4).tolist()
    out, start = [], 0
    for i, cut in enumerate(cuts):
        out += [
            FRAME.pack(MAGIC, ((1 if i == 0 else 2) << LENGTH_BITS) | (cut - start)),
            payload[start:cut],
        ]
        start = cut + 4
    rest = n - start
    out += [
        FRAME.pack(MAGIC, ((3 if cuts else 0) << LENGTH_BITS) | rest),
        payload[start:],
        b"\0" * (pad4(rest) - rest),
    ]
    return b"".join(out)
