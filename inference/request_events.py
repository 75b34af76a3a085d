"""What a request reports while it runs, as entries of its event log in the shared queue.

The runner that runs a request appends them; any replica's Stream or GetStatus
reads them back. JSON, so a log written by one version of Ferry reads in another.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from ferry.inference.queue.base import Event


@dataclass(frozen=True)
class Started:
    """The request's handler (or its input downloads) began on some replica."""

    kind = "started"


@dataclass(frozen=True)
class Progress:
    current: float
    total: float
    message: str = ""
    kind = "progress"


@dataclass(frozen=True)
class LogLine:
    level: str
    message: str
    time_ns: int
    kind = "log"


@dataclass(frozen=True)
class PartialOutput:
    output_json: str
    kind = "partial"


RequestEvent = Started | Progress | LogLine | PartialOutput
_KINDS: dict[str, type[Any]] = {kind.kind: kind for kind in (Started, Progress, LogLine, PartialOutput)}


def encode(event: RequestEvent) -> tuple[str, bytes]:
    return event.kind, json.dumps(asdict(event)).encode()


def decode(entry: Event) -> RequestEvent | None:
    """The event an entry holds; None for the log's end marker or a kind this version does not know."""
    kind = _KINDS.get(entry.kind)
    if kind is None:
        return None
    event: RequestEvent = kind(**json.loads(entry.data))
    return event
