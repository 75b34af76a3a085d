"""A transfer progress display: a live bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

PLAIN_LINE_INTERVAL_SECONDS = 1.0


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


class ProgressDisplay:
    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.width = width
        self._last_plain = 0.0

    def update(self, done: int, total: int | None, rate: float) -> None:
        eta = f"ETA {max(0.0, (total - done) / rate):.0f}s" if total and rate > 0 else ""
        amount = f"{human_bytes(done)}/{human_bytes(total)}" if total else human_bytes(done)
        speed = f"{human_bytes(rate)}/s"
        if self.live:
            filled = int(self.width * done / total) if total else 0
            bar = "#" * filled + "-" * (self.width - filled) if total else "?" * self.width
            line = f"\r{self.label} [{bar}] {amount} {speed} {eta}".rstrip()
            self.stream.write(line.ljust(80))
            self.stream.flush()
        elif time.monotonic() - self._last_plain >= PLAIN_LINE_INTERVAL_SECONDS or (total and done >= total):
            self._last_plain = time.monotonic()
            self.stream.write(f"{self.label}: {amount} {speed} {eta}".rstrip() + "\n")

    def finish(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()
