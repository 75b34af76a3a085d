"""The embedded queue: one SQLite file in WAL mode, durable across restarts, shared by processes on one host.

Every transition is one `BEGIN IMMEDIATE` transaction, so replicas in other
processes see a request in exactly one state. Calls run on one thread per
queue (sqlite3 connections are not shared across threads); the event loop only
awaits them. A replica in this process is woken at once by submits, events and
cancels made through the same queue object. Other processes' commits are
noticed by one `PRAGMA data_version` every POLL_SECONDS while anyone waits
(it changes whenever another connection committed), which then wakes every
waiter as a commit in this process would: so a request submitted elsewhere
starts, and a cancel made elsewhere arrives, within POLL_SECONDS, while an
idle replica's event loop sleeps but for what the clock alone changes (leases
lapsing, start timeouts passing: CLOCK_CHECK_SECONDS).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from ferry.backoff import backoff_seconds
from ferry.errors import NotFound, Unavailable
from ferry.inference.queue.base import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RESULT_TTL_SECONDS,
    FINISHED,
    MAX_EVENTS,
    Claim,
    Event,
    Failure,
    NewRequest,
    Priority,
    State,
    Status,
)

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1
# How often a waiting claimer looks again when nothing was committed (at most half a lease): leases lapse
# and start timeouts pass by the clock alone. Measured on an idle `ferry serve` (one app, 32 free slots): 2.3 %
# of a core while the claimer, the cancels journal and each follower re-read the file every POLL_SECONDS on the
# event loop; 0.6 % with `_watch` reading data_version from its own thread instead (and the runner's slots
# calling take every 30 s rather than every second).
CLOCK_CHECK_SECONDS = 0.5
# Put in a cancellations() listener's queue when another process committed: read the cancels journal.
_READ_JOURNAL = ""
# Completed requests past their TTL are deleted this often (status() hides them from the moment they expire).
SWEEP_SECONDS = 60.0

T = TypeVar("T")

# A queued request that may still start: not past its start timeout (bound to the time as a parameter).
STARTABLE = "(start_by IS NULL OR start_by >= ?)"
REQUEST_COLUMNS = (
    "SELECT seq, id, path, input_json, expires_in, priority, start_timeout, attempt, start_by, output_salt,"
    " submitted_at, trace_parent FROM requests"
)
EVENTS_AFTER = "SELECT seq, kind, data FROM events WHERE request_id = ? AND seq > ? ORDER BY seq"

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order: the queue's order
    id TEXT NOT NULL UNIQUE,
    app_id TEXT NOT NULL,
    path TEXT NOT NULL,
    input_json TEXT NOT NULL,
    expires_in INTEGER,
    priority INTEGER NOT NULL DEFAULT 0,  -- Priority: NORMAL before LOW
    start_timeout REAL,
    start_by REAL,  -- still queued then: failed START_TIMEOUT, never run
    output_salt TEXT NOT NULL DEFAULT '',
    trace_parent TEXT NOT NULL DEFAULT '',  -- the submitter's W3C traceparent ('' with tracing off)
    submitted_at REAL,  -- the queue's clock at submit: a claim says how long its request waited
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    lease TEXT,
    lease_until REAL,
    output_json TEXT NOT NULL DEFAULT '',
    failure_code TEXT,
    failure_message TEXT,
    failure_reason TEXT,
    gone_at REAL  -- a completed request's record and events vanish then
);
CREATE INDEX IF NOT EXISTS requests_by_turn ON requests (app_id, state, priority, seq);
CREATE INDEX IF NOT EXISTS requests_by_lease ON requests (app_id, state, lease_until);
CREATE INDEX IF NOT EXISTS requests_by_end ON requests (gone_at);
CREATE TABLE IF NOT EXISTS events (
    request_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (request_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cancels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL
);
"""


