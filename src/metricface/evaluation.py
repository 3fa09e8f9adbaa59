"""Benchmark protocols end to end: verification ``.bin`` sets and IJB-B/C from features.

This module ties the data readers (:mod:`metricface.data`), batched inference
(:func:`~metricface.inference.embed`) and the metrics (:mod:`metricface.metrics`) together;
neither of those packages imports the other.

:class:`VerificationSets`
    Evaluates a model on LFW-style ``.bin`` sets with the LFW protocol, as face-recognition
    papers report them: 10-fold accuracy +- std with flip test-time augmentation (the embedding
    of an image is the sum of the embeddings of the image and its mirror image, L2-normalised),
    plus EER and TAR@FAR. Files are read on first use and kept encoded (about the size of the
    files in memory); images are decoded per evaluation, so that evaluating every epoch costs
    decoding plus two forward passes per image.
:func:`evaluate_ijb`
    Scores IJB-B/C from per-image features and the protocol files read by
    :func:`~metricface.data.load_ijb_meta` (see :func:`~metricface.metrics.ijb_report`).

The k-fold accuracy chooses each fold's threshold exactly over every distinct score
(:func:`~metricface.metrics.kfold_verification_accuracy`), where InsightFace's script searches
a grid of thresholds 0.01 apart, so the two can differ in the last digit.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from metricface._validation import check_scalar
from metricface.data.ijb import IJBMeta
from metricface.data.transforms import FACE_MEAN, FACE_STD
from metricface.data.verification_bin import VerificationBin
from metricface.inference import embed
from metricface.metrics import kfold_verification_accuracy, verification_report
from metricface.metrics.templates import IJB_FAR_TARGETS, IJBReport, ijb_report

__all__ = [
    "VerificationResult",
    "VerificationSets",
    "VerificationTable",
    "evaluate_ijb",
]


@dataclass(frozen=True)
class VerificationResult:
    """LFW-protocol results of one verification set (a row of :class:`VerificationTable`).

    Attributes
    ----------
    name : str
        The set, e.g. ``"lfw"``.
    n_pairs : int
        Number of pairs.
    accuracy, std : float
        Mean and population standard deviation of the held-out fold accuracies.
    eer : float
        Equal error rate over all pairs.
    far_targets, tar : tuple of float
        TAR at each FAR target over all pairs.
    threshold : float
        Median of the fold thresholds (cosine similarity; accept when ``score >= threshold``).
    fold_thresholds : numpy.ndarray, shape (n_folds,)
        The threshold chosen on the other folds for each fold.
    scores : numpy.ndarray, shape (n_pairs,), float64
        Cosine similarity of each pair, in file order (for ROC plots).
    issame : numpy.ndarray, shape (n_pairs,), bool
        The pair labels.
    """

    name: str
    n_pairs: int
    accuracy: float
    std: float
    eer: float
    far_targets: tuple[float, ...]
    tar: tuple[float, ...]
    threshold: float
    fold_thresholds: np.ndarray = field(repr=False)
    scores: np.ndarray = field(repr=False)
    issame: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class VerificationTable:
    """Results of several verification sets (:meth:`VerificationSets.evaluate`).

    Iterating gives the :class:`VerificationResult` rows in set order; ``table["lfw"]`` picks
    one by name.
    """

    rows: tuple[VerificationResult, ...]

    def __iter__(self) -> Iterator[VerificationResult]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, name: str) -> VerificationResult:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no set named {name!r}; the table holds {[r.name for r in self.rows]}")

    def as_dict(self) -> dict[str, float]:
        """Flat metrics for CSV/JSON logs, keyed ``<set>/accuracy``, ``<set>/std``,
        ``<set>/eer``, ``<set>/tar@far=<a>`` and ``<set>/threshold`` (fractions)."""
        out: dict[str, float] = {}
        for r in self.rows:
            out[f"{r.name}/accuracy"] = r.accuracy
            out[f"{r.name}/std"] = r.std
            out[f"{r.name}/eer"] = r.eer
            out.update({f"{r.name}/tar@far={a:g}": t for a, t in zip(r.far_targets, r.tar)})
            out[f"{r.name}/threshold"] = r.threshold
        return out

    def format(self) -> str:
        """The table as plain text (rates in percent)."""
        if not self.rows:
            return "(no verification sets)"
        heads = ["pairs", "accuracy (%)", "EER (%)"]
        heads += [f"TAR@FAR={a:g} (%)" for a in self.rows[0].far_targets] + ["threshold"]
        table = [
            [
                str(r.n_pairs),
                f"{100 * r.accuracy:.2f} +- {100 * r.std:.2f}",
                f"{100 * r.eer:.2f}",
                *(f"{100 * t:.2f}" for t in r.tar),
                f"{r.threshold:.4f}",
            ]
            for r in self.rows
        ]
        name_w = max(3, *(len(r.name) for r in self.rows))
        widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(heads)]
        lines = [f"{'set':<{name_w}}  " + "  ".join(h.rjust(w) for h, w in zip(heads, widths))]
        for r, row in zip(self.rows, table):
            lines.append(
                f"{r.name:<{name_w}}  " + "  ".join(c.rjust(w) for c, w in zip(row, widths))
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


class _Preprocess(nn.Module):
    """uint8 images -> float, scaled to [0, 1] and normalised per channel, then ``model``."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0)
        mean = torch.tensor(self.mean, device=x.device)[:, None, None]
        std = torch.tensor(self.std, device=x.device)[:, None, None]
        return self.model((x - mean) / std)


