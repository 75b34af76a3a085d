"""The storage contract every backend (local CDN dir, S3 bucket) and the fallback chain fulfil.

Failures come in three kinds, and the chain treats each differently:
`TransientStorageError` (connection refused, 5xx, throttling) is retried with
backoff; `Unavailable` or `ResourceExhausted` from a backend (missing bucket,
denied credentials, full disk) means that backend cannot take the write now,
so the chain falls back at once; any other `FerryError` (a bad name, an
unknown upload) is the request's fault and would fail everywhere alike.

Backends never consume the file they are handed: they link or copy it, and
the caller deletes it afterwards. A failed attempt therefore leaves the file
intact for the next attempt or the next backend.
"""

from __future__ import annotations

import abc
import base64
import hashlib
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ferry.errors import InvalidArgument
from ferry.file_names import is_safe_file_name
from ferry.sizes import MIB

# S3's rules, enforced by every backend so that a client which works against
# local storage keeps working when the chain lands it on S3.
MIN_PART_SIZE = 5 * MIB  # every part but the last
MAX_PART_NUMBER = 10_000
# The longest lifetime an object may ask for. Longer ones are refused, not clamped: a caller asking for
# 10^30 seconds is mistaken about the unit or the field, and datetime ends at year 9999 (timedelta
# overflows past 10^9 days). An S3 object's presigned URL still lasts at most 7 days (s3.py).
MAX_EXPIRES_IN_SECONDS = 100 * 365 * 24 * 3600

# What a backend reads the time from when it counts an object's lifetime (UTC, timezone-aware). The wall
# clock unless a test hands in one it turns itself, so expiry is tested without waiting for it.
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class StoredObject:
    url: str  # what users open
    key: str  # backend-specific object id
    file_name: str
    content_type: str
    size: int
    sha256: str  # lowercase hex
    expires_at: datetime | None  # UTC
    backend: str  # "local" or "s3://bucket/prefix"


@dataclass(frozen=True)
class NewObject:
    """What an object about to be stored is called and how long it lives; refused INVALID_ARGUMENT when made
    with a name no backend stores, a lifetime none keeps, or an id not shaped like one."""

    file_name: str
    content_type: str
    expires_in: int | None = None  # seconds from when it is stored; None keeps it forever
    # From `keyed_object_id`: stored under that id, replacing whole the object already there, if any.
    # None: under a fresh random id.
    object_id: str | None = None

    def __post_init__(self) -> None:
        check_file_name(self.file_name)
        if self.expires_in is not None:
            check_expires_in(self.expires_in)
        check_object_id(self.object_id)


class TransientStorageError(Exception):
    """A failure worth retrying on the same backend: connection refused, 5xx, throttling."""


class Storage(abc.ABC):
    name: str

    @abc.abstractmethod
    async def put_file(self, path: Path, new: NewObject, sha256: str) -> StoredObject:
        """Store the finished file at `path` as `new` (left in place: the caller deletes it)."""

    @abc.abstractmethod
    async def put_bytes(self, data: bytes, new: NewObject) -> StoredObject:
        """Store `data`, a file already in memory (an encoded output), hashing it on the way: one worker-thread trip."""

    @abc.abstractmethod
    async def create_multipart(self, *, file_name: str, content_type: str, expires_in: int | None) -> str:
        """Start a multipart upload and return its id; the object's lifetime counts from completion."""

    @abc.abstractmethod
    async def put_part(self, upload_id: str, part_number: int, path: Path) -> str:
        """Store one part and return its etag; parts may come in any order, and a re-sent part replaces the old."""

    @abc.abstractmethod
    async def complete_multipart(self, upload_id: str, parts: Sequence[tuple[int, str]]) -> StoredObject:
        """Assemble the named parts in part-number order; the sha256 is of the assembled whole."""

    @abc.abstractmethod
    async def abort_multipart(self, upload_id: str) -> None:
        """Drop the upload and its parts. Aborting an unknown or finished upload is not an error."""

    @abc.abstractmethod
    async def sweep(self, now: datetime) -> int:
        """Delete expired objects and idle multipart uploads; return how many were removed."""

    @abc.abstractmethod
    async def close(self) -> None: ...


# What `new_object_id` and `keyed_object_id` make: 22 URL-safe characters (128 bits).
OBJECT_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{22}")


def new_object_id() -> str:
    """A fresh object id: 128 random bits, URL-safe. The id is in the object's URL, which is its capability."""
    return secrets.token_urlsafe(16)


def keyed_object_id(key: str) -> str:
    """The object id an output key stands for, in the shape of `new_object_id`'s: the same key, the same id.

    An Encode that carries a key (the runner's: request id and output field) stores under this id, so running
    a request again after its replica died replaces its outputs rather than leaving the first run's behind.
    Hashed, so the id reveals nothing of the key; as unguessable as the key is.
    """
    digest = hashlib.sha256(b"ferry-output-key\0" + key.encode()).digest()[:16]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def check_object_id(object_id: str | None) -> str | None:
    """`object_id` if it has an id's shape (it becomes a folder name or a key segment); None stays None."""
    if object_id is not None and not OBJECT_ID_PATTERN.fullmatch(object_id):
        raise InvalidArgument(f"{object_id[:40]!r} is not an object id", reason="BAD_OBJECT_ID")
    return object_id


def check_file_name(file_name: str) -> None:
    """Backends store names verbatim, so only names that are already safe are accepted (the servicer sanitizes)."""
    if not is_safe_file_name(file_name):
        raise InvalidArgument(
            f"{file_name!r} is not a storable file name: no separators, control characters or leading '..', "
            "at most 255 bytes",
            reason="INVALID_FILE_NAME",
        )


def check_expires_in(expires_in: int) -> int:
    """`expires_in` if it is a lifetime storage can keep: 1 second to `MAX_EXPIRES_IN_SECONDS`."""
    if not 1 <= expires_in <= MAX_EXPIRES_IN_SECONDS:
        raise InvalidArgument(
            f"expires_in must be 1 to {MAX_EXPIRES_IN_SECONDS} seconds (100 years), not {str(expires_in)[:24]}",
            reason="INVALID_EXPIRY",
        )
    return expires_in


def expiry(expires_in: int | None, now: datetime | None = None) -> datetime | None:
    """When an object stored now with lifetime `expires_in` seconds expires; None keeps it forever."""
    if expires_in is None:
        return None
    return (now or datetime.now(UTC)) + timedelta(seconds=check_expires_in(expires_in))


def check_parts(parts: Sequence[tuple[int, str]]) -> list[tuple[int, str]]:
    """The completion list in part-number order; each part named once."""
    ordered = sorted(parts)
    numbers = [number for number, _ in ordered]
    if not ordered:
        raise InvalidArgument("a multipart upload needs at least one part", reason="NO_PARTS")
    if len(set(numbers)) != len(numbers):
        raise InvalidArgument("each part number may appear once in the completion list", reason="PART_MISMATCH")
    for number in numbers:
        check_part_number(number)
    return ordered


def check_part_number(part_number: int) -> None:
    if not 1 <= part_number <= MAX_PART_NUMBER:
        raise InvalidArgument(
            f"part numbers run from 1 to {MAX_PART_NUMBER}, not {part_number}", reason="BAD_PART_NUMBER"
        )


def part_too_small(part_number: int, size: int) -> InvalidArgument:
    return InvalidArgument(
        f"part {part_number} has {size} bytes: every part but the last needs at least {MIN_PART_SIZE} (5 MiB)",
        reason="PART_TOO_SMALL",
    )
