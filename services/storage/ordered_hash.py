"""The sha256 of a multipart upload's whole, computed from parts that arrive in any order.

A part is hashed as soon as every part before it has been: the part that is
next in line is read on arrival, one that runs ahead of the line is *held*
(hard-linked, else copied, into a holding folder) until its turn comes. The
caller's file may be deleted once `add` returns.

Anything that would make the digest doubtful *spoils* it rather than risk a
wrong hash: a part sent again after it was hashed (its bytes may differ, and
only the newest copy is in the whole), held parts past the byte cap, a part
that could not be read or held. A spoiled or mismatched hasher answers None
and the caller hashes the whole some other way.

`add` blocks on file I/O and hashing: call it from a worker thread. Several
threads may `add` to one hasher at once; a lock guards its state, and one
thread at a time (the one holding `_hashing`) feeds the digest, in part order,
outside the lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ferry.sizes import MIB

log = logging.getLogger(__name__)

READ_BLOCK = MIB
MAX_HELD_BYTES = 512 * MIB  # per upload: beyond this, re-reading the whole beats filling the disk


def bare_etag(etag: str) -> str:
    """S3 quotes etags in headers; clients may hand them back with or without the quotes."""
    return etag.strip('"')


@dataclass(frozen=True)
class _Part:
    number: int
    path: Path
    etag: str
    size: int
    held: bool  # `path` is our copy in the holding folder, deleted once hashed


class OrderedSha256:
    def __init__(self, holding: Path | None, *, max_held_bytes: int = MAX_HELD_BYTES) -> None:
        """`holding`: the folder, all this hasher's own, for parts that arrive early; None holds nothing."""
        self.holding = holding
        self._max_held_bytes = max_held_bytes
        self._lock = threading.Lock()
        self._digest = hashlib.sha256()
        self._size = 0
        self._next = 1  # the lowest part number not yet hashed (nor being hashed)
        self._hashed: dict[int, str] = {}  # part number → etag, for every part below `_next`
        self._held: dict[int, _Part] = {}
        self._held_bytes = 0  # held parts, plus those being linked or copied in
        self._hashing = False  # a thread is feeding the digest; only it touches `_digest`
        self._spoiled = False

    @property
    def spoiled(self) -> bool:
        return self._spoiled

    def add(self, part_number: int, path: Path, etag: str) -> None:
        """Take part `part_number` (the file at `path`, stored with `etag`); never raises for I/O: spoils instead."""
        part: _Part | None = None
        try:
            size = os.stat(path).st_size
            with self._lock:
                if self._refuses(part_number):
                    return
                if part_number == self._next and not self._hashing:
                    part = self._start_hashing(_Part(part_number, path, etag, size, held=False))
                elif not self._reserve(part_number, size):
                    return
            if part is None:
                part = self._hold(_Part(part_number, path, etag, size, held=False))
            while part is not None:
                self._hash(part)
                part = self._hashed_one()
        except OSError as error:
            with self._lock:
                if part is not None and part.held:
                    part.path.unlink(missing_ok=True)
                self._spoil(f"part {part.number if part else part_number}: {error}")

    def sha256_of(self, parts: Sequence[tuple[int, str]], size: int) -> str | None:
        """The whole's sha256 if it is exactly `parts` (number, etag), totalling `size` bytes; else None."""
        listed = sorted(parts)
        with self._lock:
            if self._spoiled or self._hashing or self._held or self._held_bytes:
                return None
            if [number for number, _ in listed] != list(range(1, len(self._hashed) + 1)):
                return None
            if any(bare_etag(etag) != bare_etag(self._hashed[number]) for number, etag in listed):
                return None
            if size != self._size:
                return None
            return self._digest.hexdigest()

    def discard(self) -> None:
        """Done with this upload: free the held parts. Later `add`s are ignored."""
        with self._lock:
            self._spoiled = True
            self._free_held()

    # -- under the lock ----------------------------------------------------------------

    def _refuses(self, part_number: int) -> bool:
        if self._spoiled:
            return True
        if part_number < self._next:
            self._spoil(f"part {part_number} was sent again after it was hashed")
            return True
        return False

    def _start_hashing(self, part: _Part) -> _Part:
        # Claimed now, so that a re-send arriving while it is hashed spoils the digest.
        self._hashing = True
        self._hashed[part.number] = part.etag
        self._next = part.number + 1
        return part

    def _reserve(self, part_number: int, size: int) -> bool:
        if self.holding is None:
            self._spoil(f"part {part_number} arrived ahead of part {self._next}, with nowhere to hold it")
            return False
        if self._held_bytes + size > self._max_held_bytes:
            self._spoil(f"holding part {part_number} would pass the {self._max_held_bytes}-byte cap")
            return False
        self._held_bytes += size
        return True

    def _spoil(self, why: str) -> None:
        if not self._spoiled:
            log.info("ordered sha256 given up, the whole will be re-read: %s", why)
        self._spoiled = True
        self._free_held()

    def _free_held(self) -> None:
        for part in self._held.values():
            part.path.unlink(missing_ok=True)
        self._held.clear()
        self._held_bytes = 0
        self._remove_holding_if_empty()

    def _remove_holding_if_empty(self) -> None:
        if self.holding is not None:
            with contextlib.suppress(OSError):  # absent, or a copy is still on its way in (it is removed once it lands)
                self.holding.rmdir()

    # -- outside the lock ----------------------------------------------------------------

    def _hold(self, part: _Part) -> _Part | None:
        """Keep a copy of `part` until its turn; returns the part to hash now if its turn came meanwhile."""
        assert self.holding is not None  # _reserve refused otherwise
        self.holding.mkdir(parents=True, exist_ok=True)
        copy = self.holding / f"{part.number}.{secrets.token_hex(8)}.part"
        try:
            os.link(part.path, copy)
        except OSError:
            try:
                shutil.copyfile(part.path, copy)  # another filesystem, or no hard links there
            except OSError:
                copy.unlink(missing_ok=True)
                raise
        held = _Part(part.number, copy, part.etag, part.size, held=True)
        with self._lock:
            if self._spoiled or part.number < self._next:
                # Spoiled, or a concurrent send of the same part got hashed first.
                copy.unlink(missing_ok=True)
                self._refuses(part.number)
                self._remove_holding_if_empty()
                return None
            replaced = self._held.pop(part.number, None)
            if replaced is not None:  # a re-send of a part still waiting: the newest copy is the part
                replaced.path.unlink(missing_ok=True)
                self._held_bytes -= replaced.size
            self._held[part.number] = held
            if self._hashing or part.number != self._next:
                return None
            return self._take_held_next()

    def _take_held_next(self) -> _Part | None:
        """Under the lock: the held part that is next in line, claimed for hashing, if there is one."""
        following = self._held.pop(self._next, None)
        if following is None:
            self._hashing = False
            return None
        self._held_bytes -= following.size
        return self._start_hashing(following)

    def _hash(self, part: _Part) -> None:
        # Only the thread that set `_hashing` gets here, so the digest sees parts one at a time, in order.
        hashed = 0
        with open(part.path, "rb") as file:
            while block := file.read(READ_BLOCK):
                self._digest.update(block)
                hashed += len(block)
        if part.held:
            part.path.unlink(missing_ok=True)
        with self._lock:
            self._size += hashed

    def _hashed_one(self) -> _Part | None:
        """After a part is hashed: the next one to hash, if it is already held."""
        with self._lock:
            if self._spoiled:
                self._hashing = False
                self._remove_holding_if_empty()  # the part just hashed may have been the last one in it
                return None
            return self._take_held_next()
