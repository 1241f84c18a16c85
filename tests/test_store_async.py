"""SqliteStore's group commit: concurrent enqueues share one transaction (one
fsync), and so do concurrent completes; each caller gets its own result, a
failed commit reaches every caller waiting for it, one bad caller fails
alone, and aclose commits what waits. Every call runs on one worker thread.

`Recorder` wraps SqliteDb's writes (what one transaction does) to see the
batches, hold a commit open (`gate`) or make it fail (`failures`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from gatepost.store import (
    ROUTER,
    Bounced,
    Deferred,
    Delivered,
    Job,
    NewMessage,
    NewRecipient,
    SqliteDb,
    SqliteStore,
)
from gatepost.store.sqldb import SqlDb

LEASE = 60.0


class Recorder:
    """Patches SqliteDb: records each enqueue batch and each batch of completes
    and renewals (`write_all`, recorded as "complete"), by size, and
    the thread of every call; `gate`, when set up, holds each write until it
    is set; `failures[write]` makes that many of those writes raise first."""

    WRITES = ("enqueue", "complete")
    RECORDED_AS: ClassVar[dict[str, str]] = {"enqueue": "enqueue", "write_all": "complete"}

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batches: dict[str, list[int]] = {write: [] for write in self.WRITES}
        self.failures: dict[str, int] = {write: 0 for write in self.WRITES}
        self.threads: set[int] = set()
        self.gate: threading.Event | None = None
        self.started = threading.Event()
        self.fsyncs = 0  # transactions committed with synchronous=FULL
        own = {**vars(SqlDb), **vars(SqliteDb)}  # its methods and those it inherits
        for name in [n for n in own if not n.startswith("__")]:
            if callable(getattr(SqliteDb, name)) and not isinstance(own[name], staticmethod):
                monkeypatch.setattr(SqliteDb, name, self._wrap(name, getattr(SqliteDb, name)))
        monkeypatch.setattr(SqliteDb, "__init__", self._wrap("__init__", SqliteDb.__init__))

    def _wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(db: SqliteDb, *args: Any, **kwargs: Any) -> Any:
            self.threads.add(threading.get_ident())
            if name in self.RECORDED_AS:
                return self._write(self.RECORDED_AS[name], method, db, *args, **kwargs)
            return method(db, *args, **kwargs)

        return call

    def _write(self, name: str, method: Callable[..., Any], db: SqliteDb, *args: Any) -> Any:
        items = args[0]  # enqueue(messages, now); write_all(work, now): one item per caller
        self.batches[name].append(len(items))
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.failures[name]:
            self.failures[name] -= 1
            raise OSError("disk full")
        seen: list[str] = []
        db._conn.set_trace_callback(seen.append)
        try:
            return method(db, *args)
        finally:
            db._conn.set_trace_callback(None)
            self.fsyncs += seen.count("PRAGMA synchronous = FULL")


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    return Recorder(monkeypatch)


def message(content: bytes, mailbox: str | None = None) -> NewMessage:
    rcpt = NewRecipient(mailbox or "bob@ext.org", mailbox)
    return NewMessage("alice@example.com", (rcpt,), content, "HQ", "HQ", "gateway:GW1")


def bounce(content: bytes) -> NewMessage:
    rcpt = NewRecipient("alice@example.com", None)
    return NewMessage("", (rcpt,), content, "HQ", "HQ", "bounce")


async def claimed(store: SqliteStore, count: int) -> list[Job]:
    await asyncio.gather(*(store.enqueue(message(b"%d" % n)) for n in range(count)))
    jobs = await store.claim(ROUTER, "w", count, LEASE)
    assert len(jobs) == count
    return jobs


# -- enqueue ---------------------------------------------------------------------------


def test_concurrent_enqueues_share_one_commit_and_get_their_own_ids(
    tmp_path: Path, recorder: Recorder
) -> None:
    async def main() -> list[str]:
        store = SqliteStore(tmp_path / "q.db")
        contents = [f"message {n}".encode() for n in range(50)]
        ids = await asyncio.gather(*(store.enqueue(message(c)) for c in contents))
        assert [await store.content(i) for i in ids] == contents
        await store.aclose()
        return ids

    ids = asyncio.run(main())
    assert len(set(ids)) == 50
    assert sum(recorder.batches["enqueue"]) == 50
    assert len(recorder.batches["enqueue"]) <= 3
    assert recorder.fsyncs == len(recorder.batches["enqueue"])  # one fsync per batch


def test_arrivals_during_a_commit_form_the_next_batch(tmp_path: Path, recorder: Recorder) -> None:
    recorder.gate = threading.Event()

    async def main() -> None:
        store = SqliteStore(tmp_path / "q.db")
        first = asyncio.create_task(store.enqueue(message(b"first")))
        while not recorder.started.is_set():
            await asyncio.sleep(0.001)
        later = [asyncio.create_task(store.enqueue(message(b"%d" % n))) for n in range(20)]
        await asyncio.sleep(0.01)
        assert not first.done()  # the 250 waits for the commit
        assert recorder.gate is not None
        recorder.gate.set()
        await asyncio.gather(first, *later)
        await store.aclose()

    asyncio.run(main())
    assert recorder.batches["enqueue"] == [1, 20]


def test_max_batch_caps_one_commit(tmp_path: Path, recorder: Recorder) -> None:
    async def main() -> None:
        store = SqliteStore(tmp_path / "q.db", max_batch=8)
        await asyncio.gather(*(store.enqueue(message(b"x")) for _ in range(20)))
        await store.aclose()

    asyncio.run(main())
    assert recorder.batches["enqueue"] == [8, 8, 4]


def test_a_failed_enqueue_commit_raises_in_every_waiting_caller(
    tmp_path: Path, recorder: Recorder
) -> None:
    async def main() -> tuple[list[object], str]:
        store = SqliteStore(tmp_path / "q.db")
        recorder.failures["enqueue"] = 11  # the batch, then each message alone
        results = await asyncio.gather(
            *(store.enqueue(message(b"lost")) for _ in range(10)), return_exceptions=True
        )
        after = await store.enqueue(message(b"kept"))
        assert (await store.counts())["incoming"] == 1
        await store.aclose()
        return results, after

    results, after = asyncio.run(main())
    assert len(results) == 10
    assert all(isinstance(r, OSError) for r in results)
    assert isinstance(after, str)


def test_an_enqueue_batch_that_fails_once_is_committed_one_by_one(
    tmp_path: Path, recorder: Recorder
) -> None:
    async def main() -> list[object]:
        store = SqliteStore(tmp_path / "q.db")
        recorder.failures["enqueue"] = 1  # only the batch's commit fails
        results = await asyncio.gather(
            *(store.enqueue(message(b"kept")) for _ in range(10)), return_exceptions=True
        )
        assert (await store.counts())["incoming"] == 10
        await store.aclose()
        return results

    results = asyncio.run(main())
    assert all(isinstance(r, str) for r in results)
    assert recorder.batches["enqueue"][0] == 10 and set(recorder.batches["enqueue"][1:]) == {1}


def test_a_recipientless_message_fails_alone(tmp_path: Path, recorder: Recorder) -> None:
    async def main() -> list[object]:
        store = SqliteStore(tmp_path / "q.db")
        bad = NewMessage("a@b", (), b"x", "HQ", "HQ", "cli")
        results = await asyncio.gather(
            store.enqueue(message(b"ok")), store.enqueue(bad), return_exceptions=True
        )
        await store.aclose()
        return results

    good, bad = asyncio.run(main())
    assert isinstance(good, str) and isinstance(bad, ValueError)


# -- complete ----------------------------------------------------------------------------


def test_concurrent_completes_share_one_transaction_and_get_their_own_ids(
    tmp_path: Path, recorder: Recorder
) -> None:
    async def main() -> None:
        store = SqliteStore(tmp_path / "q.db")
        jobs = await claimed(store, 30)
        returned = await asyncio.gather(
            *(store.complete([Bounced(job, "550 no")], [bounce(b"dsn %d" % n)])
              for n, job in enumerate(jobs))
        )  # fmt: skip
        assert [len(ids) for ids in returned] == [1] * 30
        contents = [await store.content(ids[0]) for ids in returned]
        assert contents == [b"dsn %d" % n for n in range(30)]  # each caller's own bounce
        assert (await store.counts())["bounced"] == 30
        await store.aclose()

    asyncio.run(main())
    assert sum(recorder.batches["complete"]) == 30
    assert len(recorder.batches["complete"]) <= 3


def test_completes_arriving_during_a_commit_form_the_next_batch(
    tmp_path: Path, recorder: Recorder
) -> None:
    async def main() -> None:
        store = SqliteStore(tmp_path / "q.db")
        first, *rest = await claimed(store, 11)
        recorder.gate, recorder.started = threading.Event(), threading.Event()
        task = asyncio.create_task(store.complete([Delivered(first)]))
        while not recorder.started.is_set():
            await asyncio.sleep(0.001)
        later = [asyncio.create_task(store.complete([Delivered(job)])) for job in rest]
        await asyncio.sleep(0.01)
        assert not task.done()
        recorder.gate.set()
        await asyncio.gather(task, *later)
        assert (await store.counts())["delivered"] == 11
        await store.aclose()

    asyncio.run(main())
    assert recorder.batches["complete"] == [1, 10]


def test_a_failed_complete_commit_raises_in_every_waiting_caller(
    tmp_path: Path, recorder: Recorder
) -> None:
    async def main() -> list[object]:
        store = SqliteStore(tmp_path / "q.db")
        jobs = await claimed(store, 5)
        recorder.failures["complete"] = 6  # the batch, then each caller alone
        results = await asyncio.gather(
            *(store.complete([Delivered(job)]) for job in jobs), return_exceptions=True
        )
        assert (await store.counts())["active"] == 5  # nothing was applied
        await store.aclose()
        return results

    results = asyncio.run(main())
    assert len(results) == 5 and all(isinstance(r, OSError) for r in results)


def test_a_bad_complete_fails_alone(tmp_path: Path, recorder: Recorder) -> None:
    async def main() -> list[object]:
        store = SqliteStore(tmp_path / "q.db")
        good, bad = await claimed(store, 2)
        broken = NewMessage("", (), b"x", "HQ", "HQ", "bounce")
        results = await asyncio.gather(
            store.complete([Bounced(good, "550 no")], [bounce(b"dsn")]),
            store.complete([Bounced(bad, "550 no")], [broken]),
            return_exceptions=True,
        )
        assert (await store.counts())["bounced"] == 1  # the bad caller's outcome is not applied
        [entry] = await store.queue(states=["active"])
        assert entry.message_id == bad.message_id
        await store.aclose()
        return results

    good, bad = asyncio.run(main())
    assert isinstance(good, list) and len(good) == 1
    assert isinstance(bad, ValueError)


@pytest.mark.parametrize("stale_first", [True, False])
def test_stale_and_fresh_outcomes_in_one_batch(
    tmp_path: Path, recorder: Recorder, stale_first: bool
) -> None:
    """A lost attempt's deferral and the new attempt's, committed together: only
    the new attempt's counts, whatever their order in the batch."""

    async def main() -> None:
        store = SqliteStore(tmp_path / "q.db")
        [job] = await claimed(store, 1)
        stale = dataclasses.replace(job, token="an attempt that lost its lease")
        both = [Deferred(stale, 1.0, "451 stale"), Deferred(job, 2.0, "452 fresh")]
        if not stale_first:
            both.reverse()
        await asyncio.gather(*(store.complete([outcome]) for outcome in both))
        [entry] = await store.queue()
        assert (entry.state, entry.attempts, entry.last_reply) == ("deferred", 1, "452 fresh")
        await store.aclose()

    asyncio.run(main())
    assert recorder.batches["complete"] == [2]  # one transaction for both


