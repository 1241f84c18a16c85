"""The store: the only code that writes mail state (see `base` for the interface).

Does: re-export the interface and open a store from a URL ("sqlite:/path").
Backends: `sqlite.SqliteStore` (statements in `sqlite.sql`, run by
`sqlite_db.SqliteDb`) and `memory.MemoryStore`, a faithful in-memory fake.
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


def open_store(url: str, clock: Clock | None = None, migrate: bool = True) -> Store:
    """Open the store named by `url`: "sqlite:/abs/path.db", "sqlite:rel/path.db"
    or "sqlite:///abs/path.db". `migrate`: upgrade an older schema (a command
    other than `gatepost run` must not, while older processes may still run)."""
    scheme, sep, rest = url.partition(":")
    if scheme != "sqlite" or not sep or not rest:
        raise ValueError(f"unsupported store URL {url!r}; expected sqlite:/path/to/file.db")
    rest = rest.removeprefix("//")
    return SqliteStore(Path(rest), clock, migrate=migrate)
