"""`gatepost store copy`: a stopped SQLite network's store into an empty
PostgreSQL database (and a store's schema version, read without opening it).

Refused while the network runs (a heartbeat or leader's term fresh on its lease
clock, this boot) or when the database holds mail. Messages (spooled content
into `chunks`), jobs, mailbox entries and trace rows go in ONE PostgreSQL
transaction with the schema, streamed by COPY, checked before the commit; SQLite
is read under its write lock. Active jobs become claimable at once (lease_until
-1), a waiting admin action kept. Not copied: workers, leaders, boot.
Must not know: policy, topology, SMTP."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psycopg

from . import postgres_db, schema, spool
from .clock import boot_id
from .connect import begin, connect
from .sqldb import StoreBehind, Tx

FRESH = 30.0  # seconds of the lease clock: a heartbeat this recent means the network runs
ERRORS = (psycopg.Error, sqlite3.Error, OSError)  # what else a copy or a probe may raise
# The tables copied (in this order) and their columns, the same on both sides,
COLUMNS = {
    "messages": "id sender size created location origin received_by content_file content "
                "warned hop_count",
    "jobs": "message_id rcpt_id address mailbox location queue state attempts created "
            "next_attempt first_attempt lease_owner lease_until lease_token pending "
            "last_reply relay updated",
    "mailbox": "entry_id mailbox message_id delivered",
    "hops": "id message_id rcpt_id address at event postoffice detail",
}
# but these, where PostgreSQL takes what SQLite gives for another value.
CHANGED = {
    "content_file": "CASE WHEN content_file IS NULL THEN NULL ELSE id END",  # chunks by id
    "lease_until": "CASE WHEN state = 'active' THEN -1 ELSE lease_until END",  # over now
}
SERIALS = {"mailbox": "entry_id", "hops": "id"}
RUNNING = "SELECT name, seen + ? FROM workers UNION ALL SELECT 'leader:' || duty, until FROM leaders"
HOLDS_MAIL = "SELECT " + " OR ".join(f"EXISTS (SELECT 1 FROM {t})" for t in COLUMNS)


class CopyRefused(Exception):
    """The copy would lose or double mail (or failed): nothing was written."""


@dataclass(frozen=True, slots=True)
class Copied:
    messages: int
    recipients: int
    mailbox: int
    hops: int

    def __str__(self) -> str:
        return (f"copied {self.messages} messages, {self.recipients} recipients, "
                f"{self.mailbox} mailbox entries, {self.hops} trace rows")


def sqlite_path(url: str) -> Path | None:
    """The file of a "sqlite:" URL (as `open_store` reads it), else None."""
    scheme, sep, rest = url.partition(":")
    return Path(rest.removeprefix("//")) if scheme == "sqlite" and sep and rest else None


def shown(url: str) -> str:
    """`url` without a password in it."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def stored_version(url: str, password: str | None = None) -> int:
    """The schema version of the store at `url`, 0 where there is none yet
    (no file, an empty database). Reads only: creates nothing."""
    path = sqlite_path(url)
    if path is not None:
        if not path.is_file():
            return 0
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return schema.version(conn)
    with psycopg.connect(url, **_login(password)) as conn:
        if conn.execute("SELECT to_regclass('gatepost_schema')").fetchone() == (None,):
            return 0
        return int(conn.execute("SELECT version FROM gatepost_schema").fetchone()[0])  # type: ignore[index]


def copy_store(src: str, dst: str, password: str | None = None, within: float = FRESH) -> Copied:
    """Copy the SQLite store `src` into the empty PostgreSQL store `dst` (see above)."""
    path = sqlite_path(src)
    if path is None or not re.match(r"postgres(ql)?://", dst):
        raise CopyRefused("copies a SQLite store into PostgreSQL: "
                          "SRC sqlite:/path/to/file.db, DST postgresql://user@host/dbname")
    if not path.is_file():
        raise CopyRefused(f"SRC {src}: no such file")
    with closing(connect(path)) as conn:
        begin(conn)  # the write lock, held to the end: nothing changes SRC meanwhile
        try:
            _check_source(conn, src, within)
            with psycopg.connect(dst, autocommit=True, **_login(password)) as pg, \
                    pg.transaction():
                return _copy(conn, spool.folder_of(path), pg, dst)
        finally:
            conn.execute("ROLLBACK")


