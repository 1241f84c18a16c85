"""Layer 3: the store does not grow without bound. Trace rows go after their own
retention, final jobs after theirs, and a spool file that no message names (a
receive process died in the middle of DATA) an hour after it was last written,
not a week later; everything younger stays. Times are the store's `now`
parameters (or the async store's wall clock) and file times set with os.utime:
nothing sleeps."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest

from gatepost.store import (
    ROUTER,
    Clock,
    Delivered,
    NewMessage,
    NewRecipient,
    SpoolWriter,
    SqliteDb,
    SqliteStore,
    new_queue_id,
    schema,
    sqldb,
    sqlite_db,
)
from gatepost.topology import TopologyError, load
from support import old_store

HOUR, DAY = 3600.0, 86400.0
NOW = 100 * DAY  # the time of every purge below
LEASE = 60.0


@pytest.fixture
def store(tmp_path: Path) -> SqliteDb:
    return SqliteDb(tmp_path / "var" / "queue.db")


def enqueue(store: SqliteDb, now: float, recipients: int = 1) -> str:
    rcpts = tuple(NewRecipient(f"r{n}@ext.org", None) for n in range(recipients))
    new = NewMessage("a@hq.example", rcpts, b"Subject: t\r\n\r\nx\r\n", "HQ", "HQ", "gateway:GW1")
    [queue_id] = store.enqueue([new], now)
    return queue_id


def deliver_all(store: SqliteDb, now: float) -> None:
    jobs = store.claim(ROUTER, "r", 1000, LEASE, now)
    store.complete([Delivered(job, "relay", "250 ok") for job in jobs], now)


def spool_file(store: SqliteDb, written: float) -> Path:
    """A spool file whose message was never committed, last written at `written`."""
    writer = SpoolWriter(store.spool_path(new_queue_id()))
    writer.write(b"Subject: cut\r\n\r\nhalf a messa")
    path = writer.finish()
    os.utime(path, (written, written))
    return path


# -- trace rows ----------------------------------------------------------------


def test_trace_rows_older_than_their_retention_go_and_recent_ones_stay(
    store: SqliteDb,
) -> None:
    old = enqueue(store, NOW - 31 * DAY)
    recent = enqueue(store, NOW - 29 * DAY)
    store.purge(before=NOW - 7 * DAY, now=NOW, traces_before=NOW - 30 * DAY)
    assert store.hops(old) == []
    assert [hop.event for hop in store.hops(recent)] == ["received"]
    assert len(store.queue()) == 2  # a message still queued is not touched


def test_trace_rows_outlive_the_final_jobs_when_their_retention_is_longer(
    store: SqliteDb,
) -> None:
    queue_id = enqueue(store, NOW - 10 * DAY)
    deliver_all(store, NOW - 10 * DAY)
    assert store.purge(before=NOW - 7 * DAY, now=NOW, traces_before=NOW - 30 * DAY) == 1
    assert store.queue() == []
    assert [hop.event for hop in store.hops(queue_id)] == ["received", "delivered"]


def test_without_a_trace_cutoff_trace_rows_go_with_the_final_jobs(store: SqliteDb) -> None:
    old = enqueue(store, NOW - 8 * DAY)
    recent = enqueue(store, NOW - 6 * DAY)
    store.purge(before=NOW - 7 * DAY, now=NOW)
    assert store.hops(old) == []
    assert len(store.hops(recent)) == 1


def test_a_large_purge_deletes_in_bounded_transactions_and_misses_nothing(
    store: SqliteDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqldb, "PURGE_CHUNK", 3)
    old = [enqueue(store, NOW - 40 * DAY, recipients=2) for _ in range(5)]  # 10 hops
    deliver_all(store, NOW - 40 * DAY)  # 10 final jobs, 10 more hops
    recent = enqueue(store, NOW - DAY)
    assert store.purge(before=NOW - 7 * DAY, now=NOW, traces_before=NOW - 30 * DAY) == 10
    assert all(store.hops(queue_id) == [] for queue_id in old)
    assert len(store.hops(recent)) == 1
    assert [entry.message_id for entry in store.queue()] == [recent]


def test_the_purge_of_trace_rows_reads_an_index_not_the_whole_table(store: SqliteDb) -> None:
    plan = store._conn.execute(f"EXPLAIN QUERY PLAN {sqlite_db.Q['purge_hops']}", (NOW, 10))
    details = " ".join(row[3] for row in plan)
    assert "USING COVERING INDEX hops_by_time (at<?)" in details
    assert "SCAN hops" not in details


def test_migration_5_indexes_trace_rows_by_time_in_an_existing_store(tmp_path: Path) -> None:
    path = old_store(tmp_path / "old.db", 4)
    SqliteDb(path).close()
    with closing(sqlite3.connect(path)) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.VERSION
    assert "hops_by_time" in names


# -- orphan spool files ----------------------------------------------------------


def test_an_orphan_spool_file_goes_an_hour_after_it_was_written(store: SqliteDb) -> None:
    orphan = spool_file(store, NOW - HOUR - 60)
    young = spool_file(store, NOW - HOUR + 60)  # its message may still be committed
    store.purge(before=NOW - 7 * DAY, now=NOW)
    assert not orphan.exists()
    assert young.exists()


def test_the_routers_purge_call_removes_an_orphan_within_hours_not_a_week(
    store: SqliteDb,
) -> None:
    """The router's call (the retentions, on the async store's wall clock) and
    `purge(before)` with the final retention's cutoff only: either way the
    orphan's hour counts from the time now."""
    orphan = spool_file(store, time.time() - 2 * HOUR)

    async def routers_purge() -> None:
        wrapped = SqliteStore(store.path)
        try:
            await wrapped.purge(final_retention=7 * DAY, trace_retention=30 * DAY)
        finally:
            await wrapped.aclose()

    asyncio.run(routers_purge())
    assert not orphan.exists()
    orphan = spool_file(store, time.time() - 2 * HOUR)
    store.purge(before=time.time() - 7 * DAY)
    assert not orphan.exists()


