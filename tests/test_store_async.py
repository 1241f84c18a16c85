"""AsyncStore: group commit for enqueue, and one worker thread for every call."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gatepost.store import ROUTER, AsyncStore, Delivered, NewMessage, NewRecipient, SqliteStore


class RecordingStore:
    """Wraps a real store; records enqueue batch sizes and the calling threads.
    `gate`, when given, holds every enqueue until it is set; `failures` makes
    that many enqueue calls raise before touching the store."""

    def __init__(self, inner: SqliteStore, gate: threading.Event | None = None) -> None:
        self.inner = inner
        self.gate = gate
        self.started = threading.Event()
        self.batches: list[int] = []
        self.threads: set[int] = set()
        self.failures = 0
        self.closed = False

    def enqueue(self, messages: Sequence[NewMessage], now: float) -> list[str]:
        self.threads.add(threading.get_ident())
        self.batches.append(len(messages))
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.failures:
            self.failures -= 1
            raise OSError("disk full")
        return self.inner.enqueue(messages, now)

    def close(self) -> None:
        self.closed = True
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        self.threads.add(threading.get_ident())
        return getattr(self.inner, name)


class Harness:
    def __init__(self, tmp_path: Path, gate: threading.Event | None = None) -> None:
        self.path = tmp_path / "q.db"
        self.gate = gate
        self.made: list[RecordingStore] = []
        self.factory_threads: list[int] = []

    def factory(self) -> Any:
        self.factory_threads.append(threading.get_ident())
        self.made.append(RecordingStore(SqliteStore(self.path), self.gate))
        return self.made[-1]

    @property
    def store(self) -> RecordingStore:
        [only] = self.made
        return only


def message(content: bytes, mailbox: str | None = None) -> NewMessage:
    rcpt = NewRecipient(mailbox or "bob@ext.org", mailbox)
    return NewMessage("alice@example.com", (rcpt,), content, "HQ", "HQ", "gateway:GW1")


def test_concurrent_enqueues_share_one_commit_and_get_their_own_ids(tmp_path: Path) -> None:
    harness = Harness(tmp_path)

    async def main() -> list[str]:
        store = AsyncStore(harness.factory)
        contents = [f"message {n}".encode() for n in range(50)]
        ids = await asyncio.gather(*(store.enqueue(message(c)) for c in contents))
        assert [await store.content(i) for i in ids] == contents
        await store.aclose()
        return ids

    ids = asyncio.run(main())
    assert len(set(ids)) == 50
    assert sum(harness.store.batches) == 50
    assert len(harness.store.batches) <= 3


def test_arrivals_during_a_commit_form_the_next_batch(tmp_path: Path) -> None:
    gate = threading.Event()
    harness = Harness(tmp_path, gate)

    async def main() -> None:
        store = AsyncStore(harness.factory)
        first = asyncio.create_task(store.enqueue(message(b"first")))
        while not harness.made or not harness.made[0].started.is_set():
            await asyncio.sleep(0.001)
        later = [asyncio.create_task(store.enqueue(message(b"%d" % n))) for n in range(20)]
        await asyncio.sleep(0.01)
        assert not first.done()  # the 250 waits for the commit
        gate.set()
        await asyncio.gather(first, *later)
        await store.aclose()

    asyncio.run(main())
    assert harness.store.batches == [1, 20]


def test_max_batch_caps_one_commit(tmp_path: Path) -> None:
    harness = Harness(tmp_path)

    async def main() -> None:
        store = AsyncStore(harness.factory, max_batch=8)
        await asyncio.gather(*(store.enqueue(message(b"x")) for _ in range(20)))
        await store.aclose()

    asyncio.run(main())
    assert harness.store.batches == [8, 8, 4]


def test_a_failed_commit_raises_in_every_waiting_caller(tmp_path: Path) -> None:
    harness = Harness(tmp_path)

    async def main() -> tuple[list[object], str]:
        store = AsyncStore(harness.factory)
        await store.counts()  # create the store so its failure can be armed
        harness.store.failures = 11  # the batch, then each message alone
        results = await asyncio.gather(
            *(store.enqueue(message(b"lost")) for _ in range(10)), return_exceptions=True
        )
        after = await store.enqueue(message(b"kept"))
        counts = await store.counts()
        assert counts["incoming"] == 1
        await store.aclose()
        return results, after

    results, after = asyncio.run(main())
    assert len(results) == 10
    assert all(isinstance(r, OSError) for r in results)
    assert isinstance(after, str)


def test_a_batch_that_fails_once_is_committed_one_by_one(tmp_path: Path) -> None:
    harness = Harness(tmp_path)

    async def main() -> list[object]:
        store = AsyncStore(harness.factory)
        await store.counts()
        harness.store.failures = 1  # only the batch's commit fails
        results = await asyncio.gather(
            *(store.enqueue(message(b"kept")) for _ in range(10)), return_exceptions=True
        )
        assert (await store.counts())["incoming"] == 10
        await store.aclose()
        return results

    results = asyncio.run(main())
    assert all(isinstance(r, str) for r in results)
    assert harness.store.batches[0] == 10 and set(harness.store.batches[1:]) == {1}


def test_recipientless_message_fails_alone(tmp_path: Path) -> None:
    harness = Harness(tmp_path)

    async def main() -> list[object]:
        store = AsyncStore(harness.factory)
        bad = NewMessage("a@b", (), b"x", "HQ", "HQ", "cli")
        results = await asyncio.gather(
            store.enqueue(message(b"ok")), store.enqueue(bad), return_exceptions=True
        )
        await store.aclose()
        return results

    good, bad = asyncio.run(main())
    assert isinstance(good, str) and isinstance(bad, ValueError)


def test_every_store_call_runs_on_one_worker_thread(tmp_path: Path) -> None:
    harness = Harness(tmp_path)

    async def main() -> None:
        store = AsyncStore(harness.factory)
        message_id = await store.enqueue(message(b"hi", mailbox="HQ/carol"))
        [job] = await store.claim(ROUTER, "router", 10, 60.0, now=1e12)
        assert job.message_id == message_id
        assert await store.pending(ROUTER, now=1e12) == 1
        await store.complete([Delivered(job)], now=1e12)
        [entry] = await store.mailbox("HQ/carol")
        assert await store.mailbox_content("HQ/carol", entry.entry_id) == b"hi"
        assert [h.event for h in await store.hops(message_id)] == ["received", "delivered"]
        assert await store.queue() == []
        await store.aclose()

    asyncio.run(main())
    threads = harness.store.threads | set(harness.factory_threads)
    assert len(threads) == 1
    assert threads != {threading.get_ident()}


def test_aclose_commits_waiting_mail_then_closes(tmp_path: Path) -> None:
    harness = Harness(tmp_path)

    async def main() -> AsyncStore:
        store = AsyncStore(harness.factory)
        pending = [asyncio.create_task(store.enqueue(message(b"late"))) for _ in range(5)]
        await asyncio.sleep(0)
        await store.aclose()
        assert all(isinstance(t.result(), str) for t in pending)
        return store

    store = asyncio.run(main())
    assert harness.store.closed
    check = SqliteStore(harness.path)
    assert check.counts()["incoming"] == 5
    check.close()
    with pytest.raises(RuntimeError):
        asyncio.run(store.counts())
