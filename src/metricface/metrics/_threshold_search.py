"""Exact counts around one threshold in ``O(n)``: radix selection on the scores' bit patterns.

The EER and TAR@FAR depend on the scores only through the genuine and impostor counts at two
adjacent distinct scores (one ROC segment, or one operating point and the next). Both are found
by a *boundary search*: given a predicate ``P`` of the counts ``G(v) = #(genuine < v)`` and
``I(v) = #(impostor >= v)`` that holds at the lowest score and, once false, stays false at every
higher score, find the highest distinct score ``lo`` where ``P`` holds and the next distinct
score above it, ``hi`` (``+inf`` when there is none).

Algorithm:

1. Map every score to an integer key with the same order (:func:`score_keys`): the bit pattern
   of a float with the magnitude bits of negative numbers flipped, or the integer itself. Ties
   stay ties (``-0.0`` becomes ``+0.0`` first); integer scores are never rounded to floats.
2. Count genuine and impostor keys per bucket of their top bits (``2**bits + 1`` buckets over
   the range of the keys, one ``bincount``). Cumulative counts give ``G`` and ``I`` at the
   lowest key of every bucket, so ``lo`` lies in the highest non-empty bucket where ``P``
   holds.
3. Keep only that bucket's keys, with ``G`` and ``I`` offset by the counts outside it, and
   repeat on the next ``bits`` bits until the buckets are single keys, or sort the keys once
   few are left (one bucket per distinct key). The lowest key of the first non-empty bucket
   above ``lo`` on the deepest level that has one is ``hi``.

For 64-bit scores (float64, int64) the first level counts the keys of their float32 roundings
instead: rounding never reverses an order, so its buckets still split the sorted scores into
runs, at half the memory traffic; the chosen bucket is refined on exact 64-bit keys.

The first level reads every score a few times; later levels read one bucket's scores, so the
work is ``O(n)`` with no sort of the scores. Counts are exact integers: the results equal those
from the sorted scores bit for bit. Host data is processed with numpy; tensors on an
accelerator stay there (torch ops only, no copy of the scores), and only each level's histogram
(``2**bits + 1`` counts) and the last few thousand keys come back to the host, one
synchronisation per level.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from metricface.metrics._checks import Array, host

__all__ = ["Boundary", "ThresholdSearch", "key_to_score", "score_keys"]

# Key bits resolved per histogram level: 2**16 + 1 buckets keep the histogram small next to the
# scores, and float32 keys need two levels.
DEFAULT_BITS = 16
# Levels with at most this many scores sort them: a sort of a few thousand keys costs less
# than a histogram of 2**16 buckets.
DEFAULT_SORT_BELOW = 1 << 12

# On the host, torch's bincount beats numpy's on large int32 input (numpy widens it to int64
# first: 40 vs 100 ms at 1e7 on one core) but has a fixed cost of up to ~30 ms (threads).
_TORCH_BINCOUNT_FROM = 1 << 22

# float dtype -> (bits of its integer view, struct formats of the integer and the float)
_WIDTH = {np.dtype(np.float32): (32, "<i", "<f"), np.dtype(np.float64): (64, "<q", "<d")}
_INT = {32: (np.int32, torch.int32), 64: (np.int64, torch.int64)}

# P(G, I) on int64 arrays of counts
Predicate = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _np_dtype(x: Array) -> np.dtype:
    if isinstance(x, np.ndarray):
        return x.dtype
    return np.dtype(str(x.dtype).removeprefix("torch."))


def score_keys(scores: Array) -> Array:
    """Integer keys ordered as ``scores``: ``key(a) < key(b)`` iff ``a < b``, equal iff ``a == b``.

    Parameters
    ----------
    scores : numpy.ndarray or torch.Tensor of shape (n,)
        Finite float32 or float64, or int64.

    Returns
    -------
    numpy.ndarray or torch.Tensor of shape (n,)
        int32 for float32 scores, int64 otherwise (the scores themselves for int64).
    """
    width = _WIDTH.get(_np_dtype(scores))
    if width is None:
        return scores
    itype = _INT[width[0]][0 if isinstance(scores, np.ndarray) else 1]
    bits = (scores + 0.0).view(itype)  # -0.0 + 0.0 is +0.0: both zeros get one key
    # a negative float's magnitude grows as its value falls: flip the magnitude bits
    keys = bits >> (width[0] - 1)  # 0 or -1 (all ones)
    keys &= (1 << (width[0] - 1)) - 1
    keys ^= bits
    return keys


def key_to_score(key: int, dtype: np.dtype) -> float:
    """The score (as a Python float) whose key is ``key``: the inverse of :func:`score_keys`."""
    width = _WIDTH.get(np.dtype(dtype))
    if width is None:
        return float(key)
    size, int_fmt, float_fmt = width
    bits = key if key >= 0 else key ^ ((1 << (size - 1)) - 1)
    return struct.unpack(float_fmt, struct.pack(int_fmt, bits))[0]


@dataclass(frozen=True)
class Boundary:
    """Counts around the boundary ``lo < hi`` of a search (see the module docstring).

    ``g_below`` / ``g_at``: genuine scores ``< lo`` / ``== lo``; ``i_above`` / ``i_at``:
    impostor scores ``> lo`` / ``== lo``. ``lo`` and ``hi`` are scores (``hi = +inf`` when no
    score exceeds ``lo``); ``hi`` is ``None`` unless the search was asked for it.
    """

    lo: float
    hi: float | None
    g_below: int
    g_at: int
    i_above: int
    i_at: int


class ThresholdSearch:
    """Validated scores of genuine and impostor pairs, ready for boundary searches.

    Building it costs a few passes over the scores (keys, range, one histogram); each
    :meth:`boundary` then costs one more pass plus work on one bucket.

    Parameters
    ----------
    labels : numpy.ndarray or torch.Tensor of shape (n,), bool
        True for genuine pairs.
    scores : numpy.ndarray or torch.Tensor of shape (n,)
        Finite float32/float64 or int64 scores, with the labels' type and device.
    n_pos : int
        Number of genuine pairs.
    bits : int
        Key bits resolved per histogram level.
    sort_below : int
        A level with at most this many scores sorts them instead (one bucket per distinct
        score). The tests set ``bits`` and ``sort_below`` low to exercise deep searches on
        small inputs.
    """

    def __init__(
        self,
        labels: Array,
        scores: Array,
        n_pos: int,
        bits: int = DEFAULT_BITS,
        sort_below: int = DEFAULT_SORT_BELOW,
    ) -> None:
        self.dtype = _np_dtype(scores)
        self.n_pos = int(n_pos)
        self.n_neg = int(scores.shape[0]) - self.n_pos
        self.bits, self.sort_below = int(bits), int(sort_below)
        self.scores = scores
        if self.dtype.itemsize == 8 and scores.shape[0] > self.sort_below:
            # 64-bit scores: bucket float32 roundings first (half the memory traffic; rounding
            # is monotone, so buckets still split the sorted scores), refine on exact keys
            self._top = _level(score_keys(_to_float32(scores)), labels, self.bits, scores)
        else:
            self._top = _level(score_keys(scores), labels, self.bits, sort_below=self.sort_below)

    @property
    def min_score(self) -> float:
        """The lowest score (one pass)."""
        return key_to_score(int(score_keys(self.scores).min()), self.dtype)

    def boundary(self, predicate: Predicate, want_hi: bool = False) -> Boundary:
        """Highest score ``lo`` where ``predicate(G, I)`` holds, and the next score ``hi``.

        ``predicate`` must hold at the lowest score; ``G`` and ``I`` are int64 numpy arrays
        of counts (genuine below, impostor at or above). ``hi`` is looked up only with
        ``want_hi=True``.
        """
        level = self._top
        g_below, i_above = 0, 0
        above: tuple[_Level, _Selection] | None = None  # where hi is: the deepest level with one
        while True:
            sel = level.select(predicate, g_below, i_above)
            g_below, i_above = sel.g_before, sel.i_from - sel.i_at
            if sel.next_bucket is not None:
                above = (level, sel)
            if level.exact:
                break
            level = level.child(sel.bucket, self.bits, self.sort_below)
        hi = None
        if want_hi:
            hi = (
                float("inf")
                if above is None
                else key_to_score(above[0].lowest_key(above[1]), self.dtype)
            )
        return Boundary(
            lo=key_to_score(sel.key, self.dtype),
            hi=hi,
            g_below=g_below,
            g_at=sel.g_at,
            i_above=i_above,
            i_at=sel.i_at,
        )


@dataclass(frozen=True)
class _Selection:
    """A level's chosen bucket, its counts and the next non-empty bucket above it."""

    bucket: int
    next_bucket: int | None
    key: int  # the bucket's key on an exact level
    next_key: int  # the next bucket's key on an exact level
    g_before: int
    i_from: int
    g_at: int
    i_at: int