class SqliteQueue:
    def __init__(
        self,
        path: Path,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        result_ttl_seconds: float = DEFAULT_RESULT_TTL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.result_ttl_seconds = result_ttl_seconds
        self.clock = clock
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ferry-queue")
        self._db: sqlite3.Connection | None = None
        # Wakeups for waiters in this process (other processes: `_watch`).
        self._work: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._takers: defaultdict[str, list[asyncio.Future[Claim]]] = defaultdict(list)  # waiting, oldest first
        self._claimers: dict[str, asyncio.Task[None]] = {}
        self._followed: dict[str, tuple[asyncio.Event, int]] = {}  # request id → (its news, how many follow)
        self._cancelled: set[asyncio.Queue[str]] = set()
        self._last_sweep = 0.0
        self._clock_check = min(CLOCK_CHECK_SECONDS, lease_seconds / 2)
        self._data_version = 0  # SQLite's count of other connections' commits, as last read
        self._closing = threading.Event()
        self._watcher: threading.Thread | None = None

    @classmethod
    async def open(cls, path: Path, **settings: Any) -> SqliteQueue:
        queue = cls(path, **settings)
        await queue._run(queue._connect)
        queue._watcher = threading.Thread(
            target=queue._watch, args=(asyncio.get_running_loop(),), name="ferry-queue-watch", daemon=True
        )
        queue._watcher.start()
        return queue

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit: every write below opens its own transaction.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes, fsync per checkpoint
        db.execute("PRAGMA busy_timeout=10000")  # another process's transaction: wait for it, do not fail
        db.executescript(SCHEMA)
        _add_missing_columns(db)
        self._data_version = _data_version(db)
        self._db = db

    async def _run(self, work: Callable[[], T]) -> T:
        """`work` on the queue's thread. The database failing (the disk, a lock held past busy_timeout) is
        Unavailable (QUEUE_UNAVAILABLE), as Redis being down is: callers retry it, health reports it."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, work)
        except sqlite3.OperationalError as error:
            raise Unavailable(
                f"the request queue ({self.path.name}) is unavailable: {str(error)[:200]}", reason="QUEUE_UNAVAILABLE"
            ) from error

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """In a thread of its own, so that an idle replica's event loop sleeps: every POLL_SECONDS while anyone
        waits here, one `PRAGMA data_version` on the queue's thread; the loop hears only of a change."""
        while not self._closing.wait(POLL_SECONDS):
            if not (self._claimers or self._cancelled or self._followed):
                continue
            try:
                version = self._thread.submit(lambda: _data_version(self._connected())).result()
                if version != self._data_version:
                    self._data_version = version
                    loop.call_soon_threadsafe(self._wake_everyone)
            except (RuntimeError, AssertionError):  # closed meanwhile (the queue's thread, or the loop)
                return
            except sqlite3.Error as error:  # e.g. the disk: the queue's own calls will say so too; look again
                log.warning("cannot read the queue's data_version (%s); trying again", error)

    def _wake_everyone(self) -> None:
        """Another connection committed: every waiter looks again, as after a commit of this process's."""
        for wakeup in self._work.values():
            wakeup.set()
        for news, _ in self._followed.values():
            news.set()
        for listener in self._cancelled:
            listener.put_nowait(_READ_JOURNAL)

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> Callable[[], T]:
        def run() -> T:
            db = self._db
            assert db is not None, "the queue is closed"
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        return run

    # -- requests ------------------------------------------------------------------------

    async def submit(self, request: NewRequest, request_id: str | None = None) -> str:
        request_id = request_id or uuid.uuid4().hex

        def insert(db: sqlite3.Connection) -> None:
            timeout = request.start_timeout_seconds
            start_by = None if timeout is None else self.clock() + timeout
            db.execute(
                "INSERT OR IGNORE INTO requests (id, app_id, path, input_json, expires_in, priority, start_timeout,"
                " start_by, output_salt, trace_parent, submitted_at, state)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request_id,
                    request.app_id,
                    request.path,
                    request.input_json,
                    request.expires_in,
                    int(request.priority),
                    timeout,
                    start_by,
                    request.output_salt,
                    request.trace_parent,
                    self.clock(),
                    State.QUEUED,
                ),
            )

        await self._run(self._transaction(insert))
        self._work[request.app_id].set()
        return request_id

    async def status(self, request_id: str) -> Status:
        def read(db: sqlite3.Connection) -> tuple[Status, bool]:
            """The status, and whether it is a queued request past its start timeout (to fail, then read again)."""
            row = db.execute(
                "SELECT app_id, state, attempt, output_json, failure_code, failure_message, failure_reason, seq,"
                " gone_at, priority, start_by FROM requests WHERE id = ?",
                (request_id,),
            ).fetchone()
            now = self.clock()
            if row is None or (row[8] is not None and row[8] <= now):
                raise NotFound(f"no request {request_id[:100]!r}", reason="UNKNOWN_REQUEST")
            app_id, state, attempt, output_json, code, message, reason, seq, _, priority, start_by = row
            position = 0
            if state == State.QUEUED:
                if start_by is not None and start_by < now:
                    return Status(request_id, app_id, State(state), 0, attempt), True
                position = db.execute(
                    f"SELECT count(*) FROM requests WHERE app_id = ? AND state = ? AND {STARTABLE}"
                    " AND (priority < ? OR (priority = ? AND seq < ?))",
                    (app_id, State.QUEUED, now, priority, priority, seq),
                ).fetchone()[0]
            failure = Failure(code, message, reason or "") if code is not None else None
            return Status(request_id, app_id, State(state), position, attempt, output_json, failure), False

        # A read: no write lock, so it never waits behind another process's transaction.
        status, expired = await self._run(lambda: read(self._connected()))
        if expired:  # fail it now, whoever reads it: nobody need take from its app first
            if await self._run(self._transaction(partial(self._expire, request_id=request_id))):
                self._notify(request_id)
            status, _ = await self._run(lambda: read(self._connected()))
        return status

    def _expire(self, db: sqlite3.Connection, request_id: str) -> bool:
        """Fail a queued request past its start timeout (if it still is one); whether this did."""
        row = db.execute(
            f"{REQUEST_COLUMNS} WHERE id = ? AND state = ? AND start_by < ?", (request_id, State.QUEUED, self.clock())
        ).fetchone()
        if row is None:
            return False
        self._complete(db, request_id, "", _start_timeout_failure(_request_of("", row)[2]))
        return True

    async def _select(self, query: str, parameters: tuple[Any, ...]) -> list[Any]:
        return await self._run(lambda: self._connected().execute(query, parameters).fetchall())

    def _connected(self) -> sqlite3.Connection:
        assert self._db is not None, "the queue is closed"
        return self._db

    async def depth(self, app_id: str) -> int:
        def count() -> int:
            query = f"SELECT count(*) FROM requests WHERE app_id = ? AND state = ? AND {STARTABLE}"
            return int(self._connected().execute(query, (app_id, State.QUEUED, self.clock())).fetchone()[0])

        return await self._run(count)

    async def peek(self, app_id: str) -> tuple[str, NewRequest] | None:
        rows = await self._select(
            f"{REQUEST_COLUMNS} WHERE app_id = ? AND state = ? AND {STARTABLE} ORDER BY priority, seq LIMIT 1",
            (app_id, State.QUEUED, self.clock()),
        )
        if not rows:
            return None
        _, request_id, request, _, _, _ = _request_of(app_id, rows[0])
        return request_id, request

    async def take(self, app_id: str, timeout: float) -> Claim | None:
        # Takers do not poll: they wait in line, and one claimer per app claims for as many of them as there
        # is work, in one transaction. Measured with bench/queue.py: when every waiting slot woke on each submit
        # and polled on its own, 32 slots ran 33 claim transactions per request and 320 a second idle (14% of a
        # core; +3.8 ms p50 submit→start over the in-memory runner, one client; 159 req/s at 32 clients). One
        # claimer: 3% idle, +1.5 ms, 203 req/s. A new taker does not wake a running claimer: it sleeps only when
        # its last claim found less work than it had takers, and another taker adds none (woken for each, an
        # idle replica whose 32 slots took again every second ran 32 claim transactions a second).
        waiter: asyncio.Future[Claim] = asyncio.get_running_loop().create_future()
        waiters = self._takers[app_id]
        waiters.append(waiter)
        if app_id not in self._claimers:
            self._claimers[app_id] = asyncio.create_task(self._claim_for(app_id))
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(waiter)
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return waiter.result()  # handed over as the time ran out: not lost
            return None
        finally:
            if waiter in waiters:
                waiters.remove(waiter)
            elif not waiter.done():
                waiter.cancel()

    async def _claim_for(self, app_id: str) -> None:
        """While anyone waits to take from `app_id`: claim one request per waiter, oldest waiter first."""
        waiters, wakeup = self._takers[app_id], self._work[app_id]
        failures = 0
        try:
            while waiters:
                wakeup.clear()
                wanted = len(waiters)
                try:
                    claims, finished = await self._run(
                        self._transaction(partial(self._claim, app_id=app_id, wanted=wanted))
                    )
                except Unavailable as error:  # the takers keep waiting
                    delay, failures = backoff_seconds(failures, 0.1, 2.0), failures + 1
                    log.warning("cannot claim requests of %s (%s); again in %.1f s", app_id, error, delay)
                    await asyncio.sleep(delay)
                    continue
                failures = 0
                for request_id in finished:
                    self._notify(request_id)
                for claim in claims:
                    while waiters and waiters[0].done():  # gave up meanwhile
                        waiters.pop(0)
                    if not waiters:
                        break  # nobody to hand it to: its lease lapses and it is taken again
                    waiters.pop(0).set_result(claim)
                await self._sweep_now_and_then()
                if not claims and waiters:
                    await _woken(wakeup, self._clock_check)
        finally:
            del self._claimers[app_id]

    def _claim(self, db: sqlite3.Connection, app_id: str, wanted: int) -> tuple[list[Claim], list[str]]:
        """Up to `wanted` of the app's next requests under fresh leases (lapsed ones first, then queued NORMAL,
        then queued LOW, oldest first), and the ids of those failed instead: lapsed past max_attempts, or
        queued past their start timeout."""
        now = self.clock()
        claims: list[Claim] = []
        failed: list[str] = []
        lapsed = f"{REQUEST_COLUMNS} WHERE app_id = ? AND state = ? AND lease_until < ? ORDER BY seq LIMIT ?"
        queued = f"{REQUEST_COLUMNS} WHERE app_id = ? AND state = ? ORDER BY priority, seq LIMIT ?"
        for query, state in ((lapsed, State.IN_PROGRESS), (queued, State.QUEUED)):
            # Rows are read a batch at a time and each leaves `state` as it is handled: no row is seen twice.
            while len(claims) < wanted:
                parameters = (app_id, state, now) if state == State.IN_PROGRESS else (app_id, state)
                rows = db.execute(query, (*parameters, wanted - len(claims))).fetchall()
                if not rows:
                    break
                for row in rows:
                    if (claim := self._claim_one(db, app_id, row, now, failed)) is not None:
                        claims.append(claim)
        return claims, failed

    def _claim_one(
        self, db: sqlite3.Connection, app_id: str, row: tuple[Any, ...], now: float, failed: list[str]
    ) -> Claim | None:
        """`row`'s request under a fresh lease; or, past max_attempts or its start timeout, failed (into `failed`)."""
        seq, request_id, request, attempt, start_by, submitted_at = _request_of(app_id, row)
        failure = None
        if attempt >= self.max_attempts:
            message = f"the request ran {attempt} times and its replica died each time"
            failure = Failure("UNAVAILABLE", message, "MAX_ATTEMPTS")
        elif attempt == 0 and start_by is not None and start_by < now:
            failure = _start_timeout_failure(request)
        if failure is not None:
            self._complete(db, request_id, "", failure)
            failed.append(request_id)
            return None
        lease = uuid.uuid4().hex
        db.execute(
            "UPDATE requests SET state = ?, attempt = ?, lease = ?, lease_until = ? WHERE seq = ?",
            (State.IN_PROGRESS, attempt + 1, lease, now + self.lease_seconds, seq),
        )
        waited = None if submitted_at is None else max(0.0, now - submitted_at)  # None: queued by an older version
        return Claim(request_id, request, attempt + 1, lease, waited)

    async def renew(self, request_id: str, lease: str) -> bool:
        def extend(db: sqlite3.Connection) -> bool:
            changed = db.execute(
                "UPDATE requests SET lease_until = ? WHERE id = ? AND lease = ? AND state = ?",
                (self.clock() + self.lease_seconds, request_id, lease, State.IN_PROGRESS),
            )
            return changed.rowcount == 1

        return await self._run(self._transaction(extend))

    async def finish(self, request_id: str, lease: str, output_json: str = "", failure: Failure | None = None) -> bool:
        def complete(db: sqlite3.Connection) -> bool:
            held = db.execute(
                "SELECT 1 FROM requests WHERE id = ? AND lease = ? AND state = ?",
                (request_id, lease, State.IN_PROGRESS),
            ).fetchone()
            if held is None:
                return False
            self._complete(db, request_id, output_json, failure)
            return True

        done = await self._run(self._transaction(complete))
        if done:
            self._notify(request_id)
        return done

    async def release(self, request_id: str, lease: str) -> bool:
        def hand_back(db: sqlite3.Connection) -> str | None:
            # Its submission order is kept, so it is next in line; it started once, so no start deadline is left.
            changed = db.execute(
                "UPDATE requests SET state = ?, attempt = attempt - 1, lease = NULL, lease_until = NULL,"
                " start_by = NULL WHERE id = ? AND lease = ? AND state = ? RETURNING app_id",
                (State.QUEUED, request_id, lease, State.IN_PROGRESS),
            ).fetchone()
            return None if changed is None else str(changed[0])

        app_id = await self._run(self._transaction(hand_back))
        if app_id is None:
            return False
        self._work[app_id].set()
        self._notify(request_id)
        return True

    def _complete(self, db: sqlite3.Connection, request_id: str, output_json: str, failure: Failure | None) -> None:
        code, message, reason = (failure.code, failure.message, failure.reason) if failure else (None, None, None)
        db.execute(
            "UPDATE requests SET state = ?, lease = NULL, lease_until = NULL, output_json = ?, failure_code = ?,"
            " failure_message = ?, failure_reason = ?, gone_at = ? WHERE id = ?",
            (State.COMPLETED, output_json, code, message, reason, self.clock() + self.result_ttl_seconds, request_id),
        )
        self._append(db, request_id, FINISHED, b"")

    async def cancel(self, request_id: str) -> tuple[State, bool]:
        def cancel(db: sqlite3.Connection) -> tuple[State, bool]:
            row = db.execute("SELECT state, gone_at FROM requests WHERE id = ?", (request_id,)).fetchone()
            if row is None or (row[1] is not None and row[1] <= self.clock()):
                raise NotFound(f"no request {request_id[:100]!r}", reason="UNKNOWN_REQUEST")
            previous = State(row[0])
            if previous == State.COMPLETED:
                return previous, False
            self._complete(db, request_id, "", Failure("CANCELLED", "cancelled by the caller"))
            if previous == State.IN_PROGRESS:
                db.execute("INSERT INTO cancels (request_id) VALUES (?)", (request_id,))
            return previous, True

        previous, cancelled = await self._run(self._transaction(cancel))
        if cancelled:
            self._notify(request_id)
            if previous == State.IN_PROGRESS:
                for listener in self._cancelled:
                    listener.put_nowait(request_id)
        return previous, cancelled

    async def cancellations(self) -> AsyncIterator[str]:
        """Cancels made through this object arrive at once; other processes' from the cancels journal, read
        when they have committed."""
        mine: asyncio.Queue[str] = asyncio.Queue()
        self._cancelled.add(mine)
        query = "SELECT coalesce(max(id), 0) FROM cancels"
        seen = await self._run(lambda: int(self._connected().execute(query).fetchone()[0]))
        heard: set[str] = set()
        try:
            while True:
                request_id = await mine.get()
                if request_id != _READ_JOURNAL:
                    if request_id not in heard:
                        heard.add(request_id)
                        yield request_id
                    continue
                rows = await self._select("SELECT id, request_id FROM cancels WHERE id > ? ORDER BY id", (seen,))
                for cancel_id, request_id in rows:
                    seen = cancel_id
                    if request_id not in heard:
                        heard.add(request_id)
                        yield request_id
                if len(heard) > 10_000:  # ids heard in-process and again from the journal: forget the old ones
                    heard.clear()
        finally:
            self._cancelled.discard(mine)

    # -- events --------------------------------------------------------------------------

    async def append(self, request_id: str, kind: str, data: bytes) -> None:
        def add(db: sqlite3.Connection) -> None:
            running = db.execute("SELECT state FROM requests WHERE id = ?", (request_id,)).fetchone()
            if running is not None and running[0] != State.COMPLETED:  # nothing follows FINISHED
                self._append(db, request_id, kind, data)

        await self._run(self._transaction(add))
        self._notify(request_id)

    def _append(self, db: sqlite3.Connection, request_id: str, kind: str, data: bytes) -> None:
        (last,) = db.execute("SELECT coalesce(max(seq), 0) FROM events WHERE request_id = ?", (request_id,)).fetchone()
        db.execute(
            "INSERT INTO events (request_id, seq, kind, data) VALUES (?, ?, ?, ?)", (request_id, last + 1, kind, data)
        )
        if last + 1 > MAX_EVENTS:
            db.execute("DELETE FROM events WHERE request_id = ? AND seq <= ?", (request_id, last + 1 - MAX_EVENTS))

    async def events(self, request_id: str) -> list[Event]:
        await self.status(request_id)
        rows = await self._select(EVENTS_AFTER, (request_id, 0))
        return [Event(seq, kind, bytes(data)) for seq, kind, data in rows]

    async def follow(self, request_id: str, after: int = 0) -> AsyncIterator[Event]:
        await self.status(request_id)  # NotFound for an unknown request, before anything is yielded
        news = self._listen(request_id)
        try:
            while True:
                news.clear()
                rows = await self._select(EVENTS_AFTER, (request_id, after))
                for seq, kind, data in rows:
                    after = seq
                    yield Event(seq, kind, bytes(data))
                    if kind == FINISHED:
                        return
                if not rows and not await _woken(news, self._clock_check):
                    await self.status(request_id)  # ends the loop (NotFound) once the record expired
        finally:
            self._unlisten(request_id)

    def _listen(self, request_id: str) -> asyncio.Event:
        news, followers = self._followed.get(request_id, (asyncio.Event(), 0))
        self._followed[request_id] = (news, followers + 1)
        return news

    def _unlisten(self, request_id: str) -> None:
        news, followers = self._followed[request_id]
        if followers == 1:
            del self._followed[request_id]
        else:
            self._followed[request_id] = (news, followers - 1)

    def _notify(self, request_id: str) -> None:
        if (followed := self._followed.get(request_id)) is not None:
            followed[0].set()

    # -- upkeep --------------------------------------------------------------------------

    async def _sweep_now_and_then(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep < SWEEP_SECONDS:
            return
        self._last_sweep = now
        await self.sweep()

    async def sweep(self) -> int:
        """Delete completed requests past their TTL, their events, and the old cancel journal; how many."""

        def delete(db: sqlite3.Connection) -> int:
            now = self.clock()
            db.execute("DELETE FROM events WHERE request_id IN (SELECT id FROM requests WHERE gone_at <= ?)", (now,))
            gone = db.execute("DELETE FROM requests WHERE gone_at <= ?", (now,)).rowcount
            db.execute("DELETE FROM cancels WHERE id <= (SELECT coalesce(max(id), 0) - 10000 FROM cancels)")
            return gone

        return await self._run(self._transaction(delete))

    async def close(self) -> None:
        for claimer in list(self._claimers.values()):
            claimer.cancel()
        await asyncio.gather(*self._claimers.values(), return_exceptions=True)
        self._closing.set()
        if self._watcher is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._watcher.join)
        db, self._db = self._db, None
        if db is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, db.close)
        self._thread.shutdown(wait=False)


