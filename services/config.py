"""Service configuration: one dataclass per service, filled from CLI flags and FERRY_* variables.

Each dataclass field becomes a flag (`grpc_port` → `--grpc-port`) whose default
comes from the matching environment variable (`FERRY_GRPC_PORT`), falling back
to the field default. One mechanism, so a new setting is one annotated field.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_type_hints
from urllib.parse import urlsplit

from ferry.services.downloader.url_prefix import UrlPrefix
from ferry.services.logs import LOG_FORMATS

Config = TypeVar("Config")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "ferry"


def setting(
    help: str,
    default: Any = dataclasses.MISSING,
    *,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    **kwargs: Any,
) -> Any:
    """A config field with the help text its flag shows, and the range its value must lie in (when set)."""
    if default is dataclasses.MISSING and "default_factory" not in kwargs:
        kwargs["default"] = None
    elif default is not dataclasses.MISSING:
        kwargs["default"] = default
    return field(metadata={"help": help, "at_least": at_least, "above": above, "at_most": at_most}, **kwargs)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Checked:
    """A config whose numbers are checked against their settings' ranges: one line naming the flag, not a
    traceback later (a port of 99999 that gRPC wraps to 34463, a chunk size of 0 that never makes progress)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            low, floor, high = f.metadata.get("at_least"), f.metadata.get("above"), f.metadata.get("at_most")
            if (
                value != value
                or (low is not None and value < low)
                or (floor is not None and value <= floor)
                or (high is not None and value > high)
            ):
                raise ValueError(f"{flag(f.name)} must be {_range(low, floor, high)}, got {value}")