def _set_paths(paths: Any) -> dict[str, str]:
    items: Iterable[tuple[Any, Any]]
    if isinstance(paths, Mapping):
        items = paths.items()
    elif isinstance(paths, (str, os.PathLike)):
        items = [(Path(paths).stem, paths)]
    else:
        items = [(Path(p).stem, p) for p in paths]
    out: dict[str, str] = {}
    for name, path in items:
        path = os.fspath(path)
        if str(name) in out:
            raise ValueError(f"two verification sets are named {name!r}; pass a mapping of names")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such verification .bin file: {path!r}")
        out[str(name)] = path
    if not out:
        raise ValueError("paths must name at least one .bin file, got none")
    return out


class VerificationSets:
    """Verification ``.bin`` sets evaluated with the LFW protocol, all in one table.

    Parameters
    ----------
    paths : path, sequence of paths, or mapping of name to path
        The ``.bin`` files (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``, ...); a set is named
        by its file name without extension unless a mapping gives names. Missing files raise
        here, before any work.
    image_size : int or (int, int), optional
        Size the model expects; images of another size are resized. By default each set's own
        (uniform) size is used: 112x112 for the InsightFace files.
    mean, std : sequence of 3 floats
        Per-channel normalisation of pixels scaled to ``[0, 1]`` (the training normalisation;
        default ``metricface.data.FACE_MEAN`` / ``FACE_STD``).
    n_folds : int
        Folds of the accuracy protocol (10 as for LFW).
    far_targets : sequence of float
        FAR targets of the TAR@FAR columns.
    batch_size : int
        Images per forward pass (each is also run mirrored with ``flip_tta``).
    num_workers : int
        DataLoader worker processes that decode images.
    keep_decoded : bool
        Keep every set's decoded images after the first evaluation (``2N x 3 x H x W`` bytes
        per set: 452 MB for LFW at 112x112) instead of decoding them again each time.

    Examples
    --------
    >>> import io, pickle, tempfile
    >>> from PIL import Image
    >>> from metricface.evaluation import VerificationSets
    >>> def png(colour):
    ...     buf = io.BytesIO()
    ...     Image.new("RGB", (32, 32), tuple(int(c) for c in colour)).save(buf, format="PNG")
    ...     return buf.getvalue()
    >>> rng = np.random.default_rng(0)
    >>> colours = rng.integers(0, 256, size=(20, 3))
    >>> bins = []
    >>> for i in range(20):                        # 20 pairs: even ones genuine
    ...     other = colours[i] if i % 2 == 0 else colours[(i + 7) % 20]
    ...     bins += [png(colours[i]), png(other)]
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = os.path.join(tmp.name, "toy.bin")
    >>> with open(path, "wb") as f:
    ...     pickle.dump((bins, [i % 2 == 0 for i in range(20)]), f, protocol=4)
    >>> model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())  # colour
    >>> sets = VerificationSets([path], n_folds=5, far_targets=[0.1])
    >>> table = sets.evaluate(model)
    >>> table["toy"].accuracy
    1.0
    >>> print(table.format())
    set  pairs    accuracy (%)  EER (%)  TAR@FAR=0.1 (%)  threshold
    toy     20  100.00 +- 0.00     0.00           100.00     0.9652
    >>> tmp.cleanup()
    """

    def __init__(
        self,
        paths: Any,
        *,
        image_size: int | tuple[int, int] | None = None,
        mean: Sequence[float] = FACE_MEAN,
        std: Sequence[float] = FACE_STD,
        n_folds: int = 10,
        far_targets: Sequence[float] = (1e-3, 1e-2),
        batch_size: int = 256,
        num_workers: int = 0,
        keep_decoded: bool = False,
    ) -> None:
        self.paths = _set_paths(paths)
        check_scalar(n_folds, "n_folds", low=2, integer=True)
        check_scalar(batch_size, "batch_size", low=1, integer=True)
        check_scalar(num_workers, "num_workers", low=0, integer=True)
        self.far_targets = tuple(float(a) for a in np.atleast_1d(np.asarray(far_targets)))
        if not self.far_targets:
            raise ValueError("far_targets must hold at least one FAR target, got none")
        for a in self.far_targets:
            check_scalar(a, "far_targets", low=0.0, high=1.0, low_inclusive=False)
        for name, values in (("mean", mean), ("std", std)):
            if len(values) != 3:
                raise ValueError(f"{name} must have 3 entries (R, G, B), got {values!r}")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {std!r}")
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.n_folds, self.batch_size, self.num_workers = n_folds, batch_size, num_workers
        self.keep_decoded = bool(keep_decoded)
        self._sets: dict[str, VerificationBin] = {}
        self._decoded: dict[str, torch.Tensor] = {}

    @property
    def names(self) -> list[str]:
        """Set names, in evaluation order."""
        return list(self.paths)

    def __repr__(self) -> str:
        return f"VerificationSets({self.names})"

    def dataset(self, name: str) -> VerificationBin:
        """The :class:`~metricface.data.VerificationBin` of set ``name``, read on first use."""
        if name not in self.paths:
            raise KeyError(f"no set named {name!r}; the sets are {self.names}")
        if name not in self._sets:
            self._sets[name] = VerificationBin(
                self.paths[name], image_size=self.image_size, name=name
            )
        return self._sets[name]

    def _batches(self, name: str) -> Iterable[torch.Tensor]:
        if name in self._decoded:
            images = self._decoded[name]
            return (images[i : i + self.batch_size] for i in range(0, len(images), self.batch_size))
        ds = self.dataset(name)
        if self.keep_decoded:
            self._decoded[name] = ds.images()
            return self._batches(name)
        return DataLoader(ds, batch_size=self.batch_size, num_workers=self.num_workers)

    def evaluate(
        self,
        model: nn.Module,
        *,
        device: torch.device | str | None = None,
        amp_dtype: torch.dtype | None = None,
        flip_tta: bool = True,
        progress: bool = False,
    ) -> VerificationTable:
        """Embed every set with ``model`` and score it with the LFW protocol.

        Parameters
        ----------
        model : torch.nn.Module
            Maps normalised images ``(B, 3, H, W)`` to embeddings ``(B, D)``; its train/eval
            modes are restored afterwards (see :func:`~metricface.inference.embed`).
        device : torch.device or str, optional
            Where images go; defaults to the model's device.
        amp_dtype : {torch.bfloat16, torch.float16}, optional
            Autocast dtype of the forward passes.
        flip_tta : bool
            Sum the embeddings of each image and its mirror image before normalising (the
            published protocol).
        progress : bool
            Show a progress bar per set (needs ``tqdm``).

        Returns
        -------
        VerificationTable
            One row per set, in the order the sets were given.
        """
        wrapped = _Preprocess(model, self.mean, self.std)
        rows = []
        for name in self.names:
            issame = self.dataset(name).issame
            emb, _ = embed(
                wrapped,
                self._batches(name),
                device=device,
                amp_dtype=amp_dtype,
                flip_tta=flip_tta,
                normalize=True,
                progress=progress,
            )
            e = emb.double()
            scores = (e[0::2] * e[1::2]).sum(1).numpy()
            rows.append(self._score(name, issame, scores))
        return VerificationTable(tuple(rows))

    def _score(self, name: str, issame: np.ndarray, scores: np.ndarray) -> VerificationResult:
        n_folds = min(self.n_folds, issame.shape[0])
        accuracy, std, thresholds = kfold_verification_accuracy(
            issame, scores, n_folds, return_thresholds=True
        )
        report = verification_report(issame, scores, self.far_targets)
        finite = thresholds[np.isfinite(thresholds)]
        return VerificationResult(
            name=name,
            n_pairs=int(issame.shape[0]),
            accuracy=accuracy,
            std=std,
            eer=report.eer,
            far_targets=report.far_targets,
            tar=report.tar,
            threshold=float(np.median(thresholds)) if finite.size else math.nan,
            fold_thresholds=thresholds,
            scores=scores,
            issame=issame,
        )


