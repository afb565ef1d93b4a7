"""Progress of long work: a tqdm bar on a terminal, logged lines everywhere else.

A search sent to a file (``nohup``, a cluster job's log) must still say how far it is, so when stderr is not a
terminal every long loop logs one line through ``logging`` (logger ``segnas.progress``) at a steady interval:
``training: 120/600 steps (20%), loss 0.412, elapsed 1m02s, ETA 4m08s``. The interval is
``SEGNAS_PROGRESS_SECONDS`` (default 30 s); the first and the last item are always logged. ``segnas --quiet``
(the ``segnas`` logger at WARNING) silences both the bars and the lines; ``enabled=False`` (the API's
``show_progress=False``) silences one loop.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
log = logging.getLogger("segnas.progress")

DEFAULT_INTERVAL_SECONDS = 30.0


def configure_logging(quiet: bool = False) -> None:
    """The library's INFO messages (progress lines among them) on stderr, from rank 0 only (other ranks, and
    ``quiet``, show warnings and errors). The ``segnas`` command calls it; so do scripts that run long work."""
    from segnas.utils.distributed import is_main

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("segnas")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO if is_main() and not quiet else logging.WARNING)
    logger.propagate = False


def on_terminal() -> bool:
    """Whether stderr is a terminal (bars are drawn there; anywhere else they would fill files with ``\\r``)."""
    return sys.stderr.isatty()


def quiet() -> bool:
    """Whether progress is silenced: the ``segnas`` logger set above INFO (``segnas --quiet``)."""
    return logging.getLogger("segnas").level > logging.INFO


def format_seconds(seconds: float) -> str:
    """``75.3`` -> ``1m15s``; ``3725`` -> ``1h02m05s``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Progress over ``total`` items: ``update``, ``set_postfix`` and ``close``, like a tqdm bar.

    On a terminal it is a tqdm bar; elsewhere a logged line every ``interval`` seconds (and at the first and
    last item) with the count, the total, the postfix values (loss, Dice), elapsed time and ETA.
    """

    def __init__(self, total: int | None, desc: str, initial: int = 0, enabled: bool = True, unit: str = "it",
                 interval: float | None = None):
        active = enabled and not quiet()
        self.bar = tqdm(total=total, desc=desc, initial=initial, unit=unit, dynamic_ncols=True) \
            if active and on_terminal() else None
        self.lines = active and self.bar is None  # shown where logging is configured (the CLI configures it)
        self.total, self.desc, self.unit = total, desc, unit
        self.count = self.initial = initial
        self.interval = float(os.environ.get("SEGNAS_PROGRESS_SECONDS", DEFAULT_INTERVAL_SECONDS)) \
            if interval is None else interval
        self.postfix: dict[str, Any] = {}
        self.started = time.perf_counter()
        self.last_logged: float | None = None
        self.logged_count = initial

    def update(self, n: int = 1) -> None:
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.lines:
            now = time.perf_counter()
            if self.last_logged is None or now - self.last_logged >= self.interval or self.count == self.total:
                self._log_line(now)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.lines and self.count != self.logged_count:
            self._log_line(time.perf_counter())

    def line(self, now: float) -> str:
        """The logged line: count/total (percent), postfix, elapsed and ETA (from this run's own rate)."""
        elapsed = now - self.started
        parts = [f"{self.count}/{self.total} {self.unit}" if self.total else f"{self.count} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.count / self.total:.0f}%)"
        parts += [f"{key} {value}" for key, value in self.postfix.items()]
        parts.append(f"elapsed {format_seconds(elapsed)}")
        done = self.count - self.initial
        if self.total and done > 0 and self.count < self.total:
            parts.append(f"ETA {format_seconds(elapsed / done * (self.total - self.count))}")
        return f"{self.desc}: " + ", ".join(parts)

    def _log_line(self, now: float) -> None:
        log.info(self.line(now))
        self.last_logged, self.logged_count = now, self.count


def progress(items: Iterable[T], desc: str, unit: str = "it", enabled: bool = True) -> Iterator[T]:
    """Iterate ``items`` with a :class:`Progress` (its total from ``len(items)`` where there is one)."""
    total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
    reporter = Progress(total, desc, enabled=enabled, unit=unit)
    try:
        for item in items:
            yield item
            reporter.update(1)
    finally:
        reporter.close()


def progress_bar(total: int, desc: str, initial: int = 0, enabled: bool = True, unit: str = "it") -> Progress:
    """A :class:`Progress` over ``total`` items, for loops that update it by hand (the trainer)."""
    return Progress(total, desc, initial=initial, enabled=enabled, unit=unit)
