"""The `ferry` command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from ferry.client import SERVICE_NAMES, Client
from ferry.downloads import DownloadProgress
from ferry.errors import FerryError
from ferry.progress import ProgressDisplay


def _health(args: argparse.Namespace) -> int:
    with Client(args.address) as client:
        try:
            for service in ("", *SERVICE_NAMES):
                print(f"{service or 'server'}: {client.health(service)}")
        except grpc.RpcError as error:
            print(f"ferry health: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    return 0


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME:VALUE, got {text!r}")
    return name.strip(), value.strip()


def _download(args: argparse.Namespace) -> int:
    display = ProgressDisplay("download")

    def show(progress: DownloadProgress) -> None:
        display.label = progress.file_name or "download"
        display.update(progress.bytes_done, progress.total_bytes, progress.bytes_per_second)

    with Client(args.address) as client:
        try:
            path = client.download_file(
                args.url,
                target_dir=args.to,
                force=args.force,
                request_headers=dict(args.header),
                filesize_limit=args.limit_mb,
                on_progress=show,
            )
        except FerryError as error:
            display.finish()
            print(f"ferry download: {error.code.name}: {error.message}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:  # the SDK has cancelled the call, so the server stops too
            display.finish()
            print("ferry download: cancelled", file=sys.stderr)
            return 130
    display.finish()
    print(path)
    return 0


LARGE_UPLOAD_BYTES = 8 << 20  # below this a bar would only flash


def _upload(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        print(f"ferry upload: no such file: {path}", file=sys.stderr)
        return 2
    display = ProgressDisplay(path.name)
    began = time.monotonic()

    def show(sent: int, total: int) -> None:
        if total >= LARGE_UPLOAD_BYTES:
            display.update(sent, total, sent / max(time.monotonic() - began, 1e-6))

    with Client(args.address) as client:
        try:
            stored = client.upload_file(path, expires_in=args.expires_in, on_progress=show)
        except FerryError as error:
            display.finish()
            print(f"ferry upload: {error.code.name}: {error.message}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:  # multipart uploads are aborted before this propagates
            display.finish()
            print("ferry upload: cancelled", file=sys.stderr)
            return 130
    if path.stat().st_size >= LARGE_UPLOAD_BYTES:
        display.finish()
    print(stored.url)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferry", description="Move media in and out of GPU inference.")
    commands = parser.add_subparsers(dest="command", required=True)

    # Listed for --help; `main` hands `serve` to the services package, which
    # the SDK imports only when asked to serve.
    commands.add_parser("serve", help="run the stack (all services, or the ones named); see `ferry serve --help`")

    download = commands.add_parser("download", help="download a URL or data: URI through the stack; prints the path")
    download.add_argument("url")
    download.add_argument("--to", metavar="DIR", help="target dir (relative: under the service's data dir)")
    download.add_argument("--force", action="store_true", help="download again even when cached")
    download.add_argument("--header", action="append", type=_header, default=[], metavar="NAME:VALUE")
    download.add_argument("--limit-mb", type=float, help="refuse files larger than this many MB")
    download.add_argument("--address", help="host:port [env FERRY_ADDRESS]")
    download.set_defaults(handler=_download)

    upload = commands.add_parser("upload", help="store a local file through the stack; prints its URL")
    upload.add_argument("file")
    upload.add_argument("--expires-in", type=int, metavar="SECONDS", help="delete the stored file after this long")
    upload.add_argument("--address", help="host:port [env FERRY_ADDRESS]")
    upload.set_defaults(handler=_upload)

    health = commands.add_parser("health", help="print the serving status of the stack and each service")
    health.add_argument("--address", help="host:port [env FERRY_ADDRESS]")
    health.set_defaults(handler=_health)
    return parser


def _serve(argv: list[str]) -> int:
    try:
        from ferry.services.launch import main as serve_main
    except ImportError as error:
        print(f"ferry serve needs the services extra (pip install 'ferry-media[services]'): {error}", file=sys.stderr)
        return 2
    return serve_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return _serve(argv[1:])
    args = _parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
