"""Progress bars for the long steps (decode, hash, pair search, download, unpack, export, scoring).

Bars go to stderr, never stdout (where data may be written), and only when stderr is a terminal:
a workflow's logs (Snakemake, DVC, CI, a SLURM job's output file) stay free of carriage-return
noise. ``TRAINSET_PROGRESS`` overrides the check: ``1``/``on`` draws bars anyway (to follow a
SLURM log with ``tail -f``), ``0``/``off`` never draws them. Switched off, :func:`bar` hands back
a stand-in that prints nothing and costs a method call per update; ``tqdm`` is not even imported.
Every bar in trainset is made here.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterable, Iterator

ENV = "TRAINSET_PROGRESS"
ON = frozenset({"1", "on", "true", "yes"})
OFF = frozenset({"0", "off", "false", "no"})
MININTERVAL = 0.5
"""Seconds between redraws: a bar never costs more than a couple of writes a second."""


def _terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def enabled() -> bool:
    """Whether bars are drawn: ``TRAINSET_PROGRESS`` when it says on or off, else whether stderr is a terminal."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ON:
        return True
    if value in OFF:
        return False
    return _terminal()


class Quiet:
    """What :func:`bar` returns when bars are off: iterates ``iterable`` untouched, prints nothing."""

    __slots__ = ("_iterable",)

    def __init__(self, iterable: Iterable | None = None):
        self._iterable = iterable

    def __iter__(self) -> Iterator:
        return iter(() if self._iterable is None else self._iterable)

    def __enter__(self) -> Quiet:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: float = 1) -> None:
        return None

    def close(self) -> None:
        return None


@functools.cache
def _tqdm() -> type:
    from tqdm import tqdm  # noqa: PLC0415  (only when a bar is drawn)

    class Bar(tqdm):
        monitor_interval = 0  # no monitor thread: decoders fork worker processes while a bar is open

    return Bar


def bar(iterable: Iterable | None = None, *, total: float | None = None, desc: str, unit: str = "item", show: bool = True):
    """A tqdm bar over ``iterable`` (or one advanced by ``update(n)``), usable as an iterator and a
    context manager; a :class:`Quiet` stand-in when :func:`enabled` says no or ``show`` is False
    (an inner loop whose caller already shows one). ``total`` defaults to ``len(iterable)``."""
    if not (show and enabled()):
        return Quiet(iterable)
    # on a terminal a finished bar is cleared (Snakemake's own lines stay readable); in a log
    # someone forced bars into, the last line, with its count and rate, is kept
    return _tqdm()(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=MININTERVAL,
                        leave=not _terminal(), dynamic_ncols=True)
