"""The SQLite store's schema and its migrations, keyed by PRAGMA user_version.

Does: create the tables on a fresh file and bring an older file up to date,
inside one BEGIN IMMEDIATE transaction so that processes starting together
migrate once. Must not know: how the tables are queried (that is
`sqlite.py`), or anything about mail beyond column names.

Tables:
  messages  one row per message: envelope sender, content (written once), origin,
            hop_count (Received fields counted on entry, so that loops end);
            large content lives in a spool file (`spool.py`) the row names.
  jobs      one row per (message, recipient): where it waits (`location`), who
            handles it next (`queue`), its state, retry times and lease.
            `next_attempt` is NULL while incoming, the retry time while deferred.
            `created` is copied from the message so one index serves claims.
  mailbox   one row per delivery into a "PO/mailbox"; points at the message.
  hops      the history of each recipient: received, moved, delivered, ...
            Kept without a foreign key so history survives a deleted message,
            until the trace retention runs out (`hops_by_time`, version 5).
  workers   one row per running worker ("gateway:GW1"): its last heartbeat, so
            the router can tell a gateway that stopped from one that runs.
  boot      the boot id of the host whose lease clock (seconds since boot) the
            leases and heartbeats count in (version 6): after a reboot they end.
  leaders   who does each duty that must run once in the network (failover,
            purge), until when on the lease clock (version 7).

Indexes on jobs: `jobs_claim` serves the claims and `due`/`pending` (a backlog
of deferred jobs not yet due is never visited); `jobs_by_state` (version 2)
serves the queue listing, one ordered range per state from any page's key, and
`counts` (one pass over the index, no sort).
"""

from __future__ import annotations

import sqlite3

_V1 = (
    """CREATE TABLE messages (
        id          TEXT PRIMARY KEY,
        sender      TEXT NOT NULL,
        size        INTEGER NOT NULL,
        created     REAL NOT NULL,
        location    TEXT NOT NULL,
        origin      TEXT NOT NULL,
        received_by TEXT NOT NULL,
        content_file TEXT,  -- large content: a file of the spool folder; content is empty
        content     BLOB NOT NULL  -- last: reading the columns before it skips its overflow pages
    )""",
    """CREATE TABLE jobs (
        message_id    TEXT NOT NULL REFERENCES messages(id),
        rcpt_id       INTEGER NOT NULL,
        address       TEXT NOT NULL,
        mailbox       TEXT,
        location      TEXT NOT NULL,
        queue         TEXT NOT NULL,
        state         TEXT NOT NULL,
        attempts      INTEGER NOT NULL DEFAULT 0,
        created       REAL NOT NULL,
        next_attempt  REAL,
        first_attempt REAL,
        lease_owner   TEXT,
        lease_until   REAL,
        last_reply    TEXT NOT NULL DEFAULT '',
        relay         TEXT NOT NULL DEFAULT '',
        updated       REAL NOT NULL,
        PRIMARY KEY (message_id, rcpt_id)
    ) WITHOUT ROWID""",
    # Serves all three claim probes: incoming (next_attempt IS NULL, then
    # created order), deferred (next_attempt range) and expired leases.
    """CREATE INDEX jobs_claim ON jobs (queue, state, next_attempt, created)""",
    """CREATE TABLE mailbox (
        entry_id   INTEGER PRIMARY KEY,
        mailbox    TEXT NOT NULL,
        message_id TEXT NOT NULL REFERENCES messages(id),
        delivered  REAL NOT NULL
    )""",
    """CREATE INDEX mailbox_by_key ON mailbox (mailbox, entry_id)""",
    """CREATE INDEX mailbox_by_message ON mailbox (message_id)""",
    """CREATE TABLE hops (
        id         INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL,
        rcpt_id    INTEGER NOT NULL,
        address    TEXT NOT NULL,
        at         REAL NOT NULL,
        event      TEXT NOT NULL,
        postoffice TEXT NOT NULL,
        detail     TEXT NOT NULL DEFAULT ''
    )""",
    """CREATE INDEX hops_by_message ON hops (message_id, id)""",
    """CREATE TABLE workers (
        name  TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        seen  REAL NOT NULL
    )""",
)

# Queue listing and paging: per state, in (created, message_id, rcpt_id) order.
_V2 = ("""CREATE INDEX jobs_by_state ON jobs (state, created, message_id, rcpt_id)""",)
# The sender was told once that the message is delayed (a delay DSN went out).
_V3 = ("""ALTER TABLE messages ADD COLUMN warned INTEGER NOT NULL DEFAULT 0""",)
# Hops the message made before it entered the network (Received and Delivered-To
# header fields), carried on (+1) by copies the network re-sends: loops end.
_V4 = ("""ALTER TABLE messages ADD COLUMN hop_count INTEGER NOT NULL DEFAULT 0""",)
# Trace rows by time: the purge of rows older than the trace retention reads
# only those, not the whole table.
_V5 = ("""CREATE INDEX hops_by_time ON hops (at)""",)

# A lease belongs to one attempt (its token); an admin action on a job in an
# attempt waits as `pending`. Leases and heartbeats move to the lease clock
# (seconds since boot, the boot named in `boot`): the wall-clock ones end.
_V6 = (
    "ALTER TABLE jobs ADD COLUMN lease_token TEXT",
    "ALTER TABLE jobs ADD COLUMN pending TEXT",
    "CREATE TABLE boot (boot_id TEXT NOT NULL)",
    "UPDATE jobs SET lease_until = -1 WHERE state = 'active'",
    "DELETE FROM workers",
)

# Duties that one process of the network does at a time (failover, purge): the
# leader of each holds its row until its term ends on the lease clock.
_V7 = ("CREATE TABLE leaders (duty TEXT PRIMARY KEY, owner TEXT NOT NULL, until REAL NOT NULL)",)

# MIGRATIONS[n] takes a file from user_version n to n + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, _V2, _V3, _V4, _V5, _V6, _V7)
VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to VERSION; returns the version found before.
    `conn` must be in autocommit mode (isolation_level=None). A file already
    at VERSION is only read: opening a store takes no write lock."""
    found = version(conn)
    if found == VERSION:
        return found
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = version(conn)
        if found > VERSION:
            raise RuntimeError(f"store schema version {found} is newer than this code ({VERSION})")
        for statements in MIGRATIONS[found:]:
            for statement in statements:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return found


def version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])
