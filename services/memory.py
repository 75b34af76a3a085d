"""Keep freed memory for the next request instead of handing it back to the kernel at once; hand it back
when the server goes idle, or when more than a cap of it is kept.

Every Encode or Upload moves megabytes through short-lived buffers (gRPC
messages, the tensor, the encoded file). glibc's defaults give large freed
blocks back to the kernel, so the next request page-faults the same amount in
again, zero-filled: measured on a 1024² jpeg, page faults were 40% of the
server's CPU, and keeping the memory took the call from 16.6 ms to 9.1 ms.
Blocks up to `MMAP_THRESHOLD` come from the heap, and up to `TRIM_THRESHOLD`
of free heap is kept.

Kept that way, memory was never given back: 20 s of mixed load (16 download
streams, 8 encodes, 2 app runs) took a `ferry serve` from 112 to 564 MiB, and
it stayed there. So a daemon thread watches the process and calls
`malloc_trim(0)`, which hands every free page back, once the process has been
quiet for `IDLE_SECONDS` after being busy, or while busy when the free memory
kept has grown by more than `KEPT_CAP_BYTES` since the last trim. And all
threads share one arena (`ARENA_MAX`): `malloc_trim` cannot shrink the free
top of a thread's own arena (glibc trims only the main arena's top), and those
never reach the trim threshold (their heaps are 64 MiB at most), so with
glibc's arena per thread the same load still left 208–223 MiB after the trim;
with one arena, 129 MiB. One arena cost nothing measurable here: page faults
per 1024² jpeg call 15–33 either way (4570 with glibc's defaults), and eight
concurrent jpeg clients ran 37–47 calls/s against 32–35 with an arena per
thread (2 cores; tcache serves small blocks without the arena's lock).

Anyone who tunes glibc through its own `MALLOC_*` variables keeps their
settings, and nothing here runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 64 << 20  # above this a block is mapped on its own (a whole video, a big upload's buffers)
TRIM_THRESHOLD = 256 << 20
ARENA_MAX = 1
_GLIBC_TUNING = (
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_ARENA_MAX",
    "GLIBC_TUNABLES",
)

CHECK_SECONDS = 0.5
# Less CPU than this share of one core is quiet: an idle `ferry serve` uses about 0.1%.
QUIET_CPU_SHARE = 0.05
IDLE_SECONDS = 2.0
KEPT_CAP_BYTES = 256 << 20
# mallinfo2 walks every free block under the arena's lock: 15-19 ms with 100k of them, so not every check.
CAP_CHECK_SECONDS = 5.0
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

_trimmer_lock = threading.Lock()
_trimmer: IdleTrimmer | None = None


class IdleTrimmer:
    """From a daemon thread, calls `trim` when the process has been quiet a while after being busy, or keeps too much.

    `kept_bytes()` is what the process holds beyond what malloc has handed out (resident memory less
    malloc's in-use bytes). Its level just after a trim is the floor the cap counts from, so memory a
    trim cannot return (Python's own arenas, libraries) does not make it trim again and again.
    """

    def __init__(
        self,
        trim: Callable[[], object],
        kept_bytes: Callable[[], int] | None,
        *,
        check_seconds: float = CHECK_SECONDS,
        idle_seconds: float = IDLE_SECONDS,
        cap_check_seconds: float = CAP_CHECK_SECONDS,
        kept_cap_bytes: int = KEPT_CAP_BYTES,
        cpu_seconds: Callable[[], float] = time.process_time,
    ) -> None:
        self._trim = trim
        self._kept_bytes = kept_bytes
        self._check_seconds = check_seconds
        self._quiet_checks_to_trim = max(1, round(idle_seconds / check_seconds))
        self._checks_per_cap_check = max(1, round(cap_check_seconds / check_seconds))
        self._kept_cap = kept_cap_bytes
        self._cpu_seconds = cpu_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ferry-malloc-trim", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _kept(self) -> int:
        return self._kept_bytes() if self._kept_bytes is not None else 0

    def _watch(self) -> None:
        floor = self._kept()
        cpu = self._cpu_seconds()
        quiet_checks = busy_checks = 0
        busy_since_trim = False
        while not self._stop.wait(self._check_seconds):
            now = self._cpu_seconds()
            quiet = now - cpu < QUIET_CPU_SHARE * self._check_seconds
            cpu = now
            quiet_checks = quiet_checks + 1 if quiet else 0
            busy_checks = 0 if quiet else busy_checks + 1
            busy_since_trim = busy_since_trim or not quiet
            idle = busy_since_trim and quiet_checks >= self._quiet_checks_to_trim
            cap_due = busy_checks > 0 and busy_checks % self._checks_per_cap_check == 0 and self._kept_bytes is not None
            if idle or (cap_due and self._kept() - floor > self._kept_cap):
                self._trim()
                busy_since_trim = False
                floor = self._kept()
                cpu = self._cpu_seconds()  # the trim's own CPU is not load


class _MallInfo2(ctypes.Structure):
    """glibc's `struct mallinfo2` (glibc 2.33+): every field a size_t."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _resident_bytes() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE_SIZE


def _kept_bytes_counter(libc: ctypes.CDLL) -> Callable[[], int] | None:
    """Resident bytes malloc has not handed out, by mallinfo2; None before glibc 2.33 (then only idleness trims)."""
    try:
        mallinfo2 = libc.mallinfo2
    except AttributeError:
        return None
    mallinfo2.restype = _MallInfo2

    def kept_bytes() -> int:
        info = mallinfo2()
        return _resident_bytes() - int(info.uordblks) - int(info.hblkhd)

    return kept_bytes


def keep_freed_memory() -> bool:
    """Apply the settings above where the C library is glibc and start trimming when idle; True when applied."""
    if any(name in os.environ for name in _GLIBC_TUNING):
        return False
    library = ctypes.util.find_library("c")
    if library is None:
        return False
    try:
        libc = ctypes.CDLL(library)
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_ARENA_MAX, ARENA_MAX))
    if not all(mallopt(parameter, value) for parameter, value in settings):
        log.info("could not tune malloc; large requests will page-fault their buffers in each time")
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    _start_trimmer(lambda: malloc_trim(0), _kept_bytes_counter(libc))
    return True


def _start_trimmer(trim: Callable[[], object], kept_bytes: Callable[[], int] | None) -> None:
    """One trimmer per process, however often memory is tuned."""
    global _trimmer
    with _trimmer_lock:
        if _trimmer is None:
            _trimmer = IdleTrimmer(trim, kept_bytes)
            _trimmer.start()