def test_a_spool_file_a_committed_message_names_stays_however_old(store: SqliteDb) -> None:
    queue_id = new_queue_id()
    writer = SpoolWriter(store.spool_path(queue_id))
    writer.write(b"Subject: big\r\n\r\n" + b"x" * 1000)
    path = writer.finish()
    new = NewMessage("a@hq.example", (NewRecipient("b@ext.org", None),), b"", "HQ", "HQ",
                     "gateway:GW1", queue_id, path)
    store.enqueue([new], NOW - 3 * DAY)
    os.utime(path, (NOW - 3 * DAY, NOW - 3 * DAY))
    store.purge(before=NOW - 7 * DAY, now=NOW, traces_before=NOW - 30 * DAY)
    assert path.exists()
    assert store.content(queue_id).endswith(b"x" * 1000)


# -- through the async store, and the settings ------------------------------------


def test_the_async_store_passes_every_cutoff_on(store: SqliteDb) -> None:
    """The async store's purge takes retentions and counts them back from its
    wall clock: final jobs, trace rows and orphans each get their own cutoff."""
    queue_id = enqueue(store, NOW - 2 * DAY)
    orphan = spool_file(store, NOW - 2 * HOUR)

    async def purge() -> int:
        wrapped = SqliteStore(store.path, Clock(wall=lambda: NOW))
        try:
            return await wrapped.purge(final_retention=7 * DAY, trace_retention=DAY)
        finally:
            await wrapped.aclose()

    assert asyncio.run(purge()) == 0
    assert store.hops(queue_id) == []
    assert not orphan.exists()


TOPOLOGY = """\
[network]
name = "T"
store = "sqlite:t.db"
[postoffices.HQ]
domains = ["hq.example"]
mailboxes = ["alice"]
[gateways.GW1]
postoffice = "HQ"
role = "send"
smarthost = "127.0.0.1:2525"
serves = ["HQ"]
"""


def loaded(tmp_path: Path, delivery: str = "") -> tuple[float, float]:
    source = tmp_path / "t.toml"
    source.write_text(TOPOLOGY + (f"[delivery]\n{delivery}\n" if delivery else ""))
    settings = load(source).delivery
    return settings.final_retention, settings.trace_retention


def test_retentions_are_settings_of_the_delivery_table(tmp_path: Path) -> None:
    assert loaded(tmp_path) == (7 * DAY, 30 * DAY)
    assert loaded(tmp_path, 'final_retention = "1d"\ntrace_retention = "90d"') == (DAY, 90 * DAY)
    with pytest.raises(TopologyError, match="delivery.trace_retention"):
        loaded(tmp_path, 'trace_retention = "soon"')
