"""The `ferry` command line as a person meets it: --version, --help with defaults, --token, usage errors,
`ferry apps`, `ferry health`, and what `ferry serve` says about the apps it hosts.

Every command runs as a subprocess against a real `ferry serve`. A usage
error prints one line and exits 2 before any call (those tests point the
command at an address where nothing listens, where a call would exit 1).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import ferry
from ferry.testing import StackProcess
from tests.harness import wait_for

INFERENCE = Path(__file__).parent.parent / "inference"
SAMPLE_APP = f"{INFERENCE / 'sample_app.py'}:SampleApp"
MEDIA_APP = f"{INFERENCE / 'media_app.py'}:MediaApp"
PROBED_APP = f"{INFERENCE / 'media_app.py'}:ProbedApp"
CLIENT_COMMANDS = ("health", "apps", "download", "upload", "run")
TOKEN = "s3cret-token"


def _environment(**extra: str) -> dict[str, str]:
    """This environment minus any FERRY_* setting that would change where or how the CLI connects."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}, **extra}


def ferry_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferry.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or _environment(),
        check=False,
    )


@pytest.fixture(scope="module")
def unhealthy_flag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("health") / "unhealthy"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, unhealthy_flag: Path) -> Iterator[StackProcess]:
    """Every service and three apps; ProbedApp's health check fails while `unhealthy_flag` exists."""
    args = ["--data-dir", str(tmp_path_factory.mktemp("data"))]
    for app in (SAMPLE_APP, MEDIA_APP, PROBED_APP):
        args += ["--app", app]
    with StackProcess(args, env={"FERRY_TEST_UNHEALTHY_FLAG": str(unhealthy_flag)}) as started:
        yield started


# -- version and help ---------------------------------------------------------------------


def test_version_prints_the_package_version():
    result = ferry_cli("--version")

    assert result.returncode == 0
    assert result.stdout == f"ferry {ferry.__version__}\n"


@pytest.mark.parametrize(
    ("command", "default"),
    [
        ("run", "--path PATH the endpoint path (default: /)"),
        ("run", "or - for stdin (default: {})"),
        ("serve", "[env FERRY_GRPC_PORT] (default: 50051)"),
        ("serve", "[env FERRY_HOST] (default: 127.0.0.1)"),
        ("serve", "[env FERRY_STORAGE] (default: local)"),
    ],
)
def test_help_shows_each_options_default(command, default):
    result = ferry_cli(command, "--help")

    assert result.returncode == 0
    assert default in " ".join(result.stdout.split()), result.stdout


@pytest.mark.parametrize("command", CLIENT_COMMANDS)
def test_every_client_command_takes_a_token_and_says_where_the_defaults_come_from(command):
    result = ferry_cli(command, "--help")

    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--token TOKEN" in text and "(default: $FERRY_TOKEN)" in text
    assert "(default: $FERRY_ADDRESS, else 127.0.0.1:50051)" in text


# -- usage errors -------------------------------------------------------------------------


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "note.txt"
    path.write_text("hello")
    return path


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("download", "http://example.com/x", "--limit-mb", "-1"), "--limit-mb: must be a number > 0, got '-1'"),
        (("download", "http://example.com/x", "--limit-mb", "0"), "--limit-mb: must be a number > 0"),
        (("download", "http://example.com/x", "--limit-mb", "nan"), "--limit-mb: must be a number > 0"),
        (("download", "http://example.com/x", "--limit-mb", "lots"), "--limit-mb: expected a number, got 'lots'"),
        (("upload", "{file}", "--expires-in", "-5"), "--expires-in: must be at least 1 second, got '-5'"),
        (("upload", "{file}", "--expires-in", "0"), "--expires-in: must be at least 1 second"),
        (("upload", "{file}", "--expires-in", str(2**64)), "--expires-in: is too large"),
        (("upload", "{file}", "--expires-in", "1.5"), "--expires-in: expected a whole number of seconds"),
        (("run", "sample", "--expires-in", "0"), "--expires-in: must be at least 1 second"),
        (("upload", "{directory}"), "is a directory: upload one file at a time"),
        (("upload", "{directory}/missing.bin"), "no such file"),
        (("upload", "/dev/null"), "is not a regular file"),
    ],
)
def test_a_bad_flag_value_is_one_line_and_exit_2_before_any_call(args, complaint, tmp_path, a_file, dead_address):
    argv = [arg.format(directory=tmp_path, file=a_file) for arg in args]
    result = ferry_cli(*argv, "--address", dead_address)

    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"ferry {args[0]}: "), result.stderr
    assert complaint in result.stderr


