"""Where stored files go: the `--storage` chain and its knobs, and building the chain from them.

`--storage` repeats, in fallback order: `local` (DATA_DIR/files, served by
the embedded CDN) or `s3://BUCKET/PREFIX` (credentials from the usual AWS
variables). `--storage s3://media/out --storage local` writes to S3 and
falls back to the local CDN while S3 is down.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ferry.services.config import Checked, setting
from ferry.services.downloader.url_prefix import UrlPrefix
from ferry.services.storage.base import Storage
from ferry.services.storage.chain import StorageChain
from ferry.services.storage.local import LocalStorage

if TYPE_CHECKING:
    from ferry.services.storage.s3 import S3Storage

LOCAL_SPEC = "local"
LOCAL_FOLDER = "files"  # under the data dir
# Under the data dir too, beside `.ferry/incoming` (same filesystem): parts an S3 upload holds to hash in order.
S3_HOLDING_FOLDER = Path(".ferry") / "s3-parts"
# S3's bucket naming rules, loosely: S3-compatibles allow a little more, AWS a little less.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str


def parse_storage_spec(spec: str) -> S3Location | None:
    """None for `local`, the bucket and prefix for `s3://BUCKET/PREFIX`; ValueError for anything else."""
    if spec == LOCAL_SPEC:
        return None
    expected = "expected 'local' or 's3://BUCKET/PREFIX'"
    parts = urlsplit(spec)
    if parts.scheme != "s3":
        raise ValueError(f"--storage {spec!r}: {expected}")
    if parts.query or parts.fragment or "@" in parts.netloc or ":" in parts.netloc:
        raise ValueError(f"--storage {spec!r}: {expected}, without credentials, port, query or fragment")
    if not _BUCKET.fullmatch(parts.netloc):
        raise ValueError(f"--storage {spec!r}: {parts.netloc!r} is not an S3 bucket name")
    return S3Location(parts.netloc, parts.path.strip("/"))


@dataclass(frozen=True)
class StorageConfig(Checked):
    """Where encoded files and uploads are stored, and how they are kept."""

    storage: tuple[str, ...] = setting(
        "where stored files go, in fallback order: 'local' or 's3://BUCKET/PREFIX' (repeatable)", ("local",)
    )
    s3_endpoint_url: str | None = setting("S3 endpoint for S3-compatible stores (MinIO, R2, …); default AWS")
    s3_region: str | None = setting("S3 region (default: AWS_REGION / AWS_DEFAULT_REGION)")
    s3_public_url: str | None = setting("public base URL of the S3 bucket: URLs become BASE/KEY instead of presigned")
    public_url: str | None = setting(
        "base URL the CDN is reached at; a downloader hosted without the encoder fetches it past the network guard; "
        "default http://HOST:CDN_PORT"
    )
    sweep_interval_seconds: float = setting("how often expired objects and idle uploads are deleted", 60.0, above=0)
    multipart_max_age_seconds: float = setting("a multipart upload idle this long is aborted", 86400.0, above=0)
    storage_attempts: int = setting(
        "attempts per storage backend before falling back to the next", 10, at_least=1, at_most=100
    )
    storage_cool_down_seconds: float = setting(
        "a backend that failed 5 attempts in a row is skipped this long, then one write probes it",
        30.0,
        above=0,
        at_most=86400,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.storage:
            raise ValueError("--storage needs at least one of 'local' or 's3://BUCKET/PREFIX'")
        if len(set(self.storage)) != len(self.storage):
            raise ValueError(f"--storage lists a backend twice: {', '.join(self.storage)}")
        locations = [parse_storage_spec(spec) for spec in self.storage]
        if self.s3_public_url and sum(location is not None for location in locations) > 1:
            raise ValueError("--s3-public-url names one bucket's public URL: give a single s3:// storage with it")
        # The downloader recognises the stack's own URLs by these bases, so they must be URLs it can compare.
        for flag, base in (("--public-url", self.public_url), ("--s3-public-url", self.s3_public_url)):
            if base is not None:
                try:
                    UrlPrefix.parse(base)
                except ValueError as error:
                    raise ValueError(f"{flag}: {error}") from None


def build_storage(
    config: StorageConfig, data_dir: Path, cdn_base_url: Callable[[], str]
) -> tuple[StorageChain, LocalStorage | None]:
    """The storage chain `config` describes, and its local backend (for the CDN to serve), if any.

    `cdn_base_url` is called per stored file: the CDN's port may be known only once it listens.
    """
    public_url = config.public_url.rstrip("/") if config.public_url else None
    base_url = (lambda: public_url) if public_url else cdn_base_url
    backends: list[Storage] = []
    local: LocalStorage | None = None
    for spec in config.storage:
        location = parse_storage_spec(spec)
        if location is None:
            local = LocalStorage(data_dir / LOCAL_FOLDER, base_url, config.multipart_max_age_seconds)
            backends.append(local)
        else:
            backends.append(
                _s3_storage()(
                    location.bucket,
                    location.prefix,
                    endpoint_url=config.s3_endpoint_url,
                    region=config.s3_region,
                    public_url_base=config.s3_public_url,
                    multipart_max_age_seconds=config.multipart_max_age_seconds,
                    holding_dir=data_dir / S3_HOLDING_FOLDER,
                )
            )
    chain = StorageChain(backends, attempts=config.storage_attempts, cool_down_seconds=config.storage_cool_down_seconds)
    return chain, local


def _s3_storage() -> type[S3Storage]:
    """S3Storage, imported only when configured: boto3 is the optional `s3` extra."""
    try:
        from ferry.services.storage import s3
    except ImportError as error:
        raise ValueError(f"s3:// storage needs boto3: pip install 'ferry-media[s3]' ({error})") from error
    return s3.S3Storage
