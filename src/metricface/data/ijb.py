"""Protocol files of the IJB-B and IJB-C template benchmarks.

IJB-B and IJB-C compare *templates*: sets of face images (stills and video frames) of one
person. The evaluation package most face-recognition work uses (InsightFace's ``IJB_release``:
``IJBB/`` and ``IJBC/``, each with ``loose_crop/`` images and a ``meta/`` folder) describes the
protocols in these files, all read here with NumPy's C parser (``np.loadtxt``, no per-line
Python), so that the 15.7 million pairs of IJB-C load in a few seconds:

``<target>_face_tid_mid.txt`` (:func:`read_ijb_media`)
    One line per face image, whitespace separated: image file name, template id, media id
    (``1.jpg 1 69544``). Its lines are in the order of ``<target>_name_5pts_score.txt`` (the
    landmark and detector-score file), so per-image features computed in that order line up.
    IJB-B: 227,630 images in 12,115 templates; IJB-C: 469,375 images in 23,124 templates.
``<target>_template_pair_label.txt`` (:func:`read_ijb_pairs`)
    The 1:1 verification pairs, whitespace separated: template id, template id, label (1 =
    same person). IJB-B: 8,010,270 pairs (10,270 genuine); IJB-C: 15,658,489 (19,557 genuine).
``<target>_1N_gallery_<name>.csv`` and ``<target>_1N_probe_mixed.csv`` (:func:`read_ijb_subjects`)
    The 1:N identification sets from the official protocol: galleries ``G1``/``G2`` (IJB-C) or
    ``S1``/``S2`` (IJB-B) and the mixed-media probe templates. Comma-separated with a header,
    one row per image; the columns ``TEMPLATE_ID`` and ``SUBJECT_ID`` (found by name, in any
    case and position) are read, every other column (``FILENAME``, ``SIGHTING_ID``, face box,
    ...) is ignored. Every template must have one subject.

:func:`load_ijb_meta` reads all of them from a ``meta/`` folder into an :class:`IJBMeta`, which
:func:`metricface.evaluation.evaluate_ijb` scores together with per-image features.
File names are matched without regard to case (``ijbc_1N_gallery_G1.csv`` and
``IJBC_1N_gallery_G1.csv`` both work).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "IJBMedia",
    "IJBMeta",
    "IJBPairs",
    "IJBSubjects",
    "load_ijb_meta",
    "read_ijb_media",
    "read_ijb_pairs",
    "read_ijb_subjects",
]


class IJBMedia(NamedTuple):
    """Images of the templates (:func:`read_ijb_media`), one entry per line of the file."""

    names: np.ndarray
    templates: np.ndarray
    medias: np.ndarray


class IJBPairs(NamedTuple):
    """1:1 verification pairs of templates (:func:`read_ijb_pairs`)."""

    t1: np.ndarray
    t2: np.ndarray
    labels: np.ndarray


class IJBSubjects(NamedTuple):
    """Templates of a 1:N gallery or probe set and their subjects (:func:`read_ijb_subjects`)."""

    templates: np.ndarray
    subjects: np.ndarray


# The fields' documentation (rendered by autodoc in place of "Alias for field number k").
for _cls, _docs in (
    (
        IJBMedia,
        {
            "names": "numpy.ndarray, shape (N,), str: image file names (in ``loose_crop/``).",
            "templates": "numpy.ndarray, shape (N,), int64: template id of each image.",
            "medias": "numpy.ndarray, shape (N,), int64: media id of each image (a still or "
            "a video; frames of one video share it).",
        },
    ),
    (
        IJBPairs,
        {
            "t1": "numpy.ndarray, shape (P,), int64: template id of the first side of each pair.",
            "t2": "numpy.ndarray, shape (P,), int64: template id of the second side.",
            "labels": "numpy.ndarray, shape (P,), bool: ``True`` for a genuine pair.",
        },
    ),
    (
        IJBSubjects,
        {
            "templates": "numpy.ndarray, shape (T,), int64: distinct template ids, increasing.",
            "subjects": "numpy.ndarray, shape (T,), int64: subject id of each template.",
        },
    ),
):
    for _field, _doc in _docs.items():
        getattr(_cls, _field).__doc__ = _doc


def _loadtxt(path: str, what: str, **kwargs) -> np.ndarray:
    """``np.loadtxt`` whose errors name the file and what it was expected to hold.

    Blank lines are skipped (NumPy warns about them; a trailing one is common) and a UTF-8
    byte-order mark is dropped; an empty file is an error.
    """
    kwargs.setdefault("encoding", "utf-8-sig")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*contained no data")
            warnings.filterwarnings("error", message=".*[Ee]mpty input")  # a warning in NumPy
            return np.loadtxt(path, ndmin=2, comments=None, **kwargs)
    except (ValueError, UserWarning) as exc:
        raise ValueError(f"{path}: expected {what}: {exc}") from None


def _as_path(path: str | os.PathLike[str]) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    return path


def read_ijb_media(path: str | os.PathLike[str]) -> IJBMedia:
    """Read a ``*_face_tid_mid.txt`` file: image name, template id, media id per line.

    Parameters
    ----------
    path : str or os.PathLike
        The file, whitespace separated, no header.

    Returns
    -------
    IJBMedia
        ``(names, templates, medias)``, one entry per line.

    Raises
    ------
    ValueError
        A line without exactly three fields or with non-integer ids; the message names the
        file and the line.

    Examples
    --------
    >>> import tempfile
    >>> from metricface.data import read_ijb_media
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = os.path.join(tmp.name, "ijbc_face_tid_mid.txt")
    >>> with open(path, "w") as f:
    ...     _ = f.write("1.jpg 1 69544\\n2.jpg 1 69544\\n3.jpg 7 11\\n")
    >>> names, templates, medias = read_ijb_media(path)
    >>> names.tolist(), templates.tolist(), medias.tolist()
    (['1.jpg', '2.jpg', '3.jpg'], [1, 1, 7], [69544, 69544, 11])
    >>> tmp.cleanup()
    """
    path = _as_path(path)
    what = "lines 'image_name template_id media_id'"
    ids = _loadtxt(path, what, dtype=np.int64, usecols=(1, 2))  # a short line is an error
    names = _loadtxt(path, what, dtype=str, usecols=(0,))[:, 0]
    if ids.shape[0] == 0:
        raise ValueError(f"{path}: expected {what}, got an empty file")
    with open(path, "rb") as f:  # ``usecols`` ignores extra fields: count them all (fast in C)
        fields = len(f.read().split())
    if fields != 3 * ids.shape[0]:  # name the problem: a ragged line is an error here
        table = _loadtxt(path, what, dtype=str)
        raise ValueError(f"{path}: expected {what}, got {table.shape[1]} fields per line")
    return IJBMedia(names, np.ascontiguousarray(ids[:, 0]), np.ascontiguousarray(ids[:, 1]))


def read_ijb_pairs(path: str | os.PathLike[str]) -> IJBPairs:
    """Read a ``*_template_pair_label.txt`` file: template id, template id, label per line.

    Parameters
    ----------
    path : str or os.PathLike
        The file, whitespace separated, no header; labels are 1 (genuine) or 0 (impostor).

    Returns
    -------
    IJBPairs
        ``(t1, t2, labels)``.

    Raises
    ------
    ValueError
        A line without exactly three integers, or a label other than 0/1; the message names
        the file and the line.
    """
    path = _as_path(path)
    what = "lines 'template_id template_id label'"
    data = _loadtxt(path, what, dtype=np.int64)
    if data.shape[1] != 3:
        raise ValueError(f"{path}: expected {what}, got {data.shape[1]} fields per line")
    labels = data[:, 2]
    bad = np.flatnonzero(labels.view(np.uint64) > 1)  # neither 0 nor 1 (negatives wrap)
    if bad.size:
        raise ValueError(
            f"{path}: labels must be 0 or 1, got {labels[bad[0]]} in row {bad[0] + 1} (blank "
            "lines not counted)"
        )
    return IJBPairs(data[:, 0], data[:, 1], labels == 1)  # column views: no 250 MB copy


def _unique_template_subjects(
    templates: np.ndarray, subjects: np.ndarray, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct templates (increasing) and their subject; a template with two subjects is an
    error naming it."""
    unique, first, inverse = np.unique(templates, return_index=True, return_inverse=True)
    subject = subjects[first]
    clash = np.flatnonzero(subjects != subject[inverse])
    if clash.size:
        i = clash[0]
        raise ValueError(
            f"{where}: template {templates[i]} is listed with subjects {subject[inverse[i]]} "
            f"and {subjects[i]}; a template holds one subject"
        )
    return unique, subject