@pytest.mark.parametrize(
    ("address", "complaint"),
    [
        ("http://127.0.0.1:50051", "expected HOST:PORT, not a URL"),
        ("127.0.0.1", "expected HOST:PORT"),
        ("127.0.0.1:99999", "a port from 1 to 65535"),
        ("127.0.0.1:0", "a port from 1 to 65535"),
        ("127.0.0.1:http", "a port from 1 to 65535"),
        ("::1:50051", "an IPv6 host in brackets: [::1]:50051"),
        (":50051", "expected HOST:PORT"),
    ],
)
@pytest.mark.parametrize("command", CLIENT_COMMANDS)
def test_a_malformed_address_is_a_usage_error(command, address, complaint, a_file):
    args = {"download": ("http://example.com/x",), "upload": (str(a_file),), "run": ("sample",)}.get(command, ())

    result = ferry_cli(command, *args, "--address", address)

    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"ferry {command}: --address {address!r}: ") and result.stderr.count("\n") == 1
    assert complaint in result.stderr


def test_a_malformed_ferry_address_is_named_as_the_source():
    result = ferry_cli("health", env=_environment(FERRY_ADDRESS="localhost"))

    assert result.returncode == 2
    assert result.stderr == "ferry health: FERRY_ADDRESS 'localhost': expected HOST:PORT\n"


@pytest.mark.parametrize("address", ["[::1]:1", "unix:/nonexistent/ferry.sock", "dns:///localhost:1"])
def test_addresses_grpc_understands_are_not_usage_errors(address):
    result = ferry_cli("health", "--address", address)

    assert result.returncode == 1, "the call is made (and finds nothing there)"
    assert result.stderr.startswith("ferry health: UNAVAILABLE: "), result.stderr


BROKEN_APP = """
from typing import Annotated
from pydantic import BaseModel
from ferry.inference import App, Encode, endpoint
from ferry.toolkit import Video

class Prompt(BaseModel):
    prompt: str

class Clip(BaseModel):
    clip: Annotated[Video, Encode(crf=20)]

class Broken(App):
    @endpoint("/")
    def run(self, input: Prompt) -> Clip: ...
"""


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("sample_app", "should be 'package.module:ClassName' or 'path/to/file.py:ClassName'"),
        ("no.such.module:App", "no module named 'no.such.module'"),
        ("{here}/sample_app.py:NoSuchApp", "has no 'NoSuchApp'"),
        ("{here}/sample_app.py:EchoInput", "is not a subclass of ferry.inference.App"),
        ("{tmp}/missing.py:App", "no such app file"),
        ("{tmp}/broken.py:Broken", "Broken.run (endpoint '/'): output field 'clip'"),
    ],
)
def test_an_app_that_cannot_be_loaded_is_one_line_and_exit_2(spec, complaint, tmp_path):
    (tmp_path / "broken.py").write_text(BROKEN_APP)
    app = spec.format(here=INFERENCE, tmp=tmp_path)

    result = ferry_cli("serve", "inference", "--grpc-port", "0", "--data-dir", str(tmp_path / "data"), "--app", app)

    assert result.returncode == 2, result.stderr
    assert result.stdout == "", "never ready"
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("ferry serve: --app"), result.stderr
    assert complaint in result.stderr


def test_two_apps_with_one_id_are_a_usage_error(tmp_path):
    result = ferry_cli(
        "serve", "inference", "--grpc-port", "0", "--data-dir", str(tmp_path), "--app", SAMPLE_APP, "--app", SAMPLE_APP
    )

    assert result.returncode == 2
    assert "another app already has the id 'sample'" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--grpc-port", "99999"], "--grpc-port must be between 0 and 65535, got 99999"),
        (["--grpc-port", "-1"], "--grpc-port must be between 0 and 65535, got -1"),
        (["--chunk-mib", "0"], "--chunk-mib must be between 1 and 1024, got 0"),
        (["--drain-seconds", "-5"], "--drain-seconds must be at least 0, got -5.0"),
        (["--data-uri-limit-mib", "-1"], "--data-uri-limit-mib must be above 0 and at most 1024, got -1.0"),
        (["--max-pixels", "0"], "--max-pixels must be at least 1, got 0"),
        (["--retries", "-1"], "--retries must be between 0 and 100, got -1"),
        (["--read-timeout-seconds", "0"], "--read-timeout-seconds must be above 0, got 0.0"),
        (
            ["--tls-cert", "/no/such/cert.pem", "--tls-key", "/no/such/key.pem"],
            "--tls-cert '/no/such/cert.pem': no such file",
        ),
    ],
)
def test_serve_refuses_a_bad_flag_value_in_one_line_with_exit_2(flags, complaint, tmp_path):
    result = ferry_cli("serve", "--grpc-port", "0", "--cdn-port", "0", "--data-dir", str(tmp_path), *flags)

    assert result.returncode == 2, result.stderr
    assert result.stderr == f"ferry serve: {complaint}\n"


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--host", "999.1.1.1"], "ferry serve: cannot listen on 999.1.1.1:0"),
        (
            ["--data-dir", "/proc/cannot/be/made"],
            "ferry serve: --data-dir '/proc/cannot/be/made': No such file or directory",
        ),
    ],
)
def test_serve_that_cannot_start_says_why_in_one_line_and_exits_1(flags, complaint, tmp_path):
    result = ferry_cli("serve", "--grpc-port", "0", "--cdn-port", "0", "--data-dir", str(tmp_path), *flags)

    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(complaint) and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == "", "never ready"


