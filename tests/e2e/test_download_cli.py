"""`ferry download` as a user runs it: a subprocess against a real `ferry serve`.

The path goes to stdout (one line, for `$(ferry download …)`), progress to
stderr: plain lines when stderr is a pipe or file, a live bar on a terminal.
Failures print `ferry download: CODE: message` and exit 1.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from aiohttp import web

from ferry.progress import ERASE_TO_END
from ferry.sizes import MIB
from tests.harness import run_with_stderr_on_a_terminal, socket_bound_but_not_listening, wait_for

KIB = 1 << 10
PLAIN_LINE = re.compile(r"^clip\.bin: [\d.]+ (B|KiB|MiB)/1\.0 MiB [\d.]+ (B|KiB|MiB|GiB)/s( ETA \d+s)?$")


def _body(size: int) -> bytes:
    return b"".join(i.to_bytes(4, "big") * (KIB // 4) for i in range(size // KIB))[:size]


def _environment(**extra: str) -> dict[str, str]:
    """This environment minus any FERRY_* setting that would change where or how the CLI connects."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    return {**env, **extra}


def ferry_download(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferry.cli", "download", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or _environment(),
    )


@pytest.fixture
def data(tmp_path) -> Path:
    return (tmp_path / "data").resolve()


@pytest.fixture
def stack(start_ferry, data):
    return start_ferry("downloader", "--data-dir", str(data), "--allow-private-networks")


@pytest.mark.timeout(60)
def test_prints_the_path_alone_on_stdout_and_plain_progress_lines_on_stderr(stack, http_server, data):
    body = _body(MIB)
    url = http_server.add_file("clip.bin", body)

    result = ferry_download(url, "--address", stack.grpc_address)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and result.stdout == lines[0] + "\n"
    path = Path(lines[0])
    assert path.name == "clip.bin" and path.is_relative_to(data)
    assert path.read_bytes() == body
    assert "\r" not in result.stderr, "no live bar when stderr is not a terminal"
    progress = result.stderr.splitlines()
    assert progress, "plain progress lines on stderr"
    assert all(PLAIN_LINE.match(line) for line in progress), progress
    assert progress[-1].startswith("clip.bin: 1.0 MiB/1.0 MiB "), "the last line reports the whole file"


@pytest.mark.timeout(60)
def test_to_puts_the_file_under_the_data_dir_and_ferry_address_comes_from_the_environment(stack, http_server, data):
    body = _body(100 * KIB)
    url = http_server.add_file("clip.bin", body)

    result = ferry_download(url, "--to", "media/in", env=_environment(FERRY_ADDRESS=stack.grpc_address))

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{data / 'media' / 'in' / 'clip.bin'}\n"
    assert (data / "media" / "in" / "clip.bin").read_bytes() == body


@pytest.mark.timeout(60)
def test_force_fetches_again_where_a_repeat_is_served_from_the_cache_and_says_so(stack, http_server, data):
    url = http_server.add_file("clip.bin", _body(100 * KIB))
    common = ("--to", "in", "--address", stack.grpc_address)

    first = ferry_download(url, *common)
    repeat = ferry_download(url, *common)
    assert first.returncode == repeat.returncode == 0, first.stderr + repeat.stderr
    assert repeat.stdout == first.stdout
    assert len(http_server.gets("/clip.bin")) == 1, "a repeat without --force is a cache hit"

    forced = ferry_download(url, "--force", *common)
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout == first.stdout
    assert len(http_server.gets("/clip.bin")) == 2, "--force fetches from the source again"

    hit = "clip.bin: cache hit (the stack's copy is current; nothing was downloaded)"
    assert repeat.stderr.splitlines() == [hit], "a cache hit says so"
    assert hit not in first.stderr and hit not in forced.stderr


@pytest.mark.timeout(60)
def test_header_reaches_the_source(stack, http_server):
    url = http_server.add_file("clip.bin", _body(10 * KIB))

    result = ferry_download(url, "--header", "Authorization:Bearer x", "--address", stack.grpc_address)

    assert result.returncode == 0, result.stderr
    (headers,) = http_server.gets("/clip.bin")
    assert headers["Authorization"] == "Bearer x"


@pytest.mark.timeout(60)
def test_limit_mb_below_the_file_size_fails_with_resource_exhausted(stack, http_server, data):
    url = http_server.add_file("clip.bin", _body(2 * MIB))

    result = ferry_download(url, "--limit-mb", "1", "--to", "limited", "--address", stack.grpc_address)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("ferry download: RESOURCE_EXHAUSTED: "), result.stderr
    assert os.listdir(data / "limited") == [], "neither a file nor a temp file is left"


@pytest.mark.timeout(60)
def test_to_an_absolute_folder_outside_the_data_dir_puts_the_file_there(stack, http_server, tmp_path):
    url = http_server.add_file("clip.bin", _body(10 * KIB))

    result = ferry_download(url, "--to", str(tmp_path / "elsewhere"), "--address", stack.grpc_address)

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{tmp_path / 'elsewhere' / 'clip.bin'}\n"
    assert (tmp_path / "elsewhere" / "clip.bin").read_bytes() == _body(10 * KIB)