def read_ijb_subjects(path: str | os.PathLike[str]) -> IJBSubjects:
    """Read a 1:N gallery or probe list (``*_1N_gallery_G1.csv``, ``*_1N_probe_mixed.csv``, ...).

    Parameters
    ----------
    path : str or os.PathLike
        Comma-separated, with a header naming the columns ``TEMPLATE_ID`` and ``SUBJECT_ID``
        (any case, any position; other columns are ignored), one row per image.

    Returns
    -------
    IJBSubjects
        The distinct templates, increasing, and the subject of each.

    Raises
    ------
    ValueError
        A header without those columns, a non-integer id (the message names the file and the
        row), or a template listed with two subjects.

    Examples
    --------
    >>> import tempfile
    >>> from metricface.data import read_ijb_subjects
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = os.path.join(tmp.name, "ijbc_1N_gallery_G1.csv")
    >>> with open(path, "w") as f:
    ...     _ = f.write("TEMPLATE_ID,SUBJECT_ID,FILENAME\\n"
    ...                 "5,2,img/1.jpg\\n5,2,img/2.jpg\\n3,9,img/3.jpg\\n")
    >>> read_ijb_subjects(path)
    IJBSubjects(templates=array([3, 5]), subjects=array([9, 2]))
    >>> tmp.cleanup()
    """
    path = _as_path(path)
    with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is not part of the header
        header = [c.strip().upper() for c in f.readline().split(",")]
    missing = [c for c in ("TEMPLATE_ID", "SUBJECT_ID") if c not in header]
    if missing:
        raise ValueError(
            f"{path}: expected a CSV header with the columns TEMPLATE_ID and SUBJECT_ID, got "
            f"{','.join(header)!r} (missing {', '.join(missing)})"
        )
    cols = (header.index("TEMPLATE_ID"), header.index("SUBJECT_ID"))
    data = _loadtxt(
        path,
        "integer TEMPLATE_ID and SUBJECT_ID columns",
        dtype=np.int64,
        delimiter=",",
        skiprows=1,
        usecols=cols,
        encoding="utf-8-sig",
    )
    if data.shape[0] == 0:
        raise ValueError(f"{path}: the list holds no template")
    return IJBSubjects(*_unique_template_subjects(data[:, 0], data[:, 1], path))


