"""Files that appear whole or not at all: written beside the target under a temp name, synced, then renamed.

Whoever looks at the target's name sees the old file or the finished new one,
never a part, whatever fails or is cancelled: the bytes go to a hidden temp
name in the same folder (a rename within one file system is atomic), are
fsynced, and only then take the target's name — replacing what was there, or
failing if something already is. On failure the temp name is removed.

    with atomic_write(target) as file:
        file.write(data)

`PendingFile` is the same steps for a writer that cannot sit in one `with`
block (writes spread over an event loop's thread hops); `link_into_place` is
the step for a file that exists already and only needs the target's name too.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "CANNOT_LINK",
    "PART_SUFFIX",
    "PendingFile",
    "atomic_write",
    "fsync_folder",
    "link_into_place",
    "temp_beside",
]

# What temp names end in unless their owner sweeps another suffix.
PART_SUFFIX = ".ferry-part"

# A hard link cannot be made across file systems, where the file system has none, or past the link limit.
CANNOT_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})


def temp_beside(target: Path, suffix: str = PART_SUFFIX) -> Path:
    """A fresh hidden name in `target`'s folder: `.<name>.<random><suffix>`."""
    return target.parent / f".{target.name}.{secrets.token_hex(6)}{suffix}"


def fsync_folder(folder: Path) -> None:
    """Make the names in `folder` durable: a rename or a new link survives a crash once this returns."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PendingFile:
    """A new file open for writing under `temp`, until `commit` gives it its target's name or `discard` drops it."""

    def __init__(self, temp: Path) -> None:
        self.temp = temp
        # "x": never write into a file that is already there; the mode is 0o666 less the umask, as any new file.
        self.file: BinaryIO = open(temp, "xb")  # noqa: SIM115 (closed in commit or discard)

    def sync(self) -> None:
        """Flush and fsync the bytes written so far: after `commit`, the file survives a crash whole."""
        self.file.flush()
        os.fsync(self.file.fileno())

    def commit(self, target: Path, *, replace: bool = True, sync_folder: bool = False) -> Path:
        """Close the file and give it `target`'s name (call `sync` first for a file that must survive a crash).

        `replace`: whatever `target` was is replaced; else FileExistsError if something is there, even
        something that appeared while this was written. `sync_folder`: the new name is durable on return.
        """
        self.file.close()
        if replace:
            os.replace(self.temp, target)
        else:
            os.link(self.temp, target)  # unlike a rename, fails if the name is taken
            os.unlink(self.temp)
        if sync_folder:
            fsync_folder(target.parent)
        return target

    def discard(self) -> None:
        """Drop the temp file. Safe in any state, after `commit` too."""
        self.file.close()
        self.temp.unlink(missing_ok=True)


@contextmanager
def atomic_write(
    target: Path,
    *,
    replace: bool = True,
    durable: bool = True,
    sync_folder: bool = False,
    suffix: str = PART_SUFFIX,
) -> Iterator[BinaryIO]:
    """A file to write that becomes `target`, whole, when the block ends; if the block fails, `target` is untouched.

    `replace` and `sync_folder` as for `PendingFile.commit`. `durable=False` skips the fsync, for a file whose
    loss costs only work done again (a cache's bookkeeping): after a crash it may be old, empty or unreadable,
    so its reader treats it as a hint. `suffix` ends the temp name, for an owner that sweeps leftovers.
    """
    pending = PendingFile(temp_beside(target, suffix))
    try:
        yield pending.file
        if durable:
            pending.sync()
        pending.commit(target, replace=replace, sync_folder=sync_folder)
    finally:
        pending.discard()


def link_into_place(source: Path, target: Path, temp: Path) -> None:
    """Make `target` a hard link to `source`, appearing whole: a link named `temp` beside it, then a rename.

    Raises the OSError of `os.link` where no link can be made (its errno in `CANNOT_LINK`): the caller copies.
    """
    os.link(source, temp)
    try:
        os.replace(temp, target)
    finally:
        # Also after success: renaming a link onto another link of the same file does nothing (POSIX),
        # so when `target` already was that file, the temp name is still there.
        temp.unlink(missing_ok=True)
