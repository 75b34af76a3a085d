"""Typed results: `File`, `Image`, `Video`, `Audio` and `CompressedFile`.

Each is a pydantic model whose JSON has the reference toolkit's shape: flat,
snake_case, unset fields omitted —

    {"url": …, "content_type": "image/png", "file_name": "out.png", "file_size": 1024, "width": 64, "height": 64}

so `out["image"]["width"]` works and the reference's own JSON validates. The
`ferry.v1.File` message nests the media details under its `media_info` oneof
(`image` / `video` / `audio`); `from_proto` / `to_proto` convert, and the
message's JSON (`MessageToDict`, nested, lowerCamelCase or not) validates too.

Uploads and encodes go through a `ferry.Client` (the `client` argument, else
`ferry.default_client()`); fetching a file's bytes is a plain HTTP GET of its
URL. Pillow is imported only where an image is decoded or encoded, PyAV only
where a video or audio file is probed, and torch never: tensors pass straight
through to `Client.encode_tensor`.
"""

from __future__ import annotations

import hashlib
import io
import mimetypes
import os
import re
import shutil
import stat
import tempfile
import threading
import urllib.parse
import urllib.request
import weakref
import zipfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, ClassVar, Self

import numpy as np
from google.protobuf import json_format
from pydantic import (
    AliasChoices,
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel

import ferry
from ferry import download_file, download_model_weights  # the reference imports these from its toolkit too
from ferry.atomic_files import atomic_write
from ferry.datauri import image_bytes
from ferry.file_names import safe_file_name
from ferry.probe import probe_audio, probe_video
from ferry.sizes import MIB
from ferry.v1 import common_pb2

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from ferry.client import Client

__all__ = [
    "DEFAULT_MAX_EXTRACTED_BYTES",
    "MEDIA_FIELDS",
    "Audio",
    "CompressedFile",
    "File",
    "Image",
    "Video",
    "download_file",
    "download_model_weights",
]

# The fields of each `media_info` kind, as the proto names them.
MEDIA_FIELDS: dict[str, tuple[str, ...]] = {
    "image": ("width", "height"),
    "video": ("width", "height", "fps", "frame_count", "duration_seconds", "has_audio"),
    "audio": ("sample_rate", "channels", "duration_seconds", "sample_count"),
}

DEFAULT_MAX_EXTRACTED_BYTES = 1 << 30

_BLOCK = MIB
# A CDN that stops sending should fail the call, not hang it forever.
_READ_TIMEOUT_SECONDS = 60.0
# file:// or ftp:// URLs in a File from untrusted JSON would read the caller's own disk or network.
_FETCHABLE_SCHEMES = ("http", "https", "data")


class File(BaseModel):
    """A stored file: its URL and what the store knows about it (size, sha256, expiry)."""

    model_config = ConfigDict(
        # snake_case first (the proto's own names, and what the JSON schema shows), then lowerCamelCase.
        alias_generator=AliasGenerator(validation_alias=lambda name: AliasChoices(name, to_camel(name))),
    )

    # Which `media_info` kind this type carries; None holds none (extra ones are ignored).
    media_kind: ClassVar[str | None] = None

    url: str
    content_type: str = ""
    file_name: str = ""
    file_size: int = Field(default=0, ge=0)
    sha256: str | None = None
    expires_at: datetime | None = None

    @field_validator("expires_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # Proto timestamps are UTC; a naive datetime would otherwise be read as local time.
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @model_validator(mode="before")
    @classmethod
    def _flatten_media_info(cls, data: Any) -> Any:
        # The message's JSON nests the media details under their oneof kind: accept that shape too.
        if not isinstance(data, dict) or cls.media_kind is None:
            return data
        other = next((kind for kind in MEDIA_FIELDS if kind != cls.media_kind and kind in data), None)
        if other is not None:
            raise ValueError(f"{cls.__name__} cannot hold {other} info")
        info = data.get(cls.media_kind)
        if info is None:
            return data
        if not isinstance(info, dict):
            raise ValueError(f"{cls.media_kind} must be an object, got {type(info).__name__}")
        return {**{key: value for key, value in data.items() if key != cls.media_kind}, **info}

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        # Unannotated on purpose: a return type would replace the fields in the serialization JSON schema.
        return {key: value for key, value in handler(self).items() if value is not None}

    # -- from and to the contract -----------------------------------------------------

    @classmethod
    def from_proto(cls, message: common_pb2.File) -> Self:
        """The toolkit form of a `ferry.v1.File`.

        `File.from_proto` returns the `Image`, `Video` or `Audio` its media info
        names; a subclass returns itself and refuses another kind's info.
        """
        target: type[File] = cls
        if cls is File:
            target = _KIND_TYPES.get(message.WhichOneof("media_info") or "", File)
        return target.model_validate(json_format.MessageToDict(message, preserving_proto_field_name=True))  # type: ignore[return-value]

    def to_proto(self) -> common_pb2.File:
        """The `ferry.v1.File` message this stands for (media details nested under their `media_info` kind)."""
        data = self.model_dump(mode="json")
        if self.media_kind is not None:
            info = {name: data.pop(name) for name in MEDIA_FIELDS[self.media_kind] if name in data}
            data[self.media_kind] = info
        return json_format.ParseDict(data, common_pb2.File())

    # -- uploads ----------------------------------------------------------------------

    @classmethod
    def from_path(
        cls,
        path: str | os.PathLike[str],
        content_type: str | None = None,
        file_name: str | None = None,
        expires_in: int | None = None,
        client: Client | None = None,
    ) -> Self:
        """Upload a local file (`expires_in` seconds, None = the store's default).

        An `Image`'s size, a `Video`'s or `Audio`'s figures the store does not report are read from the file.
        """
        message = _client(client).upload_file(
            path, content_type=content_type, file_name=file_name, expires_in=expires_in
        )
        return cls.from_proto(message)._filled_from(path)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        content_type: str,
        file_name: str | None = None,
        expires_in: int | None = None,
        client: Client | None = None,
    ) -> Self:
        """Upload `data` as a file of `content_type` (media figures as for `from_path`)."""
        return cls.from_proto(_client(client).upload_bytes(data, content_type, file_name, expires_in))._filled_from(
            io.BytesIO(data)
        )

    # -- reading ----------------------------------------------------------------------

    def as_bytes(self) -> bytes:
        """The file's bytes, checked against `file_size` and `sha256` when those are known.

        A plain GET from this process, with no network guard: for URLs an
        untrusted caller chose, use `ferry.download_file`, which has one.
        """
        sink = io.BytesIO()
        self._copy_to(sink)
        return sink.getvalue()

    def save(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Download to `path` (or into it, under `file_name`, when it is a directory); returns where it went.

        The bytes land in a temp file beside the target first, so a failed
        download never leaves a partial file under the target's name.
        """
        target = Path(path)
        if target.is_dir():
            target = target / _local_name(self.file_name)
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
        # Without overwrite, a file that appears there meanwhile still fails the save (FileExistsError).
        with atomic_write(target, replace=overwrite) as sink:
            self._copy_to(sink)
        return target

    def _copy_to(self, sink: IO[bytes]) -> None:
        scheme = urllib.parse.urlsplit(self.url).scheme.lower()
        if scheme not in _FETCHABLE_SCHEMES:
            raise ValueError(f"refusing to fetch a {scheme or 'relative'!r} URL: only http, https and data are read")
        digest = hashlib.sha256()
        count = 0
        # urllib decodes data: URLs itself, locally.
        with urllib.request.urlopen(self.url, timeout=_READ_TIMEOUT_SECONDS) as response:
            declared = response.headers.get("Content-Length")
            while block := response.read(_BLOCK):
                count += len(block)
                digest.update(block)
                sink.write(block)
        # http.client returns a body cut short without complaint: check it here.
        if declared is not None and count != int(declared):
            raise OSError(f"{self._label}: body ended after {count} of {declared} bytes")
        if self.file_size and count != self.file_size:
            raise OSError(f"{self._label}: got {count} bytes, the file is {self.file_size}")
        if self.sha256 and digest.hexdigest() != self.sha256.lower():
            raise OSError(f"{self._label}: sha256 {digest.hexdigest()} does not match the file's {self.sha256}")

    @staticmethod
    def _figures(source: str | os.PathLike[str] | IO[bytes]) -> dict[str, Any]:
        """What this type can read from a file's own header (an image's size, a video's fps, …)."""
        return {}

    def _filled_from(self, source: str | os.PathLike[str] | IO[bytes]) -> Self:
        """This, with the media fields the store left unknown (0) read from the file, when any are."""
        if self.media_kind is None or all(getattr(self, name) for name in MEDIA_FIELDS[self.media_kind]):
            return self
        return self._filled(self._figures(source))

    def _filled(self, found: dict[str, Any]) -> Self:
        """A copy with the fields the store left unknown (0) set from `found`."""
        unknown = {name: value for name, value in found.items() if not getattr(self, name)}
        return self.model_copy(update=unknown) if unknown else self

    @property
    def _label(self) -> str:
        # A data: URL can be megabytes long: error messages get its start.
        return self.url if len(self.url) <= 120 else f"{self.url[:100]}…"


class Image(File):
    """A stored image; `width` and `height` are 0 when unknown."""

    media_kind: ClassVar[str | None] = "image"

    width: int = Field(default=0, ge=0)
    height: int = Field(default=0, ge=0)

    @staticmethod
    def _figures(source: str | os.PathLike[str] | IO[bytes]) -> dict[str, Any]:
        return _pillow_size(source)

    @classmethod
    def from_bytes(  # type: ignore[override]  # images are named by format ("png"), not content type
        cls,
        data: bytes,
        format: str,
        size: tuple[int, int] | None = None,
        file_name: str | None = None,
        expires_in: int | None = None,
        client: Client | None = None,
    ) -> Self:
        """Upload an encoded image (`format`: png, jpeg, webp, … or a content type).

        Its size is the store's when it reports one, else `size`, else read from the header with Pillow.
        """
        content_type = format if "/" in format else _image_content_type(format)
        image = cls.from_proto(_client(client).upload_bytes(data, content_type, file_name, expires_in))
        return image._filled(_image_size(size)) if size else image._filled_from(io.BytesIO(data))

    @classmethod
    def from_pil(
        cls,
        image: PILImage,
        format: str = "png",
        expires_in: int | None = None,
        client: Client | None = None,
        **save_options: Any,
    ) -> Self:
        """Encode a Pillow image here (`save_options` go to `PIL.Image.save`) and upload it."""
        data, content_type = image_bytes(image, format, **save_options)
        return cls.from_bytes(data, content_type, size=image.size, expires_in=expires_in, client=client)

    @classmethod
    def from_tensor(
        cls,
        tensor: Any,
        format: str = "png",
        expires_in: int | None = None,
        client: Client | None = None,
        **encode_options: Any,
    ) -> Self:
        """Encode one image tensor (numpy or torch, CPU or CUDA; HWC, CHW or a batch of one) on the encoder.

        A batch of several is refused before anything is encoded: use
        `Image.from_tensors` for a list, or `animate=True` for one animated gif/webp.
        `encode_options` are `Client.encode_tensor`'s keywords.
        """
        shape = tuple(np.shape(tensor))  # reads `.shape` where there is one: a torch tensor is not converted
        if len(shape) == 4 and shape[0] != 1 and not encode_options.get("animate"):
            raise ValueError(
                f"a batch of {shape[0]} images (shape {shape}): use Image.from_tensors for a list of images,"
                " or animate=True for one animated gif/webp"
            )
        files = _client(client).encode_tensor(tensor, format, expires_in=expires_in, **encode_options)
        return cls.from_proto(_only_file(files, "Image.from_tensor"))

    @classmethod
    def from_tensors(
        cls,
        tensor: Any,
        format: str = "png",
        expires_in: int | None = None,
        client: Client | None = None,
        **encode_options: Any,
    ) -> list[Self]:
        """Encode a batch of images (NHWC or NCHW), one stored file each, in batch order."""
        files = _client(client).encode_tensor(tensor, format, expires_in=expires_in, **encode_options)
        return [cls.from_proto(file) for file in files]

    def to_pil(self) -> PILImage:
        """Download and decode the image."""
        from PIL import Image as PILImageModule

        image = PILImageModule.open(io.BytesIO(self.as_bytes()))
        image.load()
        return image


class Video(File):
    """A stored video; numbers are 0 when unknown."""

    media_kind: ClassVar[str | None] = "video"

    width: int = Field(default=0, ge=0)
    height: int = Field(default=0, ge=0)
    fps: float = 0.0
    frame_count: int = Field(default=0, ge=0)
    duration_seconds: float = 0.0
    has_audio: bool = False

    @staticmethod
    def _figures(source: str | os.PathLike[str] | IO[bytes]) -> dict[str, Any]:
        return probe_video(source)

    @classmethod
    def from_tensor(
        cls,
        tensor: Any,
        fps: float,
        audio: tuple[Any, int] | None = None,
        expires_in: int | None = None,
        client: Client | None = None,
        **options: Any,
    ) -> Self:
        """Encode frames (THWC or TCHW, numpy or torch) as an mp4.

        `audio` = (samples, sample_rate) becomes its audio track.
        """
        files = _client(client).encode_tensor(tensor, "mp4", fps=fps, audio=audio, expires_in=expires_in, **options)
        return cls.from_proto(_only_file(files, "Video.from_tensor"))


class Audio(File):
    """A stored audio file; numbers are 0 when unknown."""

    media_kind: ClassVar[str | None] = "audio"

    sample_rate: int = Field(default=0, ge=0)
    channels: int = Field(default=0, ge=0)
    duration_seconds: float = 0.0
    sample_count: int = Field(default=0, ge=0)

    @staticmethod
    def _figures(source: str | os.PathLike[str] | IO[bytes]) -> dict[str, Any]:
        return probe_audio(source)

    @classmethod
    def from_tensor(
        cls,
        tensor: Any,
        sample_rate: int,
        expires_in: int | None = None,
        client: Client | None = None,
        **options: Any,
    ) -> Self:
        """Encode samples (numpy or torch) as a wav."""
        files = _client(client).encode_tensor(tensor, "wav", sample_rate=sample_rate, expires_in=expires_in, **options)
        return cls.from_proto(_only_file(files, "Audio.from_tensor"))


class _PrivateDir:
    """A temp dir removed on `cleanup()` or when its last holder is collected."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="ferry-archive-"))
        self.root = self.path / "files"
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.path, ignore_errors=True)

    @property
    def alive(self) -> bool:
        return self._finalizer.alive

    def cleanup(self) -> None:
        self._finalizer()


class CompressedFile(File):
    """A zip archive whose files are extracted, on first use, into a private temp dir.

    Iterating yields the extracted files (sorted paths); `glob` matches under
    the archive's root. Archives that could write outside that dir (`..`,
    absolute paths, drive letters, symlinks) or expand past
    `max_extracted_bytes` are refused whole: nothing is extracted. The dir goes
    away on `close()`, on leaving a `with` block, or when the object is
    collected. Extraction state is a cache: it is no part of equality or JSON.
    """

    _max_extracted_bytes: int = PrivateAttr(default=DEFAULT_MAX_EXTRACTED_BYTES)
    _workspace: _PrivateDir | None = PrivateAttr(default=None)

    @property
    def max_extracted_bytes(self) -> int:
        """The most bytes extraction may write in all (default 1 GiB)."""
        return self._max_extracted_bytes

    @max_extracted_bytes.setter
    def max_extracted_bytes(self, value: int) -> None:
        if value < 0:
            raise ValueError(f"max_extracted_bytes must be >= 0, got {value}")
        self._max_extracted_bytes = value

    def extract(self) -> Path:
        """Download and extract once; returns the dir the archive's files are under."""
        workspace = self._workspace
        if workspace is None or not workspace.alive:
            fresh = self._download_and_extract()
            with _CLAIM_LOCK:  # two threads racing here both extract; one result is kept
                if self._workspace is None or not self._workspace.alive:
                    self._workspace = fresh
                else:
                    fresh.cleanup()
                workspace = self._workspace
        return workspace.root

    def __iter__(self) -> Iterator[Path]:  # type: ignore[override]  # an archive iterates its files, not its fields
        return iter(sorted(path for path in self.extract().rglob("*") if path.is_file()))

    def glob(self, pattern: str) -> list[Path]:
        """Extracted files matching `pattern` (relative to the archive root, `**` recurses), sorted."""
        if pattern.startswith("/") or ".." in PurePosixPath(pattern.replace("\\", "/")).parts:
            raise ValueError(f"glob patterns stay inside the archive: {pattern!r}")
        return sorted(path for path in self.extract().glob(pattern) if path.is_file())

    def close(self) -> None:
        """Delete the extracted files; a later iteration extracts again."""
        if self._workspace is not None:
            self._workspace.cleanup()
            self._workspace = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BaseModel):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def _download_and_extract(self) -> _PrivateDir:
        workspace = _PrivateDir()
        try:
            archive = workspace.path / "archive.zip"
            with open(archive, "wb") as sink:
                self._copy_to(sink)
            workspace.root.mkdir()
            _extract_zip(archive, workspace.root, self.max_extracted_bytes, self._label)
            archive.unlink()  # callers use the extracted files: don't hold the disk space twice
        except BaseException:
            workspace.cleanup()
            raise
        return workspace


