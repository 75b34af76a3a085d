"""What every benchmark shares: timing, test files, and the one-line report."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

MIB = 1 << 20


def median_seconds(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def alternating_medians(first: Callable[[], object], second: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median seconds of each, run turn about after one untimed warm-up each, so background load hits both alike."""
    first()
    second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for run, into in ((first, times[0]), (second, times[1])):
            began = time.perf_counter()
            run()
            into.append(time.perf_counter() - began)
    return statistics.median(times[0]), statistics.median(times[1])


def write_random_file(path: Path, size: int) -> None:
    """`size` bytes that no filesystem or codec can shortcut (one random MiB, repeated)."""
    block = os.urandom(MIB)
    with open(path, "wb") as f:
        for _ in range(size // MIB):
            f.write(block)
