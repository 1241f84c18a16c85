"""Store contract: the behaviour every Store implementation must show.

Each backend in BACKENDS provides a way to open a store (again: a second
instance stands for another process), a URL for `open_store` in child
processes, and a way to count stored message bodies.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

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
    SqliteStore,
    Store,
    open_store,
    schema,
    send_queue,
)
from gatepost.store import connect as connect_module

SEND = send_queue("GW1")
LEASE = 60.0


@dataclass
class Backend:
    url: str
    open: Callable[[], Store]
    message_rows: Callable[[], int]  # stored message bodies


def sqlite_backend(tmp_path: Path) -> Backend:
    path = tmp_path / "var" / "queue.db"  # the directory does not exist yet

    def message_rows() -> int:
        with closing(sqlite3.connect(path)) as conn:
            return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])

    return Backend(f"sqlite:{path}", lambda: SqliteStore(path), message_rows)


BACKENDS = [sqlite_backend]


@pytest.fixture(params=BACKENDS, ids=lambda make: make.__name__.removesuffix("_backend"))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    make: Callable[[Path], Backend] = request.param
    return make(tmp_path)


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    opened = backend.open()
    yield opened
    opened.close()


def message(
    *rcpts: tuple[str, str | None],
    content: bytes = b"Subject: hi\r\n\r\nbody\r\n",
    sender: str = "alice@example.com",
    location: str = "HQ",
    received_by: str = "gateway:GW1",
) -> NewMessage:
    recipients = tuple(NewRecipient(a, m) for a, m in rcpts) or (NewRecipient("bob@ext.org", None),)
    return NewMessage(sender, recipients, content, location, "SALES", received_by)


def claim_one(store: Store, now: float, queue: str = ROUTER, owner: str = "w1") -> Job:
    jobs = store.claim(queue, owner, 10, LEASE, now)
    assert len(jobs) == 1, jobs
    return jobs[0]


def states(store: Store) -> dict[str, int]:
    return {state: n for state, n in store.counts().items() if n}


# -- enqueue -----------------------------------------------------------------------


def test_enqueued_mail_is_readable_from_another_instance(backend: Backend, store: Store) -> None:
    first = message(("bob@ext.org", None), ("HQ/carol", "HQ/carol"), content=b"one")
    ids = store.enqueue([first, message(content=b"two")], now=100.0)
    other = backend.open()
    try:
        assert [other.content(i) for i in ids] == [b"one", b"two"]
        entries = other.queue()
        assert [(e.message_id, e.rcpt_id, e.address) for e in entries] == [
            (ids[0], 0, "bob@ext.org"),
            (ids[0], 1, "HQ/carol"),
            (ids[1], 0, "bob@ext.org"),
        ]
        assert {(e.state, e.queue, e.location, e.created, e.attempts) for e in entries} == {
            ("incoming", ROUTER, "HQ", 100.0, 0)
        }
        assert entries[0].sender == "alice@example.com" and entries[0].size == 3
        hops = other.hops(ids[0])
        assert [(h.rcpt_id, h.event, h.postoffice, h.detail) for h in hops] == [
            (0, "received", "HQ", "gateway:GW1"),
            (1, "received", "HQ", "gateway:GW1"),
        ]
    finally:
        other.close()


def test_enqueued_mail_survives_closing_the_store(backend: Backend) -> None:
    first = backend.open()
    [message_id] = first.enqueue([message(content=b"kept")], now=1.0)
    first.close()
    again = backend.open()
    try:
        assert again.content(message_id) == b"kept"
        assert states(again) == {"incoming": 1}
    finally:
        again.close()


def test_queue_ids_are_unique_and_sort_in_enqueue_order(store: Store) -> None:
    ids: list[str] = []
    for batch in range(20):
        ids += store.enqueue([message() for _ in range(10)], now=float(batch))
    assert len(set(ids)) == 200
    assert sorted(ids) == ids


def test_empty_batch_and_recipientless_message(store: Store) -> None:
    assert store.enqueue([], now=1.0) == []
    with pytest.raises(ValueError):
        store.enqueue([message(), NewMessage("a@b", (), b"x", "HQ", "HQ", "cli")], now=1.0)
    assert states(store) == {}  # the whole batch rolled back


def test_unknown_content_raises_key_error(store: Store) -> None:
    with pytest.raises(KeyError):
        store.content("NOSUCHID")


# -- claim ---------------------------------------------------------------------------


def test_claim_returns_the_job_with_its_message_fields(store: Store) -> None:
    [message_id] = store.enqueue([message(("HQ/carol", "HQ/carol"), content=b"12345")], now=5.0)
    job = claim_one(store, now=6.0, owner="router-1")
    assert job == Job(
        message_id, 0, "alice@example.com", "HQ/carol", "HQ/carol", "HQ", "SALES", ROUTER,
        attempts=0, created=5.0, first_attempt=None, size=5, owner="router-1",
    )  # fmt: skip
    assert [e.state for e in store.queue()] == ["active"]


def test_two_owners_never_get_the_same_job(store: Store) -> None:
    store.enqueue([message() for _ in range(3)], now=1.0)
    first = store.claim(ROUTER, "a", 2, LEASE, now=2.0)
    second = store.claim(ROUTER, "b", 5, LEASE, now=2.0)
    third = store.claim(ROUTER, "c", 5, LEASE, now=2.0)
    assert (len(first), len(second), third) == (2, 1, [])
    assert {j.message_id for j in first}.isdisjoint(j.message_id for j in second)


def test_expired_lease_is_claimable_again(store: Store) -> None:
    store.enqueue([message()], now=1.0)
    job = store.claim(ROUTER, "dead", 1, 10.0, now=100.0)[0]
    assert store.claim(ROUTER, "b", 1, 10.0, now=109.0) == []
    again = claim_one(store, now=110.5, owner="b")
    assert (again.message_id, again.owner) == (job.message_id, "b")


def test_claim_takes_only_its_queue(store: Store) -> None:
    store.enqueue([message()], now=1.0)
    job = claim_one(store, now=2.0)
    store.complete([Moved(job, "GWPO", SEND)], now=3.0)
    assert store.claim(ROUTER, "r", 10, LEASE, now=4.0) == []
    moved = claim_one(store, now=4.0, queue=SEND)
    assert (moved.location, moved.queue) == ("GWPO", SEND)


def test_claim_returns_oldest_first(store: Store) -> None:
    newer = store.enqueue([message()], now=50.0)
    older = store.enqueue([message(), message()], now=10.0)
    jobs = store.claim(ROUTER, "w", 10, LEASE, now=60.0)
    assert [j.message_id for j in jobs] == older + newer


def test_held_mail_is_never_claimed_until_released(store: Store) -> None:
    [message_id] = store.enqueue([message()], now=1.0)
    assert store.set_state([message_id], "hold", now=2.0) == 1
    assert store.claim(ROUTER, "w", 10, LEASE, now=3.0) == []
    assert store.claim(ROUTER, "w", 10, LEASE, now=1e9) == []
    assert store.set_state([message_id], "release", now=4.0) == 1
    assert claim_one(store, now=5.0).message_id == message_id


# -- outcomes --------------------------------------------------------------------------


def test_move_changes_location_and_queue_without_copying_content(
    backend: Backend, store: Store
) -> None:
    [message_id] = store.enqueue([message(("x@ext", None), ("y@ext", None), content=b"C")], 1.0)
    jobs = store.claim(ROUTER, "r", 10, LEASE, now=2.0)
    store.complete([Moved(job, "GWPO", SEND) for job in jobs], now=3.0)
    entries = store.queue()
    assert {(e.state, e.location, e.queue) for e in entries} == {("incoming", "GWPO", SEND)}
    assert backend.message_rows() == 1
    assert store.content(message_id) == b"C"
    moves = [(h.rcpt_id, h.postoffice, h.at) for h in store.hops(message_id) if h.event == "moved"]
    assert moves == [(0, "GWPO", 3.0), (1, "GWPO", 3.0)]


def test_delivery_to_a_mailbox(store: Store) -> None:
    [message_id] = store.enqueue([message(("HQ/carol", "HQ/carol"), content=b"hello")], now=1.0)
    job = claim_one(store, now=2.0)
    store.complete([Delivered(job)], now=3.0)
    [entry] = store.mailbox("HQ/carol")
    assert (entry.message_id, entry.sender, entry.delivered, entry.size) == (
        message_id, "alice@example.com", 3.0, 5,
    )  # fmt: skip
    assert store.mailbox_content("HQ/carol", entry.entry_id) == b"hello"
    assert store.mailbox_content("HQ/dave", entry.entry_id) is None
    assert store.queue() == [] and states(store) == {"delivered": 1}
    assert store.hops(message_id)[-1].event == "delivered"
    assert store.claim(ROUTER, "w", 10, LEASE, now=1e9) == []


def test_delivery_to_a_smart_host_finalises_without_a_mailbox(store: Store) -> None:
    [message_id] = store.enqueue([message(("bob@ext.org", None))], now=1.0)
    job = claim_one(store, now=2.0)
    store.complete([Delivered(job, relay="relay.example", reply="250 ok queued")], now=3.0)
    [entry] = store.queue(states=["delivered"])
    assert (entry.attempts, entry.last_reply) == (1, "250 ok queued")
    assert store.mailbox("bob@ext.org") == [] and store.queue() == []
    last = store.hops(message_id)[-1]
    assert (last.event, last.detail) == ("delivered", "relay=relay.example 250 ok queued")


def test_deferred_waits_for_its_retry_time(store: Store) -> None:
    [message_id] = store.enqueue([message()], now=1.0)
    job = claim_one(store, now=2.0)
    store.complete([Deferred(job, retry_at=500.0, reply="451 try later", relay="r1")], now=3.0)
    [entry] = store.queue()
    assert (entry.state, entry.attempts, entry.next_attempt, entry.last_reply) == (
        "deferred", 1, 500.0, "451 try later",
    )  # fmt: skip
    assert store.claim(ROUTER, "w", 10, LEASE, now=499.9) == []
    retried = claim_one(store, now=500.0)
    assert (retried.attempts, retried.first_attempt) == (1, 3.0)
    store.complete([Deferred(retried, retry_at=900.0, reply="452 full")], now=600.0)
    [entry] = store.queue()
    assert entry.attempts == 2
    assert claim_one(store, now=901.0).first_attempt == 3.0  # the first attempt is kept
    assert [h.event for h in store.hops(message_id)].count("deferred") == 2


def test_bounced_is_final(store: Store) -> None:
    [message_id] = store.enqueue([message()], now=1.0)
    job = claim_one(store, now=2.0)
    store.complete([Bounced(job, reply="550 no such user", relay="r1")], now=3.0)
    assert store.queue() == [] and states(store) == {"bounced": 1}
    [entry] = store.queue(states=["bounced"])
    assert entry.last_reply == "550 no such user"
    assert store.claim(ROUTER, "w", 10, LEASE, now=1e9) == []
    assert store.hops(message_id)[-1].event == "bounced"


def test_late_outcome_never_undoes_a_final_state(store: Store) -> None:
    [message_id] = store.enqueue([message(("HQ/carol", "HQ/carol"))], now=1.0)
    stale = store.claim(ROUTER, "a", 1, 10.0, now=2.0)[0]
    fresh = claim_one(store, now=20.0, owner="b")
    store.complete([Delivered(fresh)], now=21.0)
    store.complete([Deferred(stale, retry_at=99.0, reply="451")], now=22.0)
    assert states(store) == {"delivered": 1}
    assert len(store.mailbox("HQ/carol")) == 1
    assert [h.event for h in store.hops(message_id)] == ["received", "delivered"]


def test_outcomes_on_a_held_job_keep_it_held(store: Store) -> None:
    [message_id] = store.enqueue([message()], now=1.0)
    job = claim_one(store, now=2.0)
    store.set_state([message_id], "hold", now=3.0)
    store.complete([Deferred(job, retry_at=4.0, reply="451")], now=3.5)
    assert [e.state for e in store.queue()] == ["hold"]
    assert store.claim(ROUTER, "w", 10, LEASE, now=10.0) == []


def test_complete_enqueues_new_mail_in_the_same_transaction(store: Store) -> None:
    [message_id] = store.enqueue([message()], now=1.0)
    job = claim_one(store, now=2.0)
    dsn = message(("alice@example.com", None), sender="", received_by="bounce")
    broken = NewMessage("", (), b"x", "HQ", "HQ", "bounce")
    with pytest.raises(ValueError):
        store.complete([Bounced(job, reply="550 no")], now=3.0, new=[dsn, broken])
    assert states(store) == {"active": 1}  # nothing of the failed call remains
    [bounce_id] = store.complete([Bounced(job, reply="550 no")], now=3.0, new=[dsn])
    assert bounce_id != message_id
    [entry] = store.queue()
    assert (entry.message_id, entry.sender, entry.state) == (bounce_id, "", "incoming")
    assert states(store) == {"incoming": 1, "bounced": 1}


# -- fairness --------------------------------------------------------------------------


def defer_all(store: Store, count: int, retry_at: float) -> None:
    store.enqueue([message() for _ in range(count)], now=1.0)
    jobs = store.claim(ROUTER, "w", count, LEASE, now=2.0)
    store.complete([Deferred(j, retry_at=retry_at, reply="451") for j in jobs], now=3.0)


def test_fresh_mail_is_not_starved_by_due_retries(store: Store) -> None:
    defer_all(store, 30, retry_at=10.0)
    fresh = set(store.enqueue([message() for _ in range(3)], now=20.0))
    jobs = store.claim(ROUTER, "w", 10, LEASE, now=30.0)
    assert len(jobs) == 10
    assert fresh <= {j.message_id for j in jobs}


def test_due_retries_are_not_starved_by_fresh_mail(store: Store) -> None:
    defer_all(store, 4, retry_at=10.0)
    store.enqueue([message() for _ in range(30)], now=20.0)
    jobs = store.claim(ROUTER, "w", 10, LEASE, now=30.0)
    assert sum(j.attempts == 1 for j in jobs) == 4
    assert sum(j.attempts == 0 for j in jobs) == 6


# -- admin -----------------------------------------------------------------------------


def test_flush_makes_deferred_mail_due_now(store: Store) -> None:
    defer_all(store, 2, retry_at=1e9)
    ids = [e.message_id for e in store.queue()]
    assert store.set_state(ids, "flush", now=50.0) == 2
    assert len(store.claim(ROUTER, "w", 10, LEASE, now=50.0)) == 2


def test_hold_applies_to_non_final_jobs_only(store: Store) -> None:
    [message_id] = store.enqueue([message(("a@x", None), ("HQ/b", "HQ/b"))], now=1.0)
    jobs = store.claim(ROUTER, "w", 10, LEASE, now=2.0)
    store.complete([Delivered(j) for j in jobs if j.mailbox], now=3.0)
    assert store.set_state([message_id, message_id], "hold", now=4.0) == 1
    assert states(store) == {"hold": 1, "delivered": 1}
    assert store.set_state([message_id], "release", now=5.0) == 1
    assert store.set_state([message_id], "release", now=5.0) == 0
    assert [h.event for h in store.hops(message_id)][-2:] == ["hold", "release"]


def test_delete_removes_the_message_when_nothing_refers_to_it(
    backend: Backend, store: Store
) -> None:
    [gone, kept] = store.enqueue([message(), message()], now=1.0)
    assert store.set_state([gone], "delete", now=2.0) == 1
    assert [e.message_id for e in store.queue()] == [kept]
    assert backend.message_rows() == 1
    with pytest.raises(KeyError):
        store.content(gone)


def test_delete_keeps_content_a_mailbox_still_holds(backend: Backend, store: Store) -> None:
    [message_id] = store.enqueue([message(("a@x", None), ("HQ/b", "HQ/b"))], now=1.0)
    jobs = store.claim(ROUTER, "w", 10, LEASE, now=2.0)
    store.complete([Delivered(j) for j in jobs if j.mailbox], now=3.0)
    assert store.set_state([message_id], "delete", now=4.0) == 1
    assert store.queue() == [] and backend.message_rows() == 1
    [entry] = store.mailbox("HQ/b")
    assert store.mailbox_content("HQ/b", entry.entry_id) == message().content


def test_unknown_admin_action_is_refused(store: Store) -> None:
    [message_id] = store.enqueue([message()], now=1.0)
    with pytest.raises(ValueError):
        store.set_state([message_id], "delivered", now=2.0)


def test_counts_and_pending(store: Store) -> None:
    defer_all(store, 2, retry_at=100.0)
    store.enqueue([message() for _ in range(3)], now=5.0)
    assert len(store.claim(ROUTER, "w", 1, LEASE, now=6.0)) == 1
    assert states(store) == {"deferred": 2, "incoming": 2, "active": 1}
    assert store.pending(ROUTER, now=50.0) == 3
    assert store.pending(ROUTER, now=100.0) == 5
    assert store.pending(SEND, now=100.0) == 0


def test_purge_forgets_old_final_mail(backend: Backend, store: Store) -> None:
    store.enqueue([message(("a@x", None)), message(("HQ/b", "HQ/b"))], now=1.0)
    jobs = store.claim(ROUTER, "w", 10, LEASE, now=2.0)
    store.complete([Delivered(j) for j in jobs], now=3.0)
    assert store.purge(before=3.0) == 0
    assert store.purge(before=4.0) == 2
    assert states(store) == {}
    assert backend.message_rows() == 1  # the mailbox entry still needs its content
    assert len(store.mailbox("HQ/b")) == 1


# -- listing and paging ------------------------------------------------------------------


def mixed_queue(store: Store) -> list[str]:
    """Six messages over three times, two recipients each, in every state; returns ids."""
    ids: list[str] = []
    for now in (10.0, 20.0, 30.0):
        ids += store.enqueue([message(("a@x", None), ("b@x", None)) for _ in range(2)], now=now)
    jobs = store.claim(ROUTER, "w", 4, LEASE, now=40.0)  # the 10.0 ones: two stay active
    store.complete([Deferred(jobs[0], retry_at=99.0, reply="451"), Delivered(jobs[1])], now=41.0)
    store.set_state([ids[4]], "hold", now=42.0)
    return ids


def walk(store: Store, limit: int, states: tuple[str, ...] = ()) -> list[list[tuple[str, int]]]:
    pages, after = [], None
    while page := store.queue(states, limit, after):
        pages.append([(e.message_id, e.rcpt_id) for e in page])
        after = page[-1].key
    return pages


def test_queue_pages_walk_every_waiting_job_once_oldest_first(store: Store) -> None:
    ids = mixed_queue(store)
    pages = walk(store, limit=5)
    assert [len(page) for page in pages] == [5, 5, 1]  # 12 jobs, one delivered
    listed = [key for page in pages for key in page]
    assert listed == [(e.message_id, e.rcpt_id) for e in store.queue(limit=100)]
    expected = [(i, r) for i in ids for r in (0, 1)]
    expected.remove((ids[0], 1))  # delivered: final, not listed
    assert listed == expected
    assert {e.state for e in store.queue(limit=100)} == {"incoming", "active", "deferred", "hold"}


def test_queue_pages_of_one_state(store: Store) -> None:
    ids = mixed_queue(store)
    assert walk(store, limit=1, states=("hold",)) == [[(ids[4], 0)], [(ids[4], 1)]]
    assert walk(store, limit=2, states=("delivered", "deferred")) == [[(ids[0], 0), (ids[0], 1)]]


def test_a_page_resumes_after_its_key_when_that_job_has_gone(store: Store) -> None:
    ids = mixed_queue(store)
    first = store.queue(limit=4)
    assert [e.message_id for e in first] == [ids[0], ids[1], ids[1], ids[2]]
    store.set_state([ids[2], ids[0]], "delete", now=50.0)  # the last one listed, and earlier
    rest = store.queue(limit=100, after=first[-1].key)
    assert [(e.message_id, e.rcpt_id) for e in rest] == [(i, r) for i in ids[3:] for r in (0, 1)]


# -- several processes -------------------------------------------------------------------


def claim_until_empty(url: str, owner: str, start: object, out: object) -> None:
    store = open_store(url)
    start.wait()  # type: ignore[attr-defined]  # a barrier: all start together
    got: list[tuple[str, int]] = []
    while jobs := store.claim(ROUTER, owner, 5, LEASE, time.time()):
        got += [(j.message_id, j.rcpt_id) for j in jobs]
        time.sleep(0.001)  # "work" on them, as a worker would
    store.close()
    out.put((owner, got))  # type: ignore[attr-defined]


def test_heartbeats_tell_which_workers_run(store: Store) -> None:
    store.heartbeat("gateway:GW1", "p1", now=100.0)
    store.heartbeat("gateway:GW2", "p2", now=90.0)
    assert store.alive(since=95.0) == {"gateway:GW1"}
    store.forget("gateway:GW1", "someone-else")
    assert store.alive(since=95.0) == {"gateway:GW1"}
    store.forget("gateway:GW1", "p1")
    assert store.alive(since=0.0) == {"gateway:GW2"}


def test_requeue_hands_a_stopped_gateways_mail_back_to_the_router(store: Store) -> None:
    [waiting, in_flight, other_origin] = store.enqueue(
        [message(), message(), NewMessage("a@b.c", (NewRecipient("x@y.z", None),), b"x",
                                          "HQ", "ENG", "cli")], now=100.0)
    for job in store.claim(ROUTER, "r", 10, LEASE, now=101.0):
        store.complete([Moved(job, "HQ", SEND)], now=102.0)
    assert {j.message_id for j in store.claim(SEND, "gw1", 1, LEASE, now=103.0)} == {waiting}
    assert store.requeue(SEND, ["SALES"], now=104.0) == 1  # not what a live owner holds
    assert store.requeue(SEND, ["SALES"], now=104.0, dead=["gw1"]) == 1  # a dead one's, yes
    assert store.due(ROUTER, now=104.0) and store.due(SEND, now=104.0)
    back = {j.message_id for j in store.claim(ROUTER, "r", 10, LEASE, now=105.0)}
    assert back == {waiting, in_flight}
    assert [j.message_id for j in store.claim(SEND, "gw2", 10, LEASE, now=105.0)] == [other_origin]
    assert "requeue" in [hop.event for hop in store.hops(waiting)]


def test_release_owner_gives_back_only_that_owners_leases(store: Store) -> None:
    store.enqueue([message(), message()], now=100.0)
    first = store.claim(ROUTER, "dead", 1, LEASE, now=101.0)
    second = store.claim(ROUTER, "alive", 1, LEASE, now=101.0)
    assert store.owners(ROUTER) == {"dead", "alive"}
    assert store.release_owner(ROUTER, "dead", now=102.0) == 1
    again = store.claim(ROUTER, "new", 10, LEASE, now=103.0)
    assert [j.message_id for j in again] == [first[0].message_id]
    assert store.owners(ROUTER) == {"alive", "new"} and second


def test_renew_extends_only_the_owners_leases(store: Store) -> None:
    store.enqueue([message()], now=100.0)
    job = claim_one(store, now=101.0, owner="w1")
    assert store.renew([job], until=101.0 + 3 * LEASE) == 1
    assert store.claim(ROUTER, "w2", 10, LEASE, now=101.0 + 2 * LEASE) == []  # still held
    stale = store.claim(ROUTER, "w2", 10, LEASE, now=102.0 + 3 * LEASE)
    assert [j.owner for j in stale] == ["w2"]
    assert store.renew([job], until=10_000.0) == 0  # w1 lost it


def test_due_sees_incoming_due_retries_and_expired_leases_only(store: Store) -> None:
    assert not store.due(ROUTER, now=0.0)
    store.enqueue([message()], now=100.0)
    assert store.due(ROUTER, now=100.0)
    job = claim_one(store, now=101.0)
    assert not store.due(ROUTER, now=102.0)
    assert store.due(ROUTER, now=101.0 + LEASE + 1)
    store.complete([Deferred(job, retry_at=200.0, reply="451 later")], now=103.0)
    assert not store.due(ROUTER, now=199.0)
    assert store.due(ROUTER, now=200.0)


def test_claims_from_concurrent_processes_never_overlap(backend: Backend, store: Store) -> None:
    ids = store.enqueue([message() for _ in range(2000)], now=1.0)
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(4), ctx.Queue()
    workers = [
        ctx.Process(target=claim_until_empty, args=(backend.url, f"p{n}", start, out))
        for n in range(4)
    ]
    for worker in workers:
        worker.start()
    results = dict(out.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(timeout=10)
    claimed = [key for got in results.values() for key in got]
    assert len(claimed) == len(set(claimed)) == 2000
    assert {message_id for message_id, _ in claimed} == set(ids)
    assert sum(1 for got in results.values() if got) >= 2  # they really competed


# -- SQLite specifics ------------------------------------------------------------------


def test_sqlite_file_is_wal_fsynced_and_versioned(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "q.db"
    store = open_store(f"sqlite:{path}")
    assert isinstance(store, SqliteStore)
    conn = store._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL between enqueues
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.VERSION
    store.close()
    assert schema.migrate(sqlite3.connect(path, isolation_level=None)) == schema.VERSION


def test_sqlite_enqueue_commits_with_full_sync_and_claims_do_not(tmp_path: Path) -> None:
    store = open_store(f"sqlite:{tmp_path / 'q.db'}")
    assert isinstance(store, SqliteStore)
    seen: list[str] = []
    store._conn.set_trace_callback(seen.append)
    store.enqueue([message()], now=1.0)
    enqueue_log = list(seen)
    seen.clear()
    store.claim(ROUTER, "w", 10, 60.0, now=2.0)
    full = [i for i, sql in enumerate(enqueue_log) if sql == "PRAGMA synchronous = FULL"]
    commit = enqueue_log.index("COMMIT")
    assert full and full[0] < commit  # the acknowledged write is fsync'ed
    assert "PRAGMA synchronous = FULL" not in seen and "COMMIT" in seen
    store.close()


def query_plans(store: SqliteStore, calls: Callable[[], object]) -> dict[str, list[str]]:
    """EXPLAIN QUERY PLAN of every SELECT that `calls` ran, by statement."""
    seen: list[str] = []
    store._conn.set_trace_callback(seen.append)
    calls()
    store._conn.set_trace_callback(None)
    selects = [sql for sql in seen if sql.lstrip().upper().startswith("SELECT")]
    return {sql: [row[3] for row in store._conn.execute("EXPLAIN QUERY PLAN " + sql)]
            for sql in selects}


def test_sqlite_listing_claims_and_counts_never_scan_the_jobs_table(tmp_path: Path) -> None:
    """With a million deferred jobs, what runs all the time (claims, due,
    pending) and what a user waits for (a mailq page, its counts) must be
    index searches, so their cost does not grow with the backlog."""
    store = SqliteStore(tmp_path / "q.db")
    mixed_queue(store)
    key = store.queue(limit=3)[-1].key

    def calls() -> None:
        store.queue(limit=3, after=key)
        store.queue(("deferred",), limit=3, after=key)
        store.claim(SEND, "gw", 10, LEASE, now=60.0)
        store.due(SEND, now=60.0)
        store.pending(SEND, now=60.0)
        store.counts()

    plans = query_plans(store, calls)
    assert len(plans) >= 7
    for sql, plan in plans.items():
        on_jobs = [line for line in plan if " j " in f"{line} " or "jobs" in line]
        assert on_jobs, (sql, plan)
        for line in on_jobs:
            full_scan = line.startswith("SCAN") and "COVERING INDEX jobs_by_state" not in line
            assert not full_scan, (sql, plan)
        assert not any("GROUP BY" in line for line in plan), (sql, plan)  # no sort for counts
    store.close()


def test_sqlite_version_1_file_gets_the_listing_index(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for statement in schema.MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
    store = SqliteStore(path)
    [message_id] = store.enqueue([message()], now=1.0)
    assert [e.message_id for e in store.queue(("incoming",), limit=1)] == [message_id]
    indexes = {row[0] for row in store._conn.execute("SELECT name FROM sqlite_master")}
    assert "jobs_by_state" in indexes
    assert store._conn.execute("PRAGMA user_version").fetchone()[0] == schema.VERSION
    store.close()


def test_sqlite_opening_a_current_store_does_not_wait_for_a_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mailq opens the store while the system writes: it must only read."""
    path = tmp_path / "q.db"
    SqliteStore(path).close()
    monkeypatch.setattr(connect_module, "BUSY_TIMEOUT", 0.1)  # fail soon instead of waiting
    with closing(sqlite3.connect(path, isolation_level=None, timeout=0)) as writer:
        writer.execute("BEGIN IMMEDIATE")
        store = SqliteStore(path)
        assert store.queue() == [] and store.counts()["incoming"] == 0
        writer.execute("ROLLBACK")
        store.close()