@pytest.mark.timeout(60)
def test_missing_source_fails_with_not_found(stack, http_server):
    result = ferry_download(http_server.url("nope.bin"), "--address", stack.grpc_address)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("ferry download: NOT_FOUND: "), result.stderr


@pytest.mark.timeout(60)
def test_private_address_is_refused_by_a_server_without_allow_private_networks(start_ferry, http_server):
    guarded = start_ferry("downloader")
    url = http_server.add_file("clip.bin", _body(10 * KIB))

    result = ferry_download(url, "--address", guarded.grpc_address)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("ferry download: PERMISSION_DENIED: "), result.stderr
    assert http_server.requests == [], "the guard refuses before any connection"


@pytest.mark.timeout(60)
def test_unreachable_server_fails_with_unavailable(http_server):
    with socket_bound_but_not_listening() as address:
        result = ferry_download(http_server.url("clip.bin"), "--address", address)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("ferry download: UNAVAILABLE: "), result.stderr


def test_malformed_header_is_a_usage_error():
    result = ferry_download("http://example.com/x", "--header", "no-colon-here")

    assert result.returncode == 2
    assert "expected NAME:VALUE" in result.stderr


@pytest.mark.timeout(60)
def test_live_bar_on_a_terminal(stack, http_server):
    url = http_server.add_file("clip.bin", _body(MIB))
    command = [sys.executable, "-m", "ferry.cli", "download", url, "--address", stack.grpc_address]
    returncode, stdout, screen = run_with_stderr_on_a_terminal(command, _environment())
    assert returncode == 0, screen
    assert Path(stdout.strip()).name == "clip.bin" and stdout.count("\n") == 1
    assert "\rclip.bin [" in screen, "the bar redraws in place"
    assert re.search(r"\] 1\.0 MiB/1\.0 MiB [\d.]+ (B|KiB|MiB|GiB)/s", screen), screen
    assert screen.endswith("\n"), "the finished bar leaves the cursor on a fresh line"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("window", "columns_variable"), [(50, None), (200, "50")], ids=["a 50-column terminal", "COLUMNS=50"]
)
def test_the_live_bar_fits_a_narrow_terminal_and_redraws_on_its_one_line(stack, http_server, window, columns_variable):
    name = "a-rather-long-file-name-for-a-narrow-terminal.bin"
    url = http_server.add_file(name, _body(MIB))
    env = {k: v for k, v in _environment().items() if k not in ("COLUMNS", "LINES")}
    if columns_variable:
        env["COLUMNS"] = columns_variable
    command = [sys.executable, "-m", "ferry.cli", "download", url, "--address", stack.grpc_address]

    returncode, stdout, screen = run_with_stderr_on_a_terminal(command, env, columns=window)

    assert returncode == 0, screen
    assert Path(stdout.strip()).name == name
    assert screen.endswith("\n") and screen.count("\n") == 1, "every redraw stays on the bar's one line"
    redraws = [part.removesuffix(ERASE_TO_END) for part in screen.removesuffix("\n").split("\r") if part]
    assert redraws and all(len(line) < 50 for line in redraws), redraws
    assert redraws[-1].startswith("a-rather-long") and "] 1.0 MiB/1.0 MiB" in redraws[-1], "the label gives way first"


@pytest.mark.timeout(60)
def test_a_cache_hit_on_a_terminal_is_its_one_line_and_no_empty_bar(stack, http_server):
    url = http_server.add_file("clip.bin", _body(100 * KIB))
    assert ferry_download(url, "--to", "in", "--address", stack.grpc_address).returncode == 0
    command = [sys.executable, "-m", "ferry.cli", "download", url, "--to", "in", "--address", stack.grpc_address]

    returncode, _stdout, screen = run_with_stderr_on_a_terminal(command, _environment())

    assert returncode == 0, screen
    assert screen == "clip.bin: cache hit (the stack's copy is current; nothing was downloaded)\n"


@pytest.mark.timeout(60)
def test_ctrl_c_stops_the_transfer_on_the_server_and_leaves_nothing(stack, http_server, data):
    source_dropped = threading.Event()

    async def trickle(request: web.Request) -> web.StreamResponse:
        body = _body(8 * MIB)  # ~6 s at this pace: still running when the user presses Ctrl-C
        response = web.StreamResponse(headers={"Content-Length": str(len(body))})
        await response.prepare(request)
        try:
            for start in range(0, len(body), 64 * KIB):
                await response.write(body[start : start + 64 * KIB])
                await asyncio.sleep(0.05)
        except ConnectionError:
            source_dropped.set()
        return response

    url = http_server.route("/slow.bin", trickle)
    process = subprocess.Popen(
        [sys.executable, "-m", "ferry.cli", "download", url, "--to", "in", "--address", stack.grpc_address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(),
    )
    try:
        wait_for(lambda: http_server.gets("/slow.bin") and list((data / "in").glob(".*.ferry-part")), "the transfer")
        process.send_signal(signal.SIGINT)
        stdout, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode != 0
    assert stdout == ""
    assert source_dropped.wait(10), "the server stopped reading from the source"
    wait_for(lambda: os.listdir(data / "in") == [], "the temp file to be removed")
