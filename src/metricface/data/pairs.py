"""Verification pair lists: LFW ``pairs.txt``, CSV files, submissions, and a pair dataset.

Formats
-------
LFW ``pairs.txt``
    A header line ``<folds> <pairs per fold>`` (View 2, ``pairs.txt``) or ``<pairs>`` (View 1,
    ``pairsDevTrain.txt`` / ``pairsDevTest.txt``), then one pair per line, tab or space
    separated: ``name n1 n2`` for two images of the same person, ``name1 n1 name2 n2`` for two
    people. Image ``n`` of ``name`` is ``name/name_{n:04d}.jpg``. Each fold (View 1: the whole
    file) holds ``pairs`` matched lines followed by as many mismatched lines, so the header
    counts the matched pairs: ``pairsDevTrain.txt`` starts with ``1100`` and lists 2200 pairs.
CSV
    A header naming the columns ``img1,img2`` (or ``path1,path2``) and optionally ``label``
    (1 = same identity, 0 = different), ``id`` and ``fold``. Without ``label`` the list is
    unlabeled (a test set to predict).
Submission CSV
    ``id,score`` (similarities) or ``id,predicted`` (0/1 decisions at a threshold).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from metricface._validation import check_scalar
from metricface.data.folder import decode_image_file

__all__ = [
    "PairList",
    "PairListDataset",
    "read_lfw_pairs",
    "read_pairs_csv",
    "write_lfw_pairs",
    "write_pairs_csv",
    "write_submission",
]

_LFW_NAME = re.compile(r"^(?P<name>[^/]+)/(?P=name)_(?P<num>\d+)\.[A-Za-z]+$")


@dataclass
class PairList:
    """Image pairs to verify, with optional labels, folds and ids.

    Attributes
    ----------
    left, right : list of str
        Image paths (relative to a dataset root, or absolute) of the first and second image.
    labels : numpy.ndarray or None
        ``(n,)`` int64, 1 for a genuine pair (same identity), 0 for an impostor pair; ``None``
        for an unlabeled list.
    folds : numpy.ndarray or None
        ``(n,)`` int64 cross-validation fold of each pair, if the source defines folds.
    ids : list of str
        Pair identifiers (default ``"0" .. "n-1"``), used by :func:`write_submission`.
    """

    left: list[str]
    right: list[str]
    labels: np.ndarray | None = None
    folds: np.ndarray | None = None
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.left)
        if len(self.right) != n:
            raise ValueError(
                f"left and right must have the same length, got {n} and {len(self.right)}"
            )
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
            if len(self.labels) != n:
                raise ValueError(
                    f"labels must have one entry per pair ({n}), got {len(self.labels)}"
                )
            if not np.isin(self.labels, (0, 1)).all():
                raise ValueError("labels must be 1 (same identity) or 0 (different)")
        if self.folds is not None:
            self.folds = np.asarray(self.folds, dtype=np.int64).reshape(-1)
            if len(self.folds) != n:
                raise ValueError(f"folds must have one entry per pair ({n}), got {len(self.folds)}")
        if not self.ids:
            self.ids = [str(i) for i in range(n)]
        elif len(self.ids) != n:
            raise ValueError(f"ids must have one entry per pair ({n}), got {len(self.ids)}")

    def __len__(self) -> int:
        return len(self.left)


def _lfw_path(name: str, num: str, ext: str) -> str:
    return f"{name}/{name}_{int(num):04d}.{ext}"


def read_lfw_pairs(path: str | os.PathLike[str], *, ext: str = "jpg") -> PairList:
    """Read an LFW-style ``pairs.txt`` (3-field same / 4-field different lines).

    Parameters
    ----------
    path : str or os.PathLike
        The pairs file.
    ext : str
        Image file extension used to build paths (``name/name_0001.<ext>``).

    Returns
    -------
    PairList
        Paths relative to the image root, labels, and folds when the header gives
        ``<folds> <pairs per fold>``.
    """
    text = Path(path).read_text(encoding="utf-8-sig")  # tolerate a byte-order mark
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{str(path)!r} is empty; expected an LFW pairs file")
    header, rows = lines[0], lines[1:]
    if not (1 <= len(header) <= 2 and all(h.isdigit() for h in header)):
        raise ValueError(
            f"{str(path)!r} line 1 must be '<folds> <pairs per fold>' or '<pairs>', got "
            f"{' '.join(header)!r}"
        )
    left, right, labels = [], [], []
    for lineno, row in enumerate(rows, start=2):
        if len(row) == 3 and row[1].isdigit() and row[2].isdigit():
            left.append(_lfw_path(row[0], row[1], ext))
            right.append(_lfw_path(row[0], row[2], ext))
            labels.append(1)
        elif len(row) == 4 and row[1].isdigit() and row[3].isdigit():
            left.append(_lfw_path(row[0], row[1], ext))
            right.append(_lfw_path(row[2], row[3], ext))
            labels.append(0)
        else:
            raise ValueError(
                f"{str(path)!r} line {lineno} must be 'name n1 n2' or 'name1 n1 name2 n2', "
                f"got {' '.join(row)!r}"
            )
    folds = None
    if len(header) == 2:
        n_folds, per_fold = int(header[0]), int(header[1])
        if n_folds * per_fold * 2 != len(rows):
            raise ValueError(
                f"{str(path)!r} header promises {n_folds} folds x {per_fold} x 2 pairs = "
                f"{n_folds * per_fold * 2}, but the file has {len(rows)} pair lines"
            )
        folds = np.repeat(np.arange(n_folds), 2 * per_fold)
    elif 2 * int(header[0]) != len(rows):
        raise ValueError(
            f"{str(path)!r} header promises {header[0]} matched + {header[0]} mismatched pairs, "
            f"but the file has {len(rows)} pair lines"
        )
    return PairList(left, right, np.array(labels), folds)


def write_lfw_pairs(path: str | os.PathLike[str], pairs: PairList) -> None:
    """Write ``pairs`` as an LFW ``pairs.txt``; paths must follow ``name/name_NNNN.ext``.

    Every fold (without folds: the whole list, written with View 1's one-number header) must
    list its genuine pairs first and hold as many genuine as impostor pairs (the LFW layout);
    other lists are better stored with :func:`write_pairs_csv`.
    """
    if pairs.labels is None:
        raise ValueError("pairs must be labeled to be written as an LFW pairs file")
    lines = []
    for a, b, lab in zip(pairs.left, pairs.right, pairs.labels):
        ma, mb = _LFW_NAME.match(a), _LFW_NAME.match(b)
        if ma is None or mb is None:
            raise ValueError(f"paths must look like 'name/name_0001.jpg', got {a!r}, {b!r}")
        if lab == 1:
            lines.append(f"{ma['name']}\t{int(ma['num'])}\t{int(mb['num'])}")
        else:
            lines.append(f"{ma['name']}\t{int(ma['num'])}\t{mb['name']}\t{int(mb['num'])}")
    n_folds = int(pairs.folds.max()) + 1 if pairs.folds is not None else 1
    per_fold = len(pairs) // (2 * n_folds)
    pattern = np.tile(np.repeat([1, 0], per_fold), n_folds)
    if len(pattern) != len(pairs) or not np.array_equal(pairs.labels, pattern):
        raise ValueError(
            "an LFW pairs file lists, in each fold, its genuine pairs first and then as many "
            "impostor pairs; these pairs do not (store them with write_pairs_csv)"
        )
    if pairs.folds is not None:
        if not np.array_equal(pairs.folds, np.repeat(np.arange(n_folds), 2 * per_fold)):
            raise ValueError("folds must hold equal genuine-then-impostor blocks (LFW layout)")
        header = f"{n_folds}\t{per_fold}"
    else:
        header = str(per_fold)
    Path(path).write_text("\n".join([header, *lines]) + "\n")


def read_pairs_csv(path: str | os.PathLike[str]) -> PairList:
    """Read a CSV pair list with columns ``img1,img2[,label][,id][,fold]``."""
    with open(path, newline="", encoding="utf-8-sig") as f:  # tolerate a byte-order mark
        reader = csv.DictReader(f)
        cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        a = cols.get("img1") or cols.get("path1")
        b = cols.get("img2") or cols.get("path2")
        if a is None or b is None:
            raise ValueError(
                f"{str(path)!r} must have a header with columns img1,img2 (or path1,path2), "
                f"got {reader.fieldnames}"
            )
        rows = list(reader)
    lab, fold, ident = cols.get("label"), cols.get("fold"), cols.get("id")
    try:
        labels = np.array([int(r[lab]) for r in rows]) if lab else None
        folds = np.array([int(r[fold]) for r in rows]) if fold else None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{str(path)!r}: label and fold must be integers ({exc})") from exc
    return PairList(
        [r[a] for r in rows],
        [r[b] for r in rows],
        labels,
        folds,
        [r[ident] for r in rows] if ident else [],
    )


def write_pairs_csv(path: str | os.PathLike[str], pairs: PairList) -> None:
    """Write ``pairs`` as CSV: ``id,img1,img2`` plus ``label`` and ``fold`` when present."""
    header = ["id", "img1", "img2"]
    header += ["label"] if pairs.labels is not None else []
    header += ["fold"] if pairs.folds is not None else []
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(len(pairs)):
            row: list[Any] = [pairs.ids[i], pairs.left[i], pairs.right[i]]
            if pairs.labels is not None:
                row.append(int(pairs.labels[i]))
            if pairs.folds is not None:
                row.append(int(pairs.folds[i]))
            w.writerow(row)


def write_submission(
    path: str | os.PathLike[str],
    scores: Sequence[float] | np.ndarray | torch.Tensor,
    *,
    ids: Sequence[str] | None = None,
    threshold: float | None = None,
) -> None:
    """Write predictions for a pair list as ``id,score`` or, with a threshold, ``id,predicted``.

    Parameters
    ----------
    path : str or os.PathLike
        Output CSV.
    scores : array-like
        ``(n,)`` similarity of each pair (higher = more alike).
    ids : sequence of str, optional
        Pair ids (e.g. :attr:`PairList.ids`); default ``0 .. n-1``.
    threshold : float, optional
        If given, write ``predicted = 1 if score >= threshold else 0`` instead of scores.
    """
    s = torch.as_tensor(scores).detach().cpu().double().numpy().reshape(-1)
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite, got NaN or inf")
    ids = [str(i) for i in range(len(s))] if ids is None else list(ids)
    if len(ids) != len(s):
        raise ValueError(f"ids must have one entry per score ({len(s)}), got {len(ids)}")
    if threshold is not None:
        check_scalar(threshold, "threshold")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "predicted" if threshold is not None else "score"])
        for i, v in zip(ids, s):
            w.writerow([i, int(v >= threshold) if threshold is not None else repr(float(v))])


class PairListDataset(Dataset):
    """Images of a :class:`PairList`, yielding ``(img1, img2, label)``.

    Parameters
    ----------
    pairs : PairList
        The pairs; relative paths are resolved against ``root``.
    root : str or os.PathLike, optional
        Image root directory.
    transform : callable, optional
        Applied to each decoded ``(3, H, W)`` uint8 image.
    loader : callable
        ``path -> image``; default :func:`~metricface.data.decode_image_file`.

    Notes
    -----
    ``label`` is 1 (same), 0 (different) or -1 for an unlabeled list.
    """

    def __init__(
        self,
        pairs: PairList,
        root: str | os.PathLike[str] | None = None,
        transform: Callable[[torch.Tensor], Any] | None = None,
        loader: Callable[[str], Any] = decode_image_file,
    ) -> None:
        if not isinstance(pairs, PairList):
            raise TypeError(f"pairs must be a PairList, got {type(pairs).__name__}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None, got {type(transform).__name__}")
        self.pairs = pairs
        self.root = Path(root) if root is not None else None
        self.transform = transform
        self.loader = loader

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, rel: str) -> Any:
        img = self.loader(str(self.root / rel) if self.root is not None else rel)
        return self.transform(img) if self.transform is not None else img

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        p = self.pairs
        label = int(p.labels[index]) if p.labels is not None else -1
        return self._load(p.left[index]), self._load(p.right[index]), label
