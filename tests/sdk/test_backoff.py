"""Every retry loop waits "equal jitter": a random point in the upper half of a capped, doubling step."""

import pytest

from ferry.backoff import backoff_seconds


@pytest.mark.parametrize(("retry", "step"), [(0, 0.1), (1, 0.2), (3, 0.8), (5, 3.2)])
def test_the_wait_lies_in_the_upper_half_of_the_doubling_step(retry, step):
    waits = [backoff_seconds(retry, 0.1, 5.0) for _ in range(200)]
    assert all(step / 2 <= wait <= step for wait in waits)


def test_the_step_stops_doubling_at_the_cap():
    waits = [backoff_seconds(retry, 0.1, 5.0) for retry in range(6, 40) for _ in range(20)]
    assert all(2.5 <= wait <= 5.0 for wait in waits)


def test_waits_are_spread_so_clients_that_failed_together_do_not_retry_together():
    assert len({backoff_seconds(4, 0.1, 5.0) for _ in range(50)}) > 1


def test_a_retry_count_past_what_a_float_can_double_to_still_waits_the_cap():
    assert 30.0 <= backoff_seconds(5000, 0.25, 60.0) <= 60.0
