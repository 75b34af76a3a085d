"""The `ferry` command line.

Client commands (health, apps, download, upload, run) reach the stack at
`--address` (else FERRY_ADDRESS) with `--token` (else FERRY_TOKEN). A usage
error — a bad flag value, an unreadable input — prints one line and exits 2
before any call; a failed call prints `ferry COMMAND: CODE: message` and exits
1; Ctrl-C cancels what was running and exits 130.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ferry import __version__
from ferry.client import SERVICE_NAMES, STORAGE_HEALTH_PREFIX, Client
from ferry.connection import DEFAULT_ADDRESS, Connection
from ferry.downloads import DownloadProgress
from ferry.errors import FerryError, Unimplemented, Unknown
from ferry.events import Cancelled, Completed, Event, Failed, InProgress, PartialOutput, Progress, Queued
from ferry.progress import ERASE_TO_END, PLAIN_LINE_INTERVAL_SECONDS, ProgressDisplay, bar_line, terminal_columns
from ferry.v1 import inference_pb2

HEALTH_TIMEOUT_SECONDS = 5.0
# What a target may start with besides HOST:PORT: the name schemes grpc resolves itself.
_GRPC_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:")
# Longest piece of a user's value an error message repeats.
_ECHO_CHARS = 80


class UsageError(ValueError):
    """A flag or argument the command cannot use: reported in one line, exit 2, before any call."""


def _shown(text: str) -> str:
    return repr(text if len(text) <= _ECHO_CHARS else text[:_ECHO_CHARS] + "…")


# -- flag values -------------------------------------------------------------------------


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {_shown(text)}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {_shown(text)}")
    return value


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of seconds, got {_shown(text)}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 second, got {_shown(text)}")
    if value >= 1 << 63:  # past what the request's 64-bit field holds
        raise argparse.ArgumentTypeError(f"is too large: {_shown(text)} seconds")
    return value


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME:VALUE, got {_shown(text)}")
    return name.strip(), value.strip()


def _address_problem(address: str) -> str | None:
    """Why `address` is not HOST:PORT (or a target grpc resolves itself, like unix:PATH), else None."""
    if address.startswith(_GRPC_SCHEMES):
        return None
    if "://" in address:
        return "expected HOST:PORT, not a URL"
    host, colon, port = address.rpartition(":")
    if not colon or not host:
        return "expected HOST:PORT"
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        return "expected HOST:PORT, with an IPv6 host in brackets: [::1]:50051"
    if not (port.isdigit() and 1 <= int(port) <= 65535):
        return "expected HOST:PORT with a port from 1 to 65535"
    return None


def _client(args: argparse.Namespace) -> Client:
    """The client a command's `--address` and `--token` ask for; a malformed address is a usage error."""
    address = Connection.resolve(args.address).address
    if (problem := _address_problem(address)) is not None:
        source = "--address" if args.address else "FERRY_ADDRESS"
        raise UsageError(f"{source} {_shown(address)}: {problem}")
    return Client(address, token=args.token)


def _failed(command: str, error: FerryError) -> int:
    print(f"ferry {command}: {error.code.name}: {error.message}", file=sys.stderr)
    return 1


# -- health ------------------------------------------------------------------------------


def _health(args: argparse.Namespace) -> int:
    """Every status the server reports — overall, each service, each app, each storage backend — and the
    services it does not host; exit 0 only when everything it reports serves.

    Health's `List` needs no token, and names what no client could guess (app ids, backends).
    """
    with _client(args) as client:
        try:
            # typeshed's grpc_health stubs (types-grpcio-health-checking) know neither List nor its messages
            listed = health_pb2_grpc.HealthStub(client.channel).List(  # type: ignore[attr-defined]
                health_pb2.HealthListRequest(),  # type: ignore[attr-defined]
                timeout=HEALTH_TIMEOUT_SECONDS,
            )
        except grpc.RpcError as error:
            return _failed("health", FerryError.from_rpc_error(error))
    statuses = {
        name: health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status) for name, reply in listed.statuses.items()
    }
    for name in sorted({*statuses, *SERVICE_NAMES}):  # "" (the whole server) sorts first
        print(f"{name or 'server'}: {statuses.get(name, 'not hosted')}")
    return 0 if _healthy(statuses) else 1