def evaluate_ijb(
    features: Any,
    meta: IJBMeta,
    *,
    weights: Any = None,
    normalize_images: bool = False,
    far_targets: Sequence[float] = IJB_FAR_TARGETS,
    fpir: Sequence[float] = (0.01, 0.1),
    ranks: Sequence[int] = (1, 5, 10),
    device: torch.device | str | None = None,
) -> IJBReport:
    """Score an IJB-B/C benchmark from per-image features and its protocol files.

    Parameters
    ----------
    features : torch.Tensor or numpy.ndarray, shape (N, D)
        One feature per line of the media file (``meta.media``), in its order, which is the
        order of the landmark file ``*_name_5pts_score.txt``. For the published protocol use
        flip-summed, *unnormalised* network outputs
        (``embed(..., flip_tta=True, normalize=False)``) and the detector scores as ``weights``.
    meta : IJBMeta
        From :func:`~metricface.data.load_ijb_meta`.
    weights : array-like of float, shape (N,), optional
        Per-image detector scores (the last column of ``*_name_5pts_score.txt``).
    normalize_images, far_targets, fpir, ranks, device
        As in :func:`~metricface.metrics.ijb_report`.

    Returns
    -------
    IJBReport
        1:1 TAR@FAR (when ``meta`` has pairs) and 1:N TPIR@FPIR / rank-k per gallery (when it
        has galleries and probes).

    Raises
    ------
    ValueError
        ``features`` without one row per image of ``meta``, or any check of
        :func:`~metricface.metrics.ijb_report`.
    """
    if not isinstance(meta, IJBMeta):
        raise TypeError(f"meta must be an IJBMeta (load_ijb_meta), got {type(meta).__name__}")
    n = len(meta.media.templates)
    rows = features.shape[0] if hasattr(features, "shape") and len(features.shape) else None
    if rows != n:
        raise ValueError(
            f"features must have one row per image of {meta.files.get('media', 'the media list')} "
            f"({n}), got {rows if rows is not None else type(features).__name__}"
        )
    galleries = meta.galleries if meta.probes is not None else None
    return ijb_report(
        features,
        meta.media.templates,
        meta.media.medias,
        weights=weights,
        normalize_images=normalize_images,
        pairs=meta.pairs,
        galleries=galleries,
        probes=meta.probes if galleries else None,
        far_targets=far_targets,
        fpir=fpir,
        ranks=ranks,
        name=meta.target,
        device=device,
    )
