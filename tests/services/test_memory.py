"""`ferry serve` tunes glibc's malloc to keep freed buffers, unless the operator tuned it already, and gives
them back when it goes idle or keeps more than a cap."""

from __future__ import annotations

import platform
from collections.abc import Iterator

import pytest

from ferry.services.memory import IdleTrimmer, keep_freed_memory
from tests.harness import wait_for


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_is_told_to_keep_freed_memory(monkeypatch):
    for name in (
        "MALLOC_TRIM_THRESHOLD_",
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TOP_PAD_",
        "MALLOC_ARENA_MAX",
        "GLIBC_TUNABLES",
    ):
        monkeypatch.delenv(name, raising=False)
    assert keep_freed_memory() is True


@pytest.mark.parametrize("variable", ["MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX", "GLIBC_TUNABLES"])
def test_an_operators_own_tuning_is_left_alone(monkeypatch, variable):
    monkeypatch.setenv(variable, "1048576" if variable.startswith("MALLOC") else "glibc.malloc.trim_threshold=1048576")
    assert keep_freed_memory() is False


# -- giving kept memory back: the trimmer against a process the test drives (the seam IdleTrimmer defines) --


class FakeProcess:
    """CPU time that advances while `busy`, kept bytes a trim lowers to `after_trim` (None: it cannot)."""

    def __init__(self) -> None:
        self.busy = False
        self.cpu = 0.0
        self.checks = 0
        self.kept = 0
        self.after_trim: int | None = 0
        self.trims = 0

    def cpu_seconds(self) -> float:
        self.checks += 1
        if self.busy:
            self.cpu += 1.0
        return self.cpu

    def kept_bytes(self) -> int:
        return self.kept

    def trim(self) -> None:
        self.trims += 1
        if self.after_trim is not None:
            self.kept = self.after_trim

    def wait_checks(self, count: int) -> None:
        target = self.checks + count
        wait_for(lambda: self.checks >= target, f"{count} more checks")


@pytest.fixture
def process() -> Iterator[FakeProcess]:
    fake = FakeProcess()
    trimmer = IdleTrimmer(
        fake.trim,
        fake.kept_bytes,
        check_seconds=0.002,
        idle_seconds=0.01,  # five quiet checks
        cap_check_seconds=0.004,  # every second busy check
        kept_cap_bytes=100,
        cpu_seconds=fake.cpu_seconds,
    )
    trimmer.start()
    yield fake
    trimmer.stop()


def test_a_server_that_was_never_busy_is_never_trimmed(process: FakeProcess) -> None:
    process.wait_checks(30)
    assert process.trims == 0


def test_a_server_quiet_for_a_while_after_being_busy_is_trimmed_once(process: FakeProcess) -> None:
    process.busy = True
    process.wait_checks(3)
    process.busy = False

    wait_for(lambda: process.trims == 1, "the idle trim")
    process.wait_checks(30)
    assert process.trims == 1


def test_each_busy_spell_is_followed_by_its_own_trim(process: FakeProcess) -> None:
    for spell in (1, 2, 3):
        process.busy = True
        process.wait_checks(3)
        process.busy = False
        wait_for(lambda spell=spell: process.trims == spell, f"trim {spell}")


def test_while_busy_it_trims_once_more_than_the_cap_is_kept(process: FakeProcess) -> None:
    process.busy = True
    process.kept = 50
    process.wait_checks(20)
    assert process.trims == 0, "under the cap: busy servers keep their memory"

    process.kept = 151
    wait_for(lambda: process.trims == 1, "the trim past the cap")
    process.wait_checks(20)
    assert process.trims == 1


def test_memory_a_trim_cannot_return_does_not_make_it_trim_again_and_again(process: FakeProcess) -> None:
    process.after_trim = None  # Python's own arenas, say: resident, not malloc's to give back
    process.busy = True
    process.kept = 500

    wait_for(lambda: process.trims == 1, "the trim past the cap")
    process.wait_checks(40)
    assert process.trims == 1
