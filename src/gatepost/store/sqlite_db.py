"""SqliteDb: the store on one SQLite file, synchronous (the logic is `sqldb.SqlDb`).

Does: open the file in WAL mode (every write one BEGIN IMMEDIATE
transaction, so two processes never both claim a job), the schema and its
upgrade (`schema.py`), the lease clock of one host, and large content as spool
files. The statements are in `sqlite.sql`. Leases and heartbeats count on
`clock.lease` (seconds since this boot; `boot` names the boot, and a new one
ends every lease).

Durability: `enqueue` (what a 250 or a printed queue id acknowledges)
commits with synchronous=FULL, so the WAL is fsync'ed before it returns, and
that fsync also covers every earlier transaction. Other writes (claims,
outcomes, admin actions) commit with synchronous=NORMAL: they survive a
process crash (the OS has the pages) and, after a power loss, at worst roll
back to an earlier state that is then redone: a move or delivery made
again, never a message lost. Large content is a spool file (`spool.py`) that
the message row names: the file is fsync'ed by its writer and its folder
here before the enqueue commits, and removed after the commit that drops the row.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from . import queries, schema, spool
from .base import NewMessage
from .clock import Clock, boot_id
from .connect import begin, opened
from .sqldb import Complete, DamagedMessage, Renew, Row, SqlDb, StoreBehind, Tx, fair_pick

__all__ = ["Complete", "DamagedMessage", "Renew", "SqliteDb", "StoreBehind", "fair_pick"]

Q = queries.load("sqlite.sql")


class SqliteDb(SqlDb):
    """The store on one SQLite file. Use one instance per thread at a time."""

    def __init__(self, path: Path, clock: Clock | None = None, migrate: bool = True) -> None:
        """`migrate`: upgrade an older schema (only `gatepost run` should)."""
        self.path = Path(path)
        self.spool = spool.folder_of(self.path)
        self.clock = clock or Clock()
        self._conn = opened(self.path, lambda conn: prepare(conn, migrate))
        self._tx = Tx(self._conn.execute, self._conn.executemany, Q)

    @contextmanager
    def _write(self, durable: bool = False) -> Iterator[Tx]:
        conn = self._conn
        if durable:
            conn.execute("PRAGMA synchronous = FULL")
        begin(conn)
        try:
            yield self._tx
            self._tx.executemany("insert_hop", self._tx.take_hops())
            conn.execute("COMMIT")
        except BaseException:
            self._tx.take_hops()
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            if durable:
                conn.execute("PRAGMA synchronous = NORMAL")

    def _read(self) -> Tx:
        return self._tx

    def lease_now(self, tx: Tx) -> float:
        return self.clock.lease()

    def listed(self, params: Sequence[Any]) -> Sequence[Any]:
        return [json.dumps(p) if isinstance(p, list) else p for p in params]

    def _staged(self, messages: Sequence[NewMessage]) -> None:
        if any(msg.content_file is not None for msg in messages):
            spool.sync_folder(self.spool)  # the files' names, before the rows that name them

    def _remove_files(self, names: list[str]) -> None:
        spool.remove(self.spool, names)

    def _remove_orphans(self, older_than: float) -> None:
        """Spool files no message names: a crash came between writing one and
        committing its message (it was never acknowledged nor delivered)."""
        for path in spool.orphans(self.spool, self._names_file, older_than):
            path.unlink(missing_ok=True)

    def _names_file(self, name: str) -> bool:
        """Does a committed message name the spool file `name` (its queue id)?"""
        return self._tx.execute("names_file", (name, name)).fetchone() is not None

    def _opened(self, row: Row) -> BinaryIO:
        """A (content_file, content, size) row's content, to read; DamagedMessage
        when it is not all there (a lost or cut spool file, a damaged row)."""
        file, content, size = row[:3]
        if file is None:
            found = len(content)
        else:
            path = self.spool / str(file)
            found = path.stat().st_size if path.is_file() else -1
        if found != size:
            raise DamagedMessage(f"content is {found} bytes, the message had {size}")
        return io.BytesIO(content) if file is None else path.open("rb")

    def check(self) -> str:
        """SQLite's quick check of the whole file: "ok", or what is damaged."""
        rows = self._conn.execute("PRAGMA quick_check").fetchall()
        return "; ".join(str(row[0]) for row in rows[:5])

    def version(self) -> int:
        return schema.version(self._conn)

    def close(self) -> None:
        self._conn.close()


def prepare(conn: sqlite3.Connection, migrate: bool = True) -> None:
    """Check (and, when `migrate`, upgrade) the schema; after a reboot, end the
    last boot's leases. Only a known boot id, different from the stored one,
    counts as a reboot: a process that cannot tell its boot changes nothing."""
    found = schema.version(conn)
    if 0 < found < schema.VERSION:
        if not migrate:
            raise StoreBehind.older(found, schema.VERSION)
        _refuse_while_old_processes_run(conn, found)
    schema.migrate(conn)
    this_boot = boot_id()
    if not this_boot or _stored_boot(conn) == this_boot:
        return
    begin(conn)
    try:
        stored = _stored_boot(conn)
        if stored != this_boot:
            statements = Q["new_boot"].split(";")
            for statement in statements if stored else statements[3:]:  # first boot: no leases
                conn.execute(statement, (this_boot,) if "?" in statement else ())
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


OLD_HEARTBEAT = 30.0  # seconds: a wall-clock heartbeat this recent means an old process runs


def _refuse_while_old_processes_run(conn: sqlite3.Connection, found: int) -> None:
    """Schema 6 moves leases to the lease clock: processes of an older gatepost
    still running would take their own leases for expired. Stop them first."""
    if found >= 6:
        return
    row = conn.execute("SELECT max(seen) FROM workers").fetchone()
    if row[0] is not None and row[0] >= time.time() - OLD_HEARTBEAT:
        raise StoreBehind(f"processes of an older gatepost still use the store (a heartbeat "
                          f"{time.time() - row[0]:.0f} s ago): stop them, then start this one")


def _stored_boot(conn: sqlite3.Connection) -> str | None:
    row = conn.execute(Q["boot"]).fetchone()
    return None if row is None else str(row[0])
