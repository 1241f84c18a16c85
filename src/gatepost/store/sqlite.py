"""SqliteStore: the Store interface on one SQLite file (`sqlite_db.SqliteDb` on
one thread of its own: SQLite has one writer at a time anyway)."""

from __future__ import annotations

from pathlib import Path

from .clock import Clock
from .sqlite_db import SqliteDb
from .threaded import MAX_BATCH, Gathered, ThreadedStore

__all__ = ["Gathered", "SqliteStore"]


class SqliteStore(ThreadedStore):
    def __init__(
        self, path: Path, clock: Clock | None = None, max_batch: int = MAX_BATCH,
        migrate: bool = True,
    ) -> None:
        """`migrate`: upgrade an older schema (only `gatepost run` should)."""
        self.path = Path(path)
        self.migrate = migrate
        clock = clock or Clock()
        super().__init__(lambda: SqliteDb(self.path, clock, migrate), clock, max_batch)
