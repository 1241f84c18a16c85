"""Layer 3, the store contract: the behaviour every Store backend must show.

Every test runs over each backend in BACKENDS, on a ManualClock: the store's
wall clock (what people read, retry times, purging) and its lease clock
(leases, heartbeats) are stepped by hand and apart, so nothing sleeps.
`Backend.open` opens the store again: for SQLite a second instance on the same
file, which stands for another process; for memory the same store.

The tests are coroutines run by `contract` (one event loop per test, every
store opened inside it and closed at its end), so no asyncio plugin is needed.
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from gatepost.store import (
    ROUTER,
    Bounced,
    Deferred,
    Delivered,
    Job,
    Moved,
    NewMessage,
    NewRecipient,
    SqliteDb,
    SqliteStore,
    Store,
    new_queue_id,
    open_store,
    schema,
    send_queue,
)
from gatepost.store import connect as connect_module
from gatepost.store.base import Cancelled, Changes, Held, key_of
from gatepost.store.clock import ManualClock
from gatepost.store.memory import MemoryStore
from gatepost.store.postgres import PgStore

SEND = send_queue("GW1")
LEASE = 60.0
TEST_TIMEOUT = 60.0  # seconds one contract test may take before it counts as hung

# Hop events of admin actions, and their details.
ADMIN_EVENTS = {
    "hold requested", "hold", "hold dropped", "release",
    "delete requested", "delete", "delete dropped",
    "requeue requested", "requeue", "requeue dropped",
}  # fmt: skip
NOW = "admin"
WAITS = "admin: waits for the attempt in progress"
AFTER = "admin, after the attempt"
CANCELLED = "admin: attempt cancelled before its final dot"
DROPPED = "admin: the attempt ended it (delivered)"


@dataclass
class Backend:
    name: str
    clock: ManualClock
    make: Callable[[ManualClock], Store]  # a store instance over the same data
    message_rows: Callable[[Store], int]  # stored message bodies
    url: str = ""  # for open_store in child processes ("" where there are none)
    opened: list[Store] = field(default_factory=list)

    def open(self) -> Store:
        """The store again (another process, where the backend has them)."""
        store = self.make(self.clock)
        if all(store is not seen for seen in self.opened):
            self.opened.append(store)
        return store

    async def run(self, test: Callable[..., Awaitable[None]], params: dict[str, Any]) -> None:
        try:
            store = self.open()
            await asyncio.wait_for(test(store, self, **params), TEST_TIMEOUT)
        finally:
            while self.opened:
                await self.opened.pop().aclose()


def sqlite_backend(tmp_path: Path) -> Backend:
    path = tmp_path / "var" / "queue.db"  # the directory does not exist yet

    def message_rows(_: Store) -> int:
        with closing(sqlite3.connect(path)) as conn:
            return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])

    def make(clock: ManualClock) -> Store:
        return SqliteStore(path, clock=clock.clock())

    return Backend("sqlite", ManualClock(), make, message_rows, url=f"sqlite:{path}")


def memory_backend(tmp_path: Path) -> Backend:
    stores: list[MemoryStore] = []

    def make(clock: ManualClock) -> Store:
        if not stores:
            stores.append(MemoryStore(clock.clock(), tmp_path / "spool"))
        return stores[0]

    def message_rows(store: Store) -> int:
        return len(store._messages)  # type: ignore[attr-defined]

    return Backend("memory", ManualClock(), make, message_rows)


def postgres_backend(tmp_path: Path, request: pytest.FixtureRequest) -> Backend:
    """A fresh database of the test run's own cluster; each `open` is another
    connection pool (another process or host). Leases on the ManualClock."""
    import psycopg

    url = request.getfixturevalue("pg_url")

    def make(clock: ManualClock) -> Store:
        return PgStore(url, clock=clock.clock(), staging=tmp_path / "staging")

    def message_rows(_: Store) -> int:
        with psycopg.connect(url) as conn:
            return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])  # type: ignore[index]

    return Backend("postgres", ManualClock(), make, message_rows, url=url)


BACKENDS = [memory_backend, sqlite_backend, postgres_backend]


@pytest.fixture(params=BACKENDS, ids=lambda make: make.__name__.removesuffix("_backend"))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    make: Callable[..., Backend] = request.param
    return make(tmp_path, request) if make is postgres_backend else make(tmp_path)


def contract(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run `async def test(store, b, **params)` over every backend."""
    extra = list(inspect.signature(test).parameters.values())[2:]

    def run(backend: Backend, **params: Any) -> None:
        asyncio.run(backend.run(test, params))

    run.__name__ = run.__qualname__ = test.__name__
    run.__doc__ = test.__doc__
    backend_param = inspect.Parameter("backend", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    run.__signature__ = inspect.Signature([backend_param, *extra])  # type: ignore[attr-defined]
    return run


def with_processes(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """A contract test that needs several processes (backends that have them)."""
    backends = [sqlite_backend, postgres_backend]
    only = pytest.mark.parametrize("backend", backends, indirect=True, ids=["sqlite", "postgres"])
    return only(contract(test))


def sqlite_only(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """A contract test that needs several processes or a file that outlives the store."""
    only = pytest.mark.parametrize("backend", [sqlite_backend], indirect=True, ids=["sqlite"])
    return only(contract(test))


def message(
    *rcpts: tuple[str, str | None],
    content: bytes = b"Subject: hi\r\n\r\nbody\r\n",
    sender: str = "alice@example.com",
    location: str = "HQ",
    received_by: str = "gateway:GW1",
    origin: str = "SALES",
) -> NewMessage:
    recipients = tuple(NewRecipient(a, m) for a, m in rcpts) or (NewRecipient("bob@ext.org", None),)
    return NewMessage(sender, recipients, content, location, origin, received_by)


async def enqueue(store: Store, *messages: NewMessage) -> list[str]:
    return [await store.enqueue(new) for new in messages]


async def claim_one(store: Store, queue: str = ROUTER, owner: str = "w1") -> Job:
    jobs = await store.claim(queue, owner, 10, LEASE)
    assert len(jobs) == 1, jobs
    return jobs[0]


async def states(store: Store) -> dict[str, int]:
    return {state: n for state, n in (await store.counts()).items() if n}


async def admin_trail(store: Store, message_id: str) -> list[tuple[str, str]]:
    """The admin hops of a message: (event, detail), in order."""
    return [(h.event, h.detail) for h in await store.hops(message_id) if h.event in ADMIN_EVENTS]


def expire(b: Backend, lease: float = LEASE) -> None:
    b.clock.step(lease=lease + 1)


# -- enqueue -----------------------------------------------------------------------


@contract
async def test_enqueued_mail_is_readable_from_another_instance(store: Store, b: Backend) -> None:
    t0 = b.clock.wall_now
    first = message(("bob@ext.org", None), ("HQ/carol", "HQ/carol"), content=b"one")
    ids = await enqueue(store, first, message(content=b"two"))
    other = b.open()
    assert [await other.content(i) for i in ids] == [b"one", b"two"]
    entries = await other.queue()
    assert [(e.message_id, e.rcpt_id, e.address) for e in entries] == [
        (ids[0], 0, "bob@ext.org"),
        (ids[0], 1, "HQ/carol"),
        (ids[1], 0, "bob@ext.org"),
    ]
    assert {(e.state, e.queue, e.location, e.created, e.attempts) for e in entries} == {
        ("incoming", ROUTER, "HQ", t0, 0)
    }
    assert entries[0].sender == "alice@example.com" and entries[0].size == 3
    hops = await other.hops(ids[0])
    assert [(h.rcpt_id, h.event, h.postoffice, h.detail, h.at) for h in hops] == [
        (0, "received", "HQ", "gateway:GW1", t0),
        (1, "received", "HQ", "gateway:GW1", t0),
    ]


@sqlite_only
async def test_enqueued_mail_survives_closing_the_store(store: Store, b: Backend) -> None:
    message_id = await store.enqueue(message(content=b"kept"))
    await b.opened.pop().aclose()
    again = b.open()
    assert await again.content(message_id) == b"kept"
    assert await states(again) == {"incoming": 1}


@contract
async def test_queue_ids_are_unique_and_sort_in_enqueue_order(store: Store, b: Backend) -> None:
    one_by_one = await enqueue(store, *(message() for _ in range(100)))
    assert sorted(one_by_one) == one_by_one
    together = await asyncio.gather(*(store.enqueue(message()) for _ in range(100)))
    assert len(set(one_by_one + together)) == 200
    assert min(together) > one_by_one[-1]
    assert await states(store) == {"incoming": 200}


@contract
async def test_a_recipientless_message_is_refused_alone(store: Store, b: Backend) -> None:
    broken = NewMessage("a@b", (), b"x", "HQ", "HQ", "cli")
    with pytest.raises(ValueError):
        await store.enqueue(broken)
    good, bad = await asyncio.gather(
        store.enqueue(message()), store.enqueue(broken), return_exceptions=True
    )
    assert isinstance(good, str) and isinstance(bad, ValueError)
    assert [e.message_id for e in await store.queue()] == [good]


@contract
async def test_unknown_content_raises_key_error(store: Store, b: Backend) -> None:
    with pytest.raises(KeyError):
        await store.content("NOSUCHID")


# -- claim ---------------------------------------------------------------------------


@contract
async def test_claim_returns_the_job_with_its_message_fields(store: Store, b: Backend) -> None:
    t0 = b.clock.wall_now
    message_id = await store.enqueue(message(("HQ/carol", "HQ/carol"), content=b"12345"))
    b.clock.step(wall=1.0)
    job = await claim_one(store, owner="router-1")
    assert job.token
    assert job == Job(
        message_id, 0, "alice@example.com", "HQ/carol", "HQ/carol", "HQ", "SALES", ROUTER,
        attempts=0, created=t0, first_attempt=None, size=5, owner="router-1", token=job.token,
    )  # fmt: skip
    assert [e.state for e in await store.queue()] == ["active"]


@contract
async def test_each_claim_gives_its_jobs_one_new_token(store: Store, b: Backend) -> None:
    await enqueue(store, *(message() for _ in range(3)))
    first = await store.claim(ROUTER, "w1", 2, LEASE)
    second = await store.claim(ROUTER, "w1", 2, LEASE)  # same owner, another attempt
    assert (len(first), len(second)) == (2, 1)
    assert first[0].token == first[1].token != second[0].token
    expire(b)
    again = await store.claim(ROUTER, "w1", 10, LEASE)
    assert len(again) == 3 and len({job.token for job in again}) == 1
    assert again[0].token not in {first[0].token, second[0].token}


@contract
async def test_two_owners_never_get_the_same_job(store: Store, b: Backend) -> None:
    await enqueue(store, *(message() for _ in range(3)))
    first = await store.claim(ROUTER, "a", 2, LEASE)
    second = await store.claim(ROUTER, "b", 5, LEASE)
    third = await store.claim(ROUTER, "c", 5, LEASE)
    assert (len(first), len(second), third) == (2, 1, [])
    assert {j.message_id for j in first}.isdisjoint(j.message_id for j in second)


@contract
async def test_concurrent_claimers_never_get_the_same_recipient(store: Store, b: Backend) -> None:
    await asyncio.gather(*(store.enqueue(message(("a@x", None), ("b@x", None))) for _ in range(20)))
    other = b.open()  # another process, for SQLite
    got: list[Job] = []
    for _ in range(3):
        mine, theirs = await asyncio.gather(
            store.claim(ROUTER, "a", 15, LEASE), other.claim(ROUTER, "b", 15, LEASE)
        )
        got += mine + theirs
        assert not mine or not theirs or mine[0].token != theirs[0].token
    keys = [key_of(job) for job in got]
    assert len(keys) == len(set(keys)) == 40


@contract
async def test_expired_lease_is_claimable_again(store: Store, b: Backend) -> None:
    await store.enqueue(message())
    [job] = await store.claim(ROUTER, "dead", 1, 10.0)
    b.clock.step(lease=9.0)
    assert await store.claim(ROUTER, "b", 1, 10.0) == []
    b.clock.step(lease=1.5)
    again = await claim_one(store, owner="b")
    assert (again.message_id, again.owner) == (job.message_id, "b")
    assert again.token != job.token


@contract
async def test_claim_takes_only_its_queue(store: Store, b: Backend) -> None:
    await store.enqueue(message())
    job = await claim_one(store)
    await store.complete([Moved(job, "GWPO", SEND)])
    assert await store.claim(ROUTER, "r", 10, LEASE) == []
    moved = await claim_one(store, queue=SEND)
    assert (moved.location, moved.queue) == ("GWPO", SEND)


@contract
async def test_claim_returns_oldest_first(store: Store, b: Backend) -> None:
    newer = await store.enqueue(message())
    b.clock.step(wall=-40.0)  # the wall clock is set back: the next two are older
    older = await enqueue(store, message(), message())
    jobs = await store.claim(ROUTER, "w", 10, LEASE)
    assert [j.message_id for j in jobs] == [*older, newer]


@contract
async def test_held_mail_is_never_claimed_until_released(store: Store, b: Backend) -> None:
    message_id = await store.enqueue(message())
    assert await store.set_state([message_id], "hold") == Changes(now=1)
    assert await store.claim(ROUTER, "w", 10, LEASE) == []
    b.clock.step(wall=1e9, lease=1e9)
    assert await store.claim(ROUTER, "w", 10, LEASE) == []
    assert await store.set_state([message_id], "release") == Changes(now=1)
    assert (await claim_one(store)).message_id == message_id
    assert await admin_trail(store, message_id) == [("hold", NOW), ("release", NOW)]


# -- outcomes --------------------------------------------------------------------------


@contract
async def test_move_changes_location_and_queue_without_copying_content(
    store: Store, b: Backend
) -> None:
    message_id = await store.enqueue(message(("x@ext", None), ("y@ext", None), content=b"C"))
    jobs = await store.claim(ROUTER, "r", 10, LEASE)
    b.clock.step(wall=3.0)
    await store.complete([Moved(job, "GWPO", SEND) for job in jobs])
    entries = await store.queue()
    assert {(e.state, e.location, e.queue) for e in entries} == {("incoming", "GWPO", SEND)}
    assert b.message_rows(store) == 1
    assert await store.content(message_id) == b"C"
    moves = [(h.rcpt_id, h.postoffice, h.at) for h in await store.hops(message_id)
             if h.event == "moved"]  # fmt: skip
    assert moves == [(0, "GWPO", b.clock.wall_now), (1, "GWPO", b.clock.wall_now)]


@contract
async def test_delivery_to_a_mailbox(store: Store, b: Backend) -> None:
    message_id = await store.enqueue(message(("HQ/carol", "HQ/carol"), content=b"hello"))
    job = await claim_one(store)
    b.clock.step(wall=3.0)
    await store.complete([Delivered(job)])
    [entry] = await store.mailbox("HQ/carol")
    assert (entry.message_id, entry.sender, entry.delivered, entry.size) == (
        message_id, "alice@example.com", b.clock.wall_now, 5,
    )  # fmt: skip
    assert await store.mailbox_content("HQ/carol", entry.entry_id) == b"hello"
    assert await store.mailbox_content("HQ/dave", entry.entry_id) is None
    assert await store.queue() == [] and await states(store) == {"delivered": 1}
    assert (await store.hops(message_id))[-1].event == "delivered"
    b.clock.step(wall=1e9, lease=1e9)
    assert await store.claim(ROUTER, "w", 10, LEASE) == []


@contract
async def test_delivery_to_a_smart_host_finalises_without_a_mailbox(
    store: Store, b: Backend
) -> None:
    message_id = await store.enqueue(message(("bob@ext.org", None)))
    job = await claim_one(store)
    await store.complete([Delivered(job, relay="relay.example", reply="250 ok queued")])
    [entry] = await store.queue(states=["delivered"])
    assert (entry.attempts, entry.last_reply) == (1, "250 ok queued")
    assert await store.mailbox("bob@ext.org") == [] and await store.queue() == []
    last = (await store.hops(message_id))[-1]
    assert (last.event, last.detail) == ("delivered", "relay=relay.example 250 ok queued")


@contract
async def test_deferred_waits_for_its_retry_time(store: Store, b: Backend) -> None:
    message_id = await store.enqueue(message())
    job = await claim_one(store)
    first_attempt = b.clock.wall_now + 1.0
    b.clock.step(wall=1.0)
    retry_at = first_attempt + 497.0
    await store.complete([Deferred(job, retry_at=retry_at, reply="451 try later", relay="r1")])
    [entry] = await store.queue()
    assert (entry.state, entry.attempts, entry.next_attempt, entry.last_reply) == (
        "deferred", 1, retry_at, "451 try later",
    )  # fmt: skip
    b.clock.step(wall=496.0)
    assert await store.claim(ROUTER, "w", 10, LEASE) == []
    b.clock.step(wall=1.0)  # exactly the retry time
    retried = await claim_one(store)
    assert (retried.attempts, retried.first_attempt) == (1, first_attempt)
    await store.complete([Deferred(retried, retry_at=retry_at + 400.0, reply="452 full")])
    [entry] = await store.queue()
    assert entry.attempts == 2
    b.clock.step(wall=401.0)
    assert (await claim_one(store)).first_attempt == first_attempt  # the first one is kept
    assert [h.event for h in await store.hops(message_id)].count("deferred") == 2


@contract
async def test_bounced_is_final(store: Store, b: Backend) -> None:
    message_id = await store.enqueue(message())
    job = await claim_one(store)
    await store.complete([Bounced(job, reply="550 no such user", relay="r1")])
    assert await store.queue() == [] and await states(store) == {"bounced": 1}
    [entry] = await store.queue(states=["bounced"])
    assert entry.last_reply == "550 no such user"
    b.clock.step(wall=1e9, lease=1e9)
    assert await store.claim(ROUTER, "w", 10, LEASE) == []
    assert (await store.hops(message_id))[-1].event == "bounced"


@contract
async def test_complete_enqueues_new_mail_in_the_same_transaction(store: Store, b: Backend) -> None:
    message_id = await store.enqueue(message())
    job = await claim_one(store)
    dsn = message(("alice@example.com", None), sender="", received_by="bounce")
    broken = NewMessage("", (), b"x", "HQ", "HQ", "bounce")
    with pytest.raises(ValueError):
        await store.complete([Bounced(job, reply="550 no")], new=[dsn, broken])
    assert await states(store) == {"active": 1}  # nothing of the failed call remains
    [bounce_id] = await store.complete([Bounced(job, reply="550 no")], new=[dsn])
    assert bounce_id != message_id
    [entry] = await store.queue()
    assert (entry.message_id, entry.sender, entry.state) == (bounce_id, "", "incoming")
    assert await states(store) == {"incoming": 1, "bounced": 1}


@contract
async def test_a_delay_warning_is_enqueued_once_per_message(store: Store, b: Backend) -> None:
    message_id = await store.enqueue(message(("a@x.org", None), ("b@x.org", None)))
    first, second = await store.claim(ROUTER, "w", 10, LEASE)
    assert not first.warned
    warning = message(("alice@example.com", None), content=b"Subject: delayed\r\n\r\n")
    retry_at = b.clock.wall_now + 400.0
    returned = await asyncio.gather(  # two workers at once
        *(
            store.complete([Deferred(job, retry_at, "451 later")], (), [(message_id, warning)])
            for job in (first, second)
        )
    )
    assert returned == [[], []]  # the ids of `new` only, and there were none
    [sent] = [e for e in await store.queue() if e.message_id != message_id]
    assert (sent.address, sent.state) == ("alice@example.com", "incoming")
    assert await store.content(sent.message_id) == warning.content
    b.clock.step(wall=500.0)
    again = [j for j in await store.claim(ROUTER, "w", 10, LEASE) if j.message_id == message_id]
    assert len(again) == 2 and all(job.warned for job in again)
    retry_at = b.clock.wall_now + 400.0
    await store.complete([Deferred(again[0], retry_at, "451")], (), [(message_id, warning)])
    others = [e.message_id for e in await store.queue() if e.message_id != message_id]
    assert others == [sent.message_id]  # still the one warning


@contract
async def test_held_sets_the_job_aside_with_the_reason(store: Store, b: Backend) -> None:
    message_id = await store.enqueue(message())
    job = await claim_one(store)
    await store.complete([Held(job, "content damaged: spool file is short")])
    assert [e.state for e in await store.queue()] == ["hold"]
    assert (await store.hops(message_id))[-1].event == "hold"
    assert await admin_trail(store, message_id) == [
        ("hold", "content damaged: spool file is short")
    ]
    b.clock.step(wall=1e9, lease=1e9)
    assert await store.claim(ROUTER, "w", 10, LEASE) == []


# -- an attempt that lost its lease (rule 2) ----------------------------------------------


async def two_attempts(store: Store, b: Backend, *rcpts: tuple[str, str | None]) -> tuple[Job, Job]:
    """The first attempt's lease runs out and a second attempt claims the job."""
    await store.enqueue(message(*rcpts))
    stale = await claim_one(store, owner="a")
    expire(b)
    fresh = await claim_one(store, owner="b")
    assert key_of(fresh) == key_of(stale) and fresh.token != stale.token
    return stale, fresh


@contract
async def test_renew_extends_only_the_leases_its_token_holds(store: Store, b: Backend) -> None:
    await store.enqueue(message())
    job = await claim_one(store, owner="w1")
    renewal = await store.renew([job], 3 * LEASE)
    assert renewal.held == {key_of(job)} and renewal.lost([job]) == [] and renewal.pending == {}
    b.clock.step(lease=2 * LEASE)
    assert await store.claim(ROUTER, "w2", 10, LEASE) == []  # still held
    b.clock.step(lease=LEASE + 1)
    [taken] = await store.claim(ROUTER, "w2", 10, LEASE)
    assert taken.owner == "w2"
    assert (await store.renew([job], 10_000.0)).lost([job]) == [job]  # w1 lost it


@contract
async def test_renew_never_shortens_a_lease(store: Store, b: Backend) -> None:
    await store.enqueue(message())
    job = await claim_one(store)  # for LEASE seconds
    assert (await store.renew([job], 1.0)).lost([job]) == []
    b.clock.step(lease=LEASE - 1)
    assert await store.claim(ROUTER, "w2", 10, LEASE) == []
    assert (await store.renew([job], 1.0)).lost([job]) == []


@contract
async def test_a_lost_attempts_renew_does_not_extend_the_new_lease(
    store: Store, b: Backend
) -> None:
    stale, fresh = await two_attempts(store, b)
    assert (await store.renew([stale], 100 * LEASE)).lost([stale]) == [stale]
    b.clock.step(lease=LEASE / 2)
    assert (await store.renew([fresh], LEASE)).lost([fresh]) == []
    assert (await store.renew([stale], 100 * LEASE)).lost([stale]) == [stale]
    expire(b)  # past the fresh attempt's own lease: nothing extended it
    third = await claim_one(store, owner="c")
    assert third.token not in {stale.token, fresh.token}


@contract
async def test_a_lost_attempts_delivery_still_counts(store: Store, b: Backend) -> None:
    stale, fresh = await two_attempts(store, b, ("HQ/carol", "HQ/carol"))
    await store.complete([Delivered(stale)])
    assert await states(store) == {"delivered": 1}
    assert len(await store.mailbox("HQ/carol")) == 1
    assert (await store.renew([fresh], LEASE)).lost([fresh]) == [fresh]
    await store.complete([Deferred(fresh, retry_at=b.clock.wall_now + 60, reply="451")])
    await store.complete([Delivered(fresh)])  # a final state is never applied twice
    assert await states(store) == {"delivered": 1}
    assert len(await store.mailbox("HQ/carol")) == 1
    events = [h.event for h in await store.hops(stale.message_id)]
    assert events == ["received", "delivered"]


@contract
async def test_a_lost_attempts_bounce_still_counts(store: Store, b: Backend) -> None:
    stale, fresh = await two_attempts(store, b)
    await store.complete([Bounced(stale, reply="550 no such user")])
    assert await states(store) == {"bounced": 1}
    assert (await store.renew([fresh], LEASE)).lost([fresh]) == [fresh]
    await store.complete([Deferred(fresh, retry_at=b.clock.wall_now + 60, reply="451")])
    [entry] = await store.queue(states=["bounced"])
    assert entry.last_reply == "550 no such user"


@contract
async def test_late_outcome_never_undoes_a_final_state(store: Store, b: Backend) -> None:
    stale, fresh = await two_attempts(store, b, ("HQ/carol", "HQ/carol"))
    await store.complete([Delivered(fresh)])
    await store.complete([Deferred(stale, retry_at=b.clock.wall_now + 60, reply="451")])
    await store.complete([Moved(stale, "GWPO", SEND)])
    assert await states(store) == {"delivered": 1}
    assert len(await store.mailbox("HQ/carol")) == 1
    assert [h.event for h in await store.hops(stale.message_id)] == ["received", "delivered"]


@contract
async def test_a_lost_attempts_deferral_is_dropped(store: Store, b: Backend) -> None:
    stale, fresh = await two_attempts(store, b)
    await store.complete([Deferred(stale, retry_at=b.clock.wall_now, reply="451 stale")])
    assert [e.state for e in await store.queue()] == ["active"]
    assert await store.claim(ROUTER, "c", 10, LEASE) == []  # the fresh lease is not freed
    assert (await store.renew([fresh], LEASE)).lost([fresh]) == []
    await store.complete([Deferred(fresh, retry_at=b.clock.wall_now + 60, reply="452 fresh")])
    [entry] = await store.queue()
    assert (entry.state, entry.attempts, entry.last_reply) == ("deferred", 1, "452 fresh")
    assert [h.event for h in await store.hops(fresh.message_id)].count("deferred") == 1


@pytest.mark.parametrize("outcome", [Held, Cancelled], ids=["held", "cancelled"])
@contract
async def test_a_lost_attempts_hold_or_cancel_is_dropped(
    store: Store, b: Backend, outcome: Callable[..., Any]
) -> None:
    stale, fresh = await two_attempts(store, b)
    await store.complete([outcome(stale, "damaged") if outcome is Held else outcome(stale)])
    assert [e.state for e in await store.queue()] == ["active"]
    assert await store.claim(ROUTER, "c", 10, LEASE) == []
    assert (await store.renew([fresh], LEASE)).lost([fresh]) == []


@contract
async def test_a_lost_attempts_move_is_dropped(store: Store, b: Backend) -> None:
    stale, fresh = await two_attempts(store, b)
    await store.complete([Moved(stale, "GWPO", SEND)])
    [entry] = await store.queue()
    assert (entry.state, entry.location, entry.queue) == ("active", "HQ", ROUTER)
    assert await store.claim(ROUTER, "c", 10, LEASE) == []
    assert await store.claim(SEND, "c", 10, LEASE) == []
    assert (await store.renew([fresh], LEASE)).lost([fresh]) == []
    await store.complete([Moved(fresh, "HQ", SEND)])
    [entry] = await store.queue()
    assert (entry.state, entry.location, entry.queue) == ("incoming", "HQ", SEND)
    assert [h.event for h in await store.hops(fresh.message_id)].count("moved") == 1


# -- the two clocks -----------------------------------------------------------------------


@contract
async def test_a_wall_clock_step_steals_no_lease_and_no_heartbeat(store: Store, b: Backend) -> None:
    await store.enqueue(message())
    job = await claim_one(store)
    await store.heartbeat("gateway:GW1", "p1")
    for step in (600.0, -1200.0):
        b.clock.step(wall=step)
        assert await store.claim(ROUTER, "thief", 10, LEASE) == []
        assert not await store.due(ROUTER)
        assert (await store.renew([job], LEASE)).lost([job]) == []
        assert await store.alive(within=5) == {"gateway:GW1"}


@contract
async def test_a_lease_clock_step_ends_leases_and_heartbeats(store: Store, b: Backend) -> None:
    await store.enqueue(message())
    job = await claim_one(store)
    await store.heartbeat("gateway:GW1", "p1")
    expire(b)
    assert await store.due(ROUTER)
    assert await store.alive(within=5) == set()
    taken = await claim_one(store, owner="thief")
    assert (taken.owner, key_of(taken)) == ("thief", key_of(job))


@contract
async def test_retries_follow_the_wall_clock(store: Store, b: Backend) -> None:
    await store.enqueue(message())
    job = await claim_one(store)
    await store.complete([Deferred(job, retry_at=b.clock.wall_now + 60, reply="451")])
    b.clock.step(lease=1000.0)
    assert not await store.due(ROUTER)
    assert await store.claim(ROUTER, "w", 10, LEASE) == []
    b.clock.step(wall=61.0)
    assert await store.due(ROUTER)
    assert (await claim_one(store)).attempts == 1


# -- fairness --------------------------------------------------------------------------


async def defer_all(store: Store, b: Backend, count: int, retry_in: float) -> None:
    await enqueue(store, *(message() for _ in range(count)))
    jobs = await store.claim(ROUTER, "w", count, LEASE)
    retry_at = b.clock.wall_now + retry_in
    await store.complete([Deferred(j, retry_at=retry_at, reply="451") for j in jobs])


@contract
async def test_fresh_mail_is_not_starved_by_due_retries(store: Store, b: Backend) -> None:
    await defer_all(store, b, 30, retry_in=10.0)
    b.clock.step(wall=20.0)
    fresh = set(await enqueue(store, *(message() for _ in range(3))))
    jobs = await store.claim(ROUTER, "w", 10, LEASE)
    assert len(jobs) == 10
    assert fresh <= {j.message_id for j in jobs}


@contract
async def test_due_retries_are_not_starved_by_fresh_mail(store: Store, b: Backend) -> None:
    await defer_all(store, b, 4, retry_in=10.0)
    await enqueue(store, *(message() for _ in range(30)))
    b.clock.step(wall=20.0)
    jobs = await store.claim(ROUTER, "w", 10, LEASE)
    assert sum(j.attempts == 1 for j in jobs) == 4
    assert sum(j.attempts == 0 for j in jobs) == 6


# -- admin -----------------------------------------------------------------------------


@contract
async def test_flush_makes_deferred_mail_due_now(store: Store, b: Backend) -> None:
    await defer_all(store, b, 2, retry_in=1e9)
    ids = [e.message_id for e in await store.queue()]
    assert await store.set_state(ids, "flush") == Changes(now=2)
    assert len(await store.claim(ROUTER, "w", 10, LEASE)) == 2


@contract
async def test_hold_applies_to_non_final_jobs_only(store: Store, b: Backend) -> None:
    message_id = await store.enqueue(message(("a@x", None), ("HQ/b", "HQ/b")))
    jobs = await store.claim(ROUTER, "w", 10, LEASE)
    await store.complete([Delivered(j) for j in jobs if j.mailbox])
    await store.complete([Deferred(j, b.clock.wall_now + 60, "451") for j in jobs if not j.mailbox])
    assert await store.set_state([message_id, message_id], "hold") == Changes(now=1)
    assert await states(store) == {"hold": 1, "delivered": 1}
    assert await store.set_state([message_id], "release") == Changes(now=1)
    assert await store.set_state([message_id], "release") == Changes()
    assert await admin_trail(store, message_id) == [("hold", NOW), ("release", NOW)]


@contract
async def test_delete_removes_the_message_when_nothing_refers_to_it(
    store: Store, b: Backend
) -> None:
    gone, kept = await enqueue(store, message(), message())
    assert await store.set_state([gone], "delete") == Changes(now=1)
    assert [e.message_id for e in await store.queue()] == [kept]
    assert b.message_rows(store) == 1
    with pytest.raises(KeyError):
        await store.content(gone)
    assert await admin_trail(store, gone) == [("delete", NOW)]


@contract
async def test_delete_keeps_content_a_mailbox_still_holds(store: Store, b: Backend) -> None:
    message_id = await store.enqueue(message(("a@x", None), ("HQ/b", "HQ/b")))
    jobs = await store.claim(ROUTER, "w", 10, LEASE)
    await store.complete([Delivered(j) for j in jobs if j.mailbox])
    await store.complete([Deferred(j, b.clock.wall_now + 60, "451") for j in jobs if not j.mailbox])
    assert await store.set_state([message_id], "delete") == Changes(now=1)
    assert await store.queue() == [] and b.message_rows(store) == 1
    [entry] = await store.mailbox("HQ/b")
    assert await store.mailbox_content("HQ/b", entry.entry_id) == message().content


@contract
async def test_requeue_hands_waiting_mail_to_the_router(store: Store, b: Backend) -> None:
    message_id = await store.enqueue(message())
    await store.complete([Moved(await claim_one(store), "HQ", SEND)])
    assert await store.set_state([message_id], "requeue") == Changes(now=1)
    [entry] = await store.queue()
    assert (entry.state, entry.queue) == ("incoming", ROUTER)
    assert await admin_trail(store, message_id) == [("requeue", NOW)]


@contract
async def test_unknown_admin_action_is_refused(store: Store, b: Backend) -> None:
    message_id = await store.enqueue(message())
    with pytest.raises(ValueError):
        await store.set_state([message_id], "delivered")


@contract
async def test_counts_and_pending(store: Store, b: Backend) -> None:
    await defer_all(store, b, 2, retry_in=100.0)
    await enqueue(store, *(message() for _ in range(3)))
    assert len(await store.claim(ROUTER, "w", 1, LEASE)) == 1
    assert await states(store) == {"deferred": 2, "incoming": 2, "active": 1}
    b.clock.step(wall=50.0)
    assert await store.pending(ROUTER) == 3
    b.clock.step(wall=50.0)
    assert await store.pending(ROUTER) == 5
    assert await store.pending(SEND) == 0


@contract
async def test_purge_forgets_old_final_mail_by_the_wall_clock(store: Store, b: Backend) -> None:
    ids = await enqueue(store, message(("a@x", None)), message(("HQ/b", "HQ/b")))
    jobs = await store.claim(ROUTER, "w", 10, LEASE)
    await store.complete([Delivered(j) for j in jobs])
    b.clock.step(lease=1e6)  # leases and heartbeats do not age mail
    assert await store.purge(final_retention=1.0, trace_retention=1e9) == 0
    b.clock.step(wall=2.0)
    assert await store.purge(final_retention=1.0, trace_retention=1e9) == 2
    assert await states(store) == {}
    assert b.message_rows(store) == 1  # the mailbox entry still needs its content
    assert len(await store.mailbox("HQ/b")) == 1
    assert [h.event for h in await store.hops(ids[1])] == ["received", "delivered"]
    assert await store.purge(final_retention=1.0, trace_retention=1.0) == 0
    assert await store.hops(ids[1]) == []


# -- admin actions on a job in an attempt ----------------------------------------------------


async def in_attempt(store: Store, action: str) -> tuple[str, Job]:
    """A job of SEND in an attempt, and `action` asked for meanwhile."""
    message_id = await store.enqueue(message())
    await store.complete([Moved(await claim_one(store), "HQ", SEND)])
    job = await claim_one(store, queue=SEND, owner="gw1")
    assert await store.set_state([message_id], action) == Changes(later=1)
    assert [e.state for e in await store.queue()] == ["active"]
    assert await store.claim(SEND, "gw2", 10, LEASE) == []
    assert await store.claim(ROUTER, "r", 10, LEASE) == []
    renewal = await store.renew([job], LEASE)
    assert renewal.lost([job]) == [] and renewal.pending == {key_of(job): action}
    return message_id, job


@contract
async def test_hold_waits_for_the_attempt_then_applies(store: Store, b: Backend) -> None:
    message_id, job = await in_attempt(store, "hold")
    await store.complete([Deferred(job, retry_at=b.clock.wall_now, reply="451")])
    [entry] = await store.queue()
    assert (entry.state, entry.attempts) == ("hold", 1)
    b.clock.step(wall=1e9, lease=1e9)
    assert await store.claim(SEND, "gw2", 10, LEASE) == []
    assert await admin_trail(store, message_id) == [("hold requested", WAITS), ("hold", AFTER)]


@contract
async def test_delete_waits_for_the_attempt_then_applies(store: Store, b: Backend) -> None:
    message_id, job = await in_attempt(store, "delete")
    await store.complete([Deferred(job, retry_at=b.clock.wall_now, reply="451")])
    assert await store.queue() == [] and await states(store) == {}
    assert b.message_rows(store) == 0
    with pytest.raises(KeyError):
        await store.content(message_id)
    assert await admin_trail(store, message_id) == [("delete requested", WAITS), ("delete", AFTER)]


@contract
async def test_delete_of_a_message_partly_in_an_attempt(store: Store, b: Backend) -> None:
    message_id = await store.enqueue(message(("a@x", None), ("b@x", None)))
    [job] = await store.claim(ROUTER, "w", 1, LEASE)
    assert await store.set_state([message_id], "delete") == Changes(now=1, later=1)
    assert await store.content(message_id) == message().content  # the attempt still reads it
    await store.complete([Deferred(job, retry_at=b.clock.wall_now, reply="451")])
    assert await store.queue() == [] and b.message_rows(store) == 0
    with pytest.raises(KeyError):
        await store.content(message_id)


@contract
async def test_requeue_waits_for_the_attempt_then_applies(store: Store, b: Backend) -> None:
    message_id, job = await in_attempt(store, "requeue")
    await store.complete([Deferred(job, retry_at=b.clock.wall_now + 600, reply="451")])
    [entry] = await store.queue()
    assert (entry.state, entry.queue) == ("incoming", ROUTER)
    assert (await claim_one(store)).message_id == message_id
    assert await admin_trail(store, message_id) == [
        ("requeue requested", WAITS), ("requeue", AFTER),
    ]  # fmt: skip


@contract
async def test_a_move_also_lets_the_waiting_action_apply(store: Store, b: Backend) -> None:
    message_id = await store.enqueue(message())
    job = await claim_one(store)
    assert await store.set_state([message_id], "hold") == Changes(later=1)
    await store.complete([Moved(job, "GWPO", SEND)])
    [entry] = await store.queue()
    assert (entry.state, entry.location, entry.queue) == ("hold", "GWPO", SEND)
    assert await admin_trail(store, message_id) == [("hold requested", WAITS), ("hold", AFTER)]


@pytest.mark.parametrize("action", ["hold", "delete", "requeue"])
@contract
async def test_a_delivery_ends_a_waiting_action(store: Store, b: Backend, action: str) -> None:
    message_id, job = await in_attempt(store, action)
    await store.complete([Delivered(job, relay="relay.example", reply="250 ok")])
    assert await states(store) == {"delivered": 1}
    assert await admin_trail(store, message_id) == [
        (f"{action} requested", WAITS), (f"{action} dropped", DROPPED),
    ]  # fmt: skip


@contract
async def test_a_bounce_ends_a_waiting_hold(store: Store, b: Backend) -> None:
    message_id, job = await in_attempt(store, "hold")
    await store.complete([Bounced(job, reply="550 no such user")])
    assert await states(store) == {"bounced": 1}
    assert await admin_trail(store, message_id) == [
        ("hold requested", WAITS), ("hold dropped", "admin: the attempt ended it (bounced)"),
    ]  # fmt: skip


@contract
async def test_held_with_a_waiting_delete_deletes(store: Store, b: Backend) -> None:
    message_id, job = await in_attempt(store, "delete")
    await store.complete([Held(job, "content damaged")])
    assert await store.queue() == [] and b.message_rows(store) == 0
    assert await admin_trail(store, message_id) == [("delete requested", WAITS), ("delete", AFTER)]


@pytest.mark.parametrize("hand_back", ["release_owner", "requeue"])
@contract
async def test_a_dead_owners_job_gets_its_waiting_action(
    store: Store, b: Backend, hand_back: str
) -> None:
    message_id, _ = await in_attempt(store, "hold")
    if hand_back == "release_owner":
        assert await store.release_owner(SEND, "gw1") == 1
    else:
        assert await store.requeue(SEND, ["SALES"], dead=["gw1"]) == 1
    [entry] = await store.queue()
    assert (entry.state, entry.queue) == ("hold", SEND)
    assert await admin_trail(store, message_id) == [("hold requested", WAITS), ("hold", AFTER)]


@pytest.mark.parametrize(
    ("action", "left"),
    [("hold", [("hold", "HQ", SEND)]), ("requeue", [("incoming", "HQ", ROUTER)]), ("delete", [])],
)
@contract
async def test_a_cancelled_attempt_applies_the_action_without_counting(
    store: Store, b: Backend, action: str, left: list[tuple[str, str, str]]
) -> None:
    message_id, job = await in_attempt(store, action)
    await store.complete([Cancelled(job)])
    entries = await store.queue()
    assert [(e.state, e.location, e.queue) for e in entries] == left
    assert all(e.attempts == 0 for e in entries)
    assert await admin_trail(store, message_id) == [
        (f"{action} requested", WAITS), (action, CANCELLED),
    ]  # fmt: skip


@contract
async def test_release_withdraws_a_waiting_hold(store: Store, b: Backend) -> None:
    message_id, job = await in_attempt(store, "hold")
    assert await store.set_state([message_id], "release") == Changes(now=1)
    renewal = await store.renew([job], LEASE)
    assert renewal.lost([job]) == [] and renewal.pending == {}
    await store.complete([Deferred(job, retry_at=b.clock.wall_now + 60, reply="451")])
    assert [e.state for e in await store.queue()] == ["deferred"]
    trail = await admin_trail(store, message_id)
    assert [event for event, _ in trail] == ["hold requested", "release"]
    assert trail[0][1] == WAITS and trail[1][1].startswith("admin")  # withdrawn, says how


@contract
async def test_a_hold_or_requeue_never_undoes_a_waiting_delete(store: Store, b: Backend) -> None:
    message_id, job = await in_attempt(store, "delete")
    assert await store.set_state([message_id], "hold") == Changes()  # nothing it would change
    assert await store.set_state([message_id], "requeue") == Changes()
    assert (await store.renew([job], LEASE)).pending == {(job.message_id, job.rcpt_id): "delete"}
    await store.complete([Deferred(job, retry_at=b.clock.wall_now + 60, reply="451")])
    assert await store.queue() == []
    assert [event for event, _ in await admin_trail(store, message_id)][-1] == "delete"


@contract
async def test_a_requeue_never_undoes_a_waiting_hold(store: Store, b: Backend) -> None:
    message_id, job = await in_attempt(store, "hold")
    await store.set_state([message_id], "requeue")
    await store.complete([Deferred(job, retry_at=b.clock.wall_now + 60, reply="451")])
    assert [e.state for e in await store.queue()] == ["hold"]


@contract
async def test_an_expired_attempt_with_a_waiting_hold_is_not_claimed(
    store: Store, b: Backend
) -> None:
    message_id, _ = await in_attempt(store, "hold")
    expire(b)
    assert await store.claim(SEND, "gw2", 10, LEASE) == []
    assert [e.state for e in await store.queue()] == ["hold"]
    assert await store.claim(SEND, "gw2", 10, LEASE) == []
    assert [event for event, _ in await admin_trail(store, message_id)][-1] == "hold"


# -- listing and paging ------------------------------------------------------------------


async def mixed_queue(store: Store, b: Backend) -> list[str]:
    """Six messages over three times, two recipients each, in every state; returns ids."""
    ids: list[str] = []
    for _ in range(3):
        ids += await enqueue(store, *(message(("a@x", None), ("b@x", None)) for _ in range(2)))
        b.clock.step(wall=10.0)
    jobs = await store.claim(ROUTER, "w", 4, LEASE)  # the first ones: two stay active
    retry_at = b.clock.wall_now + 59.0
    await store.complete([Deferred(jobs[0], retry_at=retry_at, reply="451"), Delivered(jobs[1])])
    await store.set_state([ids[4]], "hold")
    return ids


async def walk(
    store: Store, limit: int, states: tuple[str, ...] = ()
) -> list[list[tuple[str, int]]]:
    pages, after = [], None
    while page := await store.queue(states, limit, after):
        pages.append([(e.message_id, e.rcpt_id) for e in page])
        after = page[-1].key
    return pages


@contract
async def test_queue_pages_walk_every_waiting_job_once_oldest_first(
    store: Store, b: Backend
) -> None:
    ids = await mixed_queue(store, b)
    pages = await walk(store, limit=5)
    assert [len(page) for page in pages] == [5, 5, 1]  # 12 jobs, one delivered
    listed = [key for page in pages for key in page]
    assert listed == [(e.message_id, e.rcpt_id) for e in await store.queue(limit=100)]
    expected = [(i, r) for i in ids for r in (0, 1)]
    expected.remove((ids[0], 1))  # delivered: final, not listed
    assert listed == expected
    entries = await store.queue(limit=100)
    assert {e.state for e in entries} == {"incoming", "active", "deferred", "hold"}


@contract
async def test_queue_pages_of_one_state(store: Store, b: Backend) -> None:
    ids = await mixed_queue(store, b)
    assert await walk(store, limit=1, states=("hold",)) == [[(ids[4], 0)], [(ids[4], 1)]]
    pages = await walk(store, limit=2, states=("delivered", "deferred"))
    assert pages == [[(ids[0], 0), (ids[0], 1)]]


@contract
async def test_a_page_resumes_after_its_key_when_that_job_has_gone(
    store: Store, b: Backend
) -> None:
    ids = await mixed_queue(store, b)
    first = await store.queue(limit=4)
    assert [e.message_id for e in first] == [ids[0], ids[1], ids[1], ids[2]]
    await store.set_state([ids[2], ids[0]], "delete")  # the last one listed, and earlier
    rest = await store.queue(limit=100, after=first[-1].key)
    assert [(e.message_id, e.rcpt_id) for e in rest] == [(i, r) for i in ids[3:] for r in (0, 1)]


# -- workers -------------------------------------------------------------------------------


@contract
async def test_heartbeats_tell_which_workers_run(store: Store, b: Backend) -> None:
    await store.heartbeat("gateway:GW2", "p2")
    b.clock.step(lease=10.0)
    await store.heartbeat("gateway:GW1", "p1")
    assert await store.alive(within=5) == {"gateway:GW1"}
    await store.forget("gateway:GW1", "someone-else")
    assert await store.alive(within=5) == {"gateway:GW1"}
    await store.forget("gateway:GW1", "p1")
    assert await store.alive(within=1e6) == {"gateway:GW2"}


@contract
async def test_requeue_hands_a_stopped_gateways_mail_back_to_the_router(
    store: Store, b: Backend
) -> None:
    other = NewMessage("a@b.c", (NewRecipient("x@y.z", None),), b"x", "HQ", "ENG", "cli")
    waiting, in_flight, other_origin = await enqueue(store, message(), message(), other)
    for job in await store.claim(ROUTER, "r", 10, LEASE):
        await store.complete([Moved(job, "HQ", SEND)])
    assert {j.message_id for j in await store.claim(SEND, "gw1", 1, LEASE)} == {waiting}
    assert await store.requeue(SEND, ["SALES"]) == 1  # not what a live owner holds
    assert await store.requeue(SEND, ["SALES"], dead=["gw1"]) == 1  # a dead one's, yes
    assert await store.due(ROUTER) and await store.due(SEND)
    back = {j.message_id for j in await store.claim(ROUTER, "r", 10, LEASE)}
    assert back == {waiting, in_flight}
    assert [j.message_id for j in await store.claim(SEND, "gw2", 10, LEASE)] == [other_origin]
    assert "requeue" in [hop.event for hop in await store.hops(waiting)]


@contract
async def test_requeue_takes_an_active_job_whose_lease_ran_out(store: Store, b: Backend) -> None:
    message_id = await store.enqueue(message())
    await store.complete([Moved(await claim_one(store), "HQ", SEND)])
    await claim_one(store, queue=SEND, owner="gw1")
    assert await store.requeue(SEND, ["SALES"]) == 0
    expire(b)
    assert await store.requeue(SEND, ["SALES"]) == 1
    assert (await claim_one(store)).message_id == message_id


@contract
async def test_release_owner_gives_back_only_that_owners_leases(store: Store, b: Backend) -> None:
    await enqueue(store, message(), message())
    first = await store.claim(ROUTER, "dead", 1, LEASE)
    second = await store.claim(ROUTER, "alive", 1, LEASE)
    assert await store.owners(ROUTER) == {"dead", "alive"}
    assert await store.release_owner(ROUTER, "dead") == 1
    again = await store.claim(ROUTER, "new", 10, LEASE)
    assert [j.message_id for j in again] == [first[0].message_id]
    assert await store.owners(ROUTER) == {"alive", "new"} and second


@contract
async def test_due_sees_incoming_due_retries_and_expired_leases_only(
    store: Store, b: Backend
) -> None:
    assert not await store.due(ROUTER)
    await store.enqueue(message())
    assert await store.due(ROUTER)
    await claim_one(store)
    assert not await store.due(ROUTER)
    expire(b)
    assert await store.due(ROUTER)
    again = await claim_one(store, owner="w2")
    assert not await store.due(ROUTER)
    await store.complete([Deferred(again, retry_at=b.clock.wall_now + 100, reply="451 later")])
    b.clock.step(wall=99.0)
    assert not await store.due(ROUTER)
    b.clock.step(wall=1.0)
    assert await store.due(ROUTER)


# -- several processes (SQLite: a file that several processes share) --------------------------


def claim_until_empty(url: str, owner: str, start: Any, out: Any) -> None:
    async def claims() -> list[tuple[str, int]]:
        store = open_store(url)
        start.wait()  # a barrier: all start together
        got: list[tuple[str, int]] = []
        try:
            while jobs := await store.claim(ROUTER, owner, 5, LEASE):
                got += [key_of(job) for job in jobs]
                await asyncio.sleep(0.001)  # "work" on them, as a worker would
        finally:
            await store.aclose()
        return got

    out.put((owner, asyncio.run(claims())))


@with_processes
async def test_claims_from_concurrent_processes_never_overlap(store: Store, b: Backend) -> None:
    ids = await asyncio.gather(*(store.enqueue(message()) for _ in range(2000)))
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(4), ctx.Queue()
    workers = [
        ctx.Process(target=claim_until_empty, args=(b.url, f"p{n}", start, out)) for n in range(4)
    ]
    for worker in workers:
        worker.start()
    loop = asyncio.get_running_loop()
    results = dict([await loop.run_in_executor(None, out.get, True, 60) for _ in workers])
    for worker in workers:
        await loop.run_in_executor(None, worker.join, 10)
    claimed = [key for got in results.values() for key in got]
    assert len(claimed) == len(set(claimed)) == 2000
    assert {message_id for message_id, _ in claimed} == set(ids)
    assert sum(1 for got in results.values() if got) >= 2  # they really competed


# -- SQLite specifics ------------------------------------------------------------------


def test_sqlite_file_is_wal_fsynced_and_versioned(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "q.db"
    db = SqliteDb(path)
    conn = db._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL between enqueues
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.VERSION
    db.close()
    assert schema.migrate(sqlite3.connect(path, isolation_level=None)) == schema.VERSION


def test_sqlite_enqueue_commits_with_full_sync_and_claims_do_not(tmp_path: Path) -> None:
    db = SqliteDb(tmp_path / "q.db")
    seen: list[str] = []
    db._conn.set_trace_callback(seen.append)
    db.enqueue([message()], now=1.0)
    enqueue_log = list(seen)
    seen.clear()
    db.claim(ROUTER, "w", 10, 60.0, now=2.0)
    full = [i for i, sql in enumerate(enqueue_log) if sql == "PRAGMA synchronous = FULL"]
    commit = enqueue_log.index("COMMIT")
    assert full and full[0] < commit  # the acknowledged write is fsync'ed
    assert "PRAGMA synchronous = FULL" not in seen and "COMMIT" in seen
    db.close()


@sqlite_only
async def test_sqlite_listing_claims_and_counts_never_scan_the_jobs_table(
    store: Store, b: Backend
) -> None:
    """With a million deferred jobs, what runs all the time (claims, due,
    pending) and what a user waits for (a mailq page, its counts) must be
    index searches, so their cost does not grow with the backlog."""
    await mixed_queue(store, b)
    key = (await store.queue(limit=3))[-1].key
    conn = store._dbs[0]._conn  # type: ignore[attr-defined]  # the worker thread is idle meanwhile
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    await store.queue(limit=3, after=key)
    await store.queue(("deferred",), limit=3, after=key)
    await store.claim(SEND, "gw", 10, LEASE)
    await store.due(SEND)
    await store.pending(SEND)
    await store.counts()
    conn.set_trace_callback(None)
    selects = [sql for sql in seen if sql.lstrip().upper().startswith("SELECT")]
    plans = {sql: [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)] for sql in selects}
    assert len(plans) >= 7
    for sql, plan in plans.items():
        on_jobs = [line for line in plan if " j " in f"{line} " or "jobs" in line]
        assert on_jobs, (sql, plan)
        for line in on_jobs:
            full_scan = line.startswith("SCAN") and "COVERING INDEX jobs_by_state" not in line
            assert not full_scan, (sql, plan)
        assert not any("GROUP BY" in line for line in plan), (sql, plan)  # no sort for counts


@sqlite_only
async def test_sqlite_version_1_file_gets_the_listing_index(store: Store, b: Backend) -> None:
    path = Path(b.url.removeprefix("sqlite:"))
    path.parent.mkdir(parents=True)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for statement in schema.MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
    message_id = await store.enqueue(message())  # the store opens the file on its first call
    assert [e.message_id for e in await store.queue(("incoming",), limit=1)] == [message_id]
    with closing(sqlite3.connect(path)) as conn:
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert "jobs_by_state" in indexes
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.VERSION


def test_sqlite_opening_a_current_store_does_not_wait_for_a_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mailq opens the store while the system writes: it must only read."""
    path = tmp_path / "q.db"
    SqliteDb(path).close()
    monkeypatch.setattr(connect_module, "BUSY_TIMEOUT", 0.1)  # fail soon instead of waiting

    async def read() -> None:
        store = SqliteStore(path)
        try:
            assert await store.queue() == [] and (await store.counts())["incoming"] == 0
        finally:
            await store.aclose()

    with closing(sqlite3.connect(path, isolation_level=None, timeout=0)) as writer:
        writer.execute("BEGIN IMMEDIATE")
        asyncio.run(read())
        writer.execute("ROLLBACK")


@pytest.mark.parametrize("form", ["sqlite:{}", "sqlite://{}"])
def test_open_store_accepts_url_forms(tmp_path: Path, form: str) -> None:
    async def open_and_close() -> None:
        store = open_store(form.format(tmp_path / "q.db"))
        assert isinstance(store, SqliteStore)
        assert await store.version() == schema.VERSION
        await store.aclose()

    asyncio.run(open_and_close())
    assert (tmp_path / "q.db").exists()


def test_open_store_refuses_other_schemes() -> None:
    for url in ("mysql://localhost/mail", "postgresql:mail", "sqlite:", "queue.db"):
        with pytest.raises(ValueError, match="unsupported store URL"):
            open_store(url)


# -- leaders ---------------------------------------------------------------------------


@contract
async def test_one_owner_leads_a_duty_until_its_term_runs_out(store: Store, b: Backend) -> None:
    other = b.open()
    assert await store.lead("router", "r1", 10.0)
    assert not await other.lead("router", "r2", 10.0)
    b.clock.step(lease=9.0)
    assert await store.lead("router", "r1", 10.0)  # renewed: ten more seconds
    b.clock.step(lease=9.0)
    assert not await other.lead("router", "r2", 10.0)
    assert await other.lead("purge", "r2", 10.0)  # another duty is another lead
    b.clock.step(lease=2.0)  # r1's term is over
    assert await other.lead("router", "r2", 10.0)
    assert not await store.lead("router", "r1", 10.0)


@contract
async def test_a_leader_that_resigns_is_followed_at_once(store: Store, b: Backend) -> None:
    assert await store.lead("router", "r1", 60.0)
    await store.resign("router", "r2")  # not the leader: changes nothing
    assert not await store.lead("router", "r2", 60.0)
    await store.resign("router", "r1")
    assert await store.lead("router", "r2", 60.0)


# -- PostgreSQL specifics --------------------------------------------------------------


def test_postgres_watchers_hear_of_work_another_store_commits(
    pg_url: str, tmp_path: Path
) -> None:
    async def main() -> None:
        watching = PgStore(pg_url, staging=tmp_path / "a")
        other = PgStore(pg_url, staging=tmp_path / "b")
        try:
            router, sender = asyncio.Event(), asyncio.Event()
            watching.watch(ROUTER, router)
            watching.watch(SEND, sender)
            await asyncio.wait_for(router.wait(), 30)  # listening: it wakes every watcher then
            await asyncio.sleep(0.3)  # every one
            router.clear()
            sender.clear()
            await asyncio.sleep(0.3)
            assert not router.is_set()  # nothing new: no wake-up
            await other.enqueue(message())
            await asyncio.wait_for(router.wait(), 30)
            assert not sender.is_set()  # another queue's work wakes its own watchers only
            job = await claim_one(other)
            await other.complete([Moved(job, "HQ", SEND)])
            await asyncio.wait_for(sender.wait(), 30)
        finally:
            await watching.aclose()
            await other.aclose()

    asyncio.run(main())


@contract
async def test_requeue_spares_jobs_of_a_gone_owner_that_heartbeats_again(
    store: Store, b: Backend
) -> None:
    await enqueue(store, message())
    await store.complete([Moved(await claim_one(store), "HQ", SEND)])
    await claim_one(store, SEND, owner="send:GW1@a:1")
    await store.heartbeat("gateway:GW1", "send:GW1@a:1")  # it is back
    assert await store.requeue(SEND, ["SALES"], ["send:GW1@a:1"], within=5.0) == 0
    b.clock.step(lease=6.0)  # silent again, its lease still runs
    assert await store.requeue(SEND, ["SALES"], ["send:GW1@a:1"], within=5.0) == 1
    assert [(e.queue, e.state) for e in await store.queue()] == [(ROUTER, "incoming")]


@contract
async def test_a_report_written_again_with_its_own_id_is_there_once(
    store: Store, b: Backend
) -> None:
    """A complete made again after a commit whose answer was lost (the report
    keeps the queue id it was made with) adds no second report."""
    await enqueue(store, message())
    job = await claim_one(store)
    report = replace(message(content=b"dsn"), sender="", received_by="bounce",
                     queue_id=new_queue_id())
    first = await store.complete([Bounced(job, "550 no")], [report])
    again = await store.complete([Bounced(job, "550 no")], [report])
    assert first == again == [report.queue_id]
    assert b.message_rows(store) == 2 and len(await store.queue()) == 1
    assert [h.event for h in await store.hops(report.queue_id)] == ["received"]
