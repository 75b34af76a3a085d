"""The storage chain a `StorageConfig` describes, built: its backends in fallback order.

`--storage s3://media/out --storage local` writes to S3 and falls back to the
local CDN (DATA_DIR/files) while S3 is down.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ferry.services.config import StorageConfig, parse_storage_spec
from ferry.services.metrics import StackMetrics
from ferry.services.storage.base import Storage
from ferry.services.storage.chain import StorageChain
from ferry.services.storage.local import LocalStorage

if TYPE_CHECKING:
    from ferry.services.storage.s3 import S3Storage

LOCAL_FOLDER = "files"  # under the data dir
# Under the data dir too, beside `.ferry/incoming` (same filesystem): parts an S3 upload holds to hash in order.
S3_HOLDING_FOLDER = Path(".ferry") / "s3-parts"


def build_storage(
    config: StorageConfig, data_dir: Path, cdn_base_url: Callable[[], str], metrics: StackMetrics | None = None
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
    chain = StorageChain(
        backends,
        attempts=config.storage_attempts,
        cool_down_seconds=config.storage_cool_down_seconds,
        metrics=metrics,
    )
    return chain, local


def _s3_storage() -> type[S3Storage]:
    """S3Storage, imported only when configured: boto3 is the optional `s3` extra."""
    try:
        from ferry.services.storage import s3
    except ImportError as error:
        raise ValueError(f"s3:// storage needs boto3: pip install 'ferry-media[s3]' ({error})") from error
    return s3.S3Storage
