"""What is specific to the PostgreSQL store (PgStore, open_store("postgresql://...")),
beyond the contract suite (which runs it on a ManualClock): here the store runs
as it does in production, with clock=None, so leases and heartbeats are on the
database's clock.

- leases and heartbeats on the database's clock, also for a process whose own
  clock is two hours off (libfaketime), and a 1 s lease that really ends;
- large content in chunks rows: stored, read back, damaged, purged;
- connections ended by the server (pg_terminate_backend, a restart) are replaced;
- two connection pools changing the same messages at once stay consistent, and a
  deadlocked transaction is run again on the same connection;
- the schema created once by stores opened together, a newer schema refused;
- concurrent enqueues committed together (group commit).

Each test opens its stores in its own event loop (asyncio.run) and closes them;
every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from gatepost.store import (
    ROUTER,
    Bounced,
    Changes,
    DamagedMessage,
    Deferred,
    Delivered,
    Job,
    Moved,
    NewMessage,
    NewRecipient,
    SpoolWriter,
    Store,
    new_queue_id,
    open_store,
    send_queue,
)
from gatepost.store.postgres import THREADS, PgStore
from gatepost.store.postgres_db import CHUNK, Q
from pg import Cluster
from support import faketime_library

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
SEND = send_queue("GW1")
LEASE = 60.0
TEST_TIMEOUT = 90.0  # seconds one test's event loop may run
LARGE = 3 * CHUNK + CHUNK // 2  # 3.5 MiB: four chunks rows


# -- helpers -----------------------------------------------------------------------


def run(body: Callable[[], Awaitable[T]], timeout: float = TEST_TIMEOUT) -> T:
    """Run a test's coroutine in an event loop of its own, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(body(), timeout)

    return asyncio.run(bounded())


@asynccontextmanager
async def stores(*made: Store) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for store in made:
            await store.aclose()


