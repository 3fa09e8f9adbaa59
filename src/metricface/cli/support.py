"""Plumbing the command-line tools share: progress on stderr and the default worker count.

Like every module of :mod:`metricface.cli`, this one imports only the standard library at the
top, so that ``python -m metricface --help`` stays instant.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["Progress", "default_workers"]


def default_workers(limit: int = 32) -> int:
    """The CPU cores this process may run on (its affinity mask on Linux), at most ``limit``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, limit))


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """Progress of a long loop, on stderr.

    On a terminal, a tqdm bar (when tqdm is installed: ``metricface[progress]``); otherwise
    (a log file, a batch job, no tqdm) a line at most every ``every`` seconds, and one at the
    end, such as ``align: 2,048/8,000 images (26%), 310 images/s, 0m19s left``.

    Parameters
    ----------
    total : int
        Items the loop will have done at the end (including ``initial``).
    desc : str
        What is shown before the counts (the tool's name).
    unit : str
        The items, plural (``"images"``).
    enabled : bool
        ``False`` shows nothing (``--no-progress`` / ``--quiet``).
    every : float
        Seconds between two lines without a terminal.
    initial : int
        Items done before this run (a resumed run); the rate counts only this run's.

    Notes
    -----
    The bar is made at the first :meth:`update`, not here: tqdm starts a monitor thread, and
    a tool that forks worker processes should do so before it has threads.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        unit: str = "images",
        enabled: bool = True,
        every: float = 10.0,
        initial: int = 0,
    ) -> None:
        self.total, self.desc, self.unit, self.every = int(total), desc, unit, float(every)
        self.initial = self.done = self.shown = int(initial)
        self.enabled = enabled and self.total > 0
        self.start = self.last = time.monotonic()
        self.bar: Any = None  # None: not made yet; False: lines instead

    def _make_bar(self) -> None:
        self.bar = False
        if sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self.bar = tqdm(
                total=self.total,
                initial=self.initial,
                desc=self.desc,
                unit=self.unit.rstrip("s") or self.unit,
                dynamic_ncols=True,
            )

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items done."""
        self.done += n
        if not self.enabled:
            return
        if self.bar is None:
            self._make_bar()
        if self.bar:
            self.bar.update(n)
        elif time.monotonic() - self.last >= self.every:
            self._line()

    def _line(self) -> None:
        self.last = time.monotonic()
        self.shown = self.done
        rate = (self.done - self.initial) / max(self.last - self.start, 1e-9)
        left = ""
        if 0 < self.done < self.total and rate > 0:
            left = f", {_duration((self.total - self.done) / rate)} left"
        print(
            f"{self.desc}: {self.done:,}/{self.total:,} {self.unit} "
            f"({100 * self.done / self.total:.0f}%), {rate:,.0f} {self.unit}/s{left}",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        """Close the bar, or print the last count if no line showed it yet."""
        if not self.enabled:
            return
        if self.bar:
            self.bar.close()
        elif self.done != self.shown:
            self._line()

    def track(self, items: Iterable[Any]) -> Iterator[Any]:
        """Yield ``items``, counting one per item, and :meth:`close` at the end."""
        try:
            for item in items:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