def test_serve_on_a_port_in_use_says_so_in_one_line(start_ferry, tmp_path):
    taken = start_ferry("downloader").grpc_address.rsplit(":", 1)[1]

    result = ferry_cli("serve", "downloader", "--grpc-port", taken, "--data-dir", str(tmp_path / "second"))

    assert result.returncode == 1
    assert (
        result.stderr.startswith(f"ferry serve: cannot listen on 127.0.0.1:{taken} for gRPC")
        and result.stderr.count("\n") == 1
    )


# -- ferry apps ---------------------------------------------------------------------------


def test_apps_lists_each_app_its_endpoints_and_each_input_field_with_type_default_and_hint(stack):
    result = ferry_cli("apps", "--address", stack.grpc_address)

    assert result.returncode == 0, result.stderr
    blocks = {block.splitlines()[0]: block.splitlines()[1:] for block in result.stdout.strip().split("\n\n")}
    assert set(blocks) == {"sample (GPU)", "media (GPU)", "probed (CPU)"}
    sample = blocks["sample (GPU)"]
    assert sample[:3] == ["  /", "    text: string, required", "    times: integer = 1"]
    assert "  /slow" in sample and "    step_seconds: number = 0.05" in sample
    media = blocks["media (GPU)"]
    at = media.index("  /inspect")
    assert media[at + 1 : at + 4] == [
        "    image_url: string, required  [ui: image]",
        "    extra_urls: array[string] = []  [ui: file, dataset]",
        "    mask_url: string | null = null  [ui: file]",
    ]
    assert "  /hang" in media and "    (no input fields)" in media


def test_apps_with_an_app_id_shows_only_that_app_and_an_unknown_one_is_not_found(stack):
    one = ferry_cli("apps", "sample", "--address", stack.grpc_address)
    unknown = ferry_cli("apps", "nope", "--address", stack.grpc_address)

    assert one.returncode == 0 and one.stdout.startswith("sample (GPU)\n") and "media" not in one.stdout
    assert unknown.returncode == 1 and unknown.stderr.startswith("ferry apps: NOT_FOUND: "), unknown.stderr


def test_apps_on_a_runner_without_apps_says_how_to_host_one(start_ferry):
    runner = start_ferry("inference")

    result = ferry_cli("apps", "--address", runner.grpc_address)

    assert result.returncode == 0 and result.stdout == ""
    assert result.stderr == "ferry apps: no apps hosted (`ferry serve --app module:Class` hosts one)\n"


def test_apps_against_a_server_without_the_inference_service_says_so(start_ferry):
    downloader = start_ferry("downloader")

    result = ferry_cli("apps", "--address", downloader.grpc_address)

    assert result.returncode == 1
    assert result.stderr == "ferry apps: UNIMPLEMENTED: this server does not host the InferenceService\n"


# -- ferry health -------------------------------------------------------------------------


def test_health_of_a_single_service_server_reports_what_it_hosts_and_exits_0(start_ferry):
    downloader = start_ferry("downloader")

    result = ferry_cli("health", "--address", downloader.grpc_address)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "server: SERVING",
        "ferry.v1.DownloaderService: SERVING",
        "ferry.v1.EncoderService: not hosted",
        "ferry.v1.InferenceService: not hosted",
    ]


