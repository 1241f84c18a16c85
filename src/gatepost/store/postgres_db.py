"""PgDb: the store on a PostgreSQL database, synchronous, one connection (the
logic is `sqldb.SqlDb`; the statements are in `postgres.sql`).

Does: connect (with the TCP timeouts that make a cut-off host's calls fail in
seconds, not hours), create the schema in an empty database and upgrade an
older one (under an advisory lock: hosts starting together create it once),
begin and end transactions, read the lease clock from the database
(`clock_timestamp()`, so the hosts' own clocks do not matter for leases,
heartbeats or leaders), and keep large content in `chunks` rows.

Durability: `enqueue` (what a 250 acknowledges) commits with
synchronous_commit on, so it is on the database's disk before it returns.
Other writes commit with synchronous_commit off, as SQLite's NORMAL: after a
crash of the database server they may roll back to an earlier state that is
then redone (a move or delivery made again), never a message lost.

Large content: the receive side writes it to a staging file of this host
(`spool_path`, a folder of its own); enqueue copies it into `chunks` rows of
CHUNK bytes in the same transaction and removes the file after the commit.
Reading it back fills a temporary file chunk by chunk, so no message is ever
held whole in memory.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import psycopg
from psycopg import errors

from . import queries, spool
from .base import Job, JobKey, NewMessage, Outcome, Renewal
from .clock import Clock
from .sqldb import DamagedMessage, Row, SqlDb, StoreBehind, Tx

Q = queries.load("postgres.sql")
VERSION = 1  # the schema this code writes (postgres.sql: schema_1 ...)
CHUNK = 1024 * 1024  # bytes of large content per chunks row
IN_MEMORY = 1024 * 1024  # content read back beyond this goes to a temporary file
CHUNKS_PER_READ = 1  # a message being read holds one chunk in memory, and IN_MEMORY
# Every connection: fail calls to a database cut off without a reset within about
# 15 s (the client's TCP timeouts), and let the server end a session whose host went
# silent, so that its row locks are freed (the server's keepalives, and a bound on
# a transaction left open). Writes are not waited for on disk unless durable.
CONNECT: dict[str, Any] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
    "options": " ".join(
        f"-c {setting}" for setting in (
            "tcp_keepalives_idle=5", "tcp_keepalives_interval=2", "tcp_keepalives_count=3",
            "tcp_user_timeout=10000", "idle_in_transaction_session_timeout=30000",
            "lock_timeout=30000", "synchronous_commit=off",
        )
    ),
}


NOTIFY_CHANNEL = "gatepost_work"  # payload: the queue that has new work


def connect(conninfo: str, password: str | None = None) -> psycopg.Connection[Any]:
    """A connection in autocommit mode with the timeouts above."""
    extra: dict[str, Any] = {} if password is None else {"password": password}
    return psycopg.connect(conninfo, autocommit=True, **CONNECT, **extra)


class PgDb(SqlDb):
    """The store on one PostgreSQL connection. Use one instance per thread at a time.
    `clock`: None reads leases from the database's clock (as every host must);
    a test may give its own clock instead."""

    def __init__(
        self, conninfo: str, staging: Path, clock: Clock | None = None, migrate: bool = True,
        password: str | None = None,
    ) -> None:
        self.spool = staging
        self.clock = clock or Clock()
        self._db_clock = clock is None
        self._conn = connect(conninfo, password)
        self._cursor = self._conn.cursor()
        self._tx = Tx(self._execute, self._executemany, Q)
        try:
            prepare(self._tx, self._conn, migrate)
        except BaseException:
            self._conn.close()
            raise

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        if "%(p" in sql:  # a parameter used more than once: by number
            return self._cursor.execute(sql, {f"p{n}": v for n, v in enumerate(params, 1)})
        return self._cursor.execute(sql, params or None)

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._cursor.executemany(sql, rows)

    @contextmanager
    def _write(self, durable: bool = False) -> Iterator[Tx]:
        try:
            with self._conn.pipeline(), self._conn.transaction():  # writes go without waiting
                if durable:
                    self._cursor.execute("SET LOCAL synchronous_commit = on")
                yield self._tx
                hops = self._tx.take_hops()
                if hops:
                    self._tx.execute("insert_hops", [list(column) for column in zip(*hops)])
        finally:
            self._tx.take_hops()

    def _read(self) -> Tx:
        return self._tx

    def lease_now(self, tx: Tx) -> float:
        if not self._db_clock:
            return self.clock.lease()
        return float(tx.execute("lease_now").fetchone()[0])

    def _lease(self, tx: Tx, keys: list[JobKey], lease: tuple[str, str, float, float]) -> None:
        if keys:
            tx.execute("lease_all", (*lease, [k[0] for k in keys], [k[1] for k in keys]))

    def _outcome_rows(self, tx: Tx, outcomes: Sequence[Outcome]) -> dict[JobKey, Row]:
        """One statement for all of them: the writes after it then go without waiting."""
        if len(outcomes) < 2:
            return {}
        jobs = [outcome.job for outcome in outcomes]
        keys = ([j.message_id for j in jobs], [j.rcpt_id for j in jobs], [j.token for j in jobs])
        rows = tx.execute("jobs_for_outcomes", keys).fetchall()
        return {(row[0], row[1]): tuple(row[2:]) for row in rows}

    def _renew(self, tx: Tx, jobs: Sequence[Job], until: float) -> Renewal:
        """One statement for all the jobs: one round trip, not one per job."""
        keys = ([j.message_id for j in jobs], [j.rcpt_id for j in jobs], [j.token for j in jobs])
        rows = tx.execute("renew_all", (until, *keys)).fetchall()
        return Renewal(frozenset((m, r) for m, r, _ in rows),
                       {(m, r): pending for m, r, pending in rows if pending})

    def _notify(self, tx: Tx, queues: set[str]) -> None:
        if queues:
            tx.execute("notify", (NOTIFY_CHANNEL, sorted(queues)))

    def _keep_content(self, tx: Tx, messages: Sequence[NewMessage], ids: Sequence[str]) -> None:
        for message_id, msg in zip(ids, messages, strict=True):
            if msg.content_file is None:
                continue
            with msg.content_file.open("rb") as file:
                for seq, data in enumerate(iter(lambda: file.read(CHUNK), b"")):
                    tx.execute("insert_chunk", (message_id, seq, data))

    def _enqueued(self, messages: Sequence[NewMessage]) -> None:
        files = [msg.content_file.name for msg in messages if msg.content_file is not None]
        spool.remove(self.spool, files)

    def _remove_orphans(self, older_than: float) -> None:
        """Staged files left by a crash (before their commit, or after it: the
        database has the content then): none is read again."""
        for path in spool.orphans(self.spool, lambda name: False, older_than):
            path.unlink(missing_ok=True)

    def _opened(self, row: Row) -> BinaryIO:
        file, content, size, message_id = row
        out: BinaryIO
        if file is None:
            found, out = len(content), io.BytesIO(bytes(content))
        else:
            found, out = self._read_chunks(message_id)
        if found != size:
            out.close()
            raise DamagedMessage(f"content is {found} bytes, the message had {size}")
        out.seek(0)
        return out

    def _read_chunks(self, message_id: str) -> tuple[int, BinaryIO]:
        out: BinaryIO = tempfile.SpooledTemporaryFile(IN_MEMORY)  # type: ignore[assignment]  # noqa: SIM115 - the caller closes it
        found, seq = 0, 0
        while True:
            rows = self._tx.execute("chunks", (message_id, seq, CHUNKS_PER_READ)).fetchall()
            for at, data in rows:
                if at != seq:  # a chunk is missing
                    return -1, out
                out.write(data)
                found, seq = found + len(data), seq + 1
            if len(rows) < CHUNKS_PER_READ:
                return found, out

    def broken(self, error: Exception) -> bool:
        return bool(self._conn.closed or self._conn.broken)  # not a deadlock: that rolls back

    def transient(self, error: Exception) -> bool:
        return isinstance(
            error, errors.DeadlockDetected | errors.SerializationFailure | errors.LockNotAvailable
        )

    def check(self) -> str:
        damaged = [row[0] for row in self._tx.execute("damaged").fetchall()]
        if damaged:
            return f"content damaged: messages {', '.join(damaged)}"
        return "ok"

    def version(self) -> int:
        return int(self._tx.execute("schema_version").fetchone()[0])

    def close(self) -> None:
        self._conn.close()


def prepare(tx: Tx, conn: psycopg.Connection[Any], migrate: bool) -> None:
    """Create the schema in an empty database; refuse (StoreBehind) an older one
    unless `migrate`, and one newer than this code."""
    if tx.execute("has_schema").fetchone()[0] and _version(tx) == VERSION:
        return
    with conn.transaction():
        tx.execute("schema_lock")
        found = _version(tx) if tx.execute("has_schema").fetchone()[0] else 0
        if found > VERSION:
            raise RuntimeError(f"store schema version {found} is newer than this code ({VERSION})")
        if 0 < found < VERSION and not migrate:
            raise StoreBehind.older(found, VERSION)
        for version in range(found, VERSION):
            tx.execute(f"schema_{version + 1}")


def _version(tx: Tx) -> int:
    return int(tx.execute("schema_version").fetchone()[0])
