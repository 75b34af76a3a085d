"""Local storage: files in a folder the embedded CDN serves, metadata beside it where the CDN cannot reach.

Layout, for `root` = DATA_DIR/files (what `build_storage` passes):

    DATA_DIR/files/<id>/<file_name>                  served at /files/<id>/<file_name>
    DATA_DIR/.ferry/storage/objects/<id>.json        content type, size, sha256, expiry
    DATA_DIR/.ferry/storage/uploads/<upload id>/     upload.json + <n>.<etag>.part

An object exists once its sidecar does: the file is made durable in its own
fresh folder first and the sidecar written last (temp + fsync + `os.replace`),
so the CDN never sees a partial file, and a crash in between leaves an orphan
folder the sweep removes. Ids are `secrets.token_urlsafe(16)` (128 random bits):
the URL is the capability. An Encode with an output key stores under an id
derived from it, replacing what is there: the new file is renamed over the old,
then the sidecar is replaced, one writer per id at a time. Etags sort by the
time the part arrived, so a re-sent part can drop its older copies without
racing a concurrent re-send.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import quote

from ferry.atomic_files import CANNOT_LINK, atomic_write, fsync_folder
from ferry.errors import FerryError, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from ferry.services.downloader.url_prefix import UrlPrefix
from ferry.services.storage.base import (
    MIN_PART_SIZE,
    OBJECT_ID_PATTERN,
    Clock,
    NewObject,
    Storage,
    StoredObject,
    check_file_name,
    check_part_number,
    check_parts,
    expiry,
    new_object_id,
    part_too_small,
    utc_now,
)
from ferry.sizes import MIB

log = logging.getLogger(__name__)
T = TypeVar("T")

ID_PATTERN = OBJECT_ID_PATTERN  # object ids and upload ids alike
ETAG_PATTERN = re.compile(r"[0-9a-f]{32}")
STATE_DIR = Path(".ferry") / "storage"
UPLOAD_RECORD = "upload.json"
TEMP_SUFFIX = ".ferry-tmp"
COPY_BLOCK = MIB


def _new_etag() -> str:
    # Time first, so the newest copy of a part sorts last.
    return f"{time.time_ns():016x}{secrets.token_hex(8)}"


def _replacing(target: Path) -> AbstractContextManager[BinaryIO]:
    """A temp file beside `target` to write; when the block ends it is synced and becomes `target`, whole.

    If the block fails, the temp file goes and `target` is left as it was.
    """
    return atomic_write(target, sync_folder=True, suffix=TEMP_SUFFIX)


STORED_FILE_MODE = 0o444
# Makes an object's file durable at the path it is given; returns its (size, sha256).
Fill = Callable[[Path], tuple[int, str]]


def _publish(path: Path) -> None:
    """Published bytes never change, and downloads of the stack's own URLs hard-link this very file into apps'
    input folders: read-only, an app writing over its input fails instead of changing it (modes do not stop
    root; the README says to treat inputs as read-only)."""
    os.chmod(path, STORED_FILE_MODE)


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive flock on `folder` itself, held for the block: one writer of an object id at a time."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _write_json_atomic(target: Path, record: dict[str, Any]) -> None:
    with _replacing(target) as file:
        file.write(json.dumps(record).encode())


def _place(source: Path, target: Path) -> int:
    """Make `target` a durable copy of `source` (a hard link when possible), appearing whole or not at all."""
    with open(source, "rb") as file:
        os.fsync(file.fileno())
        size = os.fstat(file.fileno()).st_size
    try:
        os.link(source, target)
    except OSError as error:
        if error.errno not in CANNOT_LINK:
            raise
        with _replacing(target) as copy, open(source, "rb") as original:
            shutil.copyfileobj(original, copy, COPY_BLOCK)
        return size
    fsync_folder(target.parent)
    return size


def _write_new(target: Path, data: bytes) -> int:
    """`data` as the new file `target`, durably. No temp name: an object is invisible until its sidecar exists."""
    with open(target, "xb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    fsync_folder(target.parent)
    return len(data)


def _concatenate(sources: Iterable[Path], target: Path) -> tuple[int, str]:
    """Stream `sources` into `target` (atomically), hashing on the way; returns (size, sha256)."""
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(COPY_BLOCK)
    view = memoryview(buffer)
    with _replacing(target) as out:
        for source in sources:
            with open(source, "rb") as part:
                while count := part.readinto(buffer):
                    digest.update(view[:count])
                    out.write(view[:count])
                    size += count
    return size, digest.hexdigest()


def _disk_error(error: OSError) -> FerryError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"local storage is full: {error}", reason="DISK_FULL")
    return Unavailable(f"local storage failed: {error}", reason="STORAGE_ERROR")


async def _on_disk(work: Callable[[], T]) -> T:
    """`work` on a worker thread, its disk failures as gRPC statuses (a full disk is RESOURCE_EXHAUSTED)."""
    try:
        return await asyncio.to_thread(work)
    except OSError as error:
        raise _disk_error(error) from error


def _unknown_upload(upload_id: str) -> NotFound:
    return NotFound(f"no multipart upload {upload_id!r}", reason="UNKNOWN_UPLOAD")


class LocalStorage(Storage):
    name = "local"

    def __init__(
        self,
        root: Path,
        base_url: Callable[[], str],
        multipart_max_age_seconds: float = 24 * 3600,
        *,
        clock: Clock = utc_now,
    ) -> None:
        """`clock`: what lifetimes count from; the CDN serving this storage reads it too, so an object stops
        being served the instant it expires by the same clock."""
        self.root = root
        self.clock = clock
        self.state = root.parent / STATE_DIR
        self.objects = self.state / "objects"
        self.uploads = self.state / "uploads"
        self._base_url = base_url
        self._multipart_max_age = multipart_max_age_seconds
        for folder in (self.root, self.objects, self.uploads):
            folder.mkdir(parents=True, exist_ok=True)

    def url(self, object_id: str, file_name: str) -> str:
        return f"{self._base_url().rstrip('/')}/files/{object_id}/{quote(file_name, safe='')}"

    def path_of(self, stored: StoredObject) -> Path:
        return self.root / stored.key / stored.file_name

    async def find(self, object_id: str, now: datetime) -> StoredObject | None:
        """The live object with this id; None when unknown, malformed or expired (swept or not)."""
        if not ID_PATTERN.fullmatch(object_id):
            return None
        stored = await asyncio.to_thread(self._read_object, object_id)
        if stored is None or (stored.expires_at is not None and stored.expires_at <= now):
            return None
        return stored

    def claims(self, url: str) -> bool:
        """Whether `url` lies under this storage's public base URL: the CDN, not the network, answers for it."""
        return self._rest_of(url) is not None

    async def find_url(self, url: str, now: datetime) -> StoredObject | None:
        """The live object the CDN serves at `url`, by the CDN's own rules; None wherever it would answer 404."""
        rest = self._rest_of(url)
        if rest is None or len(rest) != 3 or rest[0] != "files":
            return None
        stored = await self.find(rest[1], now)
        if stored is None or stored.file_name != rest[2]:
            return None
        return stored

    def _rest_of(self, url: str) -> tuple[str, ...] | None:
        try:
            base = UrlPrefix.parse(self._base_url())
        except ValueError:
            return None  # no public URL yet: the CDN is not listening
        return base.rest(url)

    def _read_object(self, object_id: str) -> StoredObject | None:
        try:
            record = json.loads((self.objects / f"{object_id}.json").read_text(encoding="utf-8"))
            expires_at = record["expires_at"]
            return StoredObject(
                url=self.url(object_id, record["file_name"]),
                key=object_id,
                file_name=record["file_name"],
                content_type=record["content_type"],
                size=record["size"],
                sha256=record["sha256"],
                expires_at=datetime.fromisoformat(expires_at) if expires_at else None,
                backend=self.name,
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("unreadable metadata for local object %s: %s", object_id, error)
            return None

    def _commit_object(
        self, object_id: str, new: NewObject, size: int, sha256: str, expires_at: datetime | None
    ) -> StoredObject:
        record = {
            "file_name": new.file_name,
            "content_type": new.content_type,
            "size": size,
            "sha256": sha256,
            "expires_at": expires_at.isoformat() if expires_at else None,
        }
        _write_json_atomic(self.objects / f"{object_id}.json", record)
        return StoredObject(
            url=self.url(object_id, new.file_name),
            key=object_id,
            file_name=new.file_name,
            content_type=new.content_type,
            size=size,
            sha256=sha256,
            expires_at=expires_at,
            backend=self.name,
        )

    def _create_object(self, fill: Fill, new: NewObject, expires_at: datetime | None) -> StoredObject:
        """The object `new` made (call on a worker thread): `fill(target)` makes its file durable and returns
        (size, sha256), then the sidecar commits it. If anything fails, nothing of it is left.

        With an `object_id` it replaces the object stored under that id, if any (`_replace_object`)."""
        if new.object_id is not None:
            return self._replace_object(new.object_id, fill, new, expires_at)
        object_id = new_object_id()
        folder = self.root / object_id
        try:
            folder.mkdir()
            size, sha256 = fill(folder / new.file_name)
            _publish(folder / new.file_name)
            return self._commit_object(object_id, new, size, sha256, expires_at)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def _replace_object(self, object_id: str, fill: Fill, new: NewObject, expires_at: datetime | None) -> StoredObject:
        """The object under `object_id` made anew: the new file is filled beside the old one and renamed over
        it, then the sidecar is replaced. Writers of one id take turns (a lock on its folder, across processes);
        a file hard-linked out of storage before (an app's input) keeps the bytes it had."""
        folder = self.root / object_id
        folder.mkdir(exist_ok=True)
        with _folder_lock(folder):
            before = self._read_object(object_id)
            staging = folder / f".{secrets.token_hex(8)}{TEMP_SUFFIX}"
            try:
                size, sha256 = fill(staging)
                _publish(staging)
                os.replace(staging, folder / new.file_name)
                fsync_folder(folder)
                stored = self._commit_object(object_id, new, size, sha256, expires_at)
            except BaseException:
                staging.unlink(missing_ok=True)
                if before is None:  # nothing was stored here: leave no folder either
                    shutil.rmtree(folder, ignore_errors=True)
                raise
            if before is not None and before.file_name != new.file_name:
                (folder / before.file_name).unlink(missing_ok=True)
            return stored

    async def put_file(self, path: Path, new: NewObject, sha256: str) -> StoredObject:
        expires_at = expiry(new.expires_in, self.clock())
        return await _on_disk(
            lambda: self._create_object(lambda target: (_place(path, target), sha256), new, expires_at)
        )

    async def put_bytes(self, data: bytes, new: NewObject) -> StoredObject:
        expires_at = expiry(new.expires_in, self.clock())

        def fill(target: Path) -> tuple[int, str]:
            return _write_new(target, data), hashlib.sha256(data).hexdigest()

        return await _on_disk(lambda: self._create_object(fill, new, expires_at))

    async def create_multipart(self, *, file_name: str, content_type: str, expires_in: int | None) -> str:
        check_file_name(file_name)
        expiry(expires_in)  # validated now, counted from completion

        def create() -> str:
            upload_id = new_object_id()
            folder = self.uploads / upload_id
            folder.mkdir()
            record = {"file_name": file_name, "content_type": content_type, "expires_in": expires_in}
            _write_json_atomic(folder / UPLOAD_RECORD, record)
            return upload_id

        return await _on_disk(create)

    def _upload_folder(self, upload_id: str) -> Path:
        folder = self.uploads / upload_id
        if not ID_PATTERN.fullmatch(upload_id) or not folder.is_dir():
            raise _unknown_upload(upload_id)
        return folder

    async def put_part(self, upload_id: str, part_number: int, path: Path) -> str:
        check_part_number(part_number)

        def store() -> str:
            folder = self._upload_folder(upload_id)
            etag = _new_etag()
            try:
                _place(path, folder / f"{part_number}.{etag}.part")
            except FileNotFoundError:
                if not folder.is_dir():  # aborted or completed meanwhile
                    raise _unknown_upload(upload_id) from None
                raise
            for older in folder.glob(f"{part_number}.*.part"):
                if older.name.split(".")[1] < etag:
                    older.unlink(missing_ok=True)
            return etag

        return await _on_disk(store)

    async def complete_multipart(self, upload_id: str, parts: Sequence[tuple[int, str]]) -> StoredObject:
        ordered = check_parts(parts)
        for number, etag in ordered:
            if not ETAG_PATTERN.fullmatch(etag):
                raise InvalidArgument(
                    f"part {number}: {etag!r} is not an etag this server issued", reason="PART_MISMATCH"
                )

        def assemble() -> StoredObject:
            folder = self._upload_folder(upload_id)
            record = json.loads((folder / UPLOAD_RECORD).read_text(encoding="utf-8"))
            sources = [folder / f"{number}.{etag}.part" for number, etag in ordered]
            for index, ((number, etag), source) in enumerate(zip(ordered, sources, strict=True)):
                try:
                    size = source.stat().st_size
                except FileNotFoundError:
                    raise InvalidArgument(
                        f"part {number} with etag {etag} was never stored here, or was replaced by a re-sent part",
                        reason="PART_MISMATCH",
                    ) from None
                if index < len(sources) - 1 and size < MIN_PART_SIZE:
                    raise part_too_small(number, size)
            stored = self._create_object(
                lambda target: _concatenate(sources, target),
                NewObject(record["file_name"], record["content_type"]),
                expires_at=expiry(record["expires_in"], self.clock()),
            )
            shutil.rmtree(folder, ignore_errors=True)
            return stored

        return await _on_disk(assemble)

    async def abort_multipart(self, upload_id: str) -> None:
        if ID_PATTERN.fullmatch(upload_id):
            await asyncio.to_thread(shutil.rmtree, self.uploads / upload_id, True)

    async def sweep(self, now: datetime) -> int:
        return await asyncio.to_thread(self._sweep, now)

    def _sweep(self, now: datetime) -> int:
        removed = 0
        stale_before = now.timestamp() - self._multipart_max_age
        for sidecar in self.objects.glob("*.json"):
            object_id = sidecar.stem
            stored = self._read_object(object_id)
            if stored is not None and stored.expires_at is not None and stored.expires_at <= now:
                sidecar.unlink(missing_ok=True)  # first: the object is gone the moment this is
                shutil.rmtree(self.root / object_id, ignore_errors=True)
                removed += 1
        # Leftovers of crashes: object folders that never got a sidecar, temp files.
        for folder in self.root.iterdir():
            orphan = ID_PATTERN.fullmatch(folder.name) and not (self.objects / f"{folder.name}.json").exists()
            if orphan and _modified_before(folder, stale_before):
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        # A replacement that crashed before its rename leaves its staging file in a live object's folder.
        for temp in [*self.objects.glob(f"*{TEMP_SUFFIX}"), *self.root.glob(f"*/.*{TEMP_SUFFIX}")]:
            if _modified_before(temp, stale_before):
                temp.unlink(missing_ok=True)
        # A folder's mtime moves with every part stored into it: it is the upload's last activity.
        for upload in self.uploads.iterdir():
            if _modified_before(upload, stale_before):
                shutil.rmtree(upload, ignore_errors=True)
                removed += 1
        return removed

    async def close(self) -> None:
        pass


def _modified_before(path: Path, timestamp: float) -> bool:
    try:
        return path.stat().st_mtime < timestamp
    except FileNotFoundError:
        return False
