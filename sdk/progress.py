"""A transfer progress display: a live bar on a terminal, plain lines otherwise.

A live line is redrawn in place with `\\r`, so it must never be wider than the
terminal: a line that wraps leaves its first row behind on every redraw. Each
redraw measures the terminal (it may have been resized) and `bar_line` fits
the line into it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import TextIO

PLAIN_LINE_INTERVAL_SECONDS = 1.0
DEFAULT_COLUMNS = 80
MAX_BAR_CELLS = 30
MIN_BAR_CELLS = 10
ERASE_TO_END = "\x1b[K"


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def terminal_columns(stream: TextIO) -> int:
    """The width of the terminal `stream` writes to: `COLUMNS` when set, else the terminal's own, else 80.

    Not `shutil.get_terminal_size()`, which measures stdout: the bar goes to
    stderr, and stdout is often a pipe (`path=$(ferry download …)`).
    """
    given = os.environ.get("COLUMNS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    try:
        return os.get_terminal_size(stream.fileno()).columns or DEFAULT_COLUMNS
    except (OSError, ValueError):  # not a terminal, or no file descriptor behind the stream
        return DEFAULT_COLUMNS


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def _bar(fraction: float | None, cells: int) -> str:
    if fraction is None:  # the total is unknown
        return "?" * cells
    filled = int(cells * min(max(fraction, 0.0), 1.0))
    return "#" * filled + "-" * (cells - filled)


def bar_line(label: str, fraction: float | None, fields: Sequence[str], columns: int) -> str:
    """`label [####------] field field…`, at most `columns - 1` characters wide.

    The last column stays empty: writing into it makes some terminals wrap.
    What gives way when the line does not fit, in turn: the bar (30 cells down
    to 10), the fields from the last (the first one stays), the label (cut
    with "…"), the bar, and at last the label altogether.
    """
    room = max(columns - 1, 1)
    tails = [" ".join(fields[:count]) for count in range(len(fields), 0, -1)] or [""]
    for tail in tails:
        cells = min(MAX_BAR_CELLS, room - len(label) - _around_the_bar(tail))
        if cells >= MIN_BAR_CELLS:
            return _compose(label, _bar(fraction, cells), tail)
    tail = tails[-1]
    label_room = room - MIN_BAR_CELLS - _around_the_bar(tail)
    if label_room >= 2:
        return _compose(_shorten(label, label_room), _bar(fraction, MIN_BAR_CELLS), tail)
    label_room = room - len(tail) - 1
    if tail and label_room >= 2:
        return f"{_shorten(label, label_room)} {tail}"
    return _shorten(tail or label, room)


def _around_the_bar(tail: str) -> int:
    return len(" []") + (len(tail) + 1 if tail else 0)


def _compose(label: str, bar: str, tail: str) -> str:
    return f"{label} [{bar}]" + (f" {tail}" if tail else "")


class ProgressDisplay:
    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self._last_plain = 0.0
        self._bar_shown = False

    def update(self, done: int, total: int | None, rate: float) -> None:
        eta = f"ETA {max(0.0, (total - done) / rate):.0f}s" if total and rate > 0 else ""
        amount = f"{human_bytes(done)}/{human_bytes(total)}" if total else human_bytes(done)
        speed = f"{human_bytes(rate)}/s"
        if self.live:
            fields = [amount, speed, eta] if eta else [amount, speed]
            line = bar_line(self.label, done / total if total else None, fields, terminal_columns(self.stream))
            self.stream.write(f"\r{line}{ERASE_TO_END}")
            self.stream.flush()
            self._bar_shown = True
        elif time.monotonic() - self._last_plain >= PLAIN_LINE_INTERVAL_SECONDS or (total and done >= total):
            self._last_plain = time.monotonic()
            self.stream.write(f"{self.label}: {amount} {speed} {eta}".rstrip() + "\n")

    def finish(self) -> None:
        """Leave the bar, if one was drawn, on its line and the cursor on the next."""
        if self._bar_shown:
            self.stream.write("\n")
            self.stream.flush()
            self._bar_shown = False
