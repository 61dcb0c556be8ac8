"""Progress of long work: a tqdm bar in a terminal, plain periodic lines anywhere else.

A bar redrawn with carriage returns turns a redirected log (a cluster job, ``nohup``, CI) into
megabytes of redraws. :func:`progress` gives the bar only when standard error is a terminal;
otherwise :class:`LineProgress` writes one line per ~5 % of the work (and at least every
``PLAIN_EVERY_S`` seconds) with the count, rate, ETA and the latest postfix values, and a last line
when the work ends.

:func:`set_verbosity` is what ``partialseg --quiet`` / ``--verbose`` set: quiet turns progress and
informational messages off (warnings and errors stay), verbose also copies partialseg's log lines
(``RUN/train.log``: validation scores, cache waits, IPnP rounds) to standard error.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

#: the longest a plain progress log stays silent while work goes on
PLAIN_EVERY_S = 60.0

QUIET, NORMAL, VERBOSE = -1, 0, 1
_verbosity = NORMAL
_stderr_handler: logging.Handler | None = None


def set_verbosity(level: int) -> None:
    """``QUIET`` (-1), ``NORMAL`` (0) or ``VERBOSE`` (1) for this process."""
    global _verbosity, _stderr_handler
    _verbosity = max(QUIET, min(VERBOSE, int(level)))
    logger = logging.getLogger("partialseg")
    if _stderr_handler is not None:
        logger.removeHandler(_stderr_handler)
        logger.setLevel(logging.NOTSET)
        _stderr_handler = None
    if _verbosity >= VERBOSE:
        _stderr_handler = logging.StreamHandler(sys.stderr)
        _stderr_handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(_stderr_handler)
        logger.setLevel(logging.DEBUG)


def verbosity() -> int:
    return _verbosity


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60:02d}:{rem % 60:02d}"


class LineProgress:
    """tqdm's small interface (iteration, ``update``, ``set_postfix``, ``close``, context manager) as
    plain lines on a stream."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: int | None = None, initial: int = 0,
                 desc: str = "", unit: str = "it", stream: TextIO | None = None, every_s: float = PLAIN_EVERY_S) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.start_n = total, initial, initial
        self.desc, self.unit = desc, unit
        self.stream = stream
        self.every_s = every_s
        self.step = max(1, (total or 0) // 20)
        self.t0 = self.last_t = time.monotonic()
        self.last_n = initial
        self.postfix: dict[str, Any] = {}
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.n - self.last_n >= self.step or now - self.last_t >= self.every_s or (self.total and self.n >= self.total):
            self._line(now)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n != self.last_n or self.n == self.start_n:
                self._line(time.monotonic())

    def _line(self, now: float) -> None:
        self.last_n, self.last_t = self.n, now
        done = self.n - self.start_n
        elapsed = now - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}s"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:.2f} {self.unit}/s" if rate >= 1 or rate == 0 else f"{1 / rate:.1f} s/{self.unit}")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {_clock((self.total - self.n) / rate)}")
        parts.append(f"elapsed {_clock(elapsed)}")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        print(", ".join(parts), file=self.stream or sys.stderr, flush=True)


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, initial: int = 0, desc: str = "",
             unit: str = "it", enabled: bool = True, leave: bool = True) -> Any:
    """A tqdm bar in a terminal, :class:`LineProgress` when standard error is redirected, or nothing
    (``enabled=False`` or :func:`set_verbosity` quiet: the iterable itself, or a silent tqdm for
    ``update`` calls)."""
    from tqdm.auto import tqdm

    if not enabled or _verbosity <= QUIET:
        return tqdm(iterable, total=total, initial=initial, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)
    return LineProgress(iterable, total=total, initial=initial, desc=desc, unit=unit)


__all__ = ["NORMAL", "PLAIN_EVERY_S", "QUIET", "VERBOSE", "LineProgress", "progress", "set_verbosity", "verbosity"]
