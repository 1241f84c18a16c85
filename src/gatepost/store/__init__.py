"""The store: the only code that writes mail state (see `base` for the interface).

Does: re-export the interface and open a store from a URL ("sqlite:/path",
"postgresql://user@host/db"). Backends: `sqlite.SqliteStore` and
`postgres.PgStore` (the logic in `sqldb.SqlDb`, statements in `sqlite.sql` and
`postgres.sql`), and `memory.MemoryStore`, a faithful in-memory fake.
Must not know: policy, topology or SMTP.
"""

from __future__ import annotations

from pathlib import Path

from .base import (
    ADMIN_ACTIONS,
    ROUTER,
    STATES,
    Admin,
    Bounced,
    Cancelled,
    Changes,
    Deferred,
    Delivered,
    Held,
    Hop,
    Intake,
    Job,
    JobKey,
    MailboxEntry,
    Mailboxes,
    Moved,
    NewMessage,
    NewRecipient,
    Outcome,
    QueueEntry,
    QueueKey,
    Renewal,
    Store,
    Workers,
    key_of,
    send_queue,
)
from .clock import Clock
from .connect import StoreDamaged
from .ids import new_queue_id
from .spool import SpoolWriter, read_head
from .sqlite import SqliteStore
from .sqlite_db import DamagedMessage, SqliteDb, StoreBehind

__all__ = [
    "ADMIN_ACTIONS",
    "ROUTER",
    "STATES",
    "Admin",
    "Bounced",
    "Cancelled",
    "Changes",
    "Clock",
    "DamagedMessage",
    "Deferred",
    "Delivered",
    "Held",
    "Hop",
    "Intake",
    "Job",
    "JobKey",
    "MailboxEntry",
    "Mailboxes",
    "Moved",
    "NewMessage",
    "NewRecipient",
    "Outcome",
    "QueueEntry",
    "QueueKey",
    "Renewal",
    "SpoolWriter",
    "SqliteDb",
    "SqliteStore",
    "Store",
    "StoreBehind",
    "StoreDamaged",
    "Workers",
    "key_of",
    "new_queue_id",
    "open_store",
    "read_head",
    "send_queue",
]


def open_store(
    url: str, clock: Clock | None = None, migrate: bool = True, password: str | None = None,
    staging: Path | None = None,
) -> Store:
    """Open the store named by `url`: "sqlite:/abs/path.db", "sqlite:rel/path.db",
    "sqlite:///abs/path.db", or a PostgreSQL URL "postgresql://user@host:port/db"
    (`password`, else libpq's PGPASSWORD or ~/.pgpass). `migrate`: upgrade an
    older schema (a command other than `gatepost run` must not, while older
    processes may still run). `clock`: for tests; PostgreSQL's leases are
    otherwise on the database's clock. `staging`: where a database server's
    large content waits on this host until it is stored (default: a temporary folder)."""
    scheme, sep, rest = url.partition(":")
    if scheme in POSTGRES_SCHEMES and rest.startswith("//"):
        from .postgres import PgStore  # psycopg is loaded only for a PostgreSQL store

        return PgStore(url, clock, migrate=migrate, password=password, staging=staging)
    if scheme != "sqlite" or not sep or not rest:
        raise ValueError(f"unsupported store URL {url!r}; expected sqlite:/path/to/file.db "
                         "or postgresql://user@host/dbname")
    rest = rest.removeprefix("//")
    return SqliteStore(Path(rest), clock, migrate=migrate)


POSTGRES_SCHEMES = ("postgresql", "postgres")
