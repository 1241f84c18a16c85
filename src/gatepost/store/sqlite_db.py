"""SqliteDb: the store's reads and writes on one SQLite file, synchronous.

Does: every read and write of mail state on one machine, in WAL mode; every
write is one BEGIN IMMEDIATE transaction, so two processes never both claim
a job. The statements are in `sqlite.sql`, the schema in `schema.py`; the
async Store over this is `sqlite.SqliteStore`. Callers pass `now` (wall
clock); leases and heartbeats count on `clock.lease` (seconds since this
boot; `boot` names the boot, and a new one ends every lease).

Durability: `enqueue` (what a 250 or a printed queue id acknowledges)
commits with synchronous=FULL, so the WAL is fsync'ed before it returns, and
that fsync also covers every earlier transaction. Other writes (claims,
outcomes, admin actions) commit with synchronous=NORMAL: they survive a
process crash (the OS has the pages) and, after a power loss, at worst roll
back to an earlier state that is then redone: a move or delivery made
again, never a message lost. Large content is a spool file (`spool.py`) that
the message row names: the file is fsync'ed by its writer and its folder
here before the enqueue commits, and removed after the commit that drops the row.
Must not know: topology, SMTP, retry policy.

Claim fairness: a claim first takes jobs whose lease expired (they were
already due), then splits the remaining room between fresh (incoming) jobs
and deferred jobs whose retry time has come: fresh jobs get at least half
(rounded up) and either side takes what the other leaves unused.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from . import queries, schema, spool
from .base import (
    ADMIN_ACTIONS,
    AFTER_ATTEMPT,
    AT_ONCE,
    BY_ADMIN,
    CANCELLED,
    NON_FINAL,
    STATES,
    WAITS,
    WITHDRAWN,
    Bounced,
    Cancelled,
    Changes,
    Deferred,
    Delivered,
    Held,
    Hop,
    Job,
    JobKey,
    MailboxEntry,
    Moved,
    NewMessage,
    Outcome,
    QueueEntry,
    QueueKey,
    Renewal,
    ended_it,
    stronger,
)
from .clock import Clock, boot_id
from .connect import begin, opened
from .ids import QUEUE_IDS
from .spool import ORPHAN_GRACE

Row = tuple[Any, ...]
Q = queries.load("sqlite.sql")
PURGE_CHUNK = 5000  # rows deleted per transaction: a purge never holds the write lock long
_QUEUE_START: QueueKey = (float("-inf"), "", -1)  # before every job

@dataclass(frozen=True, slots=True)
class Renew:
    """One attempt's renewal: its jobs, for `lease` more seconds."""

    jobs: Sequence[Job]
    lease: float


@dataclass(frozen=True, slots=True)
class Complete:
    """One attempt's outcomes, with the messages (reports) they call for."""

    outcomes: Sequence[Outcome]
    new: Sequence[NewMessage] = ()
    warnings: Sequence[tuple[str, NewMessage]] = ()


class DamagedMessage(Exception):
    """A message's content is not what was stored: it must not go out in part."""