@pytest.mark.parametrize("form", ["sqlite:{}", "sqlite://{}"])
def test_open_store_accepts_url_forms(tmp_path: Path, form: str) -> None:
    store = open_store(form.format(tmp_path / "q.db"))
    store.close()
    assert (tmp_path / "q.db").exists()


def test_open_store_refuses_other_schemes() -> None:
    with pytest.raises(ValueError):
        open_store("postgresql://localhost/mail")


def test_a_delay_warning_is_enqueued_once_per_message(store: Store) -> None:
    [message_id] = store.enqueue([message(("a@x.org", None), ("b@x.org", None))], now=100.0)
    first, second = store.claim(ROUTER, "w", 10, LEASE, now=101.0)
    assert not first.warned
    warning = message(("alice@example.com", None), content=b"Subject: delayed\r\n\r\n")
    one = store.complete([Deferred(first, 500.0, "451 later")], 102.0, (), [(message_id, warning)])
    two = store.complete([Deferred(second, 500.0, "451 later")], 102.0, (), [(message_id, warning)])
    assert len(one) == 1 and two == []  # the second worker's warning is not sent again
    again = [j for j in store.claim(ROUTER, "w", 10, LEASE, now=600.0) if j.message_id == message_id]
    assert len(again) == 2 and all(job.warned for job in again)
