"""The scale-out drill's app: a stand-in model whose every run is on record, and whose output is a stored image.

Each handler run appends `start ID KEY PID` to `DRILL_DIR/runs.log` as it begins
and `end ID KEY PID` once its "GPU work" (a short sleep) is done, each line
fsynced, so the log survives a replica killed with -9 and tells which request
ran where and how often. While `DRILL_DIR/hold-PID` exists the replica with that
pid stays inside its handler (after writing `held ID KEY PID`): the drill kills
it there, mid-request, rather than racing a 0.3 s handler. The output leaves a
tensor in an `Image` field, so every request goes through an EncoderService
into the shared bucket.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from ferry.inference import App, RequestContext, endpoint
from ferry.toolkit import Image

RUN_LOG = "runs.log"
WORK_SECONDS = 0.3
# A held handler gives up after this long: a drill that failed before its kill must not leave a replica stuck.
HOLD_LIMIT_SECONDS = 60.0


class DrillInput(BaseModel):
    key: int
    drill_dir: str


class DrillOutput(BaseModel):
    key: int
    image: Image


def pixels(key: int) -> np.ndarray:
    """The image request `key` returns (8×8 RGB): the drill decodes each stored PNG back to this."""
    return np.full((8, 8, 3), (key, 255 - key, key * 3 % 256), np.uint8)


def record(drill_dir: Path, what: str, request_id: str, key: int) -> None:
    """One line of the run log, on disk before the handler goes on (O_APPEND keeps replicas' lines whole)."""
    line = f"{what} {request_id} {key} {os.getpid()}\n".encode()
    descriptor = os.open(drill_dir / RUN_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class DrillApp(App):
    app_id = "drill"
    machine_type = "GPU"  # one request per replica at a time, as on a GPU box: the rest wait in the shared queue

    @endpoint("/")
    def run(self, input: DrillInput, context: RequestContext) -> DrillOutput:
        drill_dir = Path(input.drill_dir)
        record(drill_dir, "start", context.request_id, input.key)
        hold = drill_dir / f"hold-{os.getpid()}"
        if hold.exists():
            record(drill_dir, "held", context.request_id, input.key)
            deadline = time.monotonic() + HOLD_LIMIT_SECONDS
            while hold.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        time.sleep(WORK_SECONDS)
        record(drill_dir, "end", context.request_id, input.key)
        # A raw tensor in the field: the runner encodes it through the EncoderService (pydantic would refuse it).
        return DrillOutput.model_construct(key=input.key, image=pixels(input.key))
