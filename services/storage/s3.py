"""S3-compatible storage (AWS, MinIO, R2, …) over boto3, every call in a worker thread.

Objects live at `PREFIX/<id>/<file_name>` with the content type set and
metadata `ferry-sha256` and `ferry-expires-at` (ISO 8601, UTC). URLs are
presigned GETs, valid for the object's lifetime capped at `presign_seconds`
(SigV4 allows 7 days), unless `public_url_base` names where the bucket is
served publicly.

Multipart uploads are real S3 multipart uploads, so S3's rules hold: every
part but the last is at least 5 MiB, part numbers 1 to 10000. The upload id
handed out carries the object key with S3's UploadId, so any replica can take
any part. S3 metadata is fixed when an upload is created, before the object's
hash or completion time exist: a completed upload carries `ferry-expires-in`
instead, its expiry being LastModified (the completion time) plus that.

The whole's sha256 (S3's own SHA-256 checksums of multipart objects are
checksums of part checksums, not the file's hash) is computed while the parts
arrive: each part S3 accepted is fed to the upload's `OrderedSha256`, which
hashes parts in number order and holds early ones in `holding_dir` until their
turn. Completion uses that digest when it covers exactly the completed parts
(numbers 1..n, same etags, same total size). Otherwise (a part re-sent after
it was hashed, held parts past the cap, parts that went to another replica or
to this one before a restart, a completion retried after it got through) the
assembled object is streamed back once and hashed: a re-download of the whole,
slow but always right. Hashers live in this process's memory; completion,
abort and the sweep drop them and their held files.

boto3's own retries are off: the storage chain owns retrying, so one policy
is counted and logged in one place.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import io
import json
import logging
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

import boto3
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config

from ferry.errors import FerryError, InvalidArgument, NotFound, PermissionDenied, Unavailable
from ferry.file_names import is_safe_file_name
from ferry.services.downloader.url_prefix import UrlPrefix
from ferry.services.storage.base import (
    OBJECT_ID_PATTERN,
    Clock,
    NewObject,
    Storage,
    StoredObject,
    TransientStorageError,
    check_file_name,
    check_part_number,
    check_parts,
    expiry,
    new_object_id,
    utc_now,
)
from ferry.services.storage.ordered_hash import MAX_HELD_BYTES, OrderedSha256
from ferry.sizes import MIB

log = logging.getLogger(__name__)
T = TypeVar("T")

SHA256_KEY = "ferry-sha256"
EXPIRES_AT_KEY = "ferry-expires-at"
EXPIRES_IN_KEY = "ferry-expires-in"
READ_BLOCK = MIB
DELETE_BATCH = 1000  # DeleteObjects' limit
# An in-memory file up to boto3's own multipart threshold goes up in one PutObject; a bigger one in parts.
SINGLE_PUT_BYTES = TransferConfig().multipart_threshold
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
}
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}
_KEY_PLACEHOLDER = "ferry-key-placeholder"


# Each part carries a CRC32 that S3 checks on arrival, as boto3's own uploads do:
# corruption on the way is refused, not stored. (moto also assembles such an
# upload in about half the time.) The checksum must come back at completion,
# so it travels inside the etag handed to the client, which treats it as opaque.
PART_CHECKSUM = "CRC32"
PART_CHECKSUM_FIELD = "ChecksumCRC32"
_TOKEN_SEPARATOR = "|"


def _part_token(etag: str, checksum: str | None) -> str:
    return f"{etag}{_TOKEN_SEPARATOR}{checksum}" if checksum else etag


def _completed_part(number: int, token: str) -> dict[str, Any]:
    etag, _, checksum = token.partition(_TOKEN_SEPARATOR)
    part: dict[str, Any] = {"PartNumber": number, "ETag": etag}
    if checksum:
        part[PART_CHECKSUM_FIELD] = checksum
    return part


def _expiry_in(metadata: dict[str, str], last_modified: datetime) -> datetime | None:
    """When an object expires, from its metadata: a fixed time, or a lifetime counted from completion."""
    if EXPIRES_AT_KEY in metadata:
        return datetime.fromisoformat(metadata[EXPIRES_AT_KEY])
    if EXPIRES_IN_KEY in metadata:
        return last_modified.astimezone(UTC) + timedelta(seconds=int(metadata[EXPIRES_IN_KEY]))
    return None


def _object_metadata(sha256: str, expires_at: datetime | None) -> dict[str, str]:
    metadata = {SHA256_KEY: sha256}
    if expires_at is not None:
        metadata[EXPIRES_AT_KEY] = expires_at.isoformat()
    return metadata


def _error_code(error: botocore.exceptions.ClientError) -> tuple[str, int]:
    return error.response.get("Error", {}).get("Code", ""), error.response.get("ResponseMetadata", {}).get(
        "HTTPStatusCode", 0
    )


def _causes(error: BaseException) -> list[BaseException]:
    """The error and what it wraps: boto3's upload_file re-raises client errors as S3UploadFailedError."""
    chain = [error]
    while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None and cause not in chain:
        chain.append(cause)
    return chain


