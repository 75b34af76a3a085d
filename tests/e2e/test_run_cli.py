"""`ferry run` as a user runs it: a subprocess against a real `ferry serve --app`.

The output JSON goes to stdout, pretty-printed; the request's life goes to
stderr as it happens: its id, queue positions, `[LEVEL] message` log lines and
progress (plain lines off a terminal, one redrawn line on one). Failures print
`ferry run: CODE: message` and exit 1; a bad `--input` exits 2 before any call;
Ctrl-C cancels the request on the server and exits 130.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import ferry
from ferry.progress import ERASE_TO_END
from ferry.testing import StackProcess
from tests.harness import run_with_stderr_on_a_terminal, socket_bound_but_not_listening, wait_for

APP = f"{Path(__file__).parent.parent / 'inference' / 'sample_app.py'}:SampleApp"
QUICK_SLOW = json.dumps({"steps": 3, "step_seconds": 0.01})
LONG_SLOW = json.dumps({"steps": 400, "step_seconds": 0.05})  # 20 s: still running when Ctrl-C comes


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProcess]:
    """One stack for the module: starting one costs more than every test here."""
    with StackProcess(["--app", APP, "--data-dir", str(tmp_path_factory.mktemp("data"))]) as started:
        yield started


@pytest.fixture(scope="module")
def client(stack: StackProcess) -> Iterator[ferry.Client]:
    with stack.client() as opened:
        yield opened


def _environment() -> dict[str, str]:
    """This environment minus any FERRY_* setting that would change where or how the CLI connects."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ferry.cli", "run", *args]


def ferry_run(stack: StackProcess | None, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    address = ("--address", stack.grpc_address) if stack else ()
    return subprocess.run(
        _command(*args, *address),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=_environment(),
        check=False,
    )


def test_prints_the_output_json_alone_on_stdout_and_the_requests_life_on_stderr(stack):
    result = ferry_run(stack, "sample", "--input", '{"text": "ab", "times": 2}')

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"text": "abab"}
    assert result.stdout == json.dumps({"text": "abab"}, indent=2) + "\n", "pretty-printed"
    lines = result.stderr.splitlines()
    assert re.fullmatch(r"request [0-9a-f]{32}", lines[0]), lines
    assert "in progress" in lines and re.fullmatch(r"completed in [\d.]+s", lines[-1]), lines


def test_path_picks_the_endpoint_and_its_logs_and_progress_reach_stderr(stack):
    result = ferry_run(stack, "sample", "--path", "/slow", "--input", QUICK_SLOW)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"finished_steps": 3}
    lines = result.stderr.splitlines()
    assert [line for line in lines if line.startswith("[")] == ["[INFO] step 1", "[INFO] step 2", "[INFO] step 3"]
    progress = [line for line in lines if line.startswith("progress: ")]
    assert progress[0] == "progress: 1/3 (33%)" and progress[-1] == "progress: 3/3 (100%)", lines
    assert "\r" not in result.stderr, "no redrawn line when stderr is not a terminal"


def test_queue_position_changes_are_shown_as_they_happen(stack, client):
    # Two requests ahead that outlast any start-up of `ferry run` (5 minutes each), cancelled
    # only once the queued position has been seen: a loaded machine cannot run them out first.
    ahead = [client.submit("sample", {"steps": 6000, "step_seconds": 0.05}, path="/slow") for _ in range(2)]
    process = subprocess.Popen(
        _command("sample", "--input", '{"text": "last"}', "--address", stack.grpc_address),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(),
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr or ()), daemon=True)
    reader.start()
    try:
        wait_for(
            lambda: any(line.startswith("queued: position ") for line in list(lines)), "a queue position", timeout=60
        )
        running = [handle for handle in ahead if handle.status().state == "IN_PROGRESS"]
        waiting = [handle for handle in ahead if handle not in running]
        assert len(running) == len(waiting) == 1, "one request runs, one waits: both are still ahead"
        waiting[0].cancel()  # the queue moves: next in line
        wait_for(lambda: "queued: position 0\n" in list(lines), "position 0 to be shown")
        running[0].cancel()  # the slot frees: it runs
        stdout, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    reader.join(10)

    assert process.returncode == 0, "".join(lines)
    assert json.loads(stdout) == {"text": "last"}
    positions = [int(line.split()[-1]) for line in lines if line.startswith("queued: position ")]
    assert positions == [1, 0], lines


def test_default_input_is_an_empty_object_and_media_outputs_are_urls(stack):
    result = ferry_run(stack, "sample", "--path", "/image")

    assert result.returncode == 0, result.stderr
    image = ferry.Image.model_validate(json.loads(result.stdout)["image"])
    assert (image.width, image.height) == (16, 16) and image.url.startswith(stack.cdn_url)


