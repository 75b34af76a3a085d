"""The server's log lines: JSON or text, each naming the request it was written for, with no secret in it.

Records go through the handler `configure_logging` installs, into a string
stream the test reads back, exactly as `ferry serve` writes them to stderr.
The whole stack's lines: tests/e2e/test_logs_stack.py.
"""

from __future__ import annotations

import argparse
import contextvars
import io
import json
import logging
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from ferry.request_scope import RequestScope, request_scope
from ferry.services import tracing
from ferry.services.config import ServerConfig, add_arguments, from_arguments
from ferry.services.logs import configure_logging, scrub, url_for_log

PRESIGNED = (
    "https://bucket.s3.amazonaws.com/out/a.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLE%2F20261202%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature=0123abcdSIGNATURE"
)


class Log:
    """The root logger configured as `ferry serve` configures it, writing into a string; restored afterwards."""

    def __init__(self, log_format: str) -> None:
        self.stream = io.StringIO()
        configure_logging(log_format, self.stream)

    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines()]


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_json_line_is_one_object_with_time_level_logger_message_request_and_app():
    log = Log("json")
    with request_scope(RequestScope(request_id="req-1", app="upscaler")):
        logging.getLogger("ferry.inference.runner").warning("took %d tries", 3)
    [line] = log.records()
    assert line["level"] == "WARNING"
    assert line["logger"] == "ferry.inference.runner"
    assert line["message"] == "took 3 tries"
    assert (line["request_id"], line["app"]) == ("req-1", "upscaler")
    written = datetime.fromisoformat(str(line["time"]))
    assert written.utcoffset() == timedelta(0)


def test_a_line_outside_any_request_has_a_null_request_id_and_no_app():
    log = Log("json")
    logging.getLogger("ferry.serve").info("stopping")
    [line] = log.records()
    assert line["request_id"] is None and "app" not in line


def test_a_line_logged_from_a_handler_thread_names_the_request_it_runs_for():
    """Sync handlers run in worker threads with a copy of the runner's context: the scope goes with it."""
    log = Log("json")
    with request_scope(RequestScope(request_id="req-thread", app="painter")):
        copied = contextvars.copy_context()
    thread = threading.Thread(target=copied.run, args=(logging.getLogger("my_model").info, "step 1"))
    thread.start()
    thread.join()
    assert log.records()[0]["request_id"] == "req-thread"


def test_a_record_that_names_its_request_keeps_it_over_the_scope():
    log = Log("json")
    logging.getLogger("ferry.inference.apps.painter").info("hi", extra={"request_id": "req-2", "app": "painter"})
    assert (log.records()[0]["request_id"], log.records()[0]["app"]) == ("req-2", "painter")


def test_an_exception_is_one_string_field_of_the_same_line():
    log = Log("json")
    try:
        raise RuntimeError("model exploded")
    except RuntimeError:
        logging.getLogger("ferry").exception("handler failed")
    [line] = log.records()
    assert isinstance(line["exc_info"], str) and "RuntimeError: model exploded" in line["exc_info"]


def test_the_current_span_s_ids_go_into_the_line_only_while_one_is_recording(monkeypatch: pytest.MonkeyPatch):
    trace_sdk = pytest.importorskip("opentelemetry.sdk.trace")
    monkeypatch.setattr(tracing, "ENABLED", True)  # as `ferry serve` sets it when the OTEL_* variables ask
    tracer = trace_sdk.TracerProvider().get_tracer("test")
    log = Log("json")
    logging.getLogger("ferry").info("before")
    with tracer.start_as_current_span("download") as span:
        logging.getLogger("ferry").info("during")
        ids = span.get_span_context()
    before, during = log.records()
    assert "trace_id" not in before and "span_id" not in before
    assert during["trace_id"] == format(ids.trace_id, "032x")
    assert during["span_id"] == format(ids.span_id, "016x")


def test_the_text_format_names_the_request_after_the_message():
    log = Log("text")
    with request_scope(RequestScope(request_id="req-3", app="upscaler")):
        logging.getLogger("ferry.inference.runner").info("encoding outputs")
    logging.getLogger("ferry.serve").info("stopping")
    about_request, other = log.lines()
    assert about_request.endswith("INFO ferry.inference.runner: encoding outputs [request=req-3 app=upscaler]")
    assert other.endswith("INFO ferry.serve: stopping")


def test_the_text_format_puts_the_request_before_a_traceback():
    log = Log("text")
    with request_scope(RequestScope(request_id="req-4", app="upscaler")):
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("ferry").exception("handler failed")
    first, *traceback = log.lines()
    assert first.endswith("handler failed [request=req-4 app=upscaler]")
    assert traceback[-1] == "RuntimeError: boom"


def test_a_url_in_a_log_line_keeps_scheme_host_port_and_path_only():
    assert url_for_log(PRESIGNED) == "https://bucket.s3.amazonaws.com/out/a.png"
    assert url_for_log("http://user:hunter2@[::1]:8080/a/b.png?token=t#frag") == "http://[::1]:8080/a/b.png"
    assert url_for_log("http://host:99999999/x") == "[redacted]"  # unparseable: none of it shown


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_neither_format_writes_a_signature_query_secret_userinfo_or_bearer_token(log_format):
    """What call sites cannot control (an exception's text, a handler's own line) is scrubbed as it is written."""
    log = Log(log_format)
    secrets = ("0123abcdSIGNATURE", "AKIAEXAMPLE", "QUERYSECRET", "hunter2", "TOKENSECRET")
    source = "http://alice:hunter2@source.test/in.png?sig=QUERYSECRET"
    logging.getLogger("my_model").info("stored %s from %s", PRESIGNED, source)
    try:
        raise ValueError(f"upstream said no to 'Authorization: Bearer TOKENSECRET' for {PRESIGNED}")
    except ValueError:
        logging.getLogger("ferry").exception("handler failed")
    written = log.stream.getvalue()
    assert not [secret for secret in secrets if secret in written], written
    assert "https://bucket.s3.amazonaws.com/out/a.png" in written and "http://source.test/in.png" in written


def test_scrubbing_leaves_a_line_without_urls_or_tokens_as_it_is():
    line = "took 3 tries (cache hit) for job 'abc': 12.5 MiB in 0.2 s"
    assert scrub(line) == line


def test_the_log_format_is_text_unless_the_flag_or_ferry_log_format_says_json(monkeypatch):
    parser = argparse.ArgumentParser()
    add_arguments(parser, ServerConfig)
    monkeypatch.delenv("FERRY_LOG_FORMAT", raising=False)
    assert from_arguments(ServerConfig, parser.parse_args([])).log_format == "text"
    assert from_arguments(ServerConfig, parser.parse_args(["--log-format", "json"])).log_format == "json"
    monkeypatch.setenv("FERRY_LOG_FORMAT", "json")
    assert from_arguments(ServerConfig, parser.parse_args([])).log_format == "json"


def test_an_unknown_log_format_is_refused_naming_the_flag_and_the_choices():
    with pytest.raises(ValueError, match=r"--log-format must be one of text, json, got 'xml'"):
        ServerConfig(log_format="xml")
