"""SqlDb: the store's reads and writes in SQL, synchronous, for any SQL backend.

Does: every read and write of mail state, each write one transaction, with
the rules of `base` (leases per attempt, outcomes, admin actions waiting for
an attempt, fair claims, purge). The statements are named; each backend has
its own file of them (`sqlite.sql`, `postgres.sql`) with the same names and
parameters, and its own subclass that opens the connection, begins and ends
transactions (`_write`), tells the lease clock (`lease_now`) and keeps large
content (`_keep_content`, `_opened`). The async Store over this is
`threaded.ThreadedStore`. Must not know: topology, SMTP, retry policy.

Claim fairness: a claim first takes jobs whose lease expired (they were
already due), then splits the remaining room between fresh (incoming) jobs
and deferred jobs whose retry time has come: fresh jobs get at least half
(rounded up) and either side takes what the other leaves unused.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from .base import (
    ADMIN_ACTIONS,
    AFTER_ATTEMPT,
    AT_ONCE,
    BY_ADMIN,
    CANCELLED,
    FINAL,
    NON_FINAL,
    ROUTER,
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
from .clock import Clock
from .ids import QUEUE_IDS
from .spool import ORPHAN_GRACE

Row = tuple[Any, ...]
PURGE_CHUNK = 5000  # rows deleted per transaction: a purge never holds locks long
_QUEUE_START: QueueKey = (float("-inf"), "", -1)  # before every job


class Cursor(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Tx:
    """A connection in one transaction (or in autocommit, for reads), with the
    backend's statements by name."""

    def __init__(
        self, execute: Callable[..., Any], executemany: Callable[..., Any], q: dict[str, str],
    ) -> None:
        self._execute = execute
        self._executemany = executemany
        self.q = q
        self.hops: list[tuple[Any, ...]] = []  # trace rows, written together at the end

    def hop(self, row: tuple[Any, ...]) -> None:
        """A trace row (insert_hop's parameters), written by `take_hops`'s caller
        before the commit: one statement for a transaction's trace."""
        self.hops.append(row)

    def take_hops(self) -> list[tuple[Any, ...]]:
        rows, self.hops = self.hops, []
        return rows

    def execute(self, name: str, params: Sequence[Any] = ()) -> Cursor:
        return cast(Cursor, self._execute(self.q[name], params))

    def sql(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return cast(Cursor, self._execute(sql, params))

    def executemany(self, name: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._executemany(self.q[name], rows)


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


class StoreBehind(Exception):
    """The store's schema is older than this code, and this opener may not upgrade it."""

    @classmethod
    def older(cls, found: int, version: int) -> StoreBehind:
        return cls(f"store schema {found} is older than this gatepost's ({version}); "
                   "`gatepost run` upgrades it")


class DamagedMessage(Exception):
    """A message's content is not what was stored: it must not go out in part."""


class SqlDb:
    """The store's logic over one connection. Use one instance per thread at a time."""

    spool: Path  # where large content is written before it is enqueued
    clock: Clock

    # -- what a backend provides ---------------------------------------------

    def _write(self, durable: bool = False) -> AbstractContextManager[Tx]:
        """One write transaction; `durable`: on disk before it returns."""
        raise NotImplementedError

    def _read(self) -> Tx:
        """The connection for reads outside a write transaction."""
        raise NotImplementedError

    def lease_now(self, tx: Tx) -> float:
        """The lease clock now (seconds), as every process of the network reads it."""
        raise NotImplementedError

    def _staged(self, messages: Sequence[NewMessage]) -> None:
        """Before the commit: the spooled content of `messages` is all written."""

    def _keep_content(self, tx: Tx, messages: Sequence[NewMessage], ids: Sequence[str]) -> None:
        """Store the large content (content_file) of messages just inserted."""

    def _enqueued(self, messages: Sequence[NewMessage]) -> None:
        """The messages are committed: what was staged for them may go."""

    def _opened(self, row: Row) -> BinaryIO:
        """A content row (content_file, content, size, message id) to read."""
        raise NotImplementedError

    def _lease(self, tx: Tx, keys: list[JobKey], lease: tuple[str, str, float, float]) -> None:
        """Lease the jobs `keys` to (owner, token, until, now)."""
        tx.executemany("lease", [(*lease, *key) for key in keys])

    def _outcome_rows(self, tx: Tx, outcomes: Sequence[Outcome]) -> dict[JobKey, Row]:
        """The rows outcomes apply to, read and locked at once where the backend
        can (else `_apply` reads each)."""
        return {}

    def _renew(self, tx: Tx, jobs: Sequence[Job], until: float) -> Renewal:
        """Extend to `until` the leases these jobs' token still holds."""
        return _renew(tx, jobs, until)

    def _notify(self, tx: Tx, queues: set[str]) -> None:
        """In the transaction: tell other processes, at its commit, that `queues`
        have new work (where the backend can; they poll anyway)."""

    def _remove_files(self, names: list[str]) -> None:
        """Spool files whose messages are committed gone."""

    def _remove_orphans(self, older_than: float) -> None:
        """Staged or spooled content that no message names, older than `older_than`."""

    def broken(self, error: Exception) -> bool:
        """Is the connection unusable after `error`? (The next call opens another.)"""
        return False

    def transient(self, error: Exception) -> bool:
        """Did the database roll the transaction back on its own (a deadlock, a
        serialization failure), so that running it again is safe?"""
        return False

    def check(self) -> str:
        raise NotImplementedError

    def version(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- intake -------------------------------------------------------------

    def enqueue(self, messages: Sequence[NewMessage], now: float) -> list[str]:
        if not messages:
            return []
        for msg in messages:
            if msg.content_file is not None and msg.content_file != self.spool_path(msg.queue_id):
                raise ValueError(f"{msg.content_file} is not the spool file of {msg.queue_id!r}")
        self._staged(messages)
        with self._write(durable=True) as tx:
            ids = _insert_messages(tx, messages, now)
            self._keep_content(tx, messages, ids)
            self._notify(tx, {ROUTER})
        self._enqueued(messages)
        return ids

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
        with self._write() as tx:
            lease_now = self.lease_now(tx)
            for key in tx.execute("expired_pending", (queue, lease_now)).fetchall():
                files += _end_attempt(tx, tuple(key), now)
            expired = tx.execute("claim_expired", (queue, lease_now, limit)).fetchall()
            incoming = tx.execute("claim_incoming", (queue, limit)).fetchall()
            deferred = tx.execute("claim_deferred", (queue, now, limit)).fetchall()
            rows = fair_pick(expired, incoming, deferred, limit)
            until = lease_now + lease
            self._lease(tx, [(r[0], r[1]) for r in rows], (owner, token, until, now))
        self._remove_files(files)
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
        with self._write() as tx:
            lease_now = self.lease_now(tx) if any(isinstance(w, Renew) for w in work) else 0.0
            woken: set[str] = set()
            for each in work:
                if isinstance(each, Renew):
                    results.append(self._renew(tx, each.jobs, lease_now + each.lease))
                    continue
                found = self._outcome_rows(tx, each.outcomes)
                files += [f for outcome in each.outcomes for f in _apply(tx, outcome, now, found)]
                first = [w for m, w in each.warnings
                         if tx.execute("warn_once", (m,)).fetchone() is not None]
                added = [*each.new, *first]
                ids = _insert_messages(tx, added, now, once=True) if added else []
                results.append(ids[: len(each.new)])
                woken |= {o.queue for o in each.outcomes if isinstance(o, Moved)}
                woken |= {ROUTER} if added else set()
            self._notify(tx, woken)
        self._remove_files(files)
        return results

    def owners(self, queue: str) -> set[str]:
        return {row[0] for row in self._read().execute("owners", (queue,)).fetchall()}

    def release_owner(self, queue: str, owner: str, now: float) -> int:
        with self._write() as tx:
            rows = tx.execute("owned_rows", (queue, owner)).fetchall()
            files = _hand_back(tx, rows, now, "to_incoming", None)
        self._remove_files(files)
        return len(rows)

    def requeue(
        self, queue: str, origins: Sequence[str], now: float, dead: Sequence[str] = (),
        within: float = 0.0,
    ) -> int:
        if not origins:
            return 0
        with self._write() as tx:
            lease_now = self.lease_now(tx)
            params = (queue, lease_now, list(dead), list(origins), lease_now - within)
            rows = tx.execute("failover_rows", self.listed(params)).fetchall()
            files = _hand_back(tx, rows, now, "to_router", ("requeue", f"from {queue}"))
            self._notify(tx, {ROUTER} if rows else set())
        self._remove_files(files)
        return len(rows)

    def listed(self, params: Sequence[Any]) -> Sequence[Any]:
        """Parameters as the backend takes lists (SQLite: JSON text)."""
        return params

    def heartbeat(self, name: str, owner: str) -> None:
        with self._write() as tx:
            tx.execute("heartbeat", (name, owner, self.lease_now(tx)))

    def forget(self, name: str, owner: str) -> None:
        with self._write() as tx:
            tx.execute("forget", (name, owner))

    def alive(self, within: float) -> set[str]:
        tx = self._read()
        since = self.lease_now(tx) - within
        return {row[0] for row in tx.execute("alive", (since,)).fetchall()}

    def lead(self, duty: str, owner: str, term: float) -> bool:
        """Take or keep the duty `duty` for `term` lease-clock seconds; False when
        another owner holds it and its term has not run out."""
        with self._write() as tx:
            now = self.lease_now(tx)
            return tx.execute("lead", (duty, owner, now + term, now)).fetchone() is not None

    def resign(self, duty: str, owner: str) -> None:
        with self._write() as tx:
            tx.execute("resign", (duty, owner))

    def due(self, queue: str, now: float) -> bool:
        """Is anything in `queue` claimable? A read: it never waits for writers."""
        tx = self._read()
        return bool(tx.execute("due", (queue, now, self.lease_now(tx))).fetchone()[0])

    def purge(
        self, before: float, now: float | None = None, traces_before: float | None = None
    ) -> int:
        """Forget final jobs last changed before `before` (wall clock) and what
        only they used; trace rows before `traces_before` (default `before`);
        content no message names, ORPHAN_GRACE older than `now`."""
        removed = _chunked(lambda: self._purge_final(before))
        _chunked(lambda: self._purge_hops(before if traces_before is None else traces_before))
        self._remove_orphans((time.time() if now is None else now) - ORPHAN_GRACE)
        return removed

    def _purge_final(self, before: float) -> int:
        """One chunk of final jobs, and the messages (and files) only they used."""
        with self._write() as tx:
            removed = [row[0] for row in tx.execute("purge_jobs", (before, PURGE_CHUNK))]
            files = _drop_unused(tx, list(dict.fromkeys(removed)))
        self._remove_files(files)
        return len(removed)

    def _purge_hops(self, before: float) -> int:
        with self._write() as tx:
            return len(tx.execute("purge_hops", (before, PURGE_CHUNK)).fetchall())

    # -- admin --------------------------------------------------------------

    def set_state(self, message_ids: Sequence[str], action: str, now: float) -> Changes:
        if action not in ADMIN_ACTIONS:
            raise ValueError(f"unknown action {action!r}; expected one of {list(ADMIN_ACTIONS)}")
        changes, files = Changes(), list[str]()
        with self._write() as tx:
            for message_id in sorted(set(message_ids)):
                for row in tx.execute("admin_rows", (message_id,)).fetchall():
                    changed, removed = _admin(tx, action, (message_id, *row), now)
                    changes, files = changes + changed, files + removed
        self._remove_files(files)
        return changes

    # -- reads --------------------------------------------------------------

    def content(self, message_id: str) -> bytes:
        with self.open_content(message_id) as file:
            return file.read()

    def open_content(self, message_id: str) -> BinaryIO:
        row = self._read().execute("content", (message_id,)).fetchone()
        if row is None:
            raise KeyError(message_id)
        return self._opened(row)

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
        tx = self._read()
        sql = " UNION ALL ".join([tx.q["queue_state"]] * len(wanted)) + " " + tx.q["queue_merge"]
        params = [value for state in wanted for value in (state, *start, limit)]
        rows = tx.sql(sql, (*params, limit)).fetchall()
        return [QueueEntry(*row) for row in rows]

    def mailbox(self, mailbox: str) -> list[MailboxEntry]:
        rows = self._read().execute("mailbox", (mailbox,)).fetchall()
        return [MailboxEntry(*row) for row in rows]

    def mailbox_content(self, mailbox: str, entry_id: int) -> bytes | None:
        file = self.open_mailbox_content(mailbox, entry_id)
        if file is None:
            return None
        with file:
            return file.read()

    def open_mailbox_content(self, mailbox: str, entry_id: int) -> BinaryIO | None:
        row = self._read().execute("mailbox_content", (mailbox, entry_id)).fetchone()
        return None if row is None else self._opened(row)

    def hops(self, message_id: str) -> list[Hop]:
        rows = self._read().execute("hops", (message_id,)).fetchall()
        return [Hop(*row) for row in rows]

    def counts(self) -> dict[str, int]:
        found = dict(self._read().execute("counts").fetchall())
        return {state: int(found.get(state, 0)) for state in STATES}

    def pending(self, queue: str, now: float) -> int:
        return int(self._read().execute("pending", (queue, now)).fetchone()[0])


def _hand_back(
    tx: Tx, rows: list[Row], now: float, statement: str, hop: tuple[str, str] | None
) -> list[str]:
    """Give back jobs (message_id, rcpt_id, address, location, pending) whose
    attempt ended without an outcome; one with an admin action waiting gets it."""
    files: list[str] = []
    for message_id, rcpt_id, address, location, pending in rows:
        if pending:
            files += _end_attempt(tx, (message_id, rcpt_id), now)
            continue
        tx.execute(statement, (now, message_id, rcpt_id))
        if hop is not None:
            _hop(tx, (message_id, rcpt_id, address, location), now, *hop)
    return files


def _renew(tx: Tx, jobs: Sequence[Job], until: float) -> Renewal:
    held: set[JobKey] = set()
    pending: dict[JobKey, str] = {}
    for job in jobs:
        key = (job.message_id, job.rcpt_id)
        row = tx.execute("renew", (until, *key, job.token)).fetchone()
        if row is not None:
            held.add(key)
            if row[0]:
                pending[key] = row[0]
    return Renewal(frozenset(held), pending)


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
    tx: Tx, messages: Sequence[NewMessage], now: float, once: bool = False
) -> list[str]:
    """Write messages, one incoming job and one "received" hop per recipient.
    `once`: a message whose queue id is taken is already there (the same call
    written again after a commit whose answer was lost): it is left as it is."""
    ids = [msg.queue_id or QUEUE_IDS.next() for msg in messages]
    message_rows, job_rows, hop_rows = [], [], []
    for message_id, msg in zip(ids, messages):
        if not msg.recipients:
            raise ValueError("a message needs at least one recipient")
        file, size = None, len(msg.content)
        if msg.content_file is not None:
            file, size = msg.content_file.name, msg.content_file.stat().st_size
        row = (message_id, msg.sender, size, now, msg.location, msg.origin, msg.received_by,
               msg.hop_count, file, msg.content)
        if once and tx.execute("insert_message_once", row).fetchone() is None:
            continue
        message_rows.append(row)
        for rcpt_id, rcpt in enumerate(msg.recipients):
            job_rows.append(
                (message_id, rcpt_id, rcpt.address, rcpt.mailbox, msg.location, now, now)
            )
            hop_rows.append(
                (message_id, rcpt_id, rcpt.address, now, "received", msg.location, msg.received_by)
            )
    if not once:
        tx.executemany("insert_message", message_rows)
    tx.executemany("insert_job", job_rows)
    for hop in hop_rows:
        tx.hop(hop)
    return ids


def _chunked(step: Callable[[], int]) -> int:
    """Repeat `step` (one transaction deleting at most PURGE_CHUNK rows) until it
    deletes fewer; returns the rows deleted in all."""
    total = count = step()
    while count == PURGE_CHUNK:
        count = step()
        total += count
    return total


def _drop_unused(tx: Tx, message_ids: list[str]) -> list[str]:
    """Delete the messages nothing refers to; the spool files to remove once committed."""
    files = []
    for message_id in message_ids:
        # Locked first: two transactions that each remove one of its last
        # references (a purge, a delete) must not both see the other's and keep it.
        tx.execute("lock_message", (message_id,))
        rows = tx.execute("drop_unused_message", (message_id,))
        files += [row[0] for row in rows if row[0]]
    return files


def _hop(
    tx: Tx, where: tuple[str, int, str, str], now: float, event: str, detail: str
) -> None:
    """A trace row for the job (message_id, rcpt_id, address, location)."""
    message_id, rcpt_id, address, location = where
    tx.hop((message_id, rcpt_id, address, now, event, location, detail))


def _do(tx: Tx, action: str, key: JobKey, now: float) -> list[str]:
    """Apply an admin action to one job; the spool files to remove once committed."""
    if action == "delete":
        tx.execute("delete_job", key)
        return _drop_unused(tx, [key[0]])
    tx.execute({"hold": "to_hold", "requeue": "to_router", "release": "to_incoming"}[action], (now, *key))
    return []


def _end_attempt(
    tx: Tx, key: JobKey, now: float, detail: str = AFTER_ATTEMPT
) -> list[str]:
    """The attempt on `key` is over without a final outcome: apply the admin
    action that waited for it (or give the job back when none waits)."""
    row = tx.execute("job_for_outcome", ("", *key)).fetchone()
    if row is None:
        return []
    _, _, pending, location, address = row
    if not pending:
        tx.execute("to_incoming", (now, *key))
        return []
    return _waited(tx, pending, (*key, address, location), now, detail)


def _waited(
    tx: Tx, action: str, where: tuple[str, int, str, str], now: float,
    detail: str = AFTER_ATTEMPT,
) -> list[str]:
    """Apply the admin action that waited for the attempt on a job (message_id,
    rcpt_id, address, location), with its trace row; spool files to remove."""
    _hop(tx, where, now, action, detail)
    return _do(tx, action, (where[0], where[1]), now)


def _admin(
    tx: Tx, action: str, row: Row, now: float
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
            tx.execute("set_pending", (action, *key))
            _hop(tx, where, now, f"{action} requested", WAITS)
            return Changes(later=1), []
        if action == "release" and pending == "hold":
            tx.execute("set_pending", (None, *key))
            _hop(tx, where, now, "release", WITHDRAWN)
            return Changes(now=1), []
        return Changes(), []
    applies = {**AT_ONCE, "release": ("hold",), "flush": ("deferred",)}
    if state not in applies[action]:
        return Changes(), []
    _hop(tx, where, now, action, BY_ADMIN)
    if action == "flush":
        tx.execute("flush", (now, now, *key))
        return Changes(now=1), []
    return Changes(now=1), _do(tx, action, key, now)


def _apply(tx: Tx, outcome: Outcome, now: float, found: dict[JobKey, Row]) -> list[str]:
    """Apply one outcome (rule: see base); returns spool files to remove.
    `found`: job_for_outcome rows read (and locked) beforehand, by job; used once."""
    job = outcome.job
    key = (job.message_id, job.rcpt_id)
    row = found.pop(key, None) or tx.execute("job_for_outcome", (job.token, *key)).fetchone()
    if row is None or row[0] in FINAL:
        return []
    state, mine, pending, _, _ = row
    where = (job.message_id, job.rcpt_id, job.address, job.location)
    if isinstance(outcome, Delivered | Bounced):
        _final(tx, outcome, now)
        if pending:
            ended = "delivered" if isinstance(outcome, Delivered) else "bounced"
            _hop(tx, where, now, f"{pending} dropped", ended_it(ended))
        return []
    if state != "active" or not mine:  # a stale attempt: a newer one holds the job
        return []
    if isinstance(outcome, Cancelled):
        return _end_attempt(tx, key, now, CANCELLED)
    if isinstance(outcome, Held):
        if pending == "delete":
            return _waited(tx, pending, where, now)
        tx.execute("to_hold", (now, *key))
        _hop(tx, where, now, "hold", outcome.why)
        return []
    if isinstance(outcome, Moved):
        tx.execute("moved", (outcome.to, outcome.queue, now, *key))
        where = (*key, job.address, outcome.to)
        _hop(tx, where, now, "moved", f"from {job.location} to queue {outcome.queue}")
    elif isinstance(outcome, Deferred):
        tx.execute("deferred", (now, outcome.retry_at, outcome.relay, outcome.reply, now, *key))
        _hop(tx, where, now, "deferred", _detail(outcome.relay, outcome.reply))
    else:
        raise TypeError(f"not an outcome: {outcome!r}")
    return _waited(tx, pending, where, now) if pending else []


def _final(tx: Tx, outcome: Delivered | Bounced, now: float) -> None:
    job = outcome.job
    key = (job.message_id, job.rcpt_id)
    sql = "delivered" if isinstance(outcome, Delivered) else "bounced"
    tx.execute(sql, (now, outcome.relay, outcome.reply, now, *key))
    where = (job.message_id, job.rcpt_id, job.address, job.location)
    if isinstance(outcome, Delivered) and job.mailbox is not None:
        tx.execute("insert_mailbox", (job.mailbox, job.message_id, now))
        postoffice = job.mailbox.split("/", 1)[0]  # where the last move brought it
        _hop(tx, (*where[:3], postoffice), now, "delivered", f"mailbox {job.mailbox}")
        return
    event = "delivered" if isinstance(outcome, Delivered) else "bounced"
    _hop(tx, where, now, event, _detail(outcome.relay, outcome.reply))


def _detail(relay: str, reply: str) -> str:
    return f"relay={relay} {reply}" if relay else reply
