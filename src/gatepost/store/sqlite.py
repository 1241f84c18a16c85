"""SqliteStore: the Store interface on one SQLite file shared by processes.

Does: all reads and writes of mail state on one machine, in WAL mode; every
write is one BEGIN IMMEDIATE transaction, so two processes never both claim
a job. Durability: `enqueue` (what a 250 or a printed queue id acknowledges)
commits with synchronous=FULL, so the WAL is fsync'ed before it returns, and
that fsync also covers every earlier transaction. Other writes (claims,
moves, outcomes, admin actions) commit with synchronous=NORMAL: they survive
a process crash (the OS has the pages) and, after a power loss, at worst
roll back to an earlier state that is then redone: a move or delivery made
again, never a message lost. All DML lives here; the schema lives in `schema.py`.
Large content is a spool file (`spool.py`) that the message row names: the
file is fsync'ed by its writer and its folder here before the enqueue commits,
and removed after the commit that drops the row.
Must not know: topology, SMTP, retry policy, the clock (callers pass `now`).

Claim fairness: a claim first takes jobs whose lease expired (they were
already due), then splits the remaining room between fresh (incoming) jobs
and deferred jobs whose retry time has come: fresh jobs get at least half
(rounded up) and either side takes what the other leaves unused. So a large
backlog of due retries never starves new mail, and vice versa. The chosen
jobs are returned oldest first by (created, message_id, rcpt_id).
"""

from __future__ import annotations

import io
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from . import schema, spool
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
    Outcome,
    QueueEntry,
    QueueKey,
)
from .connect import begin, opened
from .ids import QUEUE_IDS

NON_FINAL = ("incoming", "active", "deferred", "hold")
FINAL = ("delivered", "bounced")
Row = tuple[Any, ...]

_JOB_COLUMNS = """j.message_id, j.rcpt_id, m.sender, j.address, j.mailbox, j.location,
    m.origin, j.queue, j.attempts, j.created, j.first_attempt, m.size, m.warned, m.hop_count"""
_CLAIM_EXPIRED = f"""SELECT {_JOB_COLUMNS} FROM jobs j JOIN messages m ON m.id = j.message_id
    WHERE j.queue = ? AND j.state = 'active' AND j.lease_until < ?
    ORDER BY j.created, j.message_id, j.rcpt_id LIMIT ?"""
_CLAIM_INCOMING = f"""SELECT {_JOB_COLUMNS} FROM jobs j JOIN messages m ON m.id = j.message_id
    WHERE j.queue = ? AND j.state = 'incoming' AND j.next_attempt IS NULL
    ORDER BY j.created, j.message_id, j.rcpt_id LIMIT ?"""
_CLAIM_DEFERRED = f"""SELECT {_JOB_COLUMNS} FROM jobs j JOIN messages m ON m.id = j.message_id
    WHERE j.queue = ? AND j.state = 'deferred' AND j.next_attempt <= ?
    ORDER BY j.next_attempt, j.created LIMIT ?"""
_LEASE = """UPDATE jobs SET state = 'active', lease_owner = ?, lease_until = ?, updated = ?
    WHERE message_id = ? AND rcpt_id = ?"""

