"""`ferry.testing.StackProcess`: a real `ferry serve` for tests, started, reached and stopped."""

from __future__ import annotations

from pathlib import Path

from ferry.testing import StackProcess

CHATTY = f"{Path(__file__).resolve().parent / 'chatty_app.py'}:Chatty"


def test_a_server_that_logs_more_than_a_pipe_holds_still_becomes_ready(tmp_path):
    # ~360 KiB of log lines before the ready line: unread, the server would block on a full stderr pipe.
    with StackProcess(["--data-dir", str(tmp_path), "--app", CHATTY]) as stack, stack.client() as client:
        assert client.run("chatty", {}) == {}
        stderr = stack.stop()
    assert stderr.count("loading shard") == 3000


def test_stop_returns_the_same_stderr_when_called_again(tmp_path):
    stack = StackProcess(["--data-dir", str(tmp_path)]).start()
    first = stack.stop()
    assert stack.stop() == first and "stopping" in first
