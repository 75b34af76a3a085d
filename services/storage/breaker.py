"""A storage backend's circuit breaker: after repeated failures, stop sending it writes for a cool-down.

Closed, every write may try the backend. After `failures_to_open` failed
attempts in a row (transient errors, or answers that it cannot take writes),
the breaker opens: writes skip the backend at once. Once the cool-down has
passed, one write is let through as a probe (half-open) while the others keep
skipping; its success closes the breaker, its failure opens it for another
cool-down. Any success closes it, whoever made it.

Pure state and a clock: the chain owns the retries, the logging and who is told.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum


class Admission(Enum):
    TRY = "try"  # closed: an ordinary write, with its retries
    PROBE = "probe"  # half-open: this write alone tries the backend, once


class Breaker:
    def __init__(
        self, failures_to_open: int, cool_down_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failures_to_open < 1 or cool_down_seconds <= 0:
            raise ValueError("a breaker opens after at least one failure and stays open a positive time")
        self.failures_to_open = failures_to_open
        self.cool_down_seconds = cool_down_seconds
        self._clock = clock
        self.failures_in_a_row = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def seconds_to_probe(self) -> float:
        """How long until an open breaker lets a probe through (0 when closed or due)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.cool_down_seconds - self._clock())

    def admit(self) -> Admission | None:
        """May a write try the backend now? None: skip it."""
        if self._opened_at is None:
            return Admission.TRY
        if self._probing or self.seconds_to_probe() > 0:
            return None
        self._probing = True
        return Admission.PROBE

    def succeeded(self) -> bool:
        """The backend took a call; True when that closed the breaker."""
        self.failures_in_a_row = 0
        self._probing = False
        closed = self._opened_at is not None
        self._opened_at = None
        return closed

    def failed(self) -> bool:
        """An attempt on the backend failed; True when that opened the breaker."""
        self.failures_in_a_row += 1
        if self._probing:  # the probe failed: another cool-down
            self._probing = False
            self._opened_at = self._clock()
            return False
        if self._opened_at is None and self.failures_in_a_row >= self.failures_to_open:
            self._opened_at = self._clock()
            return True
        return False

    def probe_ended(self) -> None:
        """A probe ended without telling success from failure (the request's own fault, or cancelled)."""
        self._probing = False
