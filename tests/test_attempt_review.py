"""What a review of attempt leases found, pinned: an outcome the store could not
take at once is tried again (never a second copy); a boot id that cannot be
read resets nothing; a store of an older schema is upgraded by `gatepost run`
only, and not while processes of the older gatepost still use it."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from gatepost.store import NewMessage, NewRecipient, SqliteDb, StoreBehind, connect, schema
from gatepost.store import sqlite_db as sqlite_db_module
from gatepost.store.clock import ManualClock
from scripted import ALICE, Clock, Harness, ScriptedHost
from support import EXAMPLES, gatepost, old_store

LEASE = 2.0


class StoreLock:
    """Another connection holding the store's file: every write waits."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self.conn.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


def test_a_delivery_the_store_cannot_take_at_once_is_recorded_later_and_sent_once(
    tmp_path: Path, host: ScriptedHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connect, "BUSY_TIMEOUT", 1.0)  # a locked store fails within 1 s
    gateway = f'smarthost = "{host.address}"\ntls = "none"'

    async def main() -> tuple[bool, list[str]]:
        harness = Harness(tmp_path, gateway, 'retry_min = "1s"', Clock(), queue=f"lease = {LEASE}")
        async with harness as h:
            host.hold_at("dot")
            qid = await h.submit(ALICE, ["r@example.org"], subject="once")
            await host.wait_reached("dot")
            lock = await asyncio.to_thread(StoreLock, h.path)
            host.go("dot")  # the host takes the message: 250
            await asyncio.sleep(4 * LEASE)  # every commit meanwhile fails
            await asyncio.to_thread(lock.release)
            await h.settled(qid, "delivered", "r@example.org")
            await asyncio.sleep(2 * LEASE + 1)  # room for a second copy, were one coming
            return h.alive(), [hop.event for hop in await h.store.hops(qid)]

    alive, events = asyncio.run(main())
    assert alive, "a store that failed for a while must not end the send side"
    assert events.count("delivered") == 1 and "deferred" not in events, events
    assert host.copies("once") == 1 and host.dots == 1, host.history


def leased_store(path: Path, monkeypatch: pytest.MonkeyPatch, boot: str) -> tuple[SqliteDb, str]:
    monkeypatch.setattr(sqlite_db_module, "boot_id", lambda: boot)
    clock = ManualClock()
    db = SqliteDb(path, clock.clock())
    message = NewMessage(ALICE, (NewRecipient("r@example.org", None),), b"x", "HQ", "HQ", "test")
    [queue_id] = db.enqueue([message], 1.0)
    assert len(db.claim("router", "worker", 10, 120.0, 2.0)) == 1
    return db, queue_id


def lease_until(path: Path) -> float:
    with sqlite3.connect(path) as conn:
        return float(conn.execute("SELECT lease_until FROM jobs").fetchone()[0])


def test_a_new_boot_ends_the_leases_but_an_opener_without_a_boot_id_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "q.db"
    db, _ = leased_store(path, monkeypatch, "boot-1")
    held = lease_until(path)
    monkeypatch.setattr(sqlite_db_module, "boot_id", lambda: "")  # e.g. /proc hidden
    SqliteDb(path).close()
    assert lease_until(path) == held
    monkeypatch.setattr(sqlite_db_module, "boot_id", lambda: "boot-1")
    SqliteDb(path).close()
    assert lease_until(path) == held
    monkeypatch.setattr(sqlite_db_module, "boot_id", lambda: "boot-2")  # the host rebooted
    SqliteDb(path).close()
    assert lease_until(path) < 0
    db.close()


def test_only_gatepost_run_upgrades_an_older_store(tmp_path: Path) -> None:
    config = tmp_path / "gatepost.toml"
    shutil.copy(EXAMPLES / "single-gateway.toml", config)
    store = tmp_path / "var" / "single.db"
    store.parent.mkdir()
    old_store(store, schema.VERSION - 1)
    done = gatepost(config, "mailq")
    assert done.returncode == 1
    assert b"older than this gatepost's" in done.stderr and b"gatepost run" in done.stderr
    with sqlite3.connect(store) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.VERSION - 1


def test_the_upgrade_waits_until_the_older_processes_stop(tmp_path: Path) -> None:
    path = old_store(tmp_path / "q.db", 5)
    with sqlite3.connect(path) as conn:  # an old send side's wall-clock heartbeat, just now
        conn.execute("INSERT INTO workers VALUES ('gateway:GW1', 'old', ?)", (time.time(),))
    with pytest.raises(StoreBehind, match="older gatepost still use the store"):
        SqliteDb(path)
    with sqlite3.connect(path) as conn:  # it stopped a while ago
        conn.execute("UPDATE workers SET seen = ?", (time.time() - 600,))
    db = SqliteDb(path)
    assert db.version() == schema.VERSION
    db.close()