_INSERT_MESSAGE = """INSERT INTO messages
    (id, sender, size, created, location, origin, received_by, hop_count, content_file, content)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
_INSERT_JOB = f"""INSERT INTO jobs
    (message_id, rcpt_id, address, mailbox, location, queue, state, created, updated)
    VALUES (?, ?, ?, ?, ?, '{ROUTER}', 'incoming', ?, ?)"""
_INSERT_HOP = """INSERT INTO hops (message_id, rcpt_id, address, at, event, postoffice, detail)
    VALUES (?, ?, ?, ?, ?, ?, ?)"""
_INSERT_MAILBOX = "INSERT INTO mailbox (mailbox, message_id, delivered) VALUES (?, ?, ?)"

_KEY = "WHERE message_id = ? AND rcpt_id = ? AND state NOT IN ('delivered', 'bounced')"
_UNLEASE = "lease_owner = NULL, lease_until = NULL, updated = ?"
_KEEP_HOLD = "CASE state WHEN 'hold' THEN 'hold' ELSE '{0}' END"
_MOVED = f"""UPDATE jobs SET location = ?, queue = ?, state = {_KEEP_HOLD.format("incoming")},
    next_attempt = NULL, {_UNLEASE} {_KEY}"""
_DELIVERED = f"""UPDATE jobs SET state = 'delivered', attempts = attempts + 1,
    first_attempt = COALESCE(first_attempt, ?), next_attempt = NULL, relay = ?,
    last_reply = ?, {_UNLEASE} {_KEY}"""
_DEFERRED = f"""UPDATE jobs SET state = {_KEEP_HOLD.format("deferred")}, attempts = attempts + 1,
    first_attempt = COALESCE(first_attempt, ?), next_attempt = ?, relay = ?,
    last_reply = ?, {_UNLEASE} {_KEY}"""
_BOUNCED = f"""UPDATE jobs SET state = 'bounced', attempts = attempts + 1,
    first_attempt = COALESCE(first_attempt, ?), next_attempt = NULL, relay = ?,
    last_reply = ?, {_UNLEASE} {_KEY}"""
_ADMIN = {
    "hold": f"""UPDATE jobs SET state = 'hold', {_UNLEASE}
        WHERE message_id = ? AND state IN ('incoming', 'active', 'deferred')""",
    "release": """UPDATE jobs SET state = 'incoming', next_attempt = NULL, updated = ?
        WHERE message_id = ? AND state = 'hold'""",
    "flush": """UPDATE jobs SET next_attempt = ?, updated = ?
        WHERE message_id = ? AND state = 'deferred'""",
    "requeue": f"""UPDATE jobs SET queue = '{ROUTER}', state = 'incoming', next_attempt = NULL,
        {_UNLEASE} WHERE message_id = ? AND state IN ('incoming', 'active', 'deferred')""",
    "delete": """DELETE FROM jobs
        WHERE message_id = ? AND state IN ('incoming', 'active', 'deferred', 'hold')""",
}
_ADMIN_RETURNING = " RETURNING rcpt_id, address, location"
_DROP_UNUSED_MESSAGE = """DELETE FROM messages WHERE id = ?
    AND NOT EXISTS (SELECT 1 FROM jobs WHERE message_id = messages.id)
    AND NOT EXISTS (SELECT 1 FROM mailbox WHERE message_id = messages.id)
    RETURNING content_file"""
_NAMES_FILE = "SELECT 1 FROM messages WHERE id = ? AND content_file = ?"

# One page of the listing: for each wanted state, one ordered range of the
# jobs_by_state index after the key (?, ?, ?), cut at LIMIT; then the few rows
# found are merged. One statement, so one snapshot; cost does not grow with depth.
_QUEUE_STATE = """SELECT * FROM (SELECT j.message_id, j.rcpt_id, m.sender, j.address,
    j.location, j.queue, j.state, j.attempts, j.next_attempt, j.created, m.size, j.last_reply
    FROM jobs j JOIN messages m ON m.id = j.message_id
    WHERE j.state = ? AND (j.created, j.message_id, j.rcpt_id) > (?, ?, ?)
    ORDER BY j.created, j.message_id, j.rcpt_id LIMIT ?)"""
_QUEUE_MERGE = " ORDER BY 10, 1, 2 LIMIT ?"  # created, message_id, rcpt_id
_QUEUE_START: QueueKey = (float("-inf"), "", -1)  # before every job
_MAILBOX = """SELECT b.entry_id, b.message_id, m.sender, b.delivered, m.size
    FROM mailbox b JOIN messages m ON m.id = b.message_id
    WHERE b.mailbox = ? ORDER BY b.entry_id"""
_MAILBOX_CONTENT = """SELECT m.content_file, m.content, m.size FROM mailbox b
    JOIN messages m ON m.id = b.message_id WHERE b.mailbox = ? AND b.entry_id = ?"""
_CONTENT = "SELECT content_file, content, size FROM messages WHERE id = ?"
ORPHAN_GRACE = 3600.0  # seconds a spool file without a row may still await its commit
PURGE_CHUNK = 5000  # rows deleted per transaction: a purge never holds the write lock long
_HOPS = """SELECT message_id, rcpt_id, address, at, event, postoffice, detail
    FROM hops WHERE message_id = ? ORDER BY id"""  # ids follow commit order
_HEARTBEAT = """INSERT INTO workers (name, owner, seen) VALUES (?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, seen = excluded.seen"""
_FORGET = "DELETE FROM workers WHERE name = ? AND owner = ?"
_ALIVE = "SELECT name FROM workers WHERE seen >= ?"
_REQUEUE = f"""UPDATE jobs SET queue = '{ROUTER}', state = 'incoming', next_attempt = NULL,
    {_UNLEASE} WHERE queue = ? AND (state IN ('incoming', 'deferred')
        OR (state = 'active' AND (lease_until < ? OR lease_owner IN ({{}}))))
    AND message_id IN (SELECT id FROM messages WHERE origin IN ({{}}))
    RETURNING message_id, rcpt_id, address, location"""
_DUE = """SELECT EXISTS (SELECT 1 FROM jobs WHERE queue = ?1 AND state = 'incoming')
    OR EXISTS (SELECT 1 FROM jobs WHERE queue = ?1 AND state = 'deferred' AND next_attempt <= ?2)
    OR EXISTS (SELECT 1 FROM jobs WHERE queue = ?1 AND state = 'active' AND lease_until < ?2)"""
_RENEW = """UPDATE jobs SET lease_until = ? WHERE message_id = ? AND rcpt_id = ?
    AND state = 'active' AND lease_owner = ?"""
_WARN_ONCE = "UPDATE messages SET warned = 1 WHERE id = ? AND warned = 0"
_OWNERS = """SELECT DISTINCT lease_owner FROM jobs
    WHERE queue = ? AND state = 'active' AND lease_owner IS NOT NULL"""
_RELEASE_OWNER = f"""UPDATE jobs SET state = 'incoming', next_attempt = NULL, {_UNLEASE}
    WHERE queue = ? AND state = 'active' AND lease_owner = ?"""
_COUNTS = "SELECT state, count(*) FROM jobs GROUP BY state"
_PENDING = """SELECT
    (SELECT count(*) FROM jobs WHERE queue = ?1 AND state IN ('incoming', 'active'))
  + (SELECT count(*) FROM jobs WHERE queue = ?1 AND state = 'deferred' AND next_attempt <= ?2)"""
# A job is changed after it is created: `created < ?1` keeps the range of
# jobs_by_state read to the old jobs; then one chunk of them goes.
_PURGE_JOBS = """DELETE FROM jobs WHERE (message_id, rcpt_id) IN (SELECT message_id, rcpt_id
    FROM jobs WHERE state IN ('delivered', 'bounced') AND created < ?1 AND updated < ?1
    LIMIT ?2) RETURNING message_id"""
_PURGE_HOPS = "DELETE FROM hops WHERE id IN (SELECT id FROM hops WHERE at < ? LIMIT ?)"


class DamagedMessage(Exception):
    """A message's content is not what was stored: it must not go out in part."""


class SqliteStore:
    """The Store on one SQLite file. Use one instance per thread at a time."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.spool = spool.folder_of(self.path)
        self._conn = opened(self.path, schema.migrate)

    @contextmanager
    def _write(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction; `durable` fsyncs it before returning."""
        conn = self._conn
        if durable:
            conn.execute("PRAGMA synchronous = FULL")
        begin(conn)
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            if durable:
                conn.execute("PRAGMA synchronous = NORMAL")

    # -- writes -------------------------------------------------------------

    def enqueue(self, messages: Sequence[NewMessage], now: float) -> list[str]:
        if not messages:
            return []
        if any(msg.content_file is not None for msg in messages):
            self._check_spooled(messages)
            spool.sync_folder(self.spool)
        with self._write(durable=True) as conn:
            return _insert_messages(conn, messages, now)

    def _check_spooled(self, messages: Sequence[NewMessage]) -> None:
        for msg in messages:
            if msg.content_file is not None and msg.content_file != self.spool_path(msg.queue_id):
                raise ValueError(f"{msg.content_file} is not the spool file of {msg.queue_id!r}")

    def spool_path(self, queue_id: str) -> Path:
        if not queue_id or not queue_id.isalnum():
            raise ValueError(f"not a queue id: {queue_id!r}")
        return self.spool / queue_id

    def claim(self, queue: str, owner: str, limit: int, lease: float, now: float) -> list[Job]:
        if limit <= 0:
            return []
        with self._write() as conn:
            expired = conn.execute(_CLAIM_EXPIRED, (queue, now, limit)).fetchall()
            incoming = conn.execute(_CLAIM_INCOMING, (queue, limit)).fetchall()
            deferred = conn.execute(_CLAIM_DEFERRED, (queue, now, limit)).fetchall()
            rows = fair_pick(expired, incoming, deferred, limit)
            until = now + lease
            conn.executemany(_LEASE, [(owner, until, now, row[0], row[1]) for row in rows])
        rows.sort(key=lambda row: (row[9], row[0], row[1]))
        return [_job(row, owner) for row in rows]

    def complete(
        self,
        outcomes: Sequence[Outcome],
        now: float,
        new: Sequence[NewMessage] = (),
        warnings: Sequence[tuple[str, NewMessage]] = (),
    ) -> list[str]:
        with self._write() as conn:
            hops: list[Row] = []
            for outcome in outcomes:
                hop = _apply(conn, outcome, now)
                if hop is not None:
                    hops.append(hop)
            conn.executemany(_INSERT_HOP, hops)
            first = [w for m, w in warnings if conn.execute(_WARN_ONCE, (m,)).rowcount]
            added = [*new, *first]
            return _insert_messages(conn, added, now) if added else []

    def set_state(self, message_ids: Sequence[str], state: str, now: float) -> int:
        if state not in _ADMIN:
            raise ValueError(f"unknown state action {state!r}; expected one of {sorted(_ADMIN)}")
        sql = _ADMIN[state] + _ADMIN_RETURNING
        changed, files = 0, []
        with self._write() as conn:
            for message_id in dict.fromkeys(message_ids):
                rows = conn.execute(sql, _admin_params(state, message_id, now)).fetchall()
                hops = [(message_id, r[0], r[1], now, state, r[2], "admin") for r in rows]
                conn.executemany(_INSERT_HOP, hops)
                changed += len(rows)
                if state == "delete":
                    files += _drop_unused(conn, [message_id])
        spool.remove(self.spool, files)
        return changed

    def renew(self, jobs: Sequence[Job], until: float) -> int:
        with self._write() as conn:
            params = [(until, job.message_id, job.rcpt_id, job.owner) for job in jobs]
            return conn.executemany(_RENEW, params).rowcount

    def owners(self, queue: str) -> set[str]:
        return {row[0] for row in self._conn.execute(_OWNERS, (queue,)).fetchall()}

    def release_owner(self, queue: str, owner: str, now: float) -> int:
        with self._write() as conn:
            return conn.execute(_RELEASE_OWNER, (now, queue, owner)).rowcount

    def check(self) -> str:
        """SQLite's quick check of the whole file: "ok", or what is damaged."""
        rows = self._conn.execute("PRAGMA quick_check").fetchall()
        return "; ".join(str(row[0]) for row in rows[:5])

    def version(self) -> int:
        return schema.version(self._conn)

    def heartbeat(self, name: str, owner: str, now: float) -> None:
        with self._write() as conn:
            conn.execute(_HEARTBEAT, (name, owner, now))

    def forget(self, name: str, owner: str) -> None:
        with self._write() as conn:
            conn.execute(_FORGET, (name, owner))

    def alive(self, since: float) -> set[str]:
        return {row[0] for row in self._conn.execute(_ALIVE, (since,)).fetchall()}

    def requeue(
        self, queue: str, origins: Sequence[str], now: float, dead: Sequence[str] = ()
    ) -> int:
        if not origins:
            return 0
        sql = _REQUEUE.format(", ".join("?" * len(dead)), ", ".join("?" * len(origins)))
        with self._write() as conn:
            rows = conn.execute(sql, (now, queue, now, *dead, *origins)).fetchall()
            hops = [(r[0], r[1], r[2], now, "requeue", r[3], f"from {queue}") for r in rows]
            conn.executemany(_INSERT_HOP, hops)
        return len(rows)

    def purge(
        self, before: float, now: float | None = None, traces_before: float | None = None
    ) -> int:
        removed = _chunked(lambda: self._purge_final(before))
        _chunked(lambda: self._purge_hops(before if traces_before is None else traces_before))
        self._remove_orphans((time.time() if now is None else now) - ORPHAN_GRACE)
        return removed

    def _purge_final(self, before: float) -> int:
        """One chunk of final jobs, and the messages (and files) only they used."""
        with self._write() as conn:
            removed = [row[0] for row in conn.execute(_PURGE_JOBS, (before, PURGE_CHUNK))]
            files = _drop_unused(conn, list(dict.fromkeys(removed)))
        spool.remove(self.spool, files)
        return len(removed)

    def _purge_hops(self, before: float) -> int:
        with self._write() as conn:
            return int(conn.execute(_PURGE_HOPS, (before, PURGE_CHUNK)).rowcount)

    def _remove_orphans(self, older_than: float) -> None:
        """Spool files no message names: a crash came between writing one and
        committing its message (it was never acknowledged nor delivered)."""
        for path in spool.orphans(self.spool, self._names_file, older_than):
            path.unlink(missing_ok=True)

    def _names_file(self, name: str) -> bool:
        """Does a committed message name the spool file `name` (its queue id)?"""
        return self._conn.execute(_NAMES_FILE, (name, name)).fetchone() is not None

    # -- reads --------------------------------------------------------------

    def content(self, message_id: str) -> bytes:
        with self.open_content(message_id) as file:
            return file.read()

    def open_content(self, message_id: str) -> BinaryIO:
        row = self._conn.execute(_CONTENT, (message_id,)).fetchone()
        if row is None:
            raise KeyError(message_id)
        return self._opened(row)

    def _opened(self, row: Row) -> BinaryIO:
        """A (content_file, content, size) row's content, to read; DamagedMessage
        when it is not all there (a lost or cut spool file, a damaged row)."""
        file, content, size = row
        if file is None:
            found = len(content)
        else:
            path = self.spool / str(file)
            found = path.stat().st_size if path.is_file() else -1
        if found != size:
            raise DamagedMessage(f"content is {found} bytes, the message had {size}")
        return io.BytesIO(content) if file is None else path.open("rb")

    def queue(
        self, states: Sequence[str] = (), limit: int = 1000, after: QueueKey | None = None
    ) -> list[QueueEntry]:
        wanted = tuple(dict.fromkeys(states)) or NON_FINAL
        unknown = set(wanted) - set(STATES)
        if unknown:
            raise ValueError(f"unknown states {sorted(unknown)}")
        if limit <= 0:
            return []
        start = _QUEUE_START if after is None else after
        sql = " UNION ALL ".join([_QUEUE_STATE] * len(wanted)) + _QUEUE_MERGE
        params = [value for state in wanted for value in (state, *start, limit)]
        rows = self._conn.execute(sql, (*params, limit)).fetchall()
        return [QueueEntry(*row) for row in rows]

    def mailbox(self, mailbox: str) -> list[MailboxEntry]:
        rows = self._conn.execute(_MAILBOX, (mailbox,)).fetchall()
        return [MailboxEntry(*row) for row in rows]

    def mailbox_content(self, mailbox: str, entry_id: int) -> bytes | None:
        file = self.open_mailbox_content(mailbox, entry_id)
        if file is None:
            return None
        with file:
            return file.read()

    def open_mailbox_content(self, mailbox: str, entry_id: int) -> BinaryIO | None:
        row = self._conn.execute(_MAILBOX_CONTENT, (mailbox, entry_id)).fetchone()
        return None if row is None else self._opened(row)

    def hops(self, message_id: str) -> list[Hop]:
        rows = self._conn.execute(_HOPS, (message_id,)).fetchall()
        return [Hop(*row) for row in rows]

    def due(self, queue: str, now: float) -> bool:
        """Is anything in `queue` claimable? A read: it never waits for writers."""
        return bool(self._conn.execute(_DUE, (queue, now)).fetchone()[0])

    def counts(self) -> dict[str, int]:
        found = dict(self._conn.execute(_COUNTS).fetchall())
        return {state: int(found.get(state, 0)) for state in STATES}

    def pending(self, queue: str, now: float | None = None) -> int:
        when = time.time() if now is None else now
        return int(self._conn.execute(_PENDING, (queue, when)).fetchone()[0])

    def close(self) -> None:
        self._conn.close()


def _job(row: Row, owner: str) -> Job:
    """A Job from a claim row (_JOB_COLUMNS) and the owner that claimed it."""
    *fields, warned, hop_count = row
    return Job(*fields, owner, bool(warned), int(hop_count))  # type: ignore[call-arg]


def fair_pick(
    expired: list[Row], incoming: list[Row], deferred: list[Row], limit: int
) -> list[Row]:
    """Expired leases first, then fresh and due-retry jobs sharing the room
    (fresh get at least half, rounded up; unused share goes to the other)."""
    picked = expired[:limit]
    room = limit - len(picked)
    fresh = min(len(incoming), max(room - len(deferred), (room + 1) // 2))
    return picked + incoming[:fresh] + deferred[: room - fresh]


def _admin_params(action: str, message_id: str, now: float) -> tuple[object, ...]:
    if action == "delete":
        return (message_id,)
    if action == "flush":
        return (now, now, message_id)
    return (now, message_id)


def _insert_messages(
    conn: sqlite3.Connection, messages: Sequence[NewMessage], now: float
) -> list[str]:
    """Write messages, one incoming job and one "received" hop per recipient."""
    ids = [msg.queue_id or QUEUE_IDS.next() for msg in messages]
    message_rows, job_rows, hop_rows = [], [], []
    for message_id, msg in zip(ids, messages):
        if not msg.recipients:
            raise ValueError("a message needs at least one recipient")
        file, size = None, len(msg.content)
        if msg.content_file is not None:
            file, size = msg.content_file.name, msg.content_file.stat().st_size
        message_rows.append(
            (message_id, msg.sender, size, now, msg.location, msg.origin, msg.received_by,
             msg.hop_count, file, msg.content)
        )
        for rcpt_id, rcpt in enumerate(msg.recipients):
            job_rows.append(
                (message_id, rcpt_id, rcpt.address, rcpt.mailbox, msg.location, now, now)
            )
            hop_rows.append(
                (message_id, rcpt_id, rcpt.address, now, "received", msg.location, msg.received_by)
            )
    conn.executemany(_INSERT_MESSAGE, message_rows)
    conn.executemany(_INSERT_JOB, job_rows)
    conn.executemany(_INSERT_HOP, hop_rows)
    return ids


def _chunked(step: Callable[[], int]) -> int:
    """Repeat `step` (one transaction deleting at most PURGE_CHUNK rows) until it
    deletes fewer; returns the rows deleted in all."""
    total = count = step()
    while count == PURGE_CHUNK:
        count = step()
        total += count
    return total


def _drop_unused(conn: sqlite3.Connection, message_ids: list[str]) -> list[str]:
    """Delete the messages nothing refers to; the spool files to remove once committed."""
    files = []
    for message_id in message_ids:
        files += [row[0] for row in conn.execute(_DROP_UNUSED_MESSAGE, (message_id,)) if row[0]]
    return files


def _apply(conn: sqlite3.Connection, outcome: Outcome, now: float) -> Row | None:
    """Apply one outcome; returns its hop row, or None when it changed nothing
    (the job is already final, or gone)."""
    job = outcome.job
    key = (job.message_id, job.rcpt_id)
    if isinstance(outcome, Moved):
        changed = conn.execute(_MOVED, (outcome.to, outcome.queue, now, *key)).rowcount
        detail = f"from {job.location} to queue {outcome.queue}"
        return (*key, job.address, now, "moved", outcome.to, detail) if changed else None
    if isinstance(outcome, Delivered):
        return _delivered(conn, outcome, now)
    if isinstance(outcome, Deferred):
        params = (now, outcome.retry_at, outcome.relay, outcome.reply, now, *key)
        changed = conn.execute(_DEFERRED, params).rowcount
        return _outcome_hop(job, now, "deferred", outcome.relay, outcome.reply) if changed else None
    if isinstance(outcome, Bounced):
        changed = conn.execute(_BOUNCED, (now, outcome.relay, outcome.reply, now, *key)).rowcount
        return _outcome_hop(job, now, "bounced", outcome.relay, outcome.reply) if changed else None
    raise TypeError(f"not an outcome: {outcome!r}")


def _delivered(conn: sqlite3.Connection, outcome: Delivered, now: float) -> Row | None:
    job = outcome.job
    params = (now, outcome.relay, outcome.reply, now, job.message_id, job.rcpt_id)
    if not conn.execute(_DELIVERED, params).rowcount:
        return None
    if job.mailbox is not None:
        conn.execute(_INSERT_MAILBOX, (job.mailbox, job.message_id, now))
        postoffice = job.mailbox.split("/", 1)[0]  # where the last move brought it
        detail = f"mailbox {job.mailbox}"
        return (job.message_id, job.rcpt_id, job.address, now, "delivered", postoffice, detail)
    return _outcome_hop(job, now, "delivered", outcome.relay, outcome.reply)


def _outcome_hop(job: Job, now: float, event: str, relay: str, reply: str) -> Row:
    detail = f"relay={relay} {reply}" if relay else reply
    return (job.message_id, job.rcpt_id, job.address, now, event, job.location, detail)