# -- the worker thread and closing ---------------------------------------------------------


def test_every_store_call_runs_on_one_worker_thread(tmp_path: Path, recorder: Recorder) -> None:
    async def main() -> None:
        store = SqliteStore(tmp_path / "q.db")
        message_id = await store.enqueue(message(b"hi", mailbox="HQ/carol"))
        [job] = await store.claim(ROUTER, "router", 10, LEASE)
        assert job.message_id == message_id
        assert await store.pending(ROUTER) == 1
        assert (await store.renew([job], LEASE)).lost([job]) == []
        await store.complete([Delivered(job)])
        [entry] = await store.mailbox("HQ/carol")
        assert await store.mailbox_content("HQ/carol", entry.entry_id) == b"hi"
        assert [h.event for h in await store.hops(message_id)] == ["received", "delivered"]
        assert await store.queue() == []
        await store.aclose()

    asyncio.run(main())
    assert len(recorder.threads) == 1
    assert recorder.threads != {threading.get_ident()}


def test_aclose_commits_waiting_writes_then_closes(tmp_path: Path, recorder: Recorder) -> None:
    path = tmp_path / "q.db"

    async def main() -> SqliteStore:
        store = SqliteStore(path)
        jobs = await claimed(store, 3)
        enqueues = [asyncio.create_task(store.enqueue(message(b"late"))) for _ in range(5)]
        completes = [asyncio.create_task(store.complete([Delivered(job)])) for job in jobs]
        await asyncio.sleep(0)
        await store.aclose()
        assert all(isinstance(t.result(), str) for t in enqueues)
        assert all(t.result() == [] for t in completes)
        with pytest.raises(RuntimeError):
            await store.counts()
        with pytest.raises(RuntimeError):
            await store.enqueue(message(b"too late"))
        return store

    asyncio.run(main())

    async def check() -> dict[str, int]:
        again = SqliteStore(path)
        try:
            return await again.counts()
        finally:
            await again.aclose()

    counts = asyncio.run(check())
    assert (counts["incoming"], counts["delivered"]) == (5, 3)