def rows(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on a connection of our own (PGPASSWORD is set by pg_url)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


@pytest.fixture
def db(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection of the test's own to its database, open before the stores'
    calls: reading the database's clock through it costs one round trip."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


def db_now(db: psycopg.Connection[Any]) -> float:
    row = db.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
    assert row is not None
    return float(row[0])


def message(
    *rcpts: tuple[str, str | None], content: bytes = b"Subject: hi\r\n\r\nbody\r\n",
    queue_id: str = "", content_file: Path | None = None,
) -> NewMessage:
    recipients = tuple(NewRecipient(a, m) for a, m in rcpts) or (NewRecipient("bob@ext.org", None),)
    return NewMessage("alice@example.com", recipients, content, "HQ", "SALES", "gateway:GW1",
                      queue_id=queue_id, content_file=content_file)


def pg_store(url: str, tmp_path: Path, **options: Any) -> PgStore:
    """A store as production opens it (clock=None: leases on the database's
    clock), its staging folder under tmp_path."""
    return PgStore(url, staging=tmp_path / "staging", **options)


# -- 1. leases and heartbeats on the database's clock -----------------------------


def test_claim_renew_heartbeat_and_lead_are_on_the_database_clock(
        pg_url: str, tmp_path: Path, db: psycopg.Connection[Any]) -> None:
    async def body() -> None:
        store = pg_store(pg_url, tmp_path)
        async with stores(store):
            message_id = await store.enqueue(message())
            [job] = await store.claim(ROUTER, "w1", 10, LEASE)
            now = db_now(db)
            [(until,)] = rows(pg_url, "SELECT lease_until FROM jobs WHERE message_id = %s",
                              (message_id,))
            assert now - 1.0 <= until - LEASE <= now, (until, now)

            renewal = await store.renew([job], 5 * LEASE)
            now = db_now(db)
            [(until,)] = rows(pg_url, "SELECT lease_until FROM jobs")
            assert renewal.held == {(message_id, 0)}
            assert now - 1.0 <= until - 5 * LEASE <= now, (until, now)

            await store.heartbeat("gateway:GW1", "w1")
            assert await store.lead("purge", "w1", 30.0)
            now = db_now(db)
            [(seen,)] = rows(pg_url, "SELECT seen FROM workers")
            [(term,)] = rows(pg_url, "SELECT until FROM leaders")
            assert now - 1.0 <= seen <= now
            assert now - 1.0 <= term - 30.0 <= now
            assert await store.alive(5.0) == {"gateway:GW1"}

    run(body)


# The process under faketime: enqueue, claim, heartbeat; a line of JSON after each
# step, then it waits for a line on stdin. time.sleep waits in select() (see
# tests/test_attempts_process.py: libfaketime 0.9.10 breaks Python 3.11's sleep
# when the monotonic clock is left alone).
FAKED_STORE = """if True:
    import asyncio, json, select, sys, time
    time.sleep = lambda seconds: select.select([], [], [], seconds)
    from gatepost.store import NewMessage, NewRecipient, open_store

    def say(**what):
        print(json.dumps({"wall": time.time(), **what}), flush=True)

    async def main(url, lease):
        store = open_store(url)
        try:
            rcpt = (NewRecipient("bob@ext.org", None),)
            new = NewMessage("a@example.com", rcpt, b"Subject: x\\r\\n\\r\\nx\\r\\n",
                             "HQ", "SALES", "gateway:GW1")
            message_id = await store.enqueue(new)
            jobs = await store.claim("router", "faked@host:1", 10, lease)
            await store.heartbeat("gateway:FAKED", "faked@host:1")
            say(id=message_id, claimed=len(jobs))
            await asyncio.to_thread(sys.stdin.readline)
            renewal = await store.renew(jobs, 2 * lease)
            await store.heartbeat("gateway:FAKED", "faked@host:1")
            say(held=len(renewal.held))
            await asyncio.to_thread(sys.stdin.readline)
        finally:
            await store.aclose()

    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


def read_json(process: subprocess.Popen[str], timeout: float = 30.0) -> dict[str, Any]:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"no line from the faked process within {timeout} s")
    line = process.stdout.readline()
    if not line:
        _, errors = process.communicate(timeout=10)
        raise AssertionError(f"the faked process ended (rc {process.returncode}):\n{errors}")
    found: dict[str, Any] = json.loads(line)
    return found


def say_go(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.write("go\n")
    process.stdin.flush()


@pytest.mark.parametrize("offset", [7200, -7200], ids=["2h-ahead", "2h-behind"])
def test_a_process_with_a_clock_two_hours_off_leases_on_the_database_clock(
        pg_url: str, tmp_path: Path, db: psycopg.Connection[Any], offset: int) -> None:
    env = {**os.environ, "LD_PRELOAD": faketime_library(), "FAKETIME": f"{offset:+d}s",
           "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    command = [sys.executable, "-c", FAKED_STORE, pg_url, str(LEASE)]
    with subprocess.Popen(command, env=env, cwd=ROOT, text=True, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as faked:
        try:
            first = read_json(faked)
            now, real = db_now(db), time.time()
            assert abs(first["wall"] - real - offset) < 60, "faketime did not move the clock"
            assert first["claimed"] == 1
            [(until, created)] = rows(pg_url, "SELECT lease_until, created FROM jobs")
            [(seen,)] = rows(pg_url, "SELECT seen FROM workers WHERE name = 'gateway:FAKED'")
            # its wall clock is off (what people read), its lease and heartbeat are not
            assert abs(created - real - offset) < 60
            assert now - 1.0 <= until - LEASE <= now, (until - LEASE - now)
            assert now - 1.0 <= seen <= now, (seen - now)

            async def another_store_sees_it_alive() -> None:
                other = pg_store(pg_url, tmp_path)
                async with stores(other):
                    assert await other.alive(5.0) == {"gateway:FAKED"}
                    assert await other.claim(ROUTER, "other", 10, LEASE) == []
                    assert not await other.due(ROUTER)

            run(another_store_sees_it_alive)
            say_go(faked)
            second = read_json(faked)
            now = db_now(db)
            assert second["held"] == 1
            [(until,)] = rows(pg_url, "SELECT lease_until FROM jobs")
            [(seen,)] = rows(pg_url, "SELECT seen FROM workers")
            assert now - 1.0 <= until - 2 * LEASE <= now, (until - 2 * LEASE - now)
            assert now - 1.0 <= seen <= now, (seen - now)
            say_go(faked)
            assert faked.wait(30) == 0, faked.communicate()[1]
        finally:
            if faked.poll() is None:
                faked.kill()


def test_a_one_second_lease_ends_for_another_store_after_one_second(
        pg_url: str, tmp_path: Path) -> None:
    async def body() -> None:
        first, second = pg_store(pg_url, tmp_path), pg_store(pg_url, tmp_path)
        async with stores(first, second):
            await first.enqueue(message())
            await second.counts()  # its connection is open: claims below are quick
            start = time.monotonic()
            [job] = await first.claim(ROUTER, "first", 10, 1.0)
            while True:
                taken = await second.claim(ROUTER, "second", 10, LEASE)
                waited = time.monotonic() - start
                if taken:
                    break
                assert waited < 5.0, "the 1 s lease never ended"
                await asyncio.sleep(0.02)
            assert 0.95 <= waited < 2.0, waited
            assert [(j.message_id, j.owner) for j in taken] == [(job.message_id, "second")]
            assert (await first.renew([job], LEASE)).held == frozenset()

    run(body)


# -- 2. large content in chunks rows ------------------------------------------------


def large_content(seed: int) -> bytes:
    body = random.Random(seed).randbytes(LARGE)
    header = b"Subject: large %d\r\n\r\n" % seed
    return header + body[len(header):]


async def enqueue_large(store: Store, content: bytes, *rcpts: tuple[str, str | None]) -> str:
    """Stage the content as the receive side does (receive/spooling.py), then enqueue."""
    queue_id = new_queue_id()
    writer = SpoolWriter(await store.spool_path(queue_id))
    for at in range(0, len(content), 64 * 1024):
        writer.write(content[at:at + 64 * 1024])
    path = writer.finish()
    assert path.stat().st_size == len(content)
    got = await store.enqueue(message(*rcpts, content=b"", queue_id=queue_id, content_file=path))
    assert got == queue_id
    assert not path.exists(), "the staged file outlived the enqueue"
    return got


def chunks_of(url: str, message_id: str) -> list[tuple[int, int]]:
    return [(int(seq), int(n)) for seq, n in rows(
        url, "SELECT seq, length(data) FROM chunks WHERE message_id = %s ORDER BY seq",
        (message_id,))]


async def read_in_pieces(store: Store, message_id: str) -> bytes:
    with await store.open_content(message_id) as file:
        return b"".join(iter(lambda: file.read(100_000), b""))


def test_large_content_is_stored_in_chunks_and_read_back_whole(
        pg_url: str, tmp_path: Path) -> None:
    content = large_content(1)

    async def body() -> None:
        store, other = pg_store(pg_url, tmp_path), pg_store(pg_url, tmp_path / "other")
        async with stores(store, other):
            message_id = await enqueue_large(store, content, ("HQ/alice", "HQ/alice"))
            assert chunks_of(pg_url, message_id) == [
                (0, CHUNK), (1, CHUNK), (2, CHUNK), (3, CHUNK // 2)]
            [(size, inline)] = rows(pg_url, "SELECT size, length(content) FROM messages")
            assert (size, inline) == (len(content), 0)
            assert list((tmp_path / "staging").iterdir()) == []

            assert await other.content(message_id) == content
            assert await read_in_pieces(other, message_id) == content
            assert await other.content_head(message_id) == content[:64 * 1024]

            [job] = await store.claim(ROUTER, "w1", 10, LEASE)
            assert job.size == len(content)
            await store.complete([Delivered(job)])
            [entry] = await other.mailbox("HQ/alice")
            assert (entry.message_id, entry.size) == (message_id, len(content))
            assert await other.mailbox_content("HQ/alice", entry.entry_id) == content
            opened = await other.open_mailbox_content("HQ/alice", entry.entry_id)
            assert opened is not None
            with opened:
                assert opened.read() == content

            # the purge forgets the delivered job; the mailbox still holds the content
            assert await store.purge(0.0, 0.0) == 1
            assert len(chunks_of(pg_url, message_id)) == 4
            assert await other.mailbox_content("HQ/alice", entry.entry_id) == content

    run(body)


@pytest.mark.parametrize("lost", [0, 1, 3], ids=["first", "middle", "last"])
def test_a_missing_chunk_is_damage_that_check_names(
        pg_url: str, tmp_path: Path, lost: int) -> None:
    async def body() -> None:
        store, other = pg_store(pg_url, tmp_path), pg_store(pg_url, tmp_path / "other")
        async with stores(store, other):
            small = await store.enqueue(message(content=b"Subject: small\r\n\r\nfine\r\n"))
            sound = await enqueue_large(store, large_content(2))
            damaged = await enqueue_large(store, large_content(3), ("HQ/alice", "HQ/alice"))
            assert await other.check() == "ok"
            rows(pg_url, "DELETE FROM chunks WHERE message_id = %s AND seq = %s", (damaged, lost))

            with pytest.raises(DamagedMessage):
                await other.content(damaged)
            with pytest.raises(DamagedMessage):
                await other.open_content(damaged)
            with pytest.raises(DamagedMessage):
                await other.content_head(damaged)
            report = await other.check()
            assert damaged in report and report != "ok"
            assert sound not in report and small not in report
            assert await other.content(sound) == large_content(2)
            assert await other.content(small) == b"Subject: small\r\n\r\nfine\r\n"

            [job] = [j for j in await store.claim(ROUTER, "w1", 10, LEASE)
                     if j.message_id == damaged]
            await store.complete([Delivered(job)])
            [entry] = await other.mailbox("HQ/alice")
            with pytest.raises(DamagedMessage):
                await other.mailbox_content("HQ/alice", entry.entry_id)

    run(body)


def test_purging_a_delivered_large_message_removes_its_chunks(
        pg_url: str, tmp_path: Path) -> None:
    async def body() -> None:
        store = pg_store(pg_url, tmp_path)
        async with stores(store):
            gone = await enqueue_large(store, large_content(4), ("carol@ext.org", None))
            kept = await enqueue_large(store, large_content(5), ("dave@ext.org", None))
            jobs = await store.claim(ROUTER, "w1", 10, LEASE)
            [delivered] = [j for j in jobs if j.message_id == gone]
            [deferred] = [j for j in jobs if j.message_id == kept]
            await store.complete([Delivered(delivered, relay="smarthost"),
                                  Deferred(deferred, time.time() + 3600, "451 later")])
            assert await store.purge(0.0, 0.0) == 1
            assert rows(pg_url, "SELECT id FROM messages") == [(kept,)]
            assert chunks_of(pg_url, gone) == []
            assert len(chunks_of(pg_url, kept)) == 4
            assert await store.content(kept) == large_content(5)
            with pytest.raises(KeyError):
                await store.content(gone)

    run(body)


# -- 3. connections the server ends -------------------------------------------------


def sessions(url: str) -> set[int]:
    """The server processes of the other sessions on this database (the store's)."""
    return {pid for (pid,) in rows(url, "SELECT pid FROM pg_stat_activity WHERE datname ="
                                        " current_database() AND pid <> pg_backend_pid()")}


def terminate(url: str) -> int:
    ended = rows(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE datname = current_database() AND pid <> pg_backend_pid()")
    return sum(1 for (done,) in ended if done)


def wait_until_gone(url: str, pids: set[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while sessions(url) & pids:
        assert time.monotonic() < deadline, "terminated sessions did not end"
        time.sleep(0.02)


def test_a_terminated_connection_is_replaced_on_one_thread(pg_url: str, tmp_path: Path) -> None:
    async def body() -> None:
        store = pg_store(pg_url, tmp_path, threads=1)
        async with stores(store):
            first = await store.enqueue(message(content=b"before"))
            [before] = sessions(pg_url)
            assert terminate(pg_url) == 1
            wait_until_gone(pg_url, {before})
            failures, enqueued = 0, 1
            for _ in range(20):
                try:
                    assert (await store.counts())["incoming"] == enqueued
                    await store.enqueue(message(content=b"after"))
                    enqueued += 1
                except psycopg.OperationalError:
                    failures += 1
            assert failures <= 1
            [after] = sessions(pg_url)
            assert after != before
            assert await store.content(first) == b"before"

    run(body)


def test_terminated_connections_are_replaced_without_reopening_the_store(
        pg_url: str, tmp_path: Path) -> None:
    async def body() -> None:
        store = pg_store(pg_url, tmp_path)
        async with stores(store):
            ids = list(await asyncio.gather(*(store.enqueue(message()) for _ in range(20))))
            await asyncio.gather(*(store.counts() for _ in range(40)))  # every thread connects
            before = sessions(pg_url)
            assert 1 <= len(before) <= THREADS
            assert terminate(pg_url) == len(before)
            wait_until_gone(pg_url, before)

            failures: list[BaseException] = []
            for _ in range(10):  # rounds of calls side by side, on every thread
                calls = [call for _ in range(2) for call in (
                    store.counts(), store.queue(), store.content(ids[0]),
                    store.enqueue(message()), store.hops(ids[1]), store.due(ROUTER))]
                results = await asyncio.gather(*calls, return_exceptions=True)
                failures += [r for r in results if isinstance(r, BaseException)]
                ids += [r for r in results[3::6] if isinstance(r, str)]
            assert all(isinstance(f, psycopg.OperationalError) for f in failures), failures
            assert len(failures) <= len(before), failures  # one per connection ended at most
            results = await asyncio.gather(*(store.counts() for _ in range(40)))
            assert all(sum(r.values()) == len(ids) for r in results)
            assert not sessions(pg_url) & before
            assert [await store.content(i) for i in ids] == [message().content] * len(ids)

    run(body)


def test_the_store_recovers_from_a_database_restart_by_itself(
        pg_cluster: Cluster, pg_url: str, tmp_path: Path) -> None:
    async def body() -> None:
        store = open_store(pg_url)
        returned: list[str] = []
        raised: list[tuple[str, BaseException]] = []
        stop = asyncio.Event()

        async def keep_enqueueing() -> None:
            while not stop.is_set():
                queue_id = new_queue_id()
                try:
                    returned.append(await store.enqueue(message(
                        content=queue_id.encode(), queue_id=queue_id)))
                except psycopg.Error as error:  # any other error fails the test
                    raised.append((queue_id, error))
                    await asyncio.sleep(0.05)

        async with stores(store):
            loops = [asyncio.create_task(keep_enqueueing()) for _ in range(4)]
            while len(returned) < 40:
                await asyncio.sleep(0.01)
            await asyncio.to_thread(pg_cluster.restart)
            restarted, attempts = time.monotonic(), 0
            while True:  # the store reconnects by itself
                attempts += 1
                try:
                    await store.counts()
                    break
                except psycopg.OperationalError:
                    assert time.monotonic() - restarted < 30, "no recovery within 30 s"
                    await asyncio.sleep(0.1)
            assert attempts <= THREADS + 1
            settled = len(returned)
            while len(returned) < settled + 40:
                assert time.monotonic() - restarted < 30, "enqueues fail after the restart"
                await asyncio.sleep(0.01)
            stop.set()
            await asyncio.gather(*loops)

        assert raised, "no enqueue raised while the database restarted"
        assert all(isinstance(e, psycopg.OperationalError | psycopg.IntegrityError)
                   for _, e in raised), raised
        committed = {m for (m,) in rows(pg_url, "SELECT id FROM messages")}
        assert set(returned) <= committed
        reader = open_store(pg_url)
        async with stores(reader):
            for message_id in returned:
                assert await reader.content(message_id) == message_id.encode()

    run(body)


# -- 4. two connection pools on the same messages ------------------------------------

MESSAGES = 24
ADMIN_GROUPS: list[tuple[tuple[str, str], ...]] = [  # (store, action) per message index % 6
    (), (("a", "hold"),), (("b", "delete"),), (("a", "hold"), ("b", "delete")),
    (("b", "requeue"),), (("a", "requeue"), ("b", "hold")),
]


def outcome_for(job: Job) -> Delivered | Deferred | Moved | Bounced:
    """Each message's four recipients: delivered to a mailbox, deferred, moved, bounced."""
    return [Delivered(job), Deferred(job, time.time() + 3600, "451 later", "smarthost"),
            Moved(job, "SALES", SEND), Bounced(job, "550 no")][job.rcpt_id]


def expected_end(rcpt_id: int, actions: set[str]) -> tuple[str, str] | None:
    """(state, queue) a job ends in, whatever order outcome and actions came in."""
    if rcpt_id == 0:
        return ("delivered", ROUTER)
    if rcpt_id == 3:
        return ("bounced", ROUTER)
    if "delete" in actions:
        return None
    if "hold" in actions:
        return ("hold", "*")
    if "requeue" in actions:
        return ("incoming", ROUTER)
    return ("deferred", ROUTER) if rcpt_id == 1 else ("incoming", SEND)


def test_two_pools_completing_and_changing_the_same_messages_end_consistent(
        pg_url: str, tmp_path: Path) -> None:
    rcpts = [("alice@hq", "HQ/alice"), ("b@ext.org", None), ("c@sales", None),
             ("d@ext.org", None)]

    async def body() -> None:
        a, b = pg_store(pg_url, tmp_path), pg_store(pg_url, tmp_path / "b")
        async with stores(a, b):
            ids = await asyncio.gather(*(a.enqueue(message(*rcpts)) for _ in range(MESSAGES)))
            jobs: dict[str, list[Job]] = {"a": [], "b": []}
            for turn in range(2 * MESSAGES):  # each message's jobs split between the pools
                name = "ab"[turn % 2]
                jobs[name] += await (a if name == "a" else b).claim(ROUTER, name, 2, LEASE)
            assert len(jobs["a"]) == len(jobs["b"]) == 2 * MESSAGES
            pools = {"a": a, "b": b}
            calls: list[Awaitable[object]] = []
            for name, store in pools.items():
                calls += [store.complete([outcome_for(job)]) for job in jobs[name]]
            for index, message_id in enumerate(ids):
                for name, action in ADMIN_GROUPS[index % 6]:
                    calls += [pools[name].set_state([message_id], action) for _ in range(2)]
            for name, action in (("a", "hold"), ("b", "delete")):  # also many at once
                wanted = [m for i, m in enumerate(ids) if (name, action) in ADMIN_GROUPS[i % 6]]
                calls.append(pools[name].set_state(list(reversed(wanted)), action))
            random.Random(5).shuffle(calls)
            await asyncio.gather(*calls)  # no exception may escape

            expected = {}
            for index, message_id in enumerate(ids):
                actions = {action for _, action in ADMIN_GROUPS[index % 6]}
                for rcpt_id in range(4):
                    end = expected_end(rcpt_id, actions)
                    if end is not None:
                        expected[(message_id, rcpt_id)] = end
            found = {(m, r): (s, q) for m, r, s, q in rows(
                pg_url, "SELECT message_id, rcpt_id, state, queue FROM jobs")}
            assert found.keys() == expected.keys()
            wrong = {k: (found[k], v) for k, v in expected.items()
                     if found[k][0] != v[0] or v[1] not in ("*", found[k][1])}
            assert not wrong
            counts = await b.counts()
            assert sum(counts.values()) == len(expected)
            assert counts["active"] == 0
            assert rows(pg_url, "SELECT count(*) FROM jobs WHERE pending IS NOT NULL"
                                " OR lease_token IS NOT NULL") == [(0,)]
            assert len(await a.mailbox("HQ/alice")) == MESSAGES
            assert rows(pg_url, "SELECT count(*) FROM messages") == [(MESSAGES,)]

    run(body, timeout=120)


LOCK_JOBS = "SELECT 1 FROM jobs WHERE message_id = %s FOR UPDATE"


async def wait_for_lock_waiters(url: str, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    query = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
             " AND wait_event_type = 'Lock'")
    while rows(url, query)[0][0] < count:
        assert time.monotonic() < deadline, "nobody waited for the lock"
        await asyncio.sleep(0.02)


async def deadlock_an_admin_action(url: str, tmp_path: Path) -> tuple[Changes, int, int]:
    """set_state on two messages deadlocks with another session that locks them
    in the other order; the store's transaction is the one the database rolls
    back. Returns what set_state changed, and the store's session before and after."""
    store = pg_store(url, tmp_path, threads=1)
    async with stores(store):
        first, second = [await store.enqueue(message(("a@x", None), ("b@x", None)))
                         for _ in range(2)]
        assert first < second  # set_state locks them in this order
        [before] = sessions(url)
        with psycopg.connect(url, autocommit=True) as other:
            other.execute("SET deadlock_timeout = '30s'")  # the store's session detects it
            other.execute("BEGIN")
            other.execute(LOCK_JOBS, (second,))
            changing = asyncio.ensure_future(store.set_state([first, second], "hold"))
            await wait_for_lock_waiters(url, 1)  # the store holds `first`, waits for `second`
            await asyncio.to_thread(other.execute, LOCK_JOBS, (first,))
            other.execute("COMMIT")
            changes = await changing
        [after] = sessions(url)
        assert await store.counts() == {**dict.fromkeys(await store.counts(), 0), "hold": 4}
    return changes, before, after


def test_a_deadlocked_admin_action_is_run_again(pg_url: str, tmp_path: Path) -> None:
    changes, _, _ = run(lambda: deadlock_an_admin_action(pg_url, tmp_path))
    assert changes == Changes(now=4)


def test_a_deadlock_keeps_the_connection(pg_url: str, tmp_path: Path) -> None:
    _, before, after = run(lambda: deadlock_an_admin_action(pg_url, tmp_path))
    assert after == before


# -- 5. the schema ------------------------------------------------------------------


def advisory_waiters(url: str) -> int:
    return int(rows(url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                         " AND NOT granted AND database = (SELECT oid FROM pg_database"
                         " WHERE datname = current_database())")[0][0])


def first_calls(url: str) -> list[object]:
    """A store's first calls, one on each of its threads: each opens a connection."""

    async def body() -> list[object]:
        store = open_store(url)
        async with stores(store):
            calls = [store.version() for _ in range(THREADS)]
            return list(await asyncio.gather(*calls, return_exceptions=True))

    return run(body, timeout=60)


def test_stores_opened_together_create_the_schema_once(pg_url: str) -> None:
    """Stores that start while another host holds the schema lock (it is creating
    the schema, or about to) all wait for it, then find the schema: none fails."""
    opened = 3
    pool = ThreadPoolExecutor(opened)
    starting = psycopg.connect(pg_url, autocommit=True)
    try:
        starting.execute("BEGIN")
        starting.execute(Q["schema_lock"])
        futures = [pool.submit(first_calls, pg_url) for _ in range(opened)]
        deadline = time.monotonic() + 30
        while advisory_waiters(pg_url) < opened * THREADS:  # every connection waits
            assert time.monotonic() < deadline, "the stores never waited for the schema lock"
            assert not any(f.done() for f in futures), [f.result() for f in futures]
            time.sleep(0.02)
        starting.execute("COMMIT")
        versions = [future.result(60) for future in futures]
    finally:
        starting.close()
        pool.shutdown()
    assert versions == [[1] * THREADS] * opened
    assert rows(pg_url, "SELECT version FROM gatepost_schema") == [(1,)]
    assert rows(pg_url, "SELECT count(*) FROM messages") == [(0,)]


def test_a_newer_schema_is_refused_and_left_alone(pg_cluster: Cluster, pg_url: str) -> None:
    name = pg_url.rpartition("/")[2]
    pg_cluster.psql(name, "CREATE TABLE gatepost_schema (version integer NOT NULL);"
                          " INSERT INTO gatepost_schema (version) VALUES (99)")

    async def body() -> None:
        store = open_store(pg_url)
        async with stores(store):
            with pytest.raises(RuntimeError, match=r"schema version 99 is newer than this"
                                                   r" code \(1\)"):
                await store.version()
            with pytest.raises(RuntimeError, match="newer"):
                await store.enqueue(message())

    run(body)
    assert pg_cluster.psql(name, "SELECT version FROM gatepost_schema") == "99\n"
    assert pg_cluster.psql(name, "SELECT to_regclass('messages') IS NULL") == "t\n"


# -- 6. group commit ----------------------------------------------------------------


def test_concurrent_enqueues_share_commits(pg_url: str, tmp_path: Path) -> None:
    async def body() -> None:
        store = open_store(pg_url)
        async with stores(store):
            await store.counts()  # the schema exists: the commits counted are enqueues
            contents = [b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n) for n in range(100)]
            ids = await asyncio.gather(*(store.enqueue(message(content=c)) for c in contents))
        assert len(set(ids)) == 100
        # a row's xmin is the transaction that inserted it: the commits that held them
        [(messages, commits)] = rows(pg_url, "SELECT count(*), count(DISTINCT xmin::text)"
                                             " FROM messages")
        [(jobs, job_commits)] = rows(pg_url, "SELECT count(*), count(DISTINCT xmin::text)"
                                             " FROM jobs")
        assert (messages, jobs) == (100, 100)
        assert 1 <= commits <= 10 and job_commits == commits, (commits, job_commits)
        reader = pg_store(pg_url, tmp_path)
        async with stores(reader):
            assert [await reader.content(i) for i in ids] == contents

    run(body)
