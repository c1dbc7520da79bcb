"""Progress of long loops that are not training epochs: feature extraction, evaluation,
the tracking example.

On a terminal it is a tqdm bar (erased when done). Off one (a log file, CI), a bar's
carriage returns would fill the log with half lines, so it prints a plain line every
``every`` seconds instead: ``query features: 1200/3368 images (36%), 00:12 left``. A loop
shorter than ``every`` prints nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator

from tqdm import tqdm


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Progress:
    """Progress over ``total`` units of work.

    Args:
        total: units the loop does (None: unknown; the lines then have no time left).
        desc: what is being done (``query features``).
        unit: what is counted (``images``, ``frames``).
        terminal: draw a bar (default: when stderr is a terminal).
        every: seconds between lines off a terminal.
        log: where those lines go (default: stderr, flushed).
        enabled: False: show nothing at all (another process's share of the work).
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        *,
        terminal: bool | None = None,
        every: float = 30.0,
        log: Callable[[str], None] | None = None,
        enabled: bool = True,
    ):
        self.total, self.desc, self.unit, self.every = total, desc, unit, float(every)
        self.log = log or _stderr_line
        self.enabled = enabled
        self.done = 0
        self.start = self.last = time.monotonic()
        show_bar = enabled and (sys.stderr.isatty() if terminal is None else terminal)
        self.bar = (
            tqdm(total=total, desc=desc, unit=f" {unit}", dynamic_ncols=True, leave=False)
            if show_bar
            else None
        )

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if self.enabled and now - self.last >= self.every:
            self.last = now
            self.log(self.line(now - self.start))

    def line(self, elapsed: float) -> str:
        """``desc: done/total unit (pct%), mm:ss left``."""
        if not self.total:
            return f"{self.desc}: {self.done} {self.unit}, {tqdm.format_interval(elapsed)}"
        left = elapsed / max(self.done, 1) * max(self.total - self.done, 0)
        pct = 100 * self.done / self.total
        return (
            f"{self.desc}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), "
            f"{tqdm.format_interval(left)} left"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iterate(
    items: Iterable, desc: str, total: int | None = None, unit: str = "it", **kwargs
) -> Iterator:
    """``items``, one unit each, with a :class:`Progress` (kwargs are its own)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with Progress(total, desc, unit, **kwargs) as progress:
        for item in items:
            yield item
            progress.update()


__all__ = ["Progress", "iterate"]
