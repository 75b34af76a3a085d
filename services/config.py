"""Service configuration: one dataclass per service, filled from CLI flags and FERRY_* variables.

Each dataclass field becomes a flag (`grpc_port` → `--grpc-port`) whose default
comes from the matching environment variable (`FERRY_GRPC_PORT`), falling back
to the field default. One mechanism, so a new setting is one annotated field.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

Config = TypeVar("Config")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "ferry"


def setting(help: str, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A config field with the help text its flag shows."""
    if default is dataclasses.MISSING and "default_factory" not in kwargs:
        kwargs["default"] = None
    elif default is not dataclasses.MISSING:
        kwargs["default"] = default
    return field(metadata={"help": help}, **kwargs)


@dataclass(frozen=True)
class ServerConfig:
    """Where and how the gRPC server and the CDN HTTP server listen."""

    host: str = setting("address both servers bind to", "127.0.0.1")
    grpc_port: int = setting("gRPC port (0 = pick a free one)", 50051)
    cdn_port: int = setting("CDN HTTP port (0 = pick a free one)", 8787)
    data_dir: Path = setting("root for downloads, cache and locally stored files", default_factory=_default_data_dir)
    token: str | None = setting("require 'authorization: Bearer TOKEN' on every RPC and CDN upload")
    tls_cert: Path | None = setting("PEM certificate chain: serve gRPC and the CDN over TLS")
    tls_key: Path | None = setting("PEM private key for --tls-cert")
    drain_seconds: float = setting("on SIGTERM/SIGINT, how long in-flight calls may finish", 30.0)

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")


@dataclass(frozen=True)
class DownloaderConfig:
    """What the downloader may fetch, and how hard it tries."""

    allow_private_networks: bool = setting(
        "allow downloads from loopback, private and link-local addresses (development and tests only)", False
    )
    allow_hosts: str = setting("comma-separated host names or CIDRs the network guard lets through", "")
    temp_dir: Path | None = setting("root for per-request download folders (default: DATA_DIR/tmp)")
    chunk_mib: int = setting("body bytes buffered per disk write (and flushed) at a time, in MiB", 16)
    data_uri_limit_mib: float = setting("largest decoded data: URI, in MiB", 10.0)
    max_download_mib: float | None = setting("server-wide cap on one download, in MiB (default: none)")
    cache_budget_mib: float | None = setting("evict least-recently-used downloads past this total, in MiB")
    retries: int = setting("retries of a transient failure (reset, 5xx, 408, 429) before UNAVAILABLE", 4)
    retry_backoff_seconds: float = setting("first retry delay; doubles per retry, jittered", 0.25)
    connect_timeout_seconds: float = setting("TCP/TLS connect timeout per attempt", 10.0)
    read_timeout_seconds: float = setting("a source silent this long is stalled (retried, then UNAVAILABLE)", 30.0)
    cache_sweep_seconds: float = setting(
        "how often download records whose file is gone, and lock files nobody holds, are removed", 600.0
    )

    def __post_init__(self) -> None:
        if self.cache_sweep_seconds <= 0:
            raise ValueError("--cache-sweep-seconds must be positive")

    @property
    def allowed(self) -> tuple[str, ...]:
        return tuple(entry.strip() for entry in self.allow_hosts.split(",") if entry.strip())


@dataclass(frozen=True)
class EncoderConfig:
    """What the encoder accepts."""

    max_tensor_mib: float = setting("largest tensor (or upload) one request may send, in MiB", 4096.0)
    max_pixels: int = setting("largest image or video frame, in pixels (width × height)", 64_000_000)
    encode_threads: int = setting("worker threads for encoding (0 = one per CPU)", 0)


@dataclass(frozen=True)
class InferenceConfig:
    """Which apps the runner hosts, and where its downloader and encoder are."""

    app: tuple[str, ...] = setting("an app to host, as module.path:ClassName or path/to/file.py:ClassName", ())
    downloader: str | None = setting("DownloaderService address for handlers (default: this server)")
    encoder: str | None = setting("EncoderService address for handlers (default: this server)")


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