def _range(low: float | None, floor: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"between {low:g} and {high:g}"
    if floor is not None:
        return f"above {floor:g}" + (f" and at most {high:g}" if high is not None else "")
    if low is not None:
        return f"at least {low:g}"
    return f"at most {high:g}"


PORT = {"at_least": 0, "at_most": 65535}


@dataclass(frozen=True)
class ServerConfig(Checked):
    """Where and how the gRPC server and the CDN HTTP server listen."""

    host: str = setting("address both servers bind to", "127.0.0.1")
    grpc_port: int = setting("gRPC port (0 = pick a free one)", 50051, **PORT)
    cdn_port: int = setting("CDN HTTP port (0 = pick a free one)", 8787, **PORT)
    data_dir: Path = setting("root for downloads, cache and locally stored files", default_factory=_default_data_dir)
    token: str | None = setting("require 'authorization: Bearer TOKEN' on every RPC and CDN upload")
    tls_cert: Path | None = setting("PEM certificate chain: serve gRPC and the CDN over TLS")
    tls_key: Path | None = setting("PEM private key for --tls-cert")
    drain_seconds: float = setting("on SIGTERM/SIGINT, how long in-flight calls may finish", 30.0, at_least=0)
    metrics_port: int | None = setting(
        "also serve /metrics alone on this port (0 = pick a free one): for a stack that hosts no CDN", **PORT
    )
    no_metrics: bool = setting(
        "serve no /metrics and count no RPCs (what the engines count still costs, unread): for measuring what "
        "metrics cost, or a deployment that must not expose them",
        False,
    )
    cors_origin: tuple[str, ...] = setting(
        "an origin (https://app.example:8443) whose pages may call the HTTP API from a browser (repeatable; "
        "default: none, same-origin only)",
        (),
    )
    log_format: str = setting(
        "log lines as 'text' (human-readable) or 'json' (one object a line, for log pipelines)", "text"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"--log-format must be one of {', '.join(LOG_FORMATS)}, got {self.log_format[:40]!r}")
        for origin in self.cors_origin:
            if not _ORIGIN.fullmatch(origin):
                raise ValueError(f"--cors-origin {origin[:100]!r} is not an origin like https://app.example:8443")
        if self.no_metrics and self.metrics_port is not None:
            raise ValueError("--metrics-port serves /metrics, which --no-metrics turns off: give one of them")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        for name in ("tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{flag(name)} {str(path)[:200]!r}: no such file")


# scheme://host[:port], nothing after: what a browser sends as its Origin header.
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


@dataclass(frozen=True)
class DownloaderConfig(Checked):
    """What the downloader may fetch, and how hard it tries."""

    allow_private_networks: bool = setting(
        "allow downloads from loopback, private and link-local addresses (development and tests only)", False
    )
    allow_hosts: str = setting("comma-separated host names or CIDRs the network guard lets through", "")
    temp_dir: Path | None = setting("root for per-request download folders (default: DATA_DIR/tmp)")
    chunk_mib: int = setting(
        "body bytes buffered per disk write (and flushed) at a time, in MiB", 16, at_least=1, at_most=1024
    )
    data_uri_limit_mib: float = setting("largest decoded data: URI, in MiB", 10.0, above=0, at_most=1024)
    max_download_mib: float | None = setting("server-wide cap on one download, in MiB (default: none)", above=0)
    cache_budget_mib: float | None = setting("evict least-recently-used downloads past this total, in MiB", at_least=0)
    retries: int = setting(
        "retries of a transient failure (reset, 5xx, 408, 429) before UNAVAILABLE", 4, at_least=0, at_most=100
    )
    retry_backoff_seconds: float = setting("first retry delay; doubles per retry, jittered", 0.25, at_least=0)
    connect_timeout_seconds: float = setting("TCP/TLS connect timeout per attempt", 10.0, above=0)
    read_timeout_seconds: float = setting(
        "a source silent this long is stalled (retried, then UNAVAILABLE)", 30.0, above=0
    )
    parallel_threshold_mib: float = setting(
        "files larger than this, from a source that serves byte ranges, download over several connections "
        "at once, in MiB",
        64.0,
        at_least=0,
    )
    parallel_connections: int = setting(
        "connections one such download opens at once (1: always one stream)", 8, at_least=1, at_most=64
    )
    cache_sweep_seconds: float = setting(
        "how often download records whose file is gone, and lock files nobody holds, are removed", 600.0, above=0
    )

    @property
    def allowed(self) -> tuple[str, ...]:
        return tuple(entry.strip() for entry in self.allow_hosts.split(",") if entry.strip())


@dataclass(frozen=True)
class EncoderConfig(Checked):
    """What the encoder accepts."""

    max_tensor_mib: float = setting("largest tensor (or upload) one request may send, in MiB", 4096.0, above=0)
    max_pixels: int = setting("largest image or video frame, in pixels (width × height)", 64_000_000, at_least=1)
    encode_threads: int = setting("worker threads for encoding (0 = one per CPU)", 0, at_least=0, at_most=1024)


@dataclass(frozen=True)
class InferenceConfig(Checked):
    """Which apps the runner hosts, where its downloader and encoder are, and the queue its requests wait in."""

    app: tuple[str, ...] = setting("an app to host, as module.path:ClassName or path/to/file.py:ClassName", ())
    downloader: str | None = setting("DownloaderService address for handlers (default: this server)")
    encoder: tuple[str, ...] = setting(
        "EncoderService address for handlers; repeat it for several: calls fail over in order (default: this server)",
        (),
    )
    queue: str | None = setting(
        "where requests wait, shared by every replica: redis://HOST:PORT/DB or rediss://… "
        "(default: a SQLite file under the data dir, shared by the processes of one host)"
    )
    queue_password: str | None = setting("the Redis password, when --queue's URL does not carry one")
    lease_seconds: float = setting(
        "a running request returns to the queue this long after its replica stops renewing it", 10.0, above=0
    )
    max_attempts: int = setting("runs of one request (its replicas died) before it fails UNAVAILABLE", 3, at_least=1)
    result_ttl_seconds: float = setting("how long a finished request's record and result are kept", 86400.0, above=0)
    webhook_secret: str | None = setting(
        "sign webhooks with this key (Standard Webhooks: whsec_BASE64); without it, none are sent"
    )
    webhook_retry_seconds: float = setting(
        "first retry delay of a webhook no receiver took; doubles per retry up to 30 min, for up to 2 h", 5.0, above=0
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.webhook_secret is not None and not self.webhook_secret.strip():
            raise ValueError("--webhook-secret is empty")
        if self.queue is not None and urlsplit(self.queue).scheme not in ("redis", "rediss"):
            raise ValueError(f"--queue {self.queue[:200]!r}: expected redis://HOST:PORT/DB or rediss://…")


LOCAL_SPEC = "local"
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


@dataclass(frozen=True)
class StackConfig:
    """Everything one `ferry serve` was configured with: one config per service, values only.

    What the running stack builds from it (storage, health, where apps reach the
    services) is the `Runtime` each service's `host()` is handed beside it.
    """

    server: ServerConfig
    downloader: DownloaderConfig = field(default_factory=DownloaderConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)


def env_name(field_name: str) -> str:
    return "FERRY_" + field_name.upper()


def _parse(raw: str, kind: Any, name: str) -> Any:
    if kind is tuple:  # repeatable settings: comma-separated in the environment
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"{env_name(name)}={raw!r} is not a boolean")
    return kind(raw)


def _base_type(hint: Any) -> Any:
    """`int`, `Path`, `str | None` → the concrete type to parse with (`tuple[str, ...]` stays a tuple)."""
    if getattr(hint, "__origin__", None) is tuple:
        return tuple
    args = [a for a in getattr(hint, "__args__", ()) if a is not type(None)]
    return args[0] if args else hint


def add_arguments(parser: argparse.ArgumentParser, config_type: type) -> None:
    """Add one flag per field of `config_type`, defaulting to FERRY_* or the field default."""
    hints = get_type_hints(config_type)
    for f in dataclasses.fields(config_type):
        kind = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} [env {env_name(f.name)}]{_default_help(f)}"
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action="store_true", default=None, help=help_text)
        elif kind is tuple:
            parser.add_argument(flag, dest=f.name, action="append", default=None, help=f"{help_text} (repeatable)")
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text)


def _default_help(f: dataclasses.Field[Any]) -> str:
    """` (default: X)` for `--help`, where the field has a default worth naming (not unset, off or empty)."""
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if default is None or default is False or default in ("", ()):
        return ""
    return f" (default: {','.join(map(str, default)) if isinstance(default, tuple) else default})"


def from_arguments(config_type: type[Config], namespace: argparse.Namespace) -> Config:
    """Build `config_type` from parsed flags; unset flags fall back to FERRY_* then to defaults."""
    hints = get_type_hints(config_type)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(config_type):  # type: ignore[arg-type]
        given = getattr(namespace, f.name, None)
        if given is not None:
            values[f.name] = tuple(given) if isinstance(given, list) else given
        elif (raw := os.environ.get(env_name(f.name))) is not None:
            values[f.name] = _parse(raw, _base_type(hints[f.name]), f.name)
    return config_type(**values)