_KIND_TYPES: dict[str, type[File]] = {"image": Image, "video": Video, "audio": Audio}
_CLAIM_LOCK = threading.Lock()
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")


def _extract_zip(archive: Path, root: Path, max_bytes: int, label: str) -> None:
    try:
        with zipfile.ZipFile(archive) as zip_file:
            members = [(info, _member_parts(info)) for info in zip_file.infolist()]
            declared = sum(info.file_size for info, _ in members)
            if declared > max_bytes:
                raise ValueError(f"{label} expands to {declared} bytes, over the {max_bytes} byte limit")
            written = 0
            for info, parts in members:
                target = root.joinpath(*parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zip_file.open(info) as source, open(target, "wb") as sink:
                    # Count what really comes out: the limit must not rest on sizes the archive declares.
                    while block := source.read(_BLOCK):
                        written += len(block)
                        if written > max_bytes:
                            raise ValueError(f"{label} expands past the {max_bytes} byte limit")
                        sink.write(block)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{label} is not a valid zip archive: {error}") from error


def _member_parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The path parts an entry extracts to; ValueError for any entry that could land outside the root."""
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ValueError(f"refusing archive: entry {info.filename!r} is a symlink")
    # Windows tools write backslashes; treat them as separators so `..\\x` is seen as traversal.
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or _DRIVE_LETTER.match(name):
        raise ValueError(f"refusing archive: entry {info.filename!r} is an absolute path")
    parts = PurePosixPath(name).parts
    if ".." in parts:
        raise ValueError(f"refusing archive: entry {info.filename!r} points outside the archive")
    if not parts:
        raise ValueError(f"refusing archive: entry {info.filename!r} has no name")
    return parts


def _client(client: Client | None) -> Client:
    return client if client is not None else ferry.default_client()


def _only_file(files: Sequence[common_pb2.File], caller: str) -> common_pb2.File:
    if len(files) != 1:
        raise ValueError(f"{caller} expects one encoded file, the encoder returned {len(files)}")
    return files[0]


def _image_content_type(format: str) -> str:
    content_type = mimetypes.guess_type(f"x.{format.lower()}")[0]
    if content_type is None or not content_type.startswith("image/"):
        raise ValueError(f"unknown image format {format!r}")
    return content_type


def _pillow_size(source: str | os.PathLike[str] | IO[bytes]) -> dict[str, int]:
    from PIL import Image as PILImageModule

    with PILImageModule.open(source) as image:  # reads the header only
        return _image_size(image.size)


def _image_size(size: tuple[int, int]) -> dict[str, int]:
    width, height = size
    return {"width": width, "height": height}


def _local_name(file_name: str) -> str:
    # The name comes from the store (or untrusted JSON): never let it pick a different directory.
    name = safe_file_name(file_name)
    if name is None:
        raise ValueError(f"cannot save into a directory: the file has no usable name ({file_name!r})")
    return name