class SqliteDb:
    """The store on one SQLite file. Use one instance per thread at a time."""

    def __init__(self, path: Path, clock: Clock | None = None, migrate: bool = True) -> None:
        """`migrate`: upgrade an older schema (only `gatepost run` should)."""
        self.path = Path(path)
        self.spool = spool.folder_of(self.path)
        self.clock = clock or Clock()
        self._conn = opened(self.path, lambda conn: prepare(conn, migrate))

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

    # -- intake -------------------------------------------------------------

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

    # -- workers ------------------------------------------------------------

    def claim(self, queue: str, owner: str, limit: int, lease: float, now: float) -> list[Job]:
        """Lease up to `limit` jobs of `queue` to one new attempt (see base.Workers)."""
        if limit <= 0:
            return []
        token, files = uuid.uuid4().hex, []
        with self._write() as conn:
            lease_now = self.clock.lease()
            for key in conn.execute(Q["expired_pending"], (queue, lease_now)).fetchall():
                files += _end_attempt(conn, tuple(key), now)
            expired = conn.execute(Q["claim_expired"], (queue, lease_now, limit)).fetchall()
            incoming = conn.execute(Q["claim_incoming"], (queue, limit)).fetchall()
            deferred = conn.execute(Q["claim_deferred"], (queue, now, limit)).fetchall()
            rows = fair_pick(expired, incoming, deferred, limit)
            until = lease_now + lease
            conn.executemany(Q["lease"], [(owner, token, until, now, r[0], r[1]) for r in rows])
        spool.remove(self.spool, files)
        rows.sort(key=lambda row: (row[9], row[0], row[1]))
        return [_job(row, owner, token) for row in rows]

    def renew(self, jobs: Sequence[Job], lease: float) -> Renewal:
        renewal = self.write_all([Renew(jobs, lease)], time.time())[0]
        assert isinstance(renewal, Renewal)
        return renewal

    def complete(
        self,
        outcomes: Sequence[Outcome],
        now: float,
        new: Sequence[NewMessage] = (),
        warnings: Sequence[tuple[str, NewMessage]] = (),
    ) -> list[str]:
        ids = self.write_all([Complete(outcomes, new, warnings)], now)[0]
        assert isinstance(ids, list)
        return ids

    def write_all(self, work: Sequence[Renew | Complete], now: float) -> list[Renewal | list[str]]:
        """Several attempts' renewals and outcomes in one transaction: for each, its
        Renewal, or the ids of the new messages its outcomes called for."""
        files: list[str] = []
        results: list[Renewal | list[str]] = []
        with self._write() as conn:
            for each in work:
                if isinstance(each, Renew):
                    results.append(_renew(conn, each.jobs, self.clock.lease() + each.lease))
                    continue
                files += [f for outcome in each.outcomes for f in _apply(conn, outcome, now)]
                first = [w for m, w in each.warnings if conn.execute(Q["warn_once"], (m,)).rowcount]
                added = [*each.new, *first]
                ids = _insert_messages(conn, added, now) if added else []
                results.append(ids[: len(each.new)])
        spool.remove(self.spool, files)
        return results

    def owners(self, queue: str) -> set[str]:
        return {row[0] for row in self._conn.execute(Q["owners"], (queue,)).fetchall()}

    def release_owner(self, queue: str, owner: str, now: float) -> int:
        with self._write() as conn:
            rows = conn.execute(Q["owned_rows"], (queue, owner)).fetchall()
            files = self._hand_back(conn, rows, now, Q["to_incoming"], None)
        spool.remove(self.spool, files)
        return len(rows)

    def requeue(
        self, queue: str, origins: Sequence[str], now: float, dead: Sequence[str] = ()
    ) -> int:
        if not origins:
            return 0
        params = (queue, self.clock.lease(), json.dumps(list(dead)), json.dumps(list(origins)))
        with self._write() as conn:
            rows = conn.execute(Q["failover_rows"], params).fetchall()
            files = self._hand_back(conn, rows, now, Q["to_router"], ("requeue", f"from {queue}"))
        spool.remove(self.spool, files)
        return len(rows)

    def _hand_back(
        self, conn: sqlite3.Connection, rows: list[Row], now: float, sql: str,
        hop: tuple[str, str] | None,
    ) -> list[str]:
        """Give back jobs (message_id, rcpt_id, address, location, pending) whose
        attempt ended without an outcome; one with an admin action waiting gets it."""
        files: list[str] = []
        for message_id, rcpt_id, address, location, pending in rows:
            if pending:
                files += _end_attempt(conn, (message_id, rcpt_id), now)
                continue
            conn.execute(sql, (now, message_id, rcpt_id))
            if hop is not None:
                _hop(conn, (message_id, rcpt_id, address, location), now, *hop)
        return files

    def heartbeat(self, name: str, owner: str) -> None:
        with self._write() as conn:
            conn.execute(Q["heartbeat"], (name, owner, self.clock.lease()))

    def forget(self, name: str, owner: str) -> None:
        with self._write() as conn:
            conn.execute(Q["forget"], (name, owner))

    def alive(self, within: float) -> set[str]:
        since = self.clock.lease() - within
        return {row[0] for row in self._conn.execute(Q["alive"], (since,)).fetchall()}

    def due(self, queue: str, now: float) -> bool:
        """Is anything in `queue` claimable? A read: it never waits for writers."""
        params = (queue, now, self.clock.lease())
        return bool(self._conn.execute(Q["due"], params).fetchone()[0])

    def purge(
        self, before: float, now: float | None = None, traces_before: float | None = None
    ) -> int:
        """Forget final jobs last changed before `before` (wall clock) and what
        only they used; trace rows before `traces_before` (default `before`);
        spool files no message names, an hour older than `now`."""
        removed = _chunked(lambda: self._purge_final(before))
        _chunked(lambda: self._purge_hops(before if traces_before is None else traces_before))
        self._remove_orphans((time.time() if now is None else now) - ORPHAN_GRACE)
        return removed

    def _purge_final(self, before: float) -> int:
        """One chunk of final jobs, and the messages (and files) only they used."""
        with self._write() as conn:
            removed = [row[0] for row in conn.execute(Q["purge_jobs"], (before, PURGE_CHUNK))]
            files = _drop_unused(conn, list(dict.fromkeys(removed)))
        spool.remove(self.spool, files)
        return len(removed)

    def _purge_hops(self, before: float) -> int:
        with self._write() as conn:
            return int(conn.execute(Q["purge_hops"], (before, PURGE_CHUNK)).rowcount)

    def _remove_orphans(self, older_than: float) -> None:
        """Spool files no message names: a crash came between writing one and
        committing its message (it was never acknowledged nor delivered)."""
        for path in spool.orphans(self.spool, self._names_file, older_than):
            path.unlink(missing_ok=True)

    def _names_file(self, name: str) -> bool:
        """Does a committed message name the spool file `name` (its queue id)?"""
        return self._conn.execute(Q["names_file"], (name, name)).fetchone() is not None

    # -- admin --------------------------------------------------------------

    def set_state(self, message_ids: Sequence[str], action: str, now: float) -> Changes:
        if action not in ADMIN_ACTIONS:
            raise ValueError(f"unknown action {action!r}; expected one of {list(ADMIN_ACTIONS)}")
        changes, files = Changes(), list[str]()
        with self._write() as conn:
            for message_id in dict.fromkeys(message_ids):
                for row in conn.execute(Q["admin_rows"], (message_id,)).fetchall():
                    changed, removed = _admin(conn, action, (message_id, *row), now)
                    changes, files = changes + changed, files + removed
        spool.remove(self.spool, files)
        return changes

    def check(self) -> str:
        """SQLite's quick check of the whole file: "ok", or what is damaged."""
        rows = self._conn.execute("PRAGMA quick_check").fetchall()
        return "; ".join(str(row[0]) for row in rows[:5])

    def version(self) -> int:
        return schema.version(self._conn)

    # -- reads --------------------------------------------------------------

    def content(self, message_id: str) -> bytes:
        with self.open_content(message_id) as file:
            return file.read()

    def open_content(self, message_id: str) -> BinaryIO:
        row = self._conn.execute(Q["content"], (message_id,)).fetchone()
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
        sql = " UNION ALL ".join([Q["queue_state"]] * len(wanted)) + " " + Q["queue_merge"]
        params = [value for state in wanted for value in (state, *start, limit)]
        rows = self._conn.execute(sql, (*params, limit)).fetchall()
        return [QueueEntry(*row) for row in rows]

    def mailbox(self, mailbox: str) -> list[MailboxEntry]:
        rows = self._conn.execute(Q["mailbox"], (mailbox,)).fetchall()
        return [MailboxEntry(*row) for row in rows]

    def mailbox_content(self, mailbox: str, entry_id: int) -> bytes | None:
        file = self.open_mailbox_content(mailbox, entry_id)
        if file is None:
            return None
        with file:
            return file.read()

    def open_mailbox_content(self, mailbox: str, entry_id: int) -> BinaryIO | None:
        row = self._conn.execute(Q["mailbox_content"], (mailbox, entry_id)).fetchone()
        return None if row is None else self._opened(row)

    def hops(self, message_id: str) -> list[Hop]:
        rows = self._conn.execute(Q["hops"], (message_id,)).fetchall()
        return [Hop(*row) for row in rows]

    def counts(self) -> dict[str, int]:
        found = dict(self._conn.execute(Q["counts"]).fetchall())
        return {state: int(found.get(state, 0)) for state in STATES}

    def pending(self, queue: str, now: float) -> int:
        return int(self._conn.execute(Q["pending"], (queue, now)).fetchone()[0])

    def close(self) -> None:
        self._conn.close()


