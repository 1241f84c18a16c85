"""AsyncStore: the Store for asyncio code, with group commit for enqueue.

Does: run every call of one Store on ONE dedicated worker thread (the store
is created there, by the factory), so the event loop never blocks on SQLite
or fsync. Concurrent `enqueue` calls are gathered: one `store.enqueue(batch)`
call (one transaction, one fsync) writes them all, and each caller awaits
only the future of its own message. While a batch is being committed, new
arrivals wait for the next one; nobody sleeps on a timer. If a commit fails,
every caller of that batch gets the exception (so none answers 250).
Must not know: SQL, SMTP, or what the messages are for.

A caller cancelled while waiting does not withdraw its message: it may still
be committed (deliver twice rather than lose).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, TypeVar

from .base import Hop, Job, MailboxEntry, NewMessage, Outcome, QueueEntry, QueueKey, Store
from .spool import read_head

T = TypeVar("T")
Waiting = tuple[NewMessage, "asyncio.Future[str]"]
MAX_BATCH = 256


class AsyncStore:
    def __init__(
        self,
        store_factory: Callable[[], Store],
        max_batch: int = MAX_BATCH,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._factory = store_factory
        self._store: Store | None = None  # touched only on the worker thread
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gatepost-store")
        self._max_batch = max_batch
        self._clock = clock
        self._waiting: list[Waiting] = []
        self._committer: asyncio.Task[None] | None = None
        self._closing = False  # refuse new mail; what waits is still committed
        self._closed = False

    # -- the worker thread ----------------------------------------------------

    def _on_worker(self) -> Store:
        if self._store is None:
            self._store = self._factory()
        return self._store

    async def _call(self, work: Callable[[Store], T]) -> T:
        if self._closed:
            raise RuntimeError("AsyncStore is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: work(self._on_worker()))

    # -- group commit -----------------------------------------------------------

    async def enqueue(self, message: NewMessage) -> str:
        """Store one message durably; returns its queue id once committed."""
        if not message.recipients:
            raise ValueError("a message needs at least one recipient")
        if self._closing:
            raise RuntimeError("AsyncStore is closed")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str] = loop.create_future()
        self._waiting.append((message, done))
        if self._committer is None or self._committer.done():
            self._committer = loop.create_task(self._commit_waiting())
        return await done

    async def _commit_waiting(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                await self._commit(batch)
        except asyncio.CancelledError:
            _cancel(self._waiting)
            self._waiting.clear()
            raise

    async def _commit(self, batch: list[Waiting]) -> None:
        messages = [message for message, _ in batch]
        try:
            ids = await self._call(lambda store: store.enqueue(messages, self._clock()))
        except asyncio.CancelledError:
            _cancel(batch)
            raise
        except Exception as exc:  # noqa: BLE001 - any failure must reach every caller
            if len(batch) > 1:  # one bad message must not fail the others: one by one
                for waiting in batch:
                    await self._commit([waiting])
                return
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            return
        for (_, done), message_id in zip(batch, ids, strict=True):
            if not done.done():
                done.set_result(message_id)

    # -- the rest of the Store, one call each -------------------------------------

    async def claim(
        self, queue: str, owner: str, limit: int, lease: float, now: float
    ) -> list[Job]:
        return await self._call(lambda store: store.claim(queue, owner, limit, lease, now))

    async def complete(
        self,
        outcomes: Sequence[Outcome],
        now: float,
        new: Sequence[NewMessage] = (),
        warnings: Sequence[tuple[str, NewMessage]] = (),
    ) -> list[str]:
        return await self._call(lambda store: store.complete(outcomes, now, new, warnings))

    async def content(self, message_id: str) -> bytes:
        return await self._call(lambda store: store.content(message_id))

    async def content_head(self, message_id: str) -> bytes:
        """The start of a message (its header, for a report)."""
        return await self._call(lambda store: read_head(store.open_content(message_id)))

    async def open_content(self, message_id: str) -> BinaryIO:
        return await self._call(lambda store: store.open_content(message_id))

    async def spool_path(self, queue_id: str) -> Path:
        return await self._call(lambda store: store.spool_path(queue_id))

    async def queue(
        self, states: Sequence[str] = (), limit: int = 1000, after: QueueKey | None = None
    ) -> list[QueueEntry]:
        return await self._call(lambda store: store.queue(states, limit, after))

    async def mailbox(self, mailbox: str) -> list[MailboxEntry]:
        return await self._call(lambda store: store.mailbox(mailbox))

    async def mailbox_content(self, mailbox: str, entry_id: int) -> bytes | None:
        return await self._call(lambda store: store.mailbox_content(mailbox, entry_id))

    async def hops(self, message_id: str) -> list[Hop]:
        return await self._call(lambda store: store.hops(message_id))

    async def set_state(self, message_ids: Sequence[str], state: str, now: float) -> int:
        return await self._call(lambda store: store.set_state(message_ids, state, now))

    async def counts(self) -> dict[str, int]:
        return await self._call(lambda store: store.counts())

    async def pending(self, queue: str, now: float | None = None) -> int:
        return await self._call(lambda store: store.pending(queue, now))

    async def due(self, queue: str, now: float) -> bool:
        return await self._call(lambda store: store.due(queue, now))

    async def owners(self, queue: str) -> set[str]:
        return await self._call(lambda store: store.owners(queue))

    async def release_owner(self, queue: str, owner: str, now: float) -> int:
        return await self._call(lambda store: store.release_owner(queue, owner, now))

    async def check(self) -> str:
        return await self._call(lambda store: store.check())

    async def version(self) -> int:
        return await self._call(lambda store: store.version())

    async def heartbeat(self, name: str, owner: str, now: float) -> None:
        await self._call(lambda store: store.heartbeat(name, owner, now))

    async def forget(self, name: str, owner: str) -> None:
        await self._call(lambda store: store.forget(name, owner))

    async def alive(self, since: float) -> set[str]:
        return await self._call(lambda store: store.alive(since))

    async def requeue(
        self, queue: str, origins: Sequence[str], now: float, dead: Sequence[str] = ()
    ) -> int:
        return await self._call(lambda store: store.requeue(queue, origins, now, dead))

    async def renew(self, jobs: Sequence[Job], until: float) -> int:
        return await self._call(lambda store: store.renew(jobs, until))

    async def purge(
        self, before: float, now: float | None = None, traces_before: float | None = None
    ) -> int:
        return await self._call(lambda store: store.purge(before, now, traces_before))

    async def aclose(self) -> None:
        """Commit what is waiting, close the store on its thread, stop the thread."""
        if self._closing:
            return
        self._closing = True
        if self._committer is not None:
            await self._committer
        loop = asyncio.get_running_loop()
        self._closed = True
        await loop.run_in_executor(self._executor, self._close_on_worker)
        self._executor.shutdown(wait=False)

    def _close_on_worker(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def _cancel(waiting: list[Waiting]) -> None:
    for _, done in waiting:
        done.cancel()