@dataclass(frozen=True)
class IJBMeta:
    """The protocol files of one IJB benchmark (:func:`load_ijb_meta`).

    Attributes
    ----------
    target : str
        Upper-case prefix of the files, e.g. ``"IJBC"``.
    media : IJBMedia
        Every image with its template and media.
    pairs : IJBPairs or None
        1:1 verification pairs, when the pair file is present.
    galleries : dict of str to IJBSubjects
        1:N galleries by name (``"G1"``, ``"G2"``; IJB-B ``"S1"``, ``"S2"``), possibly empty.
    probes : IJBSubjects or None
        The mixed-media 1:N probe templates, when the file is present.
    files : dict of str to str
        The path each part was read from (``"media"``, ``"pairs"``, ``"gallery G1"``, ...).
    """

    target: str
    media: IJBMedia
    pairs: IJBPairs | None = None
    galleries: dict[str, IJBSubjects] = field(default_factory=dict)
    probes: IJBSubjects | None = None
    files: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        parts = [
            f"target={self.target!r}",
            f"images={len(self.media.names)}",
            f"templates={np.unique(self.media.templates).size}",
        ]
        if self.pairs is not None:
            parts.append(f"pairs={len(self.pairs.labels)}")
        if self.galleries:
            parts.append(f"galleries={sorted(self.galleries)}")
        if self.probes is not None:
            parts.append(f"probes={len(self.probes.templates)}")
        return f"IJBMeta({', '.join(parts)})"