class StoreBehind(Exception):
    """The store's schema is older than this code, and this opener may not upgrade it."""


def prepare(conn: sqlite3.Connection, migrate: bool = True) -> None:
    """Check (and, when `migrate`, upgrade) the schema; after a reboot, end the
    last boot's leases. Only a known boot id, different from the stored one,
    counts as a reboot: a process that cannot tell its boot changes nothing."""
    found = schema.version(conn)
    if 0 < found < schema.VERSION:
        if not migrate:
            raise StoreBehind(f"store schema {found} is older than this gatepost's "
                              f"({schema.VERSION}); `gatepost run` upgrades it")
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
            for statement in statements if stored else statements[2:]:  # first boot: no leases
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


def _renew(conn: sqlite3.Connection, jobs: Sequence[Job], until: float) -> Renewal:
    held: set[JobKey] = set()
    pending: dict[JobKey, str] = {}
    for job in jobs:
        key = (job.message_id, job.rcpt_id)
        row = conn.execute(Q["renew"], (until, *key, job.token)).fetchone()
        if row is not None:
            held.add(key)
            if row[0]:
                pending[key] = row[0]
    return Renewal(frozenset(held), pending)


def _stored_boot(conn: sqlite3.Connection) -> str | None:
    row = conn.execute(Q["boot"]).fetchone()
    return None if row is None else str(row[0])