def _healthy(statuses: dict[str, str]) -> bool:
    """Everything the server reports serves — except storage backends, of which one taking writes is enough:
    a backend whose circuit is open while a fallback takes its writes is news, not an outage."""
    backends = [status for name, status in statuses.items() if name.startswith(STORAGE_HEALTH_PREFIX)]
    others = [status for name, status in statuses.items() if not name.startswith(STORAGE_HEALTH_PREFIX)]
    return bool(others) and all(s == "SERVING" for s in others) and (not backends or "SERVING" in backends)


# -- apps --------------------------------------------------------------------------------


def _list_apps(client: Client, app_id: str) -> list[inference_pb2.AppDescription]:
    try:
        return list(client.inference.ListEndpoints(inference_pb2.ListEndpointsRequest(app_id=app_id)).apps)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.UNIMPLEMENTED:
            raise Unimplemented("this server does not host the InferenceService") from None
        raise FerryError.from_rpc_error(error) from None


def _type_name(schema: dict[str, Any]) -> str:
    """A JSON schema's type, as a person reads it: `string`, `integer | null`, `array[string]`, `one of "a", "b"`."""
    if "anyOf" in schema:
        return " | ".join(_type_name(member) for member in schema["anyOf"])
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(value) for value in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    kind = schema.get("type")
    if kind == "array":
        return f"array[{_type_name(schema.get('items', {}))}]"
    if kind == "object" and "title" in schema:
        return str(schema["title"])
    if "$ref" in schema:  # a recursive model, left under $defs
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if isinstance(kind, list):
        return " | ".join(kind)
    return str(kind or "any")


def _hint(schema: dict[str, Any]) -> str:
    """The playground hint (`ui`) on a field: `image`, `file, dataset`."""
    ui = schema.get("ui")
    if not isinstance(ui, dict):
        return ""
    extras = [key if value is True else f"{key}={value}" for key, value in ui.items() if key != "field"]
    return ", ".join([str(ui["field"]), *extras] if "field" in ui else extras)


def _field_lines(input_schema: dict[str, Any]) -> list[str]:
    required = set(input_schema.get("required", ()))
    lines = []
    for name, schema in input_schema.get("properties", {}).items():
        line = f"{name}: {_type_name(schema)}"
        if name in required:
            line += ", required"
        elif "default" in schema:
            line += f" = {json.dumps(schema['default'])}"
        if hint := _hint(schema):
            line += f"  [ui: {hint}]"
        if description := schema.get("description"):
            line += f"  # {description}"
        lines.append(line)
    return lines or ["(no input fields)"]


def _describe_app(app: inference_pb2.AppDescription) -> str:
    """One app as a block of text: its id and machine type, each endpoint, each input field."""
    lines = [f"{app.app_id} ({app.machine_type})"]
    for endpoint in app.endpoints:
        lines.append(f"  {endpoint.path}" + ("  (realtime)" if endpoint.realtime else ""))
        lines.extend(f"    {line}" for line in _field_lines(json.loads(endpoint.input_schema_json)))
    return "\n".join(lines)


