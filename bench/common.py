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


def write_random_file(path: Path, size: int) -> None:
    """`size` bytes that no filesystem or codec can shortcut (one random MiB, repeated)."""
    block = os.urandom(MIB)
    with open(path, "wb") as f:
        for _ in range(size // MIB):
            f.write(block)
