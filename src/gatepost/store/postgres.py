"""PgStore: the Store interface on a PostgreSQL database (`postgres_db.PgDb`, one
connection on each of a few threads of its own: a pool per process).

The URL is libpq's: "postgresql://user@host:port/dbname?sslmode=verify-full".
The password comes from `password` (the topology's store_password_env or
store_password_file), else from libpq's PGPASSWORD or ~/.pgpass; never from
the URL in the topology file. Large content is staged in `staging`, a folder
of this host, until it is in the database.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .clock import Clock
from .postgres_db import PgDb
from .threaded import MAX_BATCH, ThreadedStore

THREADS = 4  # connections per process: group commits, claims and reads side by side


def default_staging() -> Path:
    return Path(tempfile.gettempdir()) / f"gatepost-staging-{os.getuid()}"


class PgStore(ThreadedStore):
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
