"""The 250 comes only after the message is committed, a failed commit gets a
4xx and never a 250, and a full disk or database answers 452 4.3.1 without
corrupting the store, with normal service once there is room again."""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from gatepost.store import NewMessage, SqliteDb, SqliteStore, Store
from hostile import ALICE, OUTSIDE, Client, Receiver, served_next, topology

FULL = "452 4.3.1 Insufficient system storage"


class Intercepted:
    """The async store's SqliteDb, whose enqueue (one commit for every message
    waiting) can be held after its commit, or made to fail."""

    def __init__(self, inner: SqliteDb) -> None:
        self.inner = inner
        self.committed = threading.Event()  # a commit happened and is being held
        self.release = threading.Event()
        self.release.set()
        self.failure: Exception | None = None
        self.ids: list[str] = []
        self.max_pages: int | None = None

    def enqueue(self, messages: Sequence[NewMessage], now: float) -> list[str]:
        if self.failure is not None:
            raise self.failure
        if self.max_pages is not None:
            self.inner._conn.execute(f"PRAGMA max_page_count = {self.max_pages}")
        ids = self.inner.enqueue(messages, now)
        self.ids += ids
        self.committed.set()
        self.release.wait(30)
        return ids

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class InterceptedStore(SqliteStore):
    """The async SqliteStore, its database on its worker thread `Intercepted`."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.intercepted: list[Intercepted] = []
        self._open_db = self._intercepted

    def _intercepted(self) -> SqliteDb:
        self.intercepted.append(Intercepted(SqliteDb(self.path, self.clock)))
        return self.intercepted[-1]  # type: ignore[return-value]


def start(tmp: Path) -> tuple[Receiver, Intercepted]:
    topo = topology(tmp)
    made: list[InterceptedStore] = []

    def factory() -> Store:
        made.append(InterceptedStore(Path(topo.store.removeprefix("sqlite:"))))
        return made[0]

    receiver = Receiver(topo, store_factory=factory)
    receiver.call(receiver.store.counts())  # the worker thread has made the database
    return receiver, made[0].intercepted[0]


@pytest.fixture
def intercepted(tmp_path: Path) -> Iterator[tuple[Receiver, Intercepted]]:
    receiver, store = start(tmp_path)
    yield receiver, store
    store.release.set()
    receiver.stop()


def send_message(client: Client, body: bytes = b"hello") -> None:
    """Everything up to the final dot, whose reply the caller reads."""
    client.hello()
    assert client.command(f"MAIL FROM:<{OUTSIDE}>") == "250 2.1.0 Ok"
    assert client.command(f"RCPT TO:<{ALICE}>") == "250 2.1.5 Ok"
    assert client.command("DATA").startswith("354 ")
    client.send(b"Subject: durable\r\n\r\n" + body + b"\r\n.\r\n")


def test_250_is_sent_only_after_the_commit_returned(
    intercepted: tuple[Receiver, Intercepted],
) -> None:
    receiver, store = intercepted
    store.release.clear()
    client = receiver.connect()
    send_message(client)
    assert store.committed.wait(10), "the message never reached the store"
    client.sock.settimeout(0.5)
    with pytest.raises(socket.timeout):
        client.sock.recv(100)  # committed, but enqueue has not returned: no reply yet
    client.sock.settimeout(10)
    store.release.set()
    reply = client.reply()
    assert reply == f"250 2.0.0 Ok: queued as {store.ids[0]}"
    with sqlite3.connect(receiver.db) as db:  # another connection sees it at once
        assert db.execute("SELECT id FROM messages").fetchall() == [(store.ids[0],)]


@pytest.mark.parametrize(
    ("error", "reply"),
    [
        (sqlite3.OperationalError("disk I/O error"), "451 4.3.0 Error: queue file write error"),
        (sqlite3.OperationalError("database or disk is full"), FULL),
        (sqlite3.OperationalError("database is locked"), "451 4.3.0 Error: queue file write error"),
        (OSError(errno.ENOSPC, "No space left on device"), FULL),
        (RuntimeError("the store is closed"), "451 4.3.0 Error: queue file write error"),
    ],
)
def test_a_failed_commit_gets_a_4xx_never_a_250(
    intercepted: tuple[Receiver, Intercepted], error: Exception, reply: str
) -> None:
    receiver, store = intercepted
    store.failure = error
    clients = [receiver.connect() for _ in range(3)]  # several sessions, one batch or more
    for client in clients:
        send_message(client)
    assert [client.reply() for client in clients] == [reply] * 3
    assert receiver.stored() == []
    store.failure = None
    served_next(receiver)


def fill(directory: Path) -> Path:
    """Fill the file system under `directory`; returns the filler file."""
    filler = directory / "filler"
    handle = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(handle, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(handle)
    return filler


def until_full(receiver: Receiver) -> tuple[int, str]:
    """Send 20 kB messages until one is refused; returns (accepted, refusal)."""
    for accepted in range(200):
        client = receiver.connect()
        send_message(client, b"x" * 998 + b"\r\n" * 20)
        reply = client.reply()
        client.close()
        if not reply.startswith("250 "):
            return accepted, reply
    raise AssertionError("the store never filled up")


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def test_full_database_gets_452_then_service_resumes(
    intercepted: tuple[Receiver, Intercepted],
) -> None:
    receiver, store = intercepted
    with sqlite3.connect(receiver.db) as db:
        pages = int(db.execute("PRAGMA page_count").fetchone()[0])
    store.max_pages = pages + 40
    accepted, refusal = until_full(receiver)
    assert refusal == FULL
    assert len(receiver.stored()) == accepted
    assert integrity(receiver.db) == "ok"
    store.max_pages = 1_000_000
    served_next(receiver)


def tmpfs(directory: Path) -> bool:
    if os.geteuid() != 0:
        return False
    command = ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(directory)]
    return subprocess.run(command, capture_output=True, check=False).returncode == 0


def test_full_disk_gets_452_then_service_resumes(tmp_path: Path) -> None:
    """A real full file system: a 2 MB tmpfs (needs root; the full-database test
    above covers the same path through SQLite's max_page_count everywhere)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not tmpfs(disk):
        pytest.skip("cannot mount a tmpfs here (needs root); see the max_page_count test")
    try:
        receiver, _ = start(disk)
        try:
            filler = fill(disk)
            accepted, refusal = until_full(receiver)
            assert refusal == FULL
            assert integrity(receiver.db) == "ok"
            assert len(receiver.stored()) == accepted
            filler.unlink()
            served_next(receiver)
            assert integrity(receiver.db) == "ok"
        finally:
            receiver.stop()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
