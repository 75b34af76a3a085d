"""`ferry serve` tunes glibc's malloc to keep freed buffers, unless the operator tuned it already."""

from __future__ import annotations

import platform

import pytest

from ferry.services.memory import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_is_told_to_keep_freed_memory(monkeypatch):
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    assert keep_freed_memory() is True


@pytest.mark.parametrize("variable", ["MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"])
def test_an_operators_own_tuning_is_left_alone(monkeypatch, variable):
    monkeypatch.setenv(variable, "1048576" if variable.startswith("MALLOC") else "glibc.malloc.trim_threshold=1048576")
    assert keep_freed_memory() is False
