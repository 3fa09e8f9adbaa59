"""Readers for the 5-point landmark files that public face datasets ship.

Both return a :class:`LandmarkTable`: image names, ``(N, 5, 2)`` points in source pixel
coordinates (left eye, right eye, nose tip, left mouth corner, right mouth corner; the order of
:data:`~metricface.data.align.ARCFACE_TEMPLATE`), and detector scores where the file has them,
ready for :func:`~metricface.data.align.align_face`.

VGGFace2 (``bb_landmark/loose_landmark_train.csv``, ``loose_landmark_test.csv``)
    A CSV file with the header ``NAME_ID,P1X,P1Y,P2X,P2Y,P3X,P3Y,P4X,P4Y,P5X,P5Y`` (fields may be
    quoted) and one row per image: the image's path relative to the ``train/`` or ``test/``
    folder without its extension (``n000002/0001_01``), then the five ``(x, y)`` points.

IJB-B / IJB-C (``meta/ijbb_name_5pts_score.txt``, ``meta/ijbc_name_5pts_score.txt``)
    One line per image of ``loose_crop/``, fields separated by white space: the file name
    (``1.jpg``), the ten coordinates ``x1 y1 ... x5 y5`` and the detector's face score.

A malformed line raises a ``ValueError`` naming the file and the line number. Well-formed files
are parsed by NumPy's C reader: the 3.1 million rows of VGGFace2's training file take about
10 s on one CPU core.
"""

from __future__ import annotations

import csv
import functools
import math
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

__all__ = ["LandmarkTable", "read_ijb_landmarks", "read_vggface2_landmarks"]

_VGGFACE2_HEADER = ["NAME_ID"] + [f"P{i}{axis}" for i in range(1, 6) for axis in "XY"]


class LandmarkTable(NamedTuple):
    """Landmarks of a set of images, row ``i`` describing image ``names[i]``."""

    #: Image names as the file gives them (e.g. ``"n000002/0001_01"`` or ``"1.jpg"``).
    names: list[str]
    #: ``(N, 5, 2)`` float32 ``(x, y)`` pixel coordinates of the five landmarks.
    points: np.ndarray
    #: ``(N,)`` float32 detector scores, or ``None`` where the file has none.
    scores: np.ndarray | None


def _decode_errors_named(read: Callable[[Any], LandmarkTable]) -> Callable[[Any], LandmarkTable]:
    """A reader whose ``UnicodeDecodeError`` becomes a ``ValueError`` naming the file."""

    @functools.wraps(read)
    def reader(path: str | os.PathLike[str]) -> LandmarkTable:
        try:
            return read(path)
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it "
                "as UTF-8"
            ) from None

    return reader


def _fast(
    path: str | os.PathLike[str], delimiter: str | None, skiprows: int, width: int
) -> tuple[list[str], np.ndarray] | None:
    """Names and numbers read by NumPy's C parser; ``None`` if the file has any problem."""
    options: dict = dict(delimiter=delimiter, skiprows=skiprows, comments=None)
    if delimiter is not None:
        options["quotechar"] = '"'
    with open(path, encoding="utf-8-sig") as f:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
                values = np.loadtxt(f, usecols=range(1, width), ndmin=2, **options)
                f.seek(0)
                names = np.loadtxt(f, usecols=0, dtype=str, ndmin=1, **options).tolist()
        except ValueError:
            return None
        if not np.isfinite(values).all() or len(set(names)) != len(names):
            return None
        # ``usecols`` ignores extra fields: every row has at least ``width`` fields here, so the
        # total count says whether any has more (a name with a quoted comma also goes the slow way)
        f.seek(0)
        if delimiter is None:
            fields = sum(len(line.split()) for line in f)
        else:
            fields = sum(chunk.count(delimiter) for chunk in iter(lambda: f.read(1 << 24), ""))
            fields += len(names) + skiprows
    if fields != width * (len(names) + skiprows):
        return None
    return [name.strip() for name in names], values


def _parse(
    path: str | os.PathLike[str], rows: Iterator[tuple[int, list[str]]], width: int, what: str
) -> tuple[list[str], np.ndarray]:
    """Names and a float64 ``(N, width - 1)`` array from ``(line number, fields)`` rows.

    The careful reader: one row at a time, naming the line of the first problem.
    """
    names: list[str] = []
    lines: list[int] = []
    values: list[list[float]] = []
    for lineno, fields in rows:
        if len(fields) != width:
            raise ValueError(
                f"{str(path)!r} line {lineno}: expected {width} fields ({what}), got "
                f"{len(fields)}: {fields!r}"
            )
        try:
            numbers = [float(v) for v in fields[1:]]
        except ValueError:
            raise ValueError(
                f"{str(path)!r} line {lineno}: expected numbers after the name, got {fields[1:]!r}"
            ) from None
        if not all(map(math.isfinite, numbers)):
            raise ValueError(f"{str(path)!r} line {lineno}: expected finite numbers, got {numbers}")
        names.append(fields[0].strip())
        values.append(numbers)
        lines.append(lineno)
    seen: dict[str, int] = {}
    for name, lineno in zip(names, lines):
        if name in seen:
            raise ValueError(
                f"{str(path)!r} line {lineno}: {name!r} is listed again (first on line "
                f"{seen[name]})"
            )
        seen[name] = lineno
    return names, np.array(values, dtype=np.float64).reshape(len(values), width - 1)


