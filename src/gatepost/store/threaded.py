"""ThreadedStore: the Store interface (see `base`) for asyncio, over `sqldb.SqlDb`
connections on threads of its own.

Does: run every call on a dedicated worker thread, each thread with its own
SqlDb (opened there), so the event loop never blocks on the database or fsync.
SQLite has one thread (`SqliteStore`), PostgreSQL a few (`postgres.PgStore`).
Writes from concurrent callers are gathered: every `enqueue` waiting is
written by one transaction with one fsync, and every `complete` and `renew`
waiting by one transaction of their own; each caller awaits only its own part. While a
batch is being committed, new arrivals wait for the next one; nobody sleeps
on a timer. If a commit fails, the batch is tried again one caller at a time,
so one bad message fails only its caller (who then answers no 250).
Must not know: SQL (that is `sqldb`), SMTP, or what the messages are for.

A caller cancelled while waiting does not withdraw its write: it may still
be committed (deliver twice rather than lose).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Generic, TypeVar

from .base import (
    Changes,
    Hop,
    Job,
    MailboxEntry,
    NewMessage,
    Outcome,
    QueueEntry,
    QueueKey,
    Renewal,
)
from .clock import Clock
from .spool import read_head
from .sqldb import Complete, Renew, SqlDb
from .waiting import POLL

T = TypeVar("T")
R = TypeVar("R")
MAX_BATCH = 256
RETRIES = 5  # runs of a transaction the database rolled back on its own
READ_PAUSE = 0.2  # seconds before a read runs again on a new connection, times the try


class Gathered(Generic[T, R]):
    """Items written together: `write(items)` (one transaction) returns one
    result per item; each `add` awaits its own result."""

    def __init__(self, write: Callable[[list[T]], asyncio.Future[list[R]]], most: int) -> None:
        self._write = write
        self._most = most
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._committer: asyncio.Task[None] | None = None

    async def add(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[R] = loop.create_future()
        self._waiting.append((item, done))
        if self._committer is None or self._committer.done():
            self._committer = loop.create_task(self._commit_waiting())
        return await done

    async def drained(self) -> None:
        if self._committer is not None:
            await self._committer

    async def _commit_waiting(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self._most]
                del self._waiting[: self._most]
                await self._commit(batch)
        except asyncio.CancelledError:
            _cancel(self._waiting)
            self._waiting.clear()
            raise

    async def _commit(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._write([item for item, _ in batch])
        except asyncio.CancelledError:
            _cancel(batch)
            raise
        except Exception as exc:  # noqa: BLE001 - any failure must reach every caller
            if len(batch) > 1:  # one bad item must not fail the others: one by one
                for waiting in batch:
                    await self._commit([waiting])
                return
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            return
        for (_, done), result in zip(batch, results, strict=True):
            if not done.done():
                done.set_result(result)


class ThreadedStore:
    """`open_db` opens one SqlDb; each of `threads` worker threads opens its own."""

    poll = POLL

    def __init__(
        self, open_db: Callable[[], SqlDb], clock: Clock, max_batch: int = MAX_BATCH,
        threads: int = 1,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.clock = clock
        self._open_db = open_db
        self._local = threading.local()
        self._dbs: list[SqlDb] = []  # every one opened, to close
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gatepost-store")
        self._enqueues: Gathered[NewMessage, str] = Gathered(self._enqueue, max_batch)
        self._writes: Gathered[Renew | Complete, Renewal | list[str]] = Gathered(
            lambda work: self._call(lambda db: db.write_all(work, self.clock.wall())), max_batch
        )
        self._closing = False  # refuse new mail; what waits is still committed
        self._closed = False

    def _on_worker(self) -> SqlDb:
        db: SqlDb | None = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._open_db()
            self._dbs.append(db)
        return db

    def _forget_db(self) -> None:
        """This thread's connection failed: close it; the next call opens another."""
        db = getattr(self._local, "db", None)
        self._local.db = None
        if db is not None:
            self._dbs.remove(db)
            with contextlib.suppress(Exception):
                db.close()

    def _run(self, work: Callable[[SqlDb], T], read: bool = False) -> T:
        """`work` on this thread's connection. A transaction the database rolled
        back on its own (a deadlock) is run again; a connection that failed is
        closed, and the error raised (a commit may or may not have happened),
        except for a `read`, which is run again on a new connection, a moment
        later (a database restarting is back within seconds)."""
        for tries in range(1, RETRIES + 1):
            db: SqlDb | None = None
            try:
                db = self._on_worker()
                return work(db)
            except Exception as error:
                broken = db is None or db.broken(error)  # None: it could not connect
                if db is not None and broken:
                    self._forget_db()
                again = (db is not None and db.transient(error)) or (read and broken)
                if not again or tries == RETRIES:
                    raise
                if read and broken:
                    time.sleep(READ_PAUSE * tries)
        raise AssertionError("unreachable")

    def _call(self, work: Callable[[SqlDb], T], read: bool = False) -> asyncio.Future[T]:
        if self._closed:
            raise RuntimeError("the store is closed")
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, self._run, work, read)

    # -- intake -----------------------------------------------------------------

    async def enqueue(self, message: NewMessage) -> str:
        if not message.recipients:
            raise ValueError("a message needs at least one recipient")
        if self._closing:
            raise RuntimeError("the store is closed")
        return await self._enqueues.add(message)

    def _enqueue(self, messages: list[NewMessage]) -> asyncio.Future[list[str]]:
        return self._call(lambda db: db.enqueue(messages, self.clock.wall()))

    async def spool_path(self, queue_id: str) -> Path:
        return await self._call(lambda db: db.spool_path(queue_id))

    # -- workers ----------------------------------------------------------------

    async def claim(self, queue: str, owner: str, limit: int, lease: float) -> list[Job]:
        return await self._call(lambda db: db.claim(queue, owner, limit, lease, self.clock.wall()))

    async def renew(self, jobs: Sequence[Job], lease: float) -> Renewal:
        renewal = await self._writes.add(Renew(jobs, lease))
        assert isinstance(renewal, Renewal)
        return renewal

    async def complete(
        self,
        outcomes: Sequence[Outcome],
        new: Sequence[NewMessage] = (),
        warnings: Sequence[tuple[str, NewMessage]] = (),
    ) -> list[str]:
        ids = await self._writes.add(Complete(outcomes, new, warnings))
        assert isinstance(ids, list)
        return ids

    async def content(self, message_id: str) -> bytes:
        return await self._call(lambda db: db.content(message_id), read=True)

    async def content_head(self, message_id: str) -> bytes:
        return await self._call(lambda db: read_head(db.open_content(message_id)), read=True)

    async def open_content(self, message_id: str) -> BinaryIO:
        return await self._call(lambda db: db.open_content(message_id), read=True)

    async def lead(self, duty: str, owner: str, term: float) -> bool:
        return await self._call(lambda db: db.lead(duty, owner, term))

    async def resign(self, duty: str, owner: str) -> None:
        await self._call(lambda db: db.resign(duty, owner))

    def watch(self, queue: str, wakeup: asyncio.Event) -> None:
        """Other processes' commits are not heard of here: `poll` finds them."""

    async def due(self, queue: str) -> bool:
        return await self._call(lambda db: db.due(queue, self.clock.wall()))

    async def heartbeat(self, name: str, owner: str) -> None:
        await self._call(lambda db: db.heartbeat(name, owner))

    async def forget(self, name: str, owner: str) -> None:
        await self._call(lambda db: db.forget(name, owner))

    async def alive(self, within: float) -> set[str]:
        return await self._call(lambda db: db.alive(within))

    async def owners(self, queue: str) -> set[str]:
        return await self._call(lambda db: db.owners(queue))

    async def release_owner(self, queue: str, owner: str) -> int:
        return await self._call(lambda db: db.release_owner(queue, owner, self.clock.wall()))

    async def requeue(
        self, queue: str, origins: Sequence[str], dead: Sequence[str] = (), within: float = 0.0
    ) -> int:
        now = self.clock.wall()
        return await self._call(lambda db: db.requeue(queue, origins, now, dead, within))

    async def purge(self, final_retention: float, trace_retention: float) -> int:
        def purge(db: SqlDb) -> int:
            now = self.clock.wall()
            return db.purge(now - final_retention, now, now - trace_retention)

        return await self._call(purge)

    # -- mailboxes --------------------------------------------------------------

    async def mailbox(self, mailbox: str) -> list[MailboxEntry]:
        return await self._call(lambda db: db.mailbox(mailbox))

    async def mailbox_content(self, mailbox: str, entry_id: int) -> bytes | None:
        return await self._call(lambda db: db.mailbox_content(mailbox, entry_id), read=True)

    async def open_mailbox_content(self, mailbox: str, entry_id: int) -> BinaryIO | None:
        return await self._call(lambda db: db.open_mailbox_content(mailbox, entry_id), read=True)

    # -- admin ------------------------------------------------------------------

    async def queue(
        self, states: Sequence[str] = (), limit: int = 1000, after: QueueKey | None = None
    ) -> list[QueueEntry]:
        return await self._call(lambda db: db.queue(states, limit, after))

    async def counts(self) -> dict[str, int]:
        return await self._call(lambda db: db.counts())

    async def pending(self, queue: str) -> int:
        return await self._call(lambda db: db.pending(queue, self.clock.wall()))

    async def hops(self, message_id: str) -> list[Hop]:
        return await self._call(lambda db: db.hops(message_id))

    async def set_state(self, message_ids: Sequence[str], action: str) -> Changes:
        return await self._call(lambda db: db.set_state(message_ids, action, self.clock.wall()))

    async def check(self) -> str:
        return await self._call(lambda db: db.check())

    async def version(self) -> int:
        return await self._call(lambda db: db.version())

    async def aclose(self) -> None:
        """Commit what is waiting, close the connections, stop the threads."""
        if self._closing:
            return
        self._closing = True
        await self._enqueues.drained()
        await self._writes.drained()
        loop = asyncio.get_running_loop()
        self._closed = True
        await loop.run_in_executor(self._executor, self._close_all)
        self._executor.shutdown(wait=False)

    def _close_all(self) -> None:
        while self._dbs:
            with contextlib.suppress(Exception):
                self._dbs.pop().close()


def _cancel(waiting: Sequence[tuple[object, asyncio.Future[T]]]) -> None:
    for _, done in waiting:
        done.cancel()