class _Level:
    """Keys grouped into buckets, with genuine and impostor counts per bucket (on the host).

    With ``shift`` given, bucket ``(key >> shift) - base`` in ``[0, nbins)`` (a histogram,
    ``exact`` when ``shift == 0``); without, the keys are sorted on the host and each distinct
    key is a bucket (``exact``). With ``native``, the keys are those of the float32 roundings
    of the 64-bit scores ``native`` (never ``exact``: buckets are refined on exact keys).
    """

    def __init__(
        self,
        keys: Array,
        labels: Array,
        shift: int | None = None,
        base: int = 0,
        nbins: int = 0,
        native: Array | None = None,
    ) -> None:
        self.keys, self.labels, self.native = keys, labels, native
        self.table: np.ndarray | None = None
        if shift is None:
            keys_h, labels_h = host(keys), host(labels)
            order = np.argsort(keys_h, kind="stable")
            ordered = keys_h[order]
            first = np.empty(ordered.shape[0], dtype=bool)
            first[:1] = True
            np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
            starts = np.flatnonzero(first)
            self.table = ordered[starts]  # the distinct keys, ascending
            counts = np.diff(np.append(starts, ordered.shape[0]))
            self.genuine = np.add.reduceat(labels_h[order].astype(np.int64), starts)
            self.impostor = counts - self.genuine
            self.shift, self.base, self.nbins = 0, 0, int(starts.shape[0])
        else:
            self.shift, self.base, self.nbins = shift, base, nbins
            index = keys >> shift if shift else keys - base
            if shift:
                index -= base
            index <<= 1  # 2 * bucket + label: one bincount counts both classes
            index += labels
            self.index = index
            counts = host(_bincount(index, 2 * nbins)).reshape(nbins, 2)
            self.impostor, self.genuine = counts[:, 0], counts[:, 1]
        self.exact = self.shift == 0 and native is None
        self._filled: np.ndarray | None = None

    def select(self, predicate: Predicate, g_offset: int, i_offset: int) -> _Selection:
        """The highest non-empty bucket where the predicate holds at its lowest key."""
        if self._filled is None:  # once per level: every search on it reuses these
            gen, imp = self.genuine, self.impostor
            self._filled = np.flatnonzero((gen + imp) > 0)
            self._g_before = (np.cumsum(gen) - gen)[self._filled]
            self._i_from = imp[::-1].cumsum()[::-1][self._filled]
        filled = self._filled
        holds = np.flatnonzero(predicate(self._g_before + g_offset, self._i_from + i_offset))
        if holds.size == 0:
            raise AssertionError("boundary search: the predicate fails at the lowest score")
        j = int(holds[-1])
        b = int(filled[j])
        nxt = int(filled[j + 1]) if j + 1 < filled.size else None
        if self.table is not None:
            key = int(self.table[b])
            next_key = int(self.table[nxt]) if nxt is not None else 0
        else:
            key, next_key = b + self.base, (nxt or 0) + self.base
        return _Selection(
            bucket=b,
            next_bucket=nxt,
            key=key,
            next_key=next_key,
            g_before=int(self._g_before[j]) + g_offset,
            i_from=int(self._i_from[j]) + i_offset,
            g_at=int(self.genuine[b]),
            i_at=int(self.impostor[b]),
        )

    def _members(self, b: int) -> Array:
        """Mask of the keys in histogram bucket ``b``."""
        return (self.index >= 2 * b) & (self.index <= 2 * b + 1)

    def _exact_keys(self, mask: Array) -> Array:
        """Exact keys of the masked scores (this level's keys may be float32 roundings)."""
        return self.keys[mask] if self.native is None else score_keys(self.native[mask])

    def lowest_key(self, sel: _Selection) -> int:
        """The lowest (exact) key in the bucket ``sel.next_bucket``."""
        if self.exact:
            return sel.next_key
        return int(self._exact_keys(self._members(sel.next_bucket)).min())

    def child(self, b: int, bits: int, sort_below: int) -> _Level:
        """The level of bucket ``b``'s keys alone, resolving their next ``bits`` bits."""
        mask = self._members(b)
        keys, labels = self._exact_keys(mask), self.labels[mask]
        if self.native is not None:  # exact keys now: a fresh range
            return _level(keys, labels, bits, sort_below=sort_below)
        if keys.shape[0] <= sort_below:
            return _Level(keys, labels)
        shift = max(0, self.shift - bits)
        base = (b + self.base) << (self.shift - shift)
        return _Level(keys, labels, shift, base, 1 << (self.shift - shift))