_MEDIA_SUFFIX = "_face_tid_mid.txt"


def load_ijb_meta(root: str | os.PathLike[str], target: str | None = None) -> IJBMeta:
    """Read the protocol files of an IJB-B or IJB-C copy.

    Parameters
    ----------
    root : str or os.PathLike
        The benchmark folder (``.../IJBC``, holding ``meta/``) or the ``meta/`` folder itself.
    target : str, optional
        File prefix, e.g. ``"IJBC"`` or ``"IJBB"`` (any case). By default the folder must hold
        exactly one ``*_face_tid_mid.txt`` file, whose prefix is used.

    Returns
    -------
    IJBMeta
        ``<target>_face_tid_mid.txt`` (required); ``<target>_template_pair_label.txt``,
        ``<target>_1N_gallery_*.csv`` and ``<target>_1N_probe_mixed.csv`` where present.

    Raises
    ------
    FileNotFoundError
        No media file for ``target`` (the message lists what the folder holds).
    ValueError
        Several media files and no ``target``, or a malformed file (see the readers).

    Examples
    --------
    >>> import tempfile
    >>> from metricface.data import load_ijb_meta
    >>> from pathlib import Path
    >>> tmp = tempfile.TemporaryDirectory()
    >>> meta_dir = Path(tmp.name) / "IJBC" / "meta"
    >>> meta_dir.mkdir(parents=True)
    >>> _ = (meta_dir / "ijbc_face_tid_mid.txt").write_text("1.jpg 1 1\\n2.jpg 2 2\\n")
    >>> _ = (meta_dir / "ijbc_template_pair_label.txt").write_text("1 2 0\\n")
    >>> load_ijb_meta(meta_dir.parent)
    IJBMeta(target='IJBC', images=2, templates=2, pairs=1)
    >>> tmp.cleanup()
    """
    folder = Path(root)
    if (folder / "meta").is_dir():
        folder = folder / "meta"
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {os.fspath(root)!r}")
    files = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}
    if target is None:
        prefixes = sorted(n[: -len(_MEDIA_SUFFIX)] for n in files if n.endswith(_MEDIA_SUFFIX))
        if len(prefixes) != 1:
            raise (FileNotFoundError if not prefixes else ValueError)(
                f"{folder}: expected one *{_MEDIA_SUFFIX} file to take the target from, found "
                f"{len(prefixes)} ({', '.join(prefixes) or 'none'}); pass target='IJBC' or "
                "'IJBB'"
            )
        prefix = prefixes[0]
    else:
        prefix = str(target).lower()
        if prefix + _MEDIA_SUFFIX not in files:
            raise FileNotFoundError(
                f"{folder}: no {prefix}{_MEDIA_SUFFIX} (the folder holds: "
                f"{', '.join(sorted(p.name for p in files.values())) or 'nothing'})"
            )
    read: dict[str, str] = {"media": str(files[prefix + _MEDIA_SUFFIX])}
    media = read_ijb_media(read["media"])
    pairs = None
    if prefix + "_template_pair_label.txt" in files:
        read["pairs"] = str(files[prefix + "_template_pair_label.txt"])
        pairs = read_ijb_pairs(read["pairs"])
    galleries = {}
    gallery_name = re.compile(re.escape(prefix) + r"_1n_gallery_(.+)\.csv$")
    for lower, p in sorted(files.items()):
        match = gallery_name.match(lower)
        if match:
            name = p.name[match.start(1) : match.end(1)]
            read[f"gallery {name}"] = str(p)
            galleries[name] = read_ijb_subjects(p)
    probes = None
    if prefix + "_1n_probe_mixed.csv" in files:
        read["probes"] = str(files[prefix + "_1n_probe_mixed.csv"])
        probes = read_ijb_subjects(read["probes"])
    return IJBMeta(prefix.upper(), media, pairs, galleries, probes, read)
