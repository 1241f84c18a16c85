"""Opening the SQLite file with the pragmas every process needs, and beginning
a write transaction without SQLite's coarse busy sleeps. Knows no tables."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

BUSY_TIMEOUT = 30.0  # seconds a writer waits for another process's transaction


class StoreDamaged(Exception):
    """SQLite itself says the file is not a (sound) database."""


def busy(error: sqlite3.Error) -> bool:
    """Is `error` only another process holding the file for a moment?"""
    text = str(error).lower()
    return isinstance(error, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def opened(path: Path, prepare: Callable[[sqlite3.Connection], object]) -> sqlite3.Connection:
    """`connect` then `prepare` (the schema check), retried while another
    process holds the file (switching to WAL, recovering the WAL, migrating):
    processes starting together must not take that for damage. An error that
    that SQLite calls damage is StoreDamaged; any other error is raised as it is."""
    deadline, pause = time.monotonic() + BUSY_TIMEOUT, 0.01
    while True:
        conn = None
        try:
            conn = connect(path)
            prepare(conn)
            return conn
        except sqlite3.Error as error:
            if conn is not None:
                conn.close()
            if type(error) is sqlite3.DatabaseError:  # "not a database", "malformed"
                raise StoreDamaged(str(error)) from error
            if not busy(error) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def connect(path: Path) -> sqlite3.Connection:
    """Open `path` (creating its directory) with the pragmas every user needs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        str(path),
        timeout=BUSY_TIMEOUT,
        isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
        check_same_thread=False,  # an executor thread may own it
        cached_statements=128,
    )
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
    return conn


def begin(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, waiting for another process's write transaction in steps
    of 0.1 to 2 ms: SQLite's own busy handler sleeps 1, 2, 5, 10 ms..., which
    costs every collision milliseconds of acceptance latency."""
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        deadline, pause = time.monotonic() + BUSY_TIMEOUT, 0.0001
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.002)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