@_decode_errors_named
def read_vggface2_landmarks(path: str | os.PathLike[str]) -> LandmarkTable:
    """Read VGGFace2's ``loose_landmark_*.csv``.

    Parameters
    ----------
    path : str or os.PathLike
        The CSV file: header ``NAME_ID,P1X,P1Y,...,P5X,P5Y`` (quoted or not; a byte-order mark and
        Windows line ends are accepted), then ``"<identity>/<image>",x1,y1,...,x5,y5`` per row.

    Returns
    -------
    LandmarkTable
        ``names`` as in the file (``"n000002/0001_01"``: the image path relative to the split's
        folder, without extension), ``points`` ``(N, 5, 2)`` float32, ``scores`` ``None``.

    Raises
    ------
    ValueError
        If the header differs, or a row has another number of fields, a value that is not a
        finite number, or a name listed before; the message names the file and line.
    OSError
        If the file cannot be read.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from metricface.data import read_vggface2_landmarks
    >>> path = Path(tempfile.mkdtemp()) / "loose_landmark_train.csv"
    >>> _ = path.write_text(
    ...     '"NAME_ID","P1X","P1Y","P2X","P2Y","P3X","P3Y","P4X","P4Y","P5X","P5Y"\\n'
    ...     '"n000002/0001_01",75.81,110.2,103.18,104.61,90.07,126.69,80.43,146.64,104.87,142.88\\n'
    ... )
    >>> table = read_vggface2_landmarks(path)
    >>> table.names, table.points.shape, table.points[0, 2]
    (['n000002/0001_01'], (1, 5, 2), array([ 90.07, 126.69], dtype=float32))
    """
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(
                f"{str(path)!r} is empty: expected the header {','.join(_VGGFACE2_HEADER)}"
            )
        if [h.strip() for h in header] != _VGGFACE2_HEADER:
            raise ValueError(
                f"{str(path)!r} line 1: expected the header {','.join(_VGGFACE2_HEADER)}, got "
                f"{','.join(header)!r}"
            )
    parsed = _fast(path, ",", 1, 11)
    if parsed is None:  # find and name the problem
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            next(reader)
            rows = ((reader.line_num, row) for row in reader if row)
            parsed = _parse(path, rows, 11, "NAME_ID and 10 coordinates")
    names, values = parsed
    return LandmarkTable(names, values.astype(np.float32).reshape(-1, 5, 2), None)


@_decode_errors_named
def read_ijb_landmarks(path: str | os.PathLike[str]) -> LandmarkTable:
    """Read IJB-B/IJB-C's ``*_name_5pts_score.txt``.

    Parameters
    ----------
    path : str or os.PathLike
        The text file: per line ``<image name> x1 y1 x2 y2 x3 y3 x4 y4 x5 y5 <score>``, separated
        by spaces or tabs; blank lines are ignored.

    Returns
    -------
    LandmarkTable
        ``names`` (file names in ``loose_crop/``, e.g. ``"1.jpg"``), ``points`` ``(N, 5, 2)``
        float32, ``scores`` ``(N,)`` float32 detector scores.

    Raises
    ------
    ValueError
        If a line has another number of fields, a value that is not a finite number, or a name
        listed before; the message names the file and line.
    OSError
        If the file cannot be read.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from metricface.data import read_ijb_landmarks
    >>> path = Path(tempfile.mkdtemp()) / "ijbc_name_5pts_score.txt"
    >>> _ = path.write_text(
    ...     "1.jpg 46.06 62.03 87.79 60.32 68.85 77.66 52.16 99.80 83.44 98.43 0.999\\n"
    ... )
    >>> table = read_ijb_landmarks(path)
    >>> table.names, table.points.shape, table.scores
    (['1.jpg'], (1, 5, 2), array([0.999], dtype=float32))
    """
    parsed = _fast(path, None, 0, 12)
    if parsed is None:  # find and name the problem
        with open(path, encoding="utf-8-sig") as f:
            rows = ((n, line.split()) for n, line in enumerate(f, start=1) if line.strip())
            parsed = _parse(path, rows, 12, "image name, 10 coordinates and a score")
    names, values = parsed
    points = values[:, :10].astype(np.float32).reshape(-1, 5, 2)
    return LandmarkTable(names, points, values[:, 10].astype(np.float32))
