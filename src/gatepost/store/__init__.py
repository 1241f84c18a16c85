"""The store: the only code that writes mail state (see `base` for the interface).

Does: re-export the interface and open a store from a URL ("sqlite:/path").
Must not know: policy, topology or SMTP.
"""

from __future__ import annotations

from pathlib import Path

from .asyncstore import AsyncStore
from .base import (
    ROUTER,
    STATES,
    Bounced,
    Deferred,
    Delivered,
    Hop,
    Job,
    MailboxEntry,
    Moved,
    NewMessage,
    NewRecipient,
    Outcome,
    QueueEntry,
    QueueKey,
    Store,
    send_queue,
)
from .connect import StoreDamaged
from .ids import new_queue_id
from .spool import SpoolWriter, read_head
from .sqlite import DamagedMessage, SqliteStore

__all__ = [
    "ROUTER",
    "STATES",
    "AsyncStore",
    "Bounced",
    "DamagedMessage",
    "Deferred",
    "Delivered",
    "Hop",
    "Job",
    "MailboxEntry",
    "Moved",
    "NewMessage",
    "NewRecipient",
    "Outcome",
    "QueueEntry",
    "QueueKey",
    "SpoolWriter",
    "SqliteStore",
    "Store",
    "StoreDamaged",
    "new_queue_id",
    "open_store",
    "read_head",
    "send_queue",
]


def open_store(url: str) -> Store:
    """Open the store named by `url`: "sqlite:/abs/path.db", "sqlite:rel/path.db"
    or "sqlite:///abs/path.db"."""
    scheme, sep, rest = url.partition(":")
    if scheme != "sqlite" or not sep or not rest:
        raise ValueError(f"unsupported store URL {url!r}; expected sqlite:/path/to/file.db")
    rest = rest.removeprefix("//")
    return SqliteStore(Path(rest))