def _job(row: Row, owner: str, token: str) -> Job:
    """A Job from a claim row (job_columns) and the attempt that claimed it."""
    *fields, warned, hop_count = row
    return Job(*fields, owner, token, bool(warned), int(hop_count))  # type: ignore[call-arg]


def fair_pick(
    expired: list[Row], incoming: list[Row], deferred: list[Row], limit: int
) -> list[Row]:
    """Expired leases first, then fresh and due-retry jobs sharing the room
    (fresh get at least half, rounded up; unused share goes to the other)."""
    picked = expired[:limit]
    room = limit - len(picked)
    fresh = min(len(incoming), max(room - len(deferred), (room + 1) // 2))
    return picked + incoming[:fresh] + deferred[: room - fresh]


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
    conn.executemany(Q["insert_message"], message_rows)
    conn.executemany(Q["insert_job"], job_rows)
    conn.executemany(Q["insert_hop"], hop_rows)
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
        rows = conn.execute(Q["drop_unused_message"], (message_id,))
        files += [row[0] for row in rows if row[0]]
    return files


def _hop(
    conn: sqlite3.Connection, where: tuple[str, int, str, str], now: float, event: str, detail: str
) -> None:
    """A trace row for the job (message_id, rcpt_id, address, location)."""
    message_id, rcpt_id, address, location = where
    conn.execute(Q["insert_hop"], (message_id, rcpt_id, address, now, event, location, detail))


def _do(conn: sqlite3.Connection, action: str, key: JobKey, now: float) -> list[str]:
    """Apply an admin action to one job; the spool files to remove once committed."""
    if action == "delete":
        conn.execute(Q["delete_job"], key)
        return _drop_unused(conn, [key[0]])
    sql = {"hold": "to_hold", "requeue": "to_router", "release": "to_incoming"}[action]
    conn.execute(Q[sql], (now, *key))
    return []


def _end_attempt(
    conn: sqlite3.Connection, key: JobKey, now: float, detail: str = AFTER_ATTEMPT
) -> list[str]:
    """The attempt on `key` is over without a final outcome: apply the admin
    action that waited for it (or give the job back when none waits)."""
    row = conn.execute(Q["job_for_outcome"], ("", *key)).fetchone()
    if row is None:
        return []
    _, _, pending, location, address = row
    if not pending:
        conn.execute(Q["to_incoming"], (now, *key))
        return []
    return _waited(conn, pending, (*key, address, location), now, detail)


def _waited(
    conn: sqlite3.Connection, action: str, where: tuple[str, int, str, str], now: float,
    detail: str = AFTER_ATTEMPT,
) -> list[str]:
    """Apply the admin action that waited for the attempt on a job (message_id,
    rcpt_id, address, location), with its trace row; spool files to remove."""
    _hop(conn, where, now, action, detail)
    return _do(conn, action, (where[0], where[1]), now)


def _admin(
    conn: sqlite3.Connection, action: str, row: Row, now: float
) -> tuple[Changes, list[str]]:
    """An admin action on one job row (message_id, rcpt_id, address, location,
    state, pending): now, later (it waits for the attempt), or not at all; and
    the spool files to remove once committed."""
    message_id, rcpt_id, address, location, state, pending = row
    where, key = (message_id, rcpt_id, address, location), (message_id, rcpt_id)
    if state == "active":
        if action in AT_ONCE:
            if pending is not None and stronger(pending, action) == pending:
                return Changes(), []  # what already waits does as much or more
            conn.execute(Q["set_pending"], (action, *key))
            _hop(conn, where, now, f"{action} requested", WAITS)
            return Changes(later=1), []
        if action == "release" and pending == "hold":
            conn.execute(Q["set_pending"], (None, *key))
            _hop(conn, where, now, "release", WITHDRAWN)
            return Changes(now=1), []
        return Changes(), []
    applies = {**AT_ONCE, "release": ("hold",), "flush": ("deferred",)}
    if state not in applies[action]:
        return Changes(), []
    _hop(conn, where, now, action, BY_ADMIN)
    if action == "flush":
        conn.execute(Q["flush"], (now, now, *key))
        return Changes(now=1), []
    return Changes(now=1), _do(conn, action, key, now)


def _apply(conn: sqlite3.Connection, outcome: Outcome, now: float) -> list[str]:
    """Apply one outcome (rule: see base); returns spool files to remove."""
    job = outcome.job
    key = (job.message_id, job.rcpt_id)
    row = conn.execute(Q["job_for_outcome"], (job.token, *key)).fetchone()
    if row is None or row[0] in ("delivered", "bounced"):
        return []
    state, mine, pending, _, _ = row
    where = (job.message_id, job.rcpt_id, job.address, job.location)
    if isinstance(outcome, Delivered | Bounced):
        _final(conn, outcome, now)
        if pending:
            ended = "delivered" if isinstance(outcome, Delivered) else "bounced"
            _hop(conn, where, now, f"{pending} dropped", ended_it(ended))
        return []
    if state != "active" or not mine:  # a stale attempt: a newer one holds the job
        return []
    if isinstance(outcome, Cancelled):
        return _end_attempt(conn, key, now, CANCELLED)
    if isinstance(outcome, Held):
        if pending == "delete":
            return _waited(conn, pending, where, now)
        conn.execute(Q["to_hold"], (now, *key))
        _hop(conn, where, now, "hold", outcome.why)
        return []
    if isinstance(outcome, Moved):
        conn.execute(Q["moved"], (outcome.to, outcome.queue, now, *key))
        where = (*key, job.address, outcome.to)
        _hop(conn, where, now, "moved", f"from {job.location} to queue {outcome.queue}")
    elif isinstance(outcome, Deferred):
        conn.execute(Q["deferred"], (now, outcome.retry_at, outcome.relay, outcome.reply, now, *key))
        _hop(conn, where, now, "deferred", _detail(outcome.relay, outcome.reply))
    else:
        raise TypeError(f"not an outcome: {outcome!r}")
    return _waited(conn, pending, where, now) if pending else []


def _final(conn: sqlite3.Connection, outcome: Delivered | Bounced, now: float) -> None:
    job = outcome.job
    key = (job.message_id, job.rcpt_id)
    sql = Q["delivered"] if isinstance(outcome, Delivered) else Q["bounced"]
    conn.execute(sql, (now, outcome.relay, outcome.reply, now, *key))
    where = (job.message_id, job.rcpt_id, job.address, job.location)
    if isinstance(outcome, Delivered) and job.mailbox is not None:
        conn.execute(Q["insert_mailbox"], (job.mailbox, job.message_id, now))
        postoffice = job.mailbox.split("/", 1)[0]  # where the last move brought it
        _hop(conn, (*where[:3], postoffice), now, "delivered", f"mailbox {job.mailbox}")
        return
    event = "delivered" if isinstance(outcome, Delivered) else "bounced"
    _hop(conn, where, now, event, _detail(outcome.relay, outcome.reply))


def _detail(relay: str, reply: str) -> str:
    return f"relay={relay} {reply}" if relay else reply
