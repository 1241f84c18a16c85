"""PgStore: the Store interface on a PostgreSQL database (`postgres_db.PgDb`, one
connection on each of a few threads of its own: a pool per process).

The URL is libpq's: "postgresql://user@host:port/dbname?sslmode=verify-full".
The password comes from `password` (the topology's store_password_env or
store_password_file), else from libpq's PGPASSWORD or ~/.pgpass; never from
the URL in the topology file. Large content is staged in `staging`, a folder
of this host, until it is in the database.

Wake-ups: commits that give a queue work notify (postgres.sql `notify`); a
`Listener` on a connection of its own sets the events `watch` registered.
Notifications are lost while it reconnects, so workers still look every
`poll` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import threading
from collections import defaultdict
from pathlib import Path

from .clock import Clock
from .postgres_db import NOTIFY_CHANNEL, PgDb, connect
from .threaded import MAX_BATCH, ThreadedStore

THREADS = 4  # connections per process: group commits, claims and reads side by side
POLL = 0.5  # seconds between looks at an idle queue: what a lost notification costs at most
RECONNECT = 1.0  # seconds between attempts of the listener to connect again
log = logging.getLogger("gatepost.store")


def default_staging() -> Path:
    return Path(tempfile.gettempdir()) / f"gatepost-staging-{os.getuid()}"


class PgStore(ThreadedStore):
    poll = POLL

    def __init__(
        self, url: str, clock: Clock | None = None, migrate: bool = True,
        password: str | None = None, staging: Path | None = None,
        max_batch: int = MAX_BATCH, threads: int = THREADS,
    ) -> None:
        """`clock`: None for the database's clock (leases), as every host must;
        tests may give their own."""
        self.url = url
        folder = staging or default_staging()

        def open_db() -> PgDb:
            return PgDb(url, folder, clock, migrate, password)

        super().__init__(open_db, clock or Clock(), max_batch, threads)
        self._listener = Listener(url, password)

    def watch(self, queue: str, wakeup: asyncio.Event) -> None:
        self._listener.watch(queue, asyncio.get_running_loop(), wakeup)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._listener.close)  # it notices within a second
        await super().aclose()


class Listener:
    """LISTEN on a connection of its own, on a thread of its own (started by the
    first `watch`); each notification sets the events watching its queue."""

    def __init__(self, url: str, password: str | None) -> None:
        self.url = url
        self.password = password
        self.watching: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = (
            defaultdict(list)
        )
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def watch(self, queue: str, loop: asyncio.AbstractEventLoop, wakeup: asyncio.Event) -> None:
        self.watching[queue].append((loop, wakeup))
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="gatepost-listen", daemon=True)
            self.thread.start()

    def close(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=5)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._listen()
            except Exception as error:  # noqa: BLE001 - the database is away: poll meanwhile
                log.warning("not hearing of new work (%s); trying again in %g s", error, RECONNECT)
                self.stopping.wait(RECONNECT)

    def _listen(self) -> None:
        with connect(self.url, self.password) as conn:
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            for queue in list(self.watching):  # what came while no one listened
                self._wake(queue)
            while not self.stopping.is_set():
                for notice in conn.notifies(timeout=1.0):
                    self._wake(notice.payload)

    def _wake(self, queue: str) -> None:
        for loop, wakeup in self.watching.get(queue, ()):
            if not loop.is_closed():
                loop.call_soon_threadsafe(wakeup.set)
