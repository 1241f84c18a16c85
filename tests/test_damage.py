"""A damaged message is set aside (held), never sent in part; a damaged store is
refused at start with a clear error."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import threading
from pathlib import Path

import pytest

from gatepost.store import DamagedMessage, NewMessage, NewRecipient, SqliteDb, schema
from scripted import ALICE, Harness, ScriptedHost


def test_a_cut_spool_file_or_a_damaged_row_is_detected(tmp_path: Path) -> None:
    store = SqliteDb(tmp_path / "q.db")
    [small] = store.enqueue([NewMessage("a@b.c", (NewRecipient("x@y.z", None),), b"hello",
                                        "HQ", "HQ", "cli")], 1.0)
    store._conn.execute("UPDATE messages SET size = 99 WHERE id = ?", (small,))
    with pytest.raises(DamagedMessage):
        store.content(small)
    store.close()


def test_the_send_side_holds_a_damaged_message_and_sends_nothing(
    tmp_path: Path, host: ScriptedHost
) -> None:
    async def main() -> None:
        h = Harness(tmp_path, f'smarthost = "{host.address}"')
        queue_id = await h.submit(ALICE, ["r@example.org"])  # before the workers run
        sync = SqliteDb(Path(h.topo.store.removeprefix("sqlite:")))
        sync._conn.execute("UPDATE messages SET size = size + 1 WHERE id = ?", (queue_id,))
        sync.close()
        async with h:
            await h.until(lambda: held(h), "the damaged message on hold")
            fine = await h.submit(ALICE, ["s@example.org"])
            await h.settled(fine, "delivered", "s@example.org")  # the rest goes on

    asyncio.run(main())
    assert host.recipients() == ["s@example.org"]


async def held(h: Harness) -> bool:
    return bool(await h.store.queue(states=["hold"]))


def test_run_refuses_a_damaged_store(tmp_path: Path) -> None:
    from gatepost import runner
    from gatepost.topology import load

    example = Path(__file__).resolve().parent.parent / "examples" / "single-gateway.toml"
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"this is not a database" * 100)
    topo = dataclasses.replace(load(example), store=f"sqlite:{damaged}", capture=None)
    with pytest.raises(runner.StartError, match="damaged"):
        runner.run(topo, ["router"], lambda lines: None)


def corrupt_a_page(path: Path) -> None:
    """Overwrite one page in the middle of a store with 0xff: the schema still
    reads, SQLite's whole-file check does not pass."""
    store = SqliteDb(path)
    body = b"x" * 5000
    store.enqueue([NewMessage("a@b.c", (NewRecipient("x@y.z", None),), body + bytes([i]),
                              "HQ", "HQ", "cli") for i in range(200)], 1.0)
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    data = bytearray(path.read_bytes())
    middle = (len(data) // 4096 // 2) * 4096
    data[middle : middle + 4096] = b"\xff" * 4096
    path.write_bytes(data)


def test_start_reads_only_the_schema_and_check_store_reads_every_page(tmp_path: Path) -> None:
    from support import Gatepost, gatepost

    example = Path(__file__).resolve().parent.parent / "examples" / "single-gateway.toml"
    config = tmp_path / "net.toml"
    config.write_text(example.read_text().replace("var/single.db", "var/q.db"))
    (tmp_path / "var").mkdir()
    assert gatepost(config, "check", "--store").returncode == 0  # a new store is sound
    corrupt_a_page(tmp_path / "var" / "q.db")
    checked = gatepost(config, "check", "--store")
    assert checked.returncode == 2
    assert b"q.db: damaged (" in checked.stderr
    assert b"invalid page number" in checked.stderr
    router = Gatepost(config, "--only", "router")  # no whole-file check at start
    assert router.stop() == 0


def test_a_store_held_by_another_process_at_start_is_waited_for(tmp_path: Path) -> None:
    """Another process switching a new file to WAL or migrating it holds it for
    a moment: opening waits, and does not call that damage."""
    path = tmp_path / "q.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("CREATE TABLE other (x)")
    releaser = threading.Timer(1.5, lambda: (holder.execute("COMMIT"), holder.close()))
    releaser.start()
    try:
        store = SqliteDb(path)
        assert store.version() == schema.VERSION
        store.close()
    finally:
        releaser.join()