# Columns added since the first release of the file, with their definitions: a queue file written by an
# earlier version gains them when opened (its requests keep NORMAL priority and no start timeout).
ADDED_COLUMNS = {
    "priority": "INTEGER NOT NULL DEFAULT 0",
    "start_timeout": "REAL",
    "start_by": "REAL",
    "output_salt": "TEXT NOT NULL DEFAULT ''",
    "submitted_at": "REAL",
    "trace_parent": "TEXT NOT NULL DEFAULT ''",
}


def _add_missing_columns(db: sqlite3.Connection) -> None:
    present = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
    for name, definition in ADDED_COLUMNS.items():
        if name not in present:
            db.execute(f"ALTER TABLE requests ADD COLUMN {name} {definition}")
    db.execute("CREATE INDEX IF NOT EXISTS requests_by_turn ON requests (app_id, state, priority, seq)")


def _start_timeout_failure(request: NewRequest) -> Failure:
    message = f"the request did not start within {request.start_timeout_seconds:g} s of its submit"
    return Failure("DEADLINE_EXCEEDED", message, "START_TIMEOUT")


def _request_of(app_id: str, row: tuple[Any, ...]) -> tuple[int, str, NewRequest, int, float | None, float | None]:
    """A REQUEST_COLUMNS row: its order, id, request, runs so far, start deadline and submit time."""
    seq, request_id, path, input_json, expires_in, priority, start_timeout, attempt, start_by, *rest = row
    salt, submitted_at, parent = rest
    request = NewRequest(app_id, path, input_json, expires_in, Priority(priority), start_timeout, salt, parent)
    return seq, request_id, request, attempt, start_by, submitted_at


def _data_version(db: sqlite3.Connection) -> int:
    """Changes whenever another connection (another process, or another queue object) committed."""
    return int(db.execute("PRAGMA data_version").fetchone()[0])


async def _woken(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `event`; whether it was set. Not `asyncio.wait_for`: on Python 3.11 it returns
    when what it awaited finished in the tick a cancel arrived, dropping the cancel — a follower then followed
    its request to the end after its caller left (a Stream's client gone, the request run on for 20 s)."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
