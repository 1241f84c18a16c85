"""Layer 3: large content in spool files: written once beside the store, read in
pieces, moved by changing rows only, removed with the message, and a file
that no committed row names (a crash before the commit) is never read."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from gatepost.store import (
    ROUTER,
    Changes,
    Delivered,
    Moved,
    NewMessage,
    NewRecipient,
    SpoolWriter,
    SqliteDb,
    new_queue_id,
    send_queue,
)

LEASE = 60.0
BIG = b"Subject: big\r\n\r\n" + b"x" * 2_000_000 + b"\r\n"


@pytest.fixture
def store(tmp_path: Path) -> SqliteDb:
    return SqliteDb(tmp_path / "var" / "queue.db")


def spooled(store: SqliteDb, content: bytes = BIG, *rcpts: NewRecipient) -> NewMessage:
    queue_id = new_queue_id()
    writer = SpoolWriter(store.spool_path(queue_id))
    for start in range(0, len(content), 65536):
        writer.write(content[start : start + 65536])
    path = writer.finish()
    recipients = rcpts or (NewRecipient("bob@ext.org", None),)
    return NewMessage("a@b.example", recipients, b"", "HQ", "HQ", "gateway:GW1", queue_id, path)


def blob_sizes(store: SqliteDb) -> list[tuple[int, int, str | None]]:
    with closing(sqlite3.connect(store.path)) as conn:
        sql = "SELECT size, length(content), content_file FROM messages ORDER BY id"
        return [tuple(row) for row in conn.execute(sql)]  # type: ignore[misc]


def test_large_content_lives_in_a_file_beside_the_store_and_reads_back(store: SqliteDb) -> None:
    [queue_id] = store.enqueue([spooled(store)], 1.0)
    assert store.spool == store.path.with_name("queue.db.spool")
    assert blob_sizes(store) == [(len(BIG), 0, queue_id)]
    assert store.content(queue_id) == BIG
    with store.open_content(queue_id) as file:
        assert b"".join(iter(lambda: file.read(100_000), b"")) == BIG
    assert store.queue()[0].size == len(BIG)


def test_small_content_stays_in_the_row_and_opens_too(store: SqliteDb) -> None:
    small = NewMessage("a@b.example", (NewRecipient("bob@ext.org", None),), b"hi\r\n",
                       "HQ", "HQ", "cli")
    [queue_id] = store.enqueue([small], 1.0)
    with store.open_content(queue_id) as file:
        assert file.read() == b"hi\r\n"
    assert not store.spool.exists() or not any(store.spool.iterdir())


def test_moves_and_mailbox_delivery_never_copy_the_file(store: SqliteDb) -> None:
    message = spooled(store, BIG, NewRecipient("carol@sales", "SALES/carol"))
    [queue_id] = store.enqueue([message], 1.0)
    inode = os.stat(store.spool_path(queue_id)).st_ino
    job = store.claim(ROUTER, "r", 10, LEASE, 2.0)[0]
    store.complete([Moved(job, "SALES", ROUTER)], 3.0)
    job = store.claim(ROUTER, "r", 10, LEASE, 4.0)[0]
    store.complete([Delivered(job)], 5.0)
    assert os.stat(store.spool_path(queue_id)).st_ino == inode
    assert sorted(p.name for p in store.spool.iterdir()) == [queue_id]
    entry = store.mailbox("SALES/carol")[0]
    assert entry.size == len(BIG)
    with store.open_mailbox_content("SALES/carol", entry.entry_id) as file:  # type: ignore[union-attr]
        assert file.read() == BIG


def test_delete_removes_the_file(store: SqliteDb) -> None:
    [queue_id] = store.enqueue([spooled(store)], 1.0)
    assert store.set_state([queue_id], "delete", 2.0) == Changes(now=1)
    assert not store.spool_path(queue_id).exists()
    with pytest.raises(KeyError):
        store.content(queue_id)


def test_purge_removes_delivered_files_and_old_orphans(store: SqliteDb) -> None:
    [queue_id] = store.enqueue([spooled(store)], 1.0)
    job = store.claim(send_queue("GW1"), "s", 10, LEASE, 2.0) or store.claim(ROUTER, "s", 10, LEASE, 2.0)
    store.complete([Delivered(job[0], "relay", "250 ok")], 3.0)
    orphan = spooled(store).content_file  # written, never committed (a crash)
    young = spooled(store).content_file
    assert orphan is not None and young is not None
    os.utime(orphan, (1000.0, 1000.0))
    store.purge(before=1000.0 + 2 * 3600)
    assert not store.spool_path(queue_id).exists()
    assert not orphan.exists()
    assert young.exists()  # may still await its commit in another process


def test_an_orphan_file_is_never_read_as_a_message(store: SqliteDb) -> None:
    orphan = spooled(store)
    assert store.claim(ROUTER, "r", 10, LEASE, 2.0) == []
    with pytest.raises(KeyError):
        store.content(orphan.queue_id)


def test_enqueue_refuses_a_file_that_is_not_its_own_spool_file(
    store: SqliteDb, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"x")
    message = NewMessage("a@b.example", (NewRecipient("b@c.example", None),), b"", "HQ", "HQ",
                         "cli", new_queue_id(), elsewhere)
    with pytest.raises(ValueError, match="not the spool file"):
        store.enqueue([message], 1.0)
    assert blob_sizes(store) == []


def test_a_discarded_spool_file_is_gone(store: SqliteDb) -> None:
    writer = SpoolWriter(store.spool_path(new_queue_id()))
    writer.write(b"partial")
    writer.discard()
    assert list(store.spool.iterdir()) == []