def _bincount(index: Array, size: int) -> Array:
    """Counts of each value of a non-negative int index (its type and device)."""
    if isinstance(index, np.ndarray):
        if index.shape[0] < _TORCH_BINCOUNT_FROM:
            return np.bincount(index, minlength=size)
        index = torch.from_numpy(index)  # no copy; counts int32 without widening it first
    return torch.bincount(index, minlength=size)


def _to_float32(scores: Array) -> Array:
    """float32 roundings of 64-bit scores (beyond float32's range: +-inf, still in order)."""
    if isinstance(scores, np.ndarray):
        with np.errstate(over="ignore"):
            return scores.astype(np.float32)
    return scores.float()


def _level(
    keys: Array, labels: Array, bits: int, native: Array | None = None, sort_below: int = 0
) -> _Level:
    """A level over the whole range of ``keys``: sorted when at most ``sort_below`` keys, else
    a histogram of ``2**bits + 1`` buckets."""
    if keys.shape[0] <= sort_below:
        return _Level(keys, labels)
    if isinstance(keys, np.ndarray):
        lo, hi = int(keys.min()), int(keys.max())
    else:
        lo, hi = torch.stack(torch.aminmax(keys)).tolist()
    shift = max(0, (hi - lo).bit_length() - bits)
    base = lo >> shift
    return _Level(keys, labels, shift, base, (hi >> shift) - base + 1, native)