def running(rows: Iterable[tuple[str, float]], stored_boot: str | None, this_boot: str,
            now: float) -> list[str]:
    """Who still runs: rows of (name, alive until on the lease clock). After a
    reboot (a known boot id other than the stored one) nobody does."""
    if stored_boot and this_boot and stored_boot != this_boot:
        return []
    return sorted(name for name, until in rows if until > now)


def _check_source(conn: sqlite3.Connection, src: str, within: float) -> None:
    found = schema.version(conn)
    if found != schema.VERSION:
        raise CopyRefused(f"SRC {src}: schema {found}, not this gatepost's ({schema.VERSION}): "
                          "`gatepost store migrate` it first")
    boot = conn.execute("SELECT boot_id FROM boot").fetchone()
    rows = conn.execute(RUNNING, (within,)).fetchall()
    alive = running(rows, None if boot is None else str(boot[0]), boot_id(), time.monotonic())
    if alive:
        raise CopyRefused(f"SRC {src}: the network still runs (fresh heartbeats: "
                          f"{', '.join(alive)}); stop it first")


def _copy(conn: sqlite3.Connection, folder: Path, pg: psycopg.Connection[Any], dst: str) -> Copied:
    cur = pg.cursor()
    cur.execute("SET LOCAL synchronous_commit = on")
    cur.execute("SET LOCAL lock_timeout = '30s'")
    try:
        tx = Tx(lambda sql, params=(): cur.execute(sql, params or None), cur.executemany,
                postgres_db.Q)  # the schema's statements take no parameters
        postgres_db.prepare(tx, pg, migrate=False)
    except StoreBehind as error:
        raise CopyRefused(f"DST {shown(dst)}: {error}") from error
    cur.execute(f"LOCK TABLE chunks, {', '.join(COLUMNS)} IN EXCLUSIVE MODE")
    if cur.execute(HOLDS_MAIL).fetchone() != (False,):
        raise CopyRefused(f"DST {shown(dst)} already holds mail: copy only into an empty store")
    for table, columns in COLUMNS.items():
        names = columns.split()
        with cur.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as out:
            selected = ", ".join(CHANGED.get(name, name) for name in names)
            for row in conn.execute(f"SELECT {selected} FROM {table}"):
                out.write_row(row)
    with cur.copy("COPY chunks (message_id, seq, data) FROM STDIN (FORMAT BINARY)") as out:
        out.set_types(["text", "int4", "bytea"])
        for row in _chunks(conn, folder):
            out.write_row(row)
    for table, column in SERIALS.items():
        cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                    f"COALESCE(max({column}), 0) + 1, false) FROM {table}")
    return _verified(conn, cur)


def _chunks(conn: sqlite3.Connection, folder: Path) -> Iterator[tuple[str, int, bytes]]:
    """(message_id, seq, data) of every spooled content, CHUNK bytes a row."""
    for message_id, name in conn.execute(
        "SELECT id, content_file FROM messages WHERE content_file IS NOT NULL"
    ):
        try:
            with (folder / name).open("rb") as file:
                for seq, data in enumerate(iter(partial(file.read, postgres_db.CHUNK), b"")):
                    yield message_id, seq, data
        except FileNotFoundError as error:
            raise CopyRefused(f"message {message_id}: its spool file is missing "
                              f"({error.filename})") from error


def _verified(conn: sqlite3.Connection, cur: psycopg.Cursor[Any]) -> Copied:
    """The counts in both stores, equal; every message's content as long as its
    size (copied from SRC) says; or CopyRefused."""
    counts = {table: _count(cur, table) for table in COLUMNS}
    source = {table: _count(conn, table) for table in COLUMNS}
    if counts != source:
        raise CopyRefused(f"rows copied {counts} differ from the source's {source}")
    damaged = [row[0] for row in cur.execute(postgres_db.Q["damaged"])]
    if damaged:
        raise CopyRefused(f"content of messages {', '.join(damaged)} is not what their size says")
    return Copied(counts["messages"], counts["jobs"], counts["mailbox"], counts["hops"])


def _count(db: sqlite3.Connection | psycopg.Cursor[Any], table: str) -> int:
    return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]


def _login(password: str | None) -> dict[str, Any]:
    return {"connect_timeout": 10, **({} if password is None else {"password": password})}