def test_input_from_a_file_and_from_stdin(stack, tmp_path):
    document = tmp_path / "input.json"
    document.write_text('{"text": "from a file"}')

    from_file = ferry_run(stack, "sample", "--input", f"@{document}")
    from_stdin = ferry_run(stack, "sample", "--input", "-", stdin='{"text": "from stdin"}')

    assert from_file.returncode == 0, from_file.stderr
    assert json.loads(from_file.stdout) == {"text": "from a file"}
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert json.loads(from_stdin.stdout) == {"text": "from stdin"}


def test_unknown_app_and_path_fail_with_not_found(stack):
    for args in (("nope",), ("sample", "--path", "/nope")):
        result = ferry_run(stack, *args, "--input", '{"text": "x"}')

        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr.startswith("ferry run: NOT_FOUND: "), result.stderr


def test_an_input_the_endpoint_rejects_fails_with_invalid_argument_naming_the_fields(stack):
    result = ferry_run(stack, "sample", "--input", '{"text": 3, "times": "many"}')

    assert result.returncode == 1
    assert result.stdout == ""
    message = result.stderr.strip()
    assert message.startswith("ferry run: INVALID_ARGUMENT: invalid input: "), message
    assert "text" in message and "times" in message


def test_a_failing_handler_reports_its_code_and_message(stack):
    result = ferry_run(stack, "sample", "--path", "/fail", "--input", '{"text": "boom"}')

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1] == "ferry run: INTERNAL: RuntimeError: model exploded on 'boom'"


@pytest.mark.parametrize(
    ("given", "complaint"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("@/no/such/input.json", "cannot read /no/such/input.json"),
    ],
)
def test_a_bad_input_is_a_usage_error_before_any_call(given, complaint):
    # Nothing listens at this address: a call would fail with UNAVAILABLE and exit 1, not 2.
    with socket_bound_but_not_listening() as address:
        result = ferry_run(None, "sample", "--input", given, "--address", address)

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("ferry run: invalid --input: ") and complaint in result.stderr, result.stderr


def test_an_unreachable_server_fails_with_unavailable():
    with socket_bound_but_not_listening() as address:
        result = ferry_run(None, "sample", "--address", address)

    assert result.returncode == 1
    assert result.stderr.startswith("ferry run: UNAVAILABLE: "), result.stderr


def test_live_progress_line_on_a_terminal(stack):
    command = _command("sample", "--path", "/slow", "--input", QUICK_SLOW, "--address", stack.grpc_address)
    returncode, stdout, screen = run_with_stderr_on_a_terminal(command, _environment())

    assert returncode == 0, screen
    assert json.loads(stdout) == {"finished_steps": 3}
    assert "\r\x1b[Kprogress [" in screen, "the progress line redraws in place"
    assert "] 3/3 (100%)" in screen
    assert "[INFO] step 3\n" in screen, "log lines print above the progress line"
    assert "progress: " not in screen, "no plain progress lines on a terminal"


def test_the_live_progress_line_fits_a_narrow_terminal(stack):
    command = _command("sample", "--path", "/slow", "--input", QUICK_SLOW, "--address", stack.grpc_address)
    env = {k: v for k, v in _environment().items() if k not in ("COLUMNS", "LINES")}

    returncode, _stdout, screen = run_with_stderr_on_a_terminal(command, env, columns=50)

    assert returncode == 0, screen
    shown = [part.replace(ERASE_TO_END, "") for line in screen.split("\n") for part in line.split("\r")]
    assert all(len(part) < 50 for part in shown), shown
    assert any(part.startswith("progress [#") and part.endswith("#] 3/3 (100%)") for part in shown), (
        "a shorter bar, the count kept"
    )


def test_ctrl_c_cancels_the_request_on_the_server_and_exits_130(stack, client):
    process = subprocess.Popen(
        _command("sample", "--path", "/slow", "--input", LONG_SLOW, "--address", stack.grpc_address),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(),
    )
    lines: list[str] = []

    def read_stderr() -> None:
        assert process.stderr is not None
        lines.extend(process.stderr)  # line by line, as they come

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(line.startswith("[INFO] step") for line in list(lines)), "the handler to be running")
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(10)
    assert process.stdout is not None
    stdout = process.stdout.read()
    process.stdout.close()

    assert process.returncode == 130
    assert stdout == ""
    assert lines[-1] == "ferry run: cancelled\n", lines
    request_id = lines[0].split()[1]
    handle = ferry.RequestHandle(client, request_id)
    wait_for(lambda: handle.status().state == "CANCELLED", "the request to end")
    error = handle.status().error
    assert error is not None and error.code == grpc.StatusCode.CANCELLED
