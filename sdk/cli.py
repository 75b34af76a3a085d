"""The `ferry` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import grpc

from ferry.client import SERVICE_NAMES, Client
from ferry.downloads import DownloadProgress
from ferry.errors import FerryError
from ferry.progress import PLAIN_LINE_INTERVAL_SECONDS, ProgressDisplay
from ferry.v1 import inference_pb2


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


class InputError(ValueError):
    """`--input` is not a JSON object or cannot be read: a usage error, caught before any call."""


def _read_input(text: str) -> dict[str, Any]:
    """`--input` as a dict: inline JSON, `@FILE`, or `-` for stdin."""
    if text == "-":
        source, raw = "stdin", sys.stdin.read()
    elif text.startswith("@"):
        source = text[1:]
        try:
            raw = Path(source).read_text()
        except OSError as error:
            raise InputError(f"cannot read {source}: {error.strerror or error}") from None
    else:
        source, raw = repr(text), text
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as error:
        raise InputError(f"{source} is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise InputError(f"{source} must be a JSON object, got {type(document).__name__}")
    return document


def _progress_text(progress: inference_pb2.Progress) -> str:
    if progress.total > 0:
        return f"{progress.current:g}/{progress.total:g} ({100 * progress.current / progress.total:.0f}%)"
    return f"{progress.current:g}"


class RunStatus:
    """A request's events as a person follows them: queue position changes, log lines and progress.

    On a terminal progress is one line redrawn in place (log lines print above
    it); elsewhere it is plain lines, at most one a second plus the last, so a
    log file does not fill with every step.
    """

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.width = width
        self._request_id = ""
        self._position: int | None = None
        self._live_line = ""  # the progress line on screen, redrawn after each log line
        self._last_plain = 0.0
        self._last_label = ""

    def show(self, event: inference_pb2.StreamResponse) -> None:
        if not self._request_id:
            self._request_id = event.request_id
            self._line(f"request {event.request_id}")
        kind = event.WhichOneof("event")
        if kind == "queued" and event.queued.position != self._position:
            self._position = event.queued.position
            self._line(f"queued: position {self._position}")
        elif kind == "in_progress":
            update = event.in_progress
            if not update.logs and not update.HasField("progress"):  # the empty event marks the start
                self._line("in progress")
            for log_line in update.logs:
                self._line(f"[{log_line.level or 'INFO'}] {log_line.message}")
            if update.HasField("progress"):
                self._progress(update.progress)
        elif kind == "partial_output":
            self._line(f"partial output: {event.partial_output.output_json}")

    def finish(self, text: str = "") -> None:
        """End the live line (leaving it visible) and write `text`, if any, below it."""
        if self._live_line:
            self.stream.write("\n")
            self._live_line = ""
        if text:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _line(self, text: str) -> None:
        if self._live_line:
            self.stream.write("\r\x1b[K")  # erase the progress line, print above it, then redraw it
        self.stream.write(text + "\n")
        if self._live_line:
            self.stream.write(self._live_line)
        self.stream.flush()

    def _progress(self, progress: inference_pb2.Progress) -> None:
        label = progress.message or "progress"
        if self.live:
            filled = int(self.width * min(progress.current / progress.total, 1.0)) if progress.total > 0 else 0
            bar = "#" * filled + "-" * (self.width - filled) if progress.total > 0 else "?" * self.width
            self._live_line = f"{label} [{bar}] {_progress_text(progress)}"
            self.stream.write("\r\x1b[K" + self._live_line)
            self.stream.flush()
            return
        done = progress.total > 0 and progress.current >= progress.total
        now = time.monotonic()
        if done or label != self._last_label or now - self._last_plain >= PLAIN_LINE_INTERVAL_SECONDS:
            self._last_plain, self._last_label = now, label
            message = f" {progress.message}" if progress.message else ""
            self._line(f"progress: {_progress_text(progress)}{message}")


def _follow(events: Iterator[inference_pb2.StreamResponse], status: RunStatus) -> dict[str, Any]:
    """Show each event until the request completes (its output) or fails (raised)."""
    try:
        for event in events:
            kind = event.WhichOneof("event")
            if kind == "completed":
                return dict(json.loads(event.completed.output_json))
            if kind == "failed":
                raise FerryError.from_request_error(event.failed.error)
            status.show(event)
    finally:
        # Closing the stream cancels the request server-side: Ctrl-C must not leave it running.
        if isinstance(events, Generator):
            events.close()
    raise FerryError(grpc.StatusCode.UNKNOWN, "the stream ended without a result")


def _run(args: argparse.Namespace) -> int:
    try:
        arguments = _read_input(args.input)
    except InputError as error:
        print(f"ferry run: invalid --input: {error}", file=sys.stderr)
        return 2
    status = RunStatus(sys.stderr)
    began = time.monotonic()
    with Client(args.address) as client:
        try:
            output = _follow(client.stream(args.app, arguments, args.path, args.expires_in), status)
        except FerryError as error:
            status.finish(f"ferry run: {error.code.name}: {error.message}")
            return 1
        except KeyboardInterrupt:
            status.finish("ferry run: cancelled")
            return 130
    status.finish(f"completed in {time.monotonic() - began:.1f}s")
    print(json.dumps(output, indent=2, ensure_ascii=False))
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

    run = commands.add_parser(
        "run",
        help="run an app endpoint with live status on stderr; prints its output JSON",
        description="Run an app endpoint: queue position, logs and progress go to stderr as they happen, "
        "the output JSON to stdout. Ctrl-C cancels the request.",
    )
    run.add_argument("app", help="the app id (as ListEndpoints names it)")
    run.add_argument("--path", default="/", help="the endpoint path (default: /)")
    run.add_argument(
        "--input",
        default="{}",
        metavar="JSON",
        help="the input: a JSON object, @FILE to read one, or - for stdin (default: {})",
    )
    run.add_argument("--expires-in", type=int, metavar="SECONDS", help="delete the media it produces after this long")
    run.add_argument("--address", help="host:port [env FERRY_ADDRESS]")
    run.set_defaults(handler=_run)

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
