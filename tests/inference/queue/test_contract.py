"""What every request queue promises, on SQLite and on Redis alike (inference/queue/base.py).

`queue` is one replica's view; `replicas()` opens another on the same store, as
a second process or machine would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from ferry.errors import NotFound
from ferry.inference.queue.base import FINISHED, MAX_EVENTS, Event, Failure, NewRequest, Priority, RequestQueue, State
from tests.inference.queue.conftest import OpenReplica


def job(app_id: str = "painter", text: str = "x") -> NewRequest:
    return NewRequest(app_id, "/", f'{{"text": "{text}"}}', expires_in=60)


async def collect(events: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in events]


# -- order, position, any replica ---------------------------------------------------------


async def test_requests_are_taken_in_submission_order_and_know_their_exact_position(queue: RequestQueue) -> None:
    ids = [await queue.submit(job(text=str(n))) for n in range(3)]
    assert [(await queue.status(i)).position for i in ids] == [0, 1, 2]
    assert await queue.depth("painter") == 3
    claim = await queue.take("painter", timeout=1)
    assert claim is not None and claim.request_id == ids[0] and claim.attempt == 1
    assert claim.request == job(text="0")
    assert [(await queue.status(i)).position for i in ids] == [0, 0, 1]
    assert (await queue.status(ids[0])).state == State.IN_PROGRESS
    assert await queue.depth("painter") == 2


async def test_a_claim_says_how_long_its_request_waited_since_its_submit(replicas: OpenReplica) -> None:
    a, b = await replicas(), await replicas()
    await a.submit(job())
    await asyncio.sleep(0.2)
    claim = await b.take("painter", timeout=1)
    # By the queue's own clock, whichever replica took it; a lower bound only (never a wall-clock ceiling).
    assert claim is not None and claim.waited_seconds is not None and claim.waited_seconds >= 0.19


async def test_a_request_submitted_to_one_replica_is_answered_and_taken_by_another(replicas: OpenReplica) -> None:
    a, b = await replicas(), await replicas()
    request_id = await a.submit(job())
    assert (await b.status(request_id)).state == State.QUEUED
    claim = await b.take("painter", timeout=2)
    assert claim is not None and claim.request_id == request_id
    assert await b.finish(request_id, claim.lease, output_json='{"ok": true}')
    status = await a.status(request_id)
    assert (status.state, status.output_json, status.failure) == (State.COMPLETED, '{"ok": true}', None)


async def test_take_waits_for_work_and_gives_up_after_its_timeout(replicas: OpenReplica) -> None:
    a, b = await replicas(), await replicas()
    assert await a.take("painter", timeout=0.2) is None
    waiting = asyncio.create_task(a.take("painter", timeout=5))
    await asyncio.sleep(0.1)
    request_id = await b.submit(job())
    claim = await waiting
    assert claim is not None and claim.request_id == request_id


async def test_peek_shows_the_next_queued_request_without_taking_it(replicas: OpenReplica) -> None:
    a, b = await replicas(), await replicas()
    assert await a.peek("painter") is None
    first, _ = await a.submit(job(text="1")), await a.submit(job(text="2"))
    assert await b.peek("painter") == (first, job(text="1"))
    assert (await a.status(first)).state == State.QUEUED
    claim = await b.take("painter", timeout=1)
    assert claim is not None and claim.request_id == first


async def test_a_request_may_be_submitted_under_a_chosen_id_once(queue: RequestQueue) -> None:
    assert await queue.submit(job(text="1"), request_id="chosen") == "chosen"
    assert await queue.submit(job(text="2"), request_id="chosen") == "chosen"
    assert await queue.depth("painter") == 1
    claim = await queue.take("painter", timeout=1)
    assert claim is not None and (claim.request_id, claim.request) == ("chosen", job(text="1"))


async def test_a_low_priority_request_waits_while_any_normal_one_does(queue: RequestQueue) -> None:
    low = await queue.submit(NewRequest("painter", "/", "{}", priority=Priority.LOW))
    normal = [await queue.submit(job(text=str(n))) for n in range(2)]
    assert (await queue.status(low)).position == 2, "both normal requests go first"
    assert [(await queue.status(i)).position for i in normal] == [0, 1]
    taken = [await queue.take("painter", timeout=1) for _ in range(3)]
    assert [claim.request_id for claim in taken if claim is not None] == [*normal, low]
    assert taken[2] is not None and taken[2].request.priority == Priority.LOW


async def test_a_request_not_started_within_its_start_timeout_fails_and_never_runs(replicas: OpenReplica) -> None:
    queue = await replicas()
    late = await queue.submit(NewRequest("painter", "/", "{}", start_timeout_seconds=0.2))
    timely = await queue.submit(NewRequest("painter", "/", "{}", start_timeout_seconds=60))
    await asyncio.sleep(0.5)
    claim = await queue.take("painter", timeout=1)
    assert claim is not None and claim.request_id == timely and claim.request.start_timeout_seconds == 60
    status = await queue.status(late)
    assert status.state == State.COMPLETED and status.failure is not None
    assert (status.failure.code, status.failure.reason) == ("DEADLINE_EXCEEDED", "START_TIMEOUT")
    assert [e.kind for e in await collect(queue.follow(late))] == [FINISHED]


async def test_a_request_past_its_start_timeout_fails_at_once_even_while_no_replica_takes(
    queue: RequestQueue,
) -> None:
    late = await queue.submit(NewRequest("painter", "/", "{}", start_timeout_seconds=0.2))
    behind = await queue.submit(job())
    following = asyncio.create_task(collect(queue.follow(late)))
    await asyncio.sleep(0.5)  # nobody takes: every slot is busy elsewhere
    status = await queue.status(late)
    assert status.state == State.COMPLETED and status.failure is not None
    assert status.failure.reason == "START_TIMEOUT"
    assert (await queue.status(behind)).position == 0, "it no longer counts in the positions behind it"
    assert [e.kind for e in await asyncio.wait_for(following, 5)] == [FINISHED]


async def test_each_app_has_its_own_queue(queue: RequestQueue) -> None:
    await queue.submit(job("painter"))
    assert await queue.take("singer", timeout=0.2) is None
    assert await queue.depth("singer") == 0
    assert (await queue.take("painter", timeout=1)) is not None


async def test_two_replicas_taking_at_once_never_get_the_same_request(replicas: OpenReplica) -> None:
    a, b = await replicas(), await replicas()
    ids = {await a.submit(job(text=str(n))) for n in range(10)}
    claims = await asyncio.gather(*(replica.take("painter", timeout=1) for replica in [a, b] * 5))
    assert {claim.request_id for claim in claims if claim is not None} == ids


# -- leases and redelivery -------------------------------------------------------------


async def test_a_held_request_is_finished_once_and_never_handed_out_again(queue: RequestQueue) -> None:
    request_id = await queue.submit(job())
    claim = await queue.take("painter", timeout=1)
    assert claim is not None
    assert await queue.renew(request_id, claim.lease)
    assert await queue.finish(request_id, claim.lease, output_json="{}")
    assert not await queue.finish(request_id, claim.lease, output_json='{"again": 1}')
    assert not await queue.renew(request_id, claim.lease)
    assert (await queue.status(request_id)).output_json == "{}"
    assert await queue.take("painter", timeout=0.2) is None


async def test_a_lease_that_lapses_hands_the_request_to_another_replica_and_voids_the_old_lease(
    replicas: OpenReplica,
) -> None:
    dying, survivor = await replicas(lease_seconds=0.3), await replicas(lease_seconds=0.3)
    submitted = replace(job(), output_salt="s4lt", trace_parent=f"00-{'ab' * 16}-{'cd' * 8}-01")
    request_id = await dying.submit(submitted)
    first = await dying.take("painter", timeout=1)
    assert first is not None
    again = await survivor.take("painter", timeout=5)  # nothing renews the first lease
    assert again is not None and (again.request_id, again.attempt) == (request_id, 2)
    assert again.lease != first.lease
    # The request as submitted, salt and all, on every delivery: a second run names its outputs as the first did
    # (and continues its submitter's trace).
    assert first.request == again.request == submitted
    assert not await dying.renew(request_id, first.lease)
    assert not await dying.finish(request_id, first.lease, output_json='{"late": 1}')
    assert await survivor.finish(request_id, again.lease, output_json='{"second": 1}')
    status = await survivor.status(request_id)
    assert (status.output_json, status.attempt) == ('{"second": 1}', 2)


async def test_a_renewed_lease_does_not_lapse(replicas: OpenReplica) -> None:
    holder, other = await replicas(lease_seconds=0.4), await replicas(lease_seconds=0.4)
    request_id = await holder.submit(job())
    claim = await holder.take("painter", timeout=1)
    assert claim is not None
    for _ in range(6):
        await asyncio.sleep(0.1)
        assert await holder.renew(request_id, claim.lease)
    assert await other.take("painter", timeout=0.1) is None


async def test_past_max_attempts_the_request_fails_unavailable_naming_the_attempts(replicas: OpenReplica) -> None:
    queue = await replicas(lease_seconds=0.2, max_attempts=2)
    request_id = await queue.submit(job())
    for attempt in (1, 2):
        claim = await queue.take("painter", timeout=5)
        assert claim is not None and claim.attempt == attempt
    assert await queue.take("painter", timeout=1) is None  # lapsed twice: failed, not handed out
    status = await queue.status(request_id)
    assert status.state == State.COMPLETED and status.failure is not None
    assert (status.failure.code, status.failure.reason) == ("UNAVAILABLE", "MAX_ATTEMPTS")
    assert "2 times" in status.failure.message


async def test_a_released_request_is_next_in_line_at_once_and_its_cut_run_is_no_attempt(
    replicas: OpenReplica,
) -> None:
    """What a stopping replica does with the handlers it could not finish: no lease to wait out."""
    stopping, other = await replicas(lease_seconds=30), await replicas(lease_seconds=30)
    released, behind = await stopping.submit(job(text="1")), await stopping.submit(job(text="2"))
    claim = await stopping.take("painter", timeout=1)
    assert claim is not None and claim.request_id == released

    assert await stopping.release(released, claim.lease)

    status = await other.status(released)
    assert (status.state, status.position, status.attempt) == (State.QUEUED, 0, 0)
    assert (await other.status(behind)).position == 1
    again = await other.take("painter", timeout=1)  # long before a 30 s lease could lapse
    assert again is not None and (again.request_id, again.attempt) == (released, 1)
    assert not await stopping.finish(released, claim.lease, output_json='{"late": 1}')


async def test_a_waiting_taker_is_woken_by_a_release(replicas: OpenReplica) -> None:
    stopping, other = await replicas(lease_seconds=30), await replicas(lease_seconds=30)
    request_id = await stopping.submit(job())
    claim = await stopping.take("painter", timeout=1)
    assert claim is not None
    waiting = asyncio.create_task(other.take("painter", timeout=5))
    await asyncio.sleep(0.2)  # the taker is waiting

    assert await stopping.release(request_id, claim.lease)

    taken = await asyncio.wait_for(waiting, 2)
    assert taken is not None and taken.request_id == request_id


async def test_release_under_a_lease_no_longer_held_changes_nothing(queue: RequestQueue) -> None:
    request_id = await queue.submit(job())
    claim = await queue.take("painter", timeout=1)
    assert claim is not None
    assert not await queue.release(request_id, "not-the-lease")
    assert await queue.finish(request_id, claim.lease, output_json="{}")

    assert not await queue.release(request_id, claim.lease)
    assert (await queue.status(request_id)).state == State.COMPLETED


# -- cancel ------------------------------------------------------------------------------


async def test_cancelling_a_queued_request_removes_it_from_the_queue(queue: RequestQueue) -> None:
    first, second = await queue.submit(job(text="1")), await queue.submit(job(text="2"))
    assert await queue.cancel(first) == (State.QUEUED, True)
    status = await queue.status(first)
    assert status.state == State.COMPLETED and status.failure == Failure("CANCELLED", "cancelled by the caller")
    assert (await queue.status(second)).position == 0
    claim = await queue.take("painter", timeout=1)
    assert claim is not None and claim.request_id == second
    assert await queue.take("painter", timeout=0.2) is None


async def test_cancelling_a_running_request_reaches_every_replica_and_voids_its_lease(replicas: OpenReplica) -> None:
    runner, caller = await replicas(), await replicas()
    cancellations = runner.cancellations()
    heard = asyncio.create_task(anext(cancellations))
    await asyncio.sleep(0.2)  # subscribed
    request_id = await caller.submit(job())
    claim = await runner.take("painter", timeout=1)
    assert claim is not None
    assert await caller.cancel(request_id) == (State.IN_PROGRESS, True)
    assert await asyncio.wait_for(heard, 5) == request_id
    await cancellations.aclose()
    assert not await runner.finish(request_id, claim.lease, output_json="{}")
    failure = (await caller.status(request_id)).failure
    assert failure is not None and failure.code == "CANCELLED"


async def test_a_completed_request_cannot_be_cancelled(queue: RequestQueue) -> None:
    request_id = await queue.submit(job())
    claim = await queue.take("painter", timeout=1)
    assert claim is not None and await queue.finish(request_id, claim.lease, output_json="{}")
    assert await queue.cancel(request_id) == (State.COMPLETED, False)
    assert (await queue.status(request_id)).failure is None


async def test_an_unknown_request_is_not_found(queue: RequestQueue) -> None:
    for call in (queue.status("nope"), queue.cancel("nope")):
        with pytest.raises(NotFound) as caught:
            await call
        assert caught.value.reason == "UNKNOWN_REQUEST"


# -- events ------------------------------------------------------------------------------


async def test_a_follower_on_any_replica_sees_the_history_then_live_events_then_the_end(
    replicas: OpenReplica,
) -> None:
    runner, watcher = await replicas(), await replicas()
    request_id = await runner.submit(job())
    claim = await runner.take("painter", timeout=1)
    assert claim is not None
    await runner.append(request_id, "progress", b"1")
    following = asyncio.create_task(collect(watcher.follow(request_id)))
    await asyncio.sleep(0.2)
    await runner.append(request_id, "log", b"2")
    await runner.finish(request_id, claim.lease, output_json="{}")
    events = await asyncio.wait_for(following, 5)
    assert [(e.kind, e.data) for e in events] == [("progress", b"1"), ("log", b"2"), (FINISHED, b"")]
    assert [e.seq for e in events] == [1, 2, 3]
    # Following later (or from where a dropped stream left off) replays what remains.
    assert [e.kind for e in await collect(watcher.follow(request_id, after=1))] == ["log", FINISHED]
    assert await runner.events(request_id) == events


@pytest.mark.parametrize("ticks", [0, 1, 2, 3])
async def test_a_follower_cancelled_as_an_event_arrives_stops(queue: RequestQueue, ticks: int) -> None:
    # Its caller left (a Stream's client gone): following on would keep the request running for nobody. The
    # cancel lands `ticks` loop turns after the event's news, when a timed wait may already have finished.
    request_id = await queue.submit(job())
    following = asyncio.create_task(collect(queue.follow(request_id)))
    await asyncio.sleep(0.2)  # waiting for news
    await queue.append(request_id, "log", b"news")
    for _ in range(ticks):
        await asyncio.sleep(0)
    following.cancel()
    done, _ = await asyncio.wait([following], timeout=5)
    assert following in done and following.cancelled()


async def test_the_log_as_it_stands_is_read_without_waiting(queue: RequestQueue) -> None:
    request_id = await queue.submit(job())
    assert await queue.events(request_id) == []
    await queue.append(request_id, "log", b"1")
    assert [(e.seq, e.kind, e.data) for e in await queue.events(request_id)] == [(1, "log", b"1")]
    with pytest.raises(NotFound):
        await queue.events("nope")


async def test_nothing_is_appended_after_the_end(queue: RequestQueue) -> None:
    request_id = await queue.submit(job())
    assert await queue.cancel(request_id) == (State.QUEUED, True)
    await queue.append(request_id, "log", b"too late")
    assert [e.kind for e in await collect(queue.follow(request_id))] == [FINISHED]


async def test_the_event_log_keeps_only_its_newest_entries(queue: RequestQueue) -> None:
    request_id = await queue.submit(job())
    claim = await queue.take("painter", timeout=1)
    assert claim is not None
    for n in range(MAX_EVENTS + 5):
        await queue.append(request_id, "log", str(n).encode())
    await queue.finish(request_id, claim.lease, output_json="{}")
    events = await collect(queue.follow(request_id))
    assert len(events) <= MAX_EVENTS + 1
    assert events[-2].data == str(MAX_EVENTS + 4).encode() and events[-1].kind == FINISHED
    assert events[0].seq > 1


# -- lifetime ----------------------------------------------------------------------------


async def test_a_result_expires_by_itself_after_its_ttl(replicas: OpenReplica) -> None:
    queue = await replicas(result_ttl_seconds=0.5)
    request_id = await queue.submit(job())
    claim = await queue.take("painter", timeout=1)
    assert claim is not None and await queue.finish(request_id, claim.lease, output_json="{}")
    assert (await queue.status(request_id)).state == State.COMPLETED

    async def gone() -> bool:
        try:
            await queue.status(request_id)
        except NotFound:
            return True
        return False

    for _ in range(50):
        if await gone():
            break
        await asyncio.sleep(0.1)
    assert await gone()


async def test_queued_requests_survive_the_queue_being_closed_and_opened_again(replicas: OpenReplica) -> None:
    before = await replicas()
    ids = [await before.submit(job(text=str(n))) for n in range(3)]
    await before.close()
    after = await replicas()
    assert [(await after.status(i)).position for i in ids] == [0, 1, 2]
    claim = await after.take("painter", timeout=1)
    assert claim is not None and claim.request_id == ids[0]