def _apps(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            apps = _list_apps(client, args.app or "")
        except FerryError as error:
            return _failed("apps", error)
    if apps:
        print("\n\n".join(_describe_app(app) for app in apps))
    else:
        print("ferry apps: no apps hosted (`ferry serve --app module:Class` hosts one)", file=sys.stderr)
    return 0


# -- download and upload -----------------------------------------------------------------


def _download(args: argparse.Namespace) -> int:
    display = ProgressDisplay("download")
    cache_hit = False

    def show(progress: DownloadProgress) -> None:
        nonlocal cache_hit
        if progress.cache_hit:
            cache_hit = True  # nothing is transferred: no bar
            return
        display.label = progress.file_name or "download"
        display.update(progress.bytes_done, progress.total_bytes, progress.bytes_per_second)

    with _client(args) as client:
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
            return _failed("download", error)
        except KeyboardInterrupt:
            display.finish()
            print("ferry download: cancelled", file=sys.stderr)
            return 130
    display.finish()
    if cache_hit:
        print(f"{path.name}: cache hit (the stack's copy is current; nothing was downloaded)", file=sys.stderr)
    print(path)
    return 0


LARGE_UPLOAD_BYTES = 8 << 20  # below this a bar would only flash


def _upload_source(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        raise UsageError(f"{_shown(text)} is a directory: upload one file at a time")
    if not path.exists():
        raise UsageError(f"no such file: {_shown(text)}")
    if not path.is_file():
        raise UsageError(f"{_shown(text)} is not a regular file")
    return path


def _upload(args: argparse.Namespace) -> int:
    path = _upload_source(args.file)
    display = ProgressDisplay(path.name)
    began = time.monotonic()

    def show(sent: int, total: int) -> None:
        if total >= LARGE_UPLOAD_BYTES:
            display.update(sent, total, sent / max(time.monotonic() - began, 1e-6))

    with _client(args) as client:
        try:
            stored = client.upload_file(path, expires_in=args.expires_in, on_progress=show)
        except FerryError as error:
            display.finish()
            return _failed("upload", error)
        except KeyboardInterrupt:  # multipart uploads are aborted before this propagates
            display.finish()
            print("ferry upload: cancelled", file=sys.stderr)
            return 130
    display.finish()
    print(stored.url)
    return 0


# -- run ---------------------------------------------------------------------------------


def _read_input(text: str) -> dict[str, Any]:
    """`--input` as a dict: inline JSON, `@FILE`, or `-` for stdin."""
    if text == "-":
        source, raw = "stdin", sys.stdin.read()
    elif text.startswith("@"):
        source = text[1:]
        try:
            raw = Path(source).read_text()
        except OSError as error:
            raise UsageError(f"invalid --input: cannot read {source}: {error.strerror or error}") from None
    else:
        source, raw = _shown(text), text
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as error:
        raise UsageError(f"invalid --input: {source} is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise UsageError(f"invalid --input: {source} must be a JSON object, got {type(document).__name__}")
    return document


def _progress_text(progress: Progress) -> str:
    if progress.total > 0:
        return f"{progress.current:g}/{progress.total:g} ({100 * progress.current / progress.total:.0f}%)"
    return f"{progress.current:g}"


class RunStatus:
    """A request's events as a person follows them: queue position changes, log lines and progress.

    On a terminal progress is one line redrawn in place (log lines print above
    it), as wide as the terminal allows; elsewhere it is plain lines, at most
    one a second plus the last, so a log file does not fill with every step.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self._request_id = ""
        self._position: int | None = None
        self._live_line = ""  # the progress line on screen, redrawn after each log line
        self._last_plain = 0.0
        self._last_label = ""

    def show(self, event: Event) -> None:
        if not self._request_id:
            self._request_id = event.request_id
            self._line(f"request {event.request_id}")
        if isinstance(event, Queued) and event.position != self._position:
            self._position = event.position
            self._line(f"queued: position {self._position}")
        elif isinstance(event, InProgress):
            if not event.logs and event.progress is None:  # the empty event marks the start
                self._line("in progress")
            for log_line in event.logs:
                self._line(f"[{log_line['level'] or 'INFO'}] {log_line['message']}")
            if event.progress is not None:
                self._progress(event.progress)
        elif isinstance(event, PartialOutput):
            self._line(f"partial output: {json.dumps(event.output, ensure_ascii=False)}")

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
            self.stream.write("\r" + ERASE_TO_END)  # erase the progress line, print above it, then redraw it
        self.stream.write(text + "\n")
        if self._live_line:
            self.stream.write(self._live_line)
        self.stream.flush()

    def _progress(self, progress: Progress) -> None:
        label = progress.message or "progress"
        if self.live:
            fraction = progress.current / progress.total if progress.total > 0 else None
            self._live_line = bar_line(label, fraction, [_progress_text(progress)], terminal_columns(self.stream))
            self.stream.write("\r" + ERASE_TO_END + self._live_line)
            self.stream.flush()
            return
        done = progress.total > 0 and progress.current >= progress.total
        now = time.monotonic()
        if done or label != self._last_label or now - self._last_plain >= PLAIN_LINE_INTERVAL_SECONDS:
            self._last_plain, self._last_label = now, label
            message = f" {progress.message}" if progress.message else ""
            self._line(f"progress: {_progress_text(progress)}{message}")


def _follow(events: Iterator[Event], status: RunStatus) -> dict[str, Any]:
    """Show each event until the request completes (its output) or ends otherwise (its error, raised)."""
    try:
        for event in events:
            if isinstance(event, Completed):
                return event.output
            if isinstance(event, (Failed, Cancelled)):
                raise event.error
            status.show(event)
    finally:
        # Closing the stream cancels the request server-side: Ctrl-C must not leave it running.
        if isinstance(events, Generator):
            events.close()
    raise Unknown("the stream ended without a result")


def _run(args: argparse.Namespace) -> int:
    arguments = _read_input(args.input)
    status = RunStatus(sys.stderr)
    began = time.monotonic()
    with _client(args) as client:
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


# -- the parser --------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line that says where the full usage is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` names each option's default, where it has one to name (not for flags or unset options)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


def _command(commands: Any, name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=help, description=kwargs.pop("description", help), formatter_class=_HelpWithDefaults, **kwargs
    )
    return parser


def _connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        metavar="HOST:PORT",
        help=f"the stack's gRPC address (default: $FERRY_ADDRESS, else {DEFAULT_ADDRESS})",
    )
    parser.add_argument("--token", help="bearer token, for a stack started with --token (default: $FERRY_TOKEN)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ferry", description="Move media in and out of GPU inference.", formatter_class=_HelpWithDefaults
    )
    parser.add_argument("--version", action="version", version=f"ferry {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # Listed for --help; `main` hands `serve` to the services package, which
    # the SDK imports only when asked to serve.
    _command(commands, "serve", "run the stack (all services, or the ones named); see `ferry serve --help`")

    health = _command(commands, "health", "the serving status of the server, each service it hosts and each app")
    _connection_arguments(health)
    health.set_defaults(handler=_health)

    apps = _command(commands, "apps", "the hosted apps, their endpoints and each endpoint's input fields")
    apps.add_argument("app", nargs="?", help="only this app id (default: every hosted app)")
    _connection_arguments(apps)
    apps.set_defaults(handler=_apps)

    download = _command(commands, "download", "download a URL or data: URI through the stack; prints the path")
    download.add_argument("url")
    download.add_argument(
        "--to",
        metavar="DIR",
        help="where the file goes: an absolute folder on this machine, or one relative to the service's data dir",
    )
    download.add_argument("--force", action="store_true", help="download again even when cached")
    download.add_argument(
        "--header",
        action="append",
        type=_header,
        default=[],
        metavar="NAME:VALUE",
        help="send this header to the source (repeatable)",
    )
    download.add_argument(
        "--limit-mb", type=_positive_number, metavar="MB", help="refuse files larger than this many MB"
    )
    _connection_arguments(download)
    download.set_defaults(handler=_download)

    upload = _command(commands, "upload", "store a local file through the stack; prints its URL")
    upload.add_argument("file")
    upload.add_argument("--expires-in", type=_seconds, metavar="SECONDS", help="delete the stored file after this long")
    _connection_arguments(upload)
    upload.set_defaults(handler=_upload)

    run = _command(
        commands,
        "run",
        "run an app endpoint with live status on stderr; prints its output JSON",
        description="Run an app endpoint: queue position, logs and progress go to stderr as they happen, "
        "the output JSON to stdout. Ctrl-C cancels the request.",
    )
    run.add_argument("app", help="the app id (as `ferry apps` lists it)")
    run.add_argument("--path", default="/", help="the endpoint path")
    run.add_argument(
        "--input", default="{}", metavar="JSON", help="the input: a JSON object, @FILE to read one, or - for stdin"
    )
    run.add_argument(
        "--expires-in", type=_seconds, metavar="SECONDS", help="delete the media it produces after this long"
    )
    _connection_arguments(run)
    run.set_defaults(handler=_run)
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
    try:
        return int(args.handler(args) or 0)
    except UsageError as error:
        print(f"ferry {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