def test_health_shows_each_hosted_app_and_fails_while_one_does_not_serve(stack, unhealthy_flag):
    healthy = ferry_cli("health", "--address", stack.grpc_address)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    lines = healthy.stdout.splitlines()
    assert lines[0] == "server: SERVING"
    for app in ("sample", "media", "probed"):
        assert f"ferry.v1.InferenceService/{app}: SERVING" in lines

    unhealthy_flag.touch()
    try:
        with stack.client() as client:
            wait_for(lambda: client.health("ferry.v1.InferenceService/probed") == "NOT_SERVING", "the probe to fail")
        failing = ferry_cli("health", "--address", stack.grpc_address)
    finally:
        unhealthy_flag.unlink()
    assert failing.returncode == 1
    assert "ferry.v1.InferenceService/probed: NOT_SERVING" in failing.stdout.splitlines()
    assert "ferry.v1.InferenceService/sample: SERVING" in failing.stdout.splitlines()


def test_health_needs_no_token(start_ferry):
    guarded = start_ferry("inference", "--app", SAMPLE_APP, "--token", TOKEN)

    result = ferry_cli("health", "--address", guarded.grpc_address)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "ferry.v1.InferenceService/sample: SERVING" in result.stdout.splitlines()


def test_health_shows_a_storage_backend_whose_circuit_is_open_and_exits_0_while_a_fallback_takes_writes(
    start_ferry, dead_address
):
    aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    s3 = ["--storage", "s3://nowhere/x", "--s3-endpoint-url", f"http://{dead_address}", "--storage-attempts", "5"]
    with_fallback = start_ferry("encoder", *s3, "--storage", "local", env=aws)
    alone = start_ferry("encoder", *s3, env=aws)
    # Five failed attempts open the S3 circuit: the first stack's write lands on local, the second's fails.
    with with_fallback.client() as client:
        client.upload_bytes(b"x", "text/plain", "x.txt")
    with alone.client() as client, pytest.raises(ferry.FerryError):
        client.upload_bytes(b"x", "text/plain", "x.txt")

    shown = ferry_cli("health", "--address", with_fallback.grpc_address)
    assert shown.returncode == 0, shown.stdout
    assert "ferry.v1.EncoderService/storage/s3://nowhere/x: NOT_SERVING" in shown.stdout
    assert "ferry.v1.EncoderService/storage/local: SERVING" in shown.stdout
    assert ferry_cli("health", "--address", alone.grpc_address).returncode == 1, "no backend takes writes"


def test_health_of_an_unreachable_server_is_unavailable(dead_address):
    result = ferry_cli("health", "--address", dead_address)

    assert result.returncode == 1
    assert result.stderr.startswith("ferry health: UNAVAILABLE: "), result.stderr


# -- tokens -------------------------------------------------------------------------------


def test_token_comes_from_the_flag_or_ferry_token(start_ferry):
    guarded = start_ferry("inference", "--app", SAMPLE_APP, "--token", TOKEN)

    refused = ferry_cli("apps", "--address", guarded.grpc_address)
    by_flag = ferry_cli("apps", "--address", guarded.grpc_address, "--token", TOKEN)
    by_environment = ferry_cli("apps", "--address", guarded.grpc_address, env=_environment(FERRY_TOKEN=TOKEN))

    assert refused.returncode == 1 and refused.stderr.startswith("ferry apps: UNAUTHENTICATED: "), refused.stderr
    assert by_flag.returncode == 0 and by_flag.stdout.startswith("sample (GPU)\n"), by_flag.stderr
    assert by_environment.returncode == 0 and by_environment.stdout == by_flag.stdout


# -- ferry serve --------------------------------------------------------------------------


def test_serve_logs_the_apps_it_hosts_and_keeps_stdout_to_the_ready_line(start_ferry):
    served = start_ferry("inference", "--app", SAMPLE_APP, "--app", MEDIA_APP)
    served.signal(signal.SIGTERM)
    assert served.wait() == 0
    assert served.process is not None and served.process.stdout is not None
    rest_of_stdout = served.process.stdout.read()
    stderr = served.stop()

    assert rest_of_stdout == "", "stdout holds the ready line alone"
    assert "hosting app sample (SampleApp): /, /slow, /fail, /refuse, /image, /async" in stderr
    assert "hosting app media (MediaApp): /inspect, /tensors, " in stderr


# -- upload to a dead address --------------------------------------------------------------


def test_upload_to_a_dead_address_fails_unavailable_in_seconds_not_after_the_full_backoff(dead_address, a_file):
    began = time.monotonic()
    result = ferry_cli("upload", str(a_file), "--address", dead_address)
    elapsed = time.monotonic() - began

    assert result.returncode == 1
    assert result.stderr.startswith("ferry upload: UNAVAILABLE: "), result.stderr
    assert elapsed < 10, "the SDK gives up on an address where nothing listens within its connect budget (~3 s)"
