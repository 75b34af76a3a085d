"""Calls made with the reference platform's own client, `fal_client`, as a user of it would make them.

Run as a script in a process of its own (`python fal_client_calls.py SCENARIO`): the client reads its
hosts (`FAL_RUN_HOST`, `FAL_QUEUE_RUN_HOST`) and key (`FAL_KEY`) from the environment when it is imported,
and trusts the CA in `SSL_CERT_FILE`. Each scenario prints one JSON document of what the client saw.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import fal_client

APP = "ferry/sample"  # owner/app: the owner segment is the client's requirement, ignored by Ferry


def status_of(status: fal_client.Status) -> dict[str, Any]:
    return {"kind": type(status).__name__, **asdict(status)}


def submit_and_follow() -> dict[str, Any]:
    handle = fal_client.submit(APP, {"steps": 3, "step_seconds": 0.05}, path="slow")
    events = [status_of(status) for status in handle.iter_events(with_logs=True, interval=0.05)]
    return {
        "request_id": handle.request_id,
        "events": events,
        "final": status_of(handle.status(with_logs=True)),
        "result": handle.get(),
        "result_again": fal_client.result(APP, handle.request_id),
    }


def subscribe() -> dict[str, Any]:
    updates: list[dict[str, Any]] = []
    enqueued: list[str] = []
    result = fal_client.subscribe(
        APP,
        {"steps": 2, "step_seconds": 0.05},
        path="slow",
        with_logs=True,
        on_enqueue=enqueued.append,
        on_queue_update=lambda status: updates.append(status_of(status)),
    )
    return {"result": result, "updates": updates, "enqueued": enqueued}


def run() -> dict[str, Any]:
    return {
        "root": fal_client.run(APP, {"text": "hi", "times": 2}),
        "path": fal_client.run(APP, {"text": "hi"}, path="async"),
    }


def cancel() -> dict[str, Any]:
    handle = fal_client.submit(APP, {"steps": 400, "step_seconds": 0.05}, path="slow")
    while not isinstance(handle.status(), fal_client.InProgress):
        time.sleep(0.02)
    handle.cancel()
    final = status_of(handle.status())
    return {"final": final, "result": failure_of(handle.get), "cancel_again": failure_of(handle.cancel)}


def bad_input() -> dict[str, Any]:
    return {
        "run": failure_of(lambda: fal_client.run(APP, {"text": 5})),
        "submit": failure_of(lambda: fal_client.submit(APP, {"txt": "hi"})),
        "unknown_app": failure_of(lambda: fal_client.run("ferry/no-such-app", {})),
    }


def failing_handler() -> dict[str, Any]:
    handle = fal_client.submit(APP, {"text": "boom"}, path="fail")
    events = list(handle.iter_events(interval=0.05))
    return {"final": status_of(events[-1]), "result": failure_of(handle.get)}


def failure_of(call: Callable[[], Any]) -> dict[str, Any]:
    """How the client reports a refused call: its exception's HTTP status, message and error type."""
    try:
        returned = call()
    except fal_client.FalClientHTTPError as error:
        return {"status": error.status_code, "message": str(error), "error_type": error.error_type}
    return {"returned": returned}


SCENARIOS = {f.__name__: f for f in (submit_and_follow, subscribe, run, cancel, bad_input, failing_handler)}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]]()))