class S3Storage(Storage):
    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        endpoint_url: str | None,
        region: str | None,
        public_url_base: str | None = None,
        presign_seconds: int = 7 * 24 * 3600,
        multipart_max_age_seconds: float = 24 * 3600,
        holding_dir: Path | None = None,
        max_held_bytes_per_upload: int = MAX_HELD_BYTES,
        clock: Clock = utc_now,
    ) -> None:
        """`holding_dir`: a folder of this storage's own where parts that arrive ahead of their turn wait
        to be hashed (on the incoming files' filesystem, so holding is a hard link); None holds nothing,
        so any upload whose parts arrive out of order has its whole re-read at completion.

        `clock`: what lifetimes, presigned URLs and upload activity count from. A completed multipart
        upload's lifetime still counts from S3's own completion time (LastModified)."""
        self.clock = clock
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.name = f"s3://{bucket}/{self.prefix}"
        self._key_prefix = f"{self.prefix}/" if self.prefix else ""
        self._public_url_base = public_url_base.rstrip("/") if public_url_base else None
        self._presign_seconds = presign_seconds
        self._multipart_max_age = timedelta(seconds=multipart_max_age_seconds)
        config = Config(
            retries={"total_max_attempts": 1},
            signature_version="s3v4",  # presigned URLs: SigV4 is what every region accepts
            connect_timeout=10,
            read_timeout=60,
            # Custom endpoints (MinIO, moto, …) take path-style requests; few resolve bucket subdomains.
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        self._session = boto3.session.Session()
        self._client = self._session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        self._presigned_base: UrlPrefix | None = None  # where presigned URLs of this bucket point; see key_of
        # Object metadata never changes, so each object's expiry is looked up (one HEAD) once, not every sweep.
        self._known_expiry: dict[str, datetime | None] = {}
        # Activity this process saw on each S3 upload id. Some S3-compatible
        # stores (moto among them) report a fixed, ancient `Initiated`, which
        # would make every fresh upload look idle to the sweep.
        self._upload_activity: dict[str, datetime] = {}
        # The whole's sha256 as parts arrive, per S3 upload id; worker threads add and drop them.
        self._holding_dir = holding_dir
        self._max_held_bytes = max_held_bytes_per_upload
        self._hashers: dict[str, OrderedSha256] = {}
        self._hashers_lock = threading.Lock()

    # -- calls and their failures ------------------------------------------------

    async def _call(self, what: str, work: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(work)
        except FerryError:
            raise
        except Exception as error:
            translated = self._translate(what, error)
            if translated is error:
                raise
            raise translated from error

    def _translate(self, what: str, error: Exception) -> Exception:
        where = f"{self.name}: {what}"
        for cause in _causes(error):
            if isinstance(cause, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)):
                return TransientStorageError(f"{where}: {cause}")
            if isinstance(cause, botocore.exceptions.NoCredentialsError):
                return Unavailable(f"{where}: no AWS credentials configured", reason="STORAGE_ACCESS_DENIED")
            if isinstance(cause, botocore.exceptions.ClientError):
                return self._client_error(where, cause)
        return error

    def _client_error(self, where: str, error: botocore.exceptions.ClientError) -> Exception:
        code, status = _error_code(error)
        if status >= 500 or code in _TRANSIENT_CODES:
            return TransientStorageError(f"{where}: {error}")
        if code == "NoSuchBucket":
            return Unavailable(f"{where}: bucket {self.bucket!r} does not exist", reason="STORAGE_BUCKET_MISSING")
        if code in _DENIED_CODES:
            return Unavailable(
                f"{where}: S3 denied access ({code}); check the credentials and the bucket policy",
                reason="STORAGE_ACCESS_DENIED",
            )
        if code == "NoSuchUpload":
            return NotFound(f"{where}: no such multipart upload", reason="UNKNOWN_UPLOAD")
        if code == "EntityTooSmall":
            return InvalidArgument(f"{where}: every part but the last needs at least 5 MiB", reason="PART_TOO_SMALL")
        if code in ("InvalidPart", "InvalidPartOrder"):
            return InvalidArgument(f"{where}: a listed part or etag was not uploaded: {error}", reason="PART_MISMATCH")
        return Unavailable(f"{where}: {error}", reason="STORAGE_ERROR")

    # -- objects -----------------------------------------------------------------

    def _new_key(self, file_name: str, object_id: str | None = None) -> str:
        """Where an object goes: under `object_id` (a keyed Encode's, written over what is there) or a fresh one."""
        return f"{self._key_prefix}{object_id or new_object_id()}/{file_name}"

    def _url(self, key: str, expires_at: datetime | None) -> str:
        if self._public_url_base:
            return f"{self._public_url_base}/{quote(key)}"
        lifetime = self._presign_seconds
        if expires_at is not None:
            lifetime = min(lifetime, max(1, int((expires_at - self.clock()).total_seconds())))
        return str(
            self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=lifetime
            )
        )

    def _stored(
        self, key: str, *, content_type: str, size: int, sha256: str, expires_at: datetime | None
    ) -> StoredObject:
        return StoredObject(
            url=self._url(key, expires_at),
            key=key,
            file_name=key.rsplit("/", 1)[1],
            content_type=content_type,
            size=size,
            sha256=sha256,
            expires_at=expires_at,
            backend=self.name,
        )

    async def put_file(self, path: Path, new: NewObject, sha256: str) -> StoredObject:
        expires_at = expiry(new.expires_in, self.clock())
        key = self._new_key(new.file_name, new.object_id)

        def upload() -> StoredObject:
            # upload_file switches to its own parallel multipart upload for big files.
            extra = {"ContentType": new.content_type, "Metadata": _object_metadata(sha256, expires_at)}
            self._client.upload_file(str(path), self.bucket, key, ExtraArgs=extra)
            size = path.stat().st_size
            return self._stored(key, content_type=new.content_type, size=size, sha256=sha256, expires_at=expires_at)

        return await self._call("upload", upload)

    async def put_bytes(self, data: bytes, new: NewObject) -> StoredObject:
        expires_at = expiry(new.expires_in, self.clock())
        key = self._new_key(new.file_name, new.object_id)

        def upload() -> StoredObject:
            sha256 = hashlib.sha256(data).hexdigest()
            extra = {"ContentType": new.content_type, "Metadata": _object_metadata(sha256, expires_at)}
            if len(data) <= SINGLE_PUT_BYTES:
                self._client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)
            else:
                self._client.upload_fileobj(io.BytesIO(data), self.bucket, key, ExtraArgs=extra)
            return self._stored(
                key, content_type=new.content_type, size=len(data), sha256=sha256, expires_at=expires_at
            )

        return await self._call("upload", upload)

    # -- multipart ---------------------------------------------------------------

    def _upload_token(self, key: str, s3_upload_id: str) -> str:
        raw = json.dumps([key, s3_upload_id], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def _parse_upload_token(self, upload_id: str) -> tuple[str, str]:
        try:
            raw = base64.urlsafe_b64decode(upload_id + "=" * (-len(upload_id) % 4))
            key, s3_upload_id = json.loads(raw)
        except (binascii.Error, ValueError, TypeError):
            raise NotFound(f"no multipart upload {upload_id!r}", reason="UNKNOWN_UPLOAD") from None
        if not (isinstance(key, str) and isinstance(s3_upload_id, str) and key.startswith(self._key_prefix)):
            raise NotFound(f"no multipart upload {upload_id!r}", reason="UNKNOWN_UPLOAD")
        return key, s3_upload_id

    async def create_multipart(self, *, file_name: str, content_type: str, expires_in: int | None) -> str:
        check_file_name(file_name)
        expiry(expires_in)  # validated now, counted from completion
        key = self._new_key(file_name)
        metadata = {EXPIRES_IN_KEY: str(expires_in)} if expires_in is not None else {}

        def create() -> str:
            answer = self._client.create_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                ContentType=content_type,
                Metadata=metadata,
                ChecksumAlgorithm=PART_CHECKSUM,
            )
            return str(answer["UploadId"])

        s3_upload_id = await self._call("create multipart upload", create)
        self._upload_activity[s3_upload_id] = self.clock()
        return self._upload_token(key, s3_upload_id)

    async def put_part(self, upload_id: str, part_number: int, path: Path) -> str:
        check_part_number(part_number)
        key, s3_upload_id = self._parse_upload_token(upload_id)
        self._upload_activity[s3_upload_id] = self.clock()

        def upload() -> str:
            with open(path, "rb") as body:
                answer = self._client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=s3_upload_id,
                    PartNumber=part_number,
                    Body=body,
                    ChecksumAlgorithm=PART_CHECKSUM,
                )
            etag = _part_token(str(answer["ETag"]), answer.get(PART_CHECKSUM_FIELD))
            # Only once S3 has the part: a part it refused is no part of the whole.
            self._hasher_for(upload_id, s3_upload_id).add(part_number, path, etag)
            return etag

        return await self._call(f"upload part {part_number}", upload)

    # -- the whole's sha256, as parts arrive -----------------------------------------

    def _hasher_for(self, upload_id: str, s3_upload_id: str) -> OrderedSha256:
        with self._hashers_lock:
            hasher = self._hashers.get(s3_upload_id)
            if hasher is None:
                holding = None
                if self._holding_dir is not None:
                    holding = self._holding_dir / hashlib.sha256(upload_id.encode()).hexdigest()[:32]
                hasher = self._hashers[s3_upload_id] = OrderedSha256(holding, max_held_bytes=self._max_held_bytes)
            return hasher

    def _take_hasher(self, s3_upload_id: str) -> OrderedSha256 | None:
        with self._hashers_lock:
            return self._hashers.pop(s3_upload_id, None)

    def _drop_hasher(self, s3_upload_id: str) -> None:
        """Forget the upload's hasher and free its held parts."""
        hasher = self._take_hasher(s3_upload_id)
        if hasher is not None:
            hasher.discard()

    def _sha256_of_completed(
        self, key: str, s3_upload_id: str, parts: Sequence[tuple[int, str]], size: int, *, by_this_call: bool
    ) -> str:
        hasher = self._take_hasher(s3_upload_id)
        sha256 = None
        # A completion that an earlier try made may have used another parts list: only the bytes can tell.
        if hasher is not None and by_this_call:
            sha256 = hasher.sha256_of(parts, size)
        if hasher is not None:
            hasher.discard()
        if sha256 is None:
            why = "parts hashed here do not make up the completed whole" if hasher else "no parts seen here"
            log.info("%s: reading %s back to hash it (%s)", self.name, key, why)
            sha256 = self._stream_sha256(key)
        return sha256

    async def complete_multipart(self, upload_id: str, parts: Sequence[tuple[int, str]]) -> StoredObject:
        ordered = check_parts(parts)
        key, s3_upload_id = self._parse_upload_token(upload_id)

        def complete() -> StoredObject:
            by_this_call = True
            try:
                self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=s3_upload_id,
                    MultipartUpload={"Parts": [_completed_part(number, token) for number, token in ordered]},
                )
            except botocore.exceptions.ClientError as error:
                # A retried completion whose first try got through: the object is there, finish the job.
                if _error_code(error)[0] != "NoSuchUpload" or not self._exists(key):
                    raise
                by_this_call = False
            head = self._client.head_object(Bucket=self.bucket, Key=key)
            metadata = head.get("Metadata", {})
            expires_at = None
            if EXPIRES_IN_KEY in metadata:
                expires_at = head["LastModified"].astimezone(UTC) + timedelta(seconds=int(metadata[EXPIRES_IN_KEY]))
            size = int(head["ContentLength"])
            return self._stored(
                key,
                content_type=head.get("ContentType", "application/octet-stream"),
                size=size,
                sha256=self._sha256_of_completed(key, s3_upload_id, ordered, size, by_this_call=by_this_call),
                expires_at=expires_at,
            )

        stored = await self._call("complete multipart upload", complete)
        # Only now: a completion S3 refused leaves the upload open, and its activity keeps the sweep off it.
        self._upload_activity.pop(s3_upload_id, None)
        return stored

    def _exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as error:
            if _error_code(error)[1] == 404:
                return False
            raise
        return True

    def _stream_sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
        try:
            for block in body.iter_chunks(READ_BLOCK):
                digest.update(block)
        finally:
            body.close()
        return digest.hexdigest()

    async def abort_multipart(self, upload_id: str) -> None:
        try:
            key, s3_upload_id = self._parse_upload_token(upload_id)
        except NotFound:
            return  # nothing this backend could have started

        def abort() -> None:
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=s3_upload_id)
            except botocore.exceptions.ClientError as error:
                if _error_code(error)[0] != "NoSuchUpload":
                    raise
            self._drop_hasher(s3_upload_id)

        await self._call("abort multipart upload", abort)
        self._upload_activity.pop(s3_upload_id, None)

    # -- upkeep ------------------------------------------------------------------

    async def sweep(self, now: datetime) -> int:
        idle_since = now - self._multipart_max_age
        # Activity older than the max age keeps nothing alive, and uploads that ended have none.
        for s3_upload_id in [upload for upload, at in self._upload_activity.items() if at < idle_since]:
            del self._upload_activity[s3_upload_id]
        await self._call("sweep held parts", lambda: self._sweep_hashers(idle_since))
        expired = await self._call("sweep expired objects", lambda: self._sweep_objects(now))
        stale = await self._call("sweep idle multipart uploads", lambda: self._sweep_uploads(now))
        return expired + stale

    def _sweep_hashers(self, idle_since: datetime) -> None:
        """Drop hashers of uploads idle past the max age or ended (a part that raced the completion makes one);
        delete held parts no hasher of this process knows that are as old (left by a process that died)."""
        with self._hashers_lock:
            idle = [upload for upload in self._hashers if upload not in self._upload_activity]
        for s3_upload_id in idle:
            self._drop_hasher(s3_upload_id)
        if self._holding_dir is None or not self._holding_dir.is_dir():
            return
        with self._hashers_lock:
            live = {hasher.holding for hasher in self._hashers.values()}
        cutoff = idle_since.timestamp()
        for folder in self._holding_dir.iterdir():
            if folder in live:
                continue
            try:
                if folder.stat().st_mtime < cutoff and all(held.stat().st_mtime < cutoff for held in folder.iterdir()):
                    shutil.rmtree(folder)
            except OSError as error:  # gone meanwhile, or in use after all: the next sweep looks again
                log.debug("%s: left %s for the next sweep: %s", self.name, folder, error)

    def _expiry_of(self, key: str, last_modified: datetime) -> datetime | None:
        if key not in self._known_expiry:
            try:
                metadata = self._client.head_object(Bucket=self.bucket, Key=key).get("Metadata", {})
            except botocore.exceptions.ClientError as error:
                if _error_code(error)[1] == 404:
                    return None  # deleted since the listing
                raise
            self._known_expiry[key] = _expiry_in(metadata, last_modified)
        return self._known_expiry[key]

    def _sweep_objects(self, now: datetime) -> int:
        listed: set[str] = set()
        expired: list[str] = []
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key_prefix):
            for entry in page.get("Contents", []):
                listed.add(entry["Key"])
                expires_at = self._expiry_of(entry["Key"], entry["LastModified"])
                if expires_at is not None and expires_at <= now:
                    expired.append(entry["Key"])
        for start in range(0, len(expired), DELETE_BATCH):
            batch = expired[start : start + DELETE_BATCH]
            answer = self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True}
            )
            for failure in answer.get("Errors", []):
                log.warning(
                    "%s: could not delete expired %s: %s", self.name, failure.get("Key"), failure.get("Message")
                )
        self._known_expiry = {
            key: self._known_expiry[key] for key in listed - set(expired) if key in self._known_expiry
        }
        return len(expired)

    def _sweep_uploads(self, now: datetime) -> int:
        idle_since = now - self._multipart_max_age
        removed = 0
        pages = self._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self._key_prefix
        )
        for page in pages:
            for upload in page.get("Uploads", []):
                if upload["Initiated"] >= idle_since or self._last_part_at(upload) >= idle_since:
                    continue
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                self._drop_hasher(upload["UploadId"])
                removed += 1
        return removed

    def _last_part_at(self, upload: dict[str, Any]) -> datetime:
        """S3 lists an upload's start only; its parts show when it last made progress."""
        latest: datetime = max(upload["Initiated"], self._upload_activity.get(upload["UploadId"], upload["Initiated"]))
        pages = self._client.get_paginator("list_parts").paginate(
            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
        )
        for page in pages:
            for part in page.get("Parts", []):
                latest = max(latest, part["LastModified"])
        return latest

    # -- the stack's own URLs, read back ---------------------------------------------

    def key_of(self, url: str, now: datetime) -> str | None:
        """The key of this storage's object that `url` names, when this storage issued `url`: a presigned URL
        its own credentials signed, or a URL under `public_url_base`; None for any other URL, including a
        URL of this bucket signed by someone else or naming a key outside this storage's prefix and layout.

        Raises PermissionDenied for a presigned URL of ours past its expiry, as S3 would refuse it.
        """
        if self._public_url_base is not None:
            rest = UrlPrefix.parse(self._public_url_base).rest(url)
            if rest is not None:
                return self._object_key(rest)
        presigned = self._presigned_prefix()
        rest = presigned.rest(url) if presigned is not None else None
        if rest is None:
            return None
        key = self._object_key(rest)
        if key is None or not self._signed_here(url, now):
            return None
        return key

    def _object_key(self, segments: tuple[str, ...]) -> str | None:
        """The key `segments` spell, if it is one `_new_key` could have made."""
        key = "/".join(segments)
        if not key.startswith(self._key_prefix):
            return None
        object_id, _, file_name = key.removeprefix(self._key_prefix).partition("/")
        if not OBJECT_ID_PATTERN.fullmatch(object_id) or not is_safe_file_name(file_name):
            return None
        return key

    def _presigned_prefix(self) -> UrlPrefix | None:
        if self._presigned_base is None:
            # boto3 builds presigned URLs locally: one for a placeholder key shows where every key goes
            # (path-style or virtual-host, whatever this client does).
            try:
                example = self._client.generate_presigned_url(
                    "get_object", Params={"Bucket": self.bucket, "Key": _KEY_PLACEHOLDER}, ExpiresIn=60
                )
            except botocore.exceptions.BotoCoreError:
                return None  # no credentials: this storage issues no presigned URLs
            self._presigned_base = UrlPrefix.parse(example.split("?", 1)[0].removesuffix(_KEY_PLACEHOLDER))
        return self._presigned_base

    def _signed_here(self, url: str, now: datetime) -> bool:
        """Whether this storage's credentials made `url`'s SigV4 query signature (recomputed, not trusted)."""
        parts = urlsplit(url)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        credentials = self._session.get_credentials()
        if (
            params.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256"
            or "X-Amz-Signature" not in params
            or credentials is None
        ):
            return False
        try:
            region = params["X-Amz-Credential"].split("/")[2]
            lifetime = int(params["X-Amz-Expires"])
            signed_at = datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except (KeyError, IndexError, ValueError, OverflowError):
            return False
        # The query as issued, bar the signature: SigV4 signs it byte for byte.
        unsigned = "&".join(pair for pair in parts.query.split("&") if pair.partition("=")[0] != "X-Amz-Signature")
        request = AWSRequest(method="GET", url=urlunsplit(parts._replace(query=unsigned, fragment="")))
        request.context["timestamp"] = params["X-Amz-Date"]
        signer = S3SigV4QueryAuth(credentials.get_frozen_credentials(), "s3", region, expires=lifetime)
        expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
        if not hmac.compare_digest(expected, params["X-Amz-Signature"]):
            return False
        if signed_at + timedelta(seconds=lifetime) <= now:
            raise PermissionDenied("this presigned URL has expired", reason="URL_EXPIRED")
        return True

    async def find(self, key: str, now: datetime) -> StoredObject | None:
        """The live object at `key` (HeadObject); None when it is missing or has expired, swept or not."""

        def head() -> StoredObject | None:
            try:
                answer = self._client.head_object(Bucket=self.bucket, Key=key)
            except botocore.exceptions.ClientError as error:
                if _error_code(error)[1] == 404:
                    return None
                raise
            metadata = answer.get("Metadata", {})
            expires_at = _expiry_in(metadata, answer["LastModified"])
            if expires_at is not None and expires_at <= now:
                return None
            return StoredObject(
                url=self._url(key, expires_at),
                key=key,
                file_name=key.rsplit("/", 1)[1],
                content_type=answer.get("ContentType", "application/octet-stream"),
                size=int(answer["ContentLength"]),
                sha256=metadata.get(SHA256_KEY, ""),  # multipart objects carry none
                expires_at=expires_at,
                backend=self.name,
            )

        return await self._call("look up an object", head)

    async def read(self, key: str) -> AsyncIterator[bytes]:
        """The bytes of the object at `key`, block by block (GetObject); NotFound if it is gone."""

        def get() -> Any:
            try:
                return self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
            except botocore.exceptions.ClientError as error:
                if _error_code(error)[1] == 404:
                    raise NotFound("the stored object is gone", reason="OBJECT_NOT_FOUND") from None
                raise

        body = await self._call("read an object", get)
        blocks = body.iter_chunks(READ_BLOCK)

        def next_block() -> bytes:
            try:
                return next(blocks, b"")
            except botocore.exceptions.IncompleteReadError as error:
                raise TransientStorageError(f"{self.name}: read cut short: {error}") from error

        try:
            while block := await self._call("read an object", next_block):
                yield block
        finally:
            body.close()

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)
