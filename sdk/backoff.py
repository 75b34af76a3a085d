"""How long to wait before retrying: one policy for every retry loop in the stack.

The SDK's calls, the downloader's fetches and the storage chain's writes all
wait `backoff_seconds(retry, base, cap)`, each with its own base and cap.
"""

from __future__ import annotations

import random

__all__ = ["backoff_seconds"]


def backoff_seconds(retry: int, base: float, cap: float) -> float:
    """Seconds to wait before retry number `retry` (from 0): "equal jitter" on a capped exponential step.

    The step is `base * 2**retry`, at most `cap`; the wait is a random point in its upper half. Half fixed,
    so a retry never comes much sooner than the step says (full jitter, anywhere in 0..step, retries a
    struggling server almost at once one time in ten); half random, so clients that failed together
    (replicas behind one load balancer, every request when storage blips) do not retry together.
    """
    step = min(cap, base * 2.0 ** min(retry, 512))  # 2.0**1024 overflows a float; 2**512 is past any cap
    return random.uniform(step / 2, step)
