"""MemoryStore: the Store interface in memory, a faithful fake for tests.

Does: what a backend does (claims under one token per attempt, renewals,
outcomes, pending admin actions, hops, mailboxes, workers, purge) on dicts of
plain rows, answering as the SQLite backend does. Large content is read into
memory at enqueue and its spool file removed. Async only to match the
interface: it never awaits. Wall time (records, retries) and lease time
(leases, heartbeats) come from its `Clock`.
Must not know: SQL, SMTP, topology or retry policy.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from . import schema, spool
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
    key_of,
    stronger,
)
from .clock import Clock
from .ids import QUEUE_IDS
from .waiting import POLL

_START: QueueKey = (float("-inf"), "", -1)  # before every job
T = TypeVar("T")


@dataclass(slots=True)
class _Message:
    sender: str
    size: int
    origin: str
    hop_count: int
    content: bytes
    recipients: int  # its jobs are rcpt_id 0 .. recipients - 1
    warned: bool = False
    in_mailbox: bool = False


@dataclass(slots=True)
class _Row:
    """One job: one recipient of one message."""

    message_id: str
    rcpt_id: int
    address: str
    mailbox: str | None
    location: str
    created: float
    updated: float
    queue: str = ROUTER
    state: str = "incoming"
    attempts: int = 0
    next_attempt: float | None = None  # None unless deferred (or held, or leased, after one)
    first_attempt: float | None = None
    last_reply: str = ""
    owner: str | None = None
    token: str | None = None
    lease_until: float | None = None
    pending: str | None = None  # the admin action waiting for the attempt

    @property
    def key(self) -> JobKey:
        return (self.message_id, self.rcpt_id)

    @property
    def order(self) -> QueueKey:
        return (self.created, self.message_id, self.rcpt_id)

    def unlease(self, now: float) -> None:
        self.owner = self.token = self.lease_until = self.pending = None
        self.updated = now

    def due(self, now: float) -> bool:
        retry = self.next_attempt
        return self.state == "deferred" and retry is not None and retry <= now

    def expired(self, lease_now: float) -> bool:
        until = self.lease_until
        return self.state == "active" and until is not None and until < lease_now


class MemoryStore:
    """The Store in memory, for one event loop."""

    poll = POLL

    def __init__(self, clock: Clock | None = None, spool: Path | None = None) -> None:
        self.clock = clock if clock is not None else Clock()
        self._spool = spool  # a fresh temporary folder, made on first use, when not given
        self._own_spool = spool is None
        self._messages: dict[str, _Message] = {}
        self._jobs: dict[JobKey, _Row] = {}
        self._entries: list[tuple[str, str, float]] = []  # (mailbox, message_id, delivered)
        self._hops: list[Hop] = []
        self._workers: dict[str, tuple[str, float]] = {}  # name: (owner, seen)
        self._leaders: dict[str, tuple[str, float]] = {}  # duty: (owner, until)

    async def enqueue(self, message: NewMessage) -> str:
        self._check_new([message])
        return self._insert(message, self.clock.wall())

    async def spool_path(self, queue_id: str) -> Path:
        return self._spool_path(queue_id)

    def _spool_path(self, queue_id: str) -> Path:
        if not queue_id or not queue_id.isalnum():
            raise ValueError(f"not a queue id: {queue_id!r}")
        if self._spool is None:
            self._spool = Path(tempfile.mkdtemp(prefix="gatepost-spool-"))
        return self._spool / queue_id

    def _check_new(self, messages: Sequence[NewMessage], once: bool = False) -> None:
        """`once`: a taken queue id is no error (the message is there already)."""
        for msg in messages:
            if not msg.recipients:
                raise ValueError("a message needs at least one recipient")
            if msg.queue_id in self._messages and not once:
                raise ValueError(f"queue id {msg.queue_id!r} is taken")
            if msg.content_file is not None and msg.content_file != self._spool_path(msg.queue_id):
                raise ValueError(f"{msg.content_file} is not the spool file of {msg.queue_id!r}")

    def _insert(self, msg: NewMessage, now: float) -> str:
        """One message; an incoming router job and a "received" hop per recipient."""
        message_id = msg.queue_id or QUEUE_IDS.next()
        content = msg.content
        if msg.content_file is not None:
            content = msg.content_file.read_bytes()
            msg.content_file.unlink()
        self._messages[message_id] = _Message(
            msg.sender, len(content), msg.origin, msg.hop_count, content, len(msg.recipients)
        )
        for rcpt_id, rcpt in enumerate(msg.recipients):
            row = _Row(message_id, rcpt_id, rcpt.address, rcpt.mailbox, msg.location, now, now)
            self._jobs[row.key] = row
            self._hop(row, "received", msg.received_by, now)
        return message_id

    async def claim(self, queue: str, owner: str, limit: int, lease: float) -> list[Job]:
        if limit <= 0:
            return []
        now, lease_now = self.clock.wall(), self.clock.lease()
        for row in self._rows(queue, "active"):
            if row.expired(lease_now) and row.pending is not None:
                self._act(row, row.pending, AFTER_ATTEMPT, now)  # that attempt is over
        expired = [r for r in self._rows(queue, "active") if r.expired(lease_now)]
        deferred = [r for r in self._rows(queue, "deferred") if r.due(now)]
        deferred.sort(key=lambda r: (r.next_attempt or 0.0, r.order))
        rows = fair_pick(expired, self._rows(queue, "incoming"), deferred, limit)
        token = uuid.uuid4().hex
        for row in rows:
            row.state, row.owner, row.token = "active", owner, token
            row.lease_until, row.updated = lease_now + lease, now
        return [self._job(row) for row in sorted(rows, key=lambda r: r.order)]

    async def renew(self, jobs: Sequence[Job], lease: float) -> Renewal:
        rows = [row for row in map(self._leased, jobs) if row is not None]
        until = self.clock.lease() + lease
        for row in rows:  # never shortened
            row.lease_until = until if row.lease_until is None else max(row.lease_until, until)
        pending = {row.key: row.pending for row in rows if row.pending is not None}
        return Renewal(frozenset(row.key for row in rows), pending)

    def _leased(self, job: Job) -> _Row | None:
        """The job's row, while the job's token holds its lease."""
        row = self._jobs.get(key_of(job))
        held = row is not None and row.state == "active" and row.token == job.token
        return row if held else None

    def _job(self, row: _Row) -> Job:
        m = self._messages[row.message_id]
        return Job(
            row.message_id, row.rcpt_id, m.sender, row.address, row.mailbox, row.location,
            m.origin, row.queue, row.attempts, row.created, row.first_attempt, m.size,
            owner=row.owner or "", token=row.token or "", warned=m.warned, hop_count=m.hop_count,
        )  # fmt: skip

    async def complete(
        self,
        outcomes: Sequence[Outcome],
        new: Sequence[NewMessage] = (),
        warnings: Sequence[tuple[str, NewMessage]] = (),
    ) -> list[str]:
        self._check_new([*new, *(warning for _, warning in warnings)], once=True)
        now = self.clock.wall()
        for outcome in outcomes:
            self._apply(outcome, now)
        first = []
        for message_id, warning in warnings:
            message = self._messages.get(message_id)
            if message is not None and not message.warned:
                message.warned = True
                first.append(warning)
        ids = [self._insert_once(msg, now) for msg in new]
        for warning in first:
            self._insert_once(warning, now)
        return ids  # of `new` only (see Workers.complete)

    def _insert_once(self, msg: NewMessage, now: float) -> str:
        """A report written again (its commit's answer was lost) is there already."""
        if msg.queue_id and msg.queue_id in self._messages:
            return msg.queue_id
        return self._insert(msg, now)

    def _apply(self, outcome: Outcome, now: float) -> None:
        """One outcome, unless the job is final or gone. A non-final outcome counts
        only while its attempt's token holds the lease (a stale one is dropped)."""
        row = self._jobs.get(key_of(outcome.job))
        if row is None or row.state in FINAL:
            return
        if isinstance(outcome, Delivered | Bounced):
            self._finish(row, outcome, now)
        elif self._leased(outcome.job) is None:
            return
        elif isinstance(outcome, Cancelled):
            self._end_attempt(row, now, CANCELLED)
        elif isinstance(outcome, Held):
            self._held(row, outcome, now)
        else:
            self._went_on(row, outcome, now)

    def _went_on(self, row: _Row, outcome: Deferred | Moved, now: float) -> None:
        """Deferred or moved; then the admin action that waited for the attempt."""
        pending = row.pending
        if isinstance(outcome, Deferred):
            self._attempted(row, outcome.reply, now)
            row.state, row.next_attempt = "deferred", outcome.retry_at
            self._hop(row, "deferred", _detail(outcome.relay, outcome.reply), now)
        else:
            detail = f"from {row.location} to queue {outcome.queue}"
            row.location, row.queue, row.state = outcome.to, outcome.queue, "incoming"
            row.next_attempt = None
            row.unlease(now)
            self._hop(row, "moved", detail, now)
        if pending is not None:
            self._act(row, pending, AFTER_ATTEMPT, now)

    def _held(self, row: _Row, outcome: Held, now: float) -> None:
        """Set aside by its attempt; a delete that waited is applied instead, and
        any other waiting action is dropped."""
        if row.pending == "delete":
            self._act(row, "delete", AFTER_ATTEMPT, now)
            return
        row.state = "hold"
        row.unlease(now)
        self._hop(row, "hold", outcome.why, now)

    def _attempted(self, row: _Row, reply: str, now: float) -> None:
        """Count one attempt and end its lease."""
        row.attempts += 1
        row.first_attempt = now if row.first_attempt is None else row.first_attempt
        row.last_reply, row.next_attempt = reply, None
        row.unlease(now)

    def _finish(self, row: _Row, outcome: Delivered | Bounced, now: float) -> None:
        """Delivered or bounced: final, and an admin action waiting is dropped."""
        job, pending = outcome.job, row.pending
        self._attempted(row, outcome.reply, now)
        row.state = "delivered" if isinstance(outcome, Delivered) else "bounced"
        if isinstance(outcome, Delivered) and job.mailbox is not None:
            self._entries.append((job.mailbox, job.message_id, now))
            self._messages[job.message_id].in_mailbox = True
            postoffice = job.mailbox.split("/", 1)[0]  # where the last move brought it
            self._hop(row, "delivered", f"mailbox {job.mailbox}", now, postoffice)
        else:
            detail = _detail(outcome.relay, outcome.reply)
            self._hop(row, row.state, detail, now, job.location)
        if pending is not None:
            ended = ended_it(row.state)
            self._hop(row, f"{pending} dropped", ended, now)

    def _act(self, row: _Row, action: str, detail: str, now: float) -> None:
        """Hold, delete or requeue one job now, with its hop."""
        self._hop(row, action, detail, now)
        if action == "delete":
            self._remove(row)
            return
        if action == "requeue":
            row.queue, row.state, row.next_attempt = ROUTER, "incoming", None
        else:
            row.state = "hold"
        row.unlease(now)

    def _end_attempt(self, row: _Row, now: float, detail: str = AFTER_ATTEMPT) -> None:
        """An attempt ended with no outcome: the admin action waiting for it, if
        any; else the job is incoming again."""
        if row.pending is not None:
            self._act(row, row.pending, detail, now)
        else:
            row.state, row.next_attempt = "incoming", None
            row.unlease(now)

    def _admin(self, row: _Row, action: str, now: float) -> Changes:
        """One admin action on one job: what changed now, or waits for its attempt."""
        if row.state in AT_ONCE.get(action, ()):
            self._act(row, action, BY_ADMIN, now)
        elif action in AT_ONCE and row.state == "active":
            if row.pending is not None and stronger(row.pending, action) == row.pending:
                return Changes()  # what already waits does as much or more
            row.pending, row.updated = action, now
            self._hop(row, f"{action} requested", WAITS, now)
            return Changes(later=1)
        elif action == "release" and row.state == "hold":
            row.state, row.next_attempt, row.updated = "incoming", None, now
            self._hop(row, "release", BY_ADMIN, now)
        elif action == "release" and row.state == "active" and row.pending == "hold":
            row.pending, row.updated = None, now
            self._hop(row, "release", WITHDRAWN, now)
        elif action == "flush" and row.state == "deferred":
            row.next_attempt = row.updated = now
            self._hop(row, "flush", BY_ADMIN, now)
        else:
            return Changes()
        return Changes(now=1)

    async def set_state(self, message_ids: Sequence[str], action: str) -> Changes:
        if action not in ADMIN_ACTIONS:
            raise ValueError(f"unknown action {action!r}; expected one of {ADMIN_ACTIONS}")
        now, changes = self.clock.wall(), Changes()
        for message_id in dict.fromkeys(message_ids):
            for row in self._rows_of(message_id):
                changes += self._admin(row, action, now)
        return changes

    async def requeue(
        self, queue: str, origins: Sequence[str], dead: Sequence[str] = (), within: float = 0.0
    ) -> int:
        now, lease_now = self.clock.wall(), self.clock.lease()
        back = {owner for owner, seen in self._workers.values() if seen >= lease_now - within}
        gone = set(dead) - back
        rows = [
            r for r in self._rows(queue)
            if self._messages[r.message_id].origin in origins
            and (r.state in ("incoming", "deferred") or r.expired(lease_now) or r.owner in gone)
        ]  # fmt: skip
        for row in rows:  # only an active job has an owner, or an action waiting
            if row.pending is not None:
                self._act(row, row.pending, AFTER_ATTEMPT, now)
            else:
                self._act(row, "requeue", f"from {queue}", now)
        return len(rows)

    async def release_owner(self, queue: str, owner: str) -> int:
        now = self.clock.wall()
        rows = [row for row in self._rows(queue, "active") if row.owner == owner]
        for row in rows:
            self._end_attempt(row, now)
        return len(rows)

    async def owners(self, queue: str) -> set[str]:
        return {r.owner for r in self._rows(queue, "active") if r.owner is not None}

    async def heartbeat(self, name: str, owner: str) -> None:
        self._workers[name] = (owner, self.clock.lease())

    async def forget(self, name: str, owner: str) -> None:
        if name in self._workers and self._workers[name][0] == owner:
            del self._workers[name]

    async def lead(self, duty: str, owner: str, term: float) -> bool:
        now = self.clock.lease()
        holder, until = self._leaders.get(duty, (owner, now))
        if holder != owner and until >= now:
            return False
        self._leaders[duty] = (owner, now + term)
        return True

    async def resign(self, duty: str, owner: str) -> None:
        if self._leaders.get(duty, ("", 0.0))[0] == owner:
            del self._leaders[duty]

    async def alive(self, within: float) -> set[str]:
        since = self.clock.lease() - within
        return {name for name, (_, seen) in self._workers.items() if seen >= since}

    def watch(self, queue: str, wakeup: asyncio.Event) -> None:
        """Other processes' commits are not heard of here: `poll` finds them."""

    async def due(self, queue: str) -> bool:
        now, lease_now = self.clock.wall(), self.clock.lease()
        rows = self._rows(queue)
        return any(r.state == "incoming" or r.due(now) or r.expired(lease_now) for r in rows)

    async def pending(self, queue: str) -> int:
        now = self.clock.wall()
        return sum(r.state in ("incoming", "active") or r.due(now) for r in self._rows(queue))

    async def purge(self, final_retention: float, trace_retention: float) -> int:
        now = self.clock.wall()
        old = now - final_retention
        gone = [r for r in self._jobs.values() if r.state in FINAL and r.updated < old]
        for row in gone:
            self._remove(row)
        self._hops = [hop for hop in self._hops if hop.at >= now - trace_retention]
        if self._spool is not None:  # files written for messages never enqueued
            named = self._messages.__contains__
            for path in spool.orphans(self._spool, named, now - spool.ORPHAN_GRACE):
                path.unlink(missing_ok=True)
        return len(gone)

    async def content(self, message_id: str) -> bytes:
        return self._messages[message_id].content  # KeyError for an unknown message

    async def content_head(self, message_id: str) -> bytes:
        return spool.read_head(await self.open_content(message_id))

    async def open_content(self, message_id: str) -> BinaryIO:
        return io.BytesIO(self._messages[message_id].content)

    async def mailbox(self, mailbox: str) -> list[MailboxEntry]:
        entries = []
        for entry_id, (box, message_id, delivered) in enumerate(self._entries, 1):
            if box == mailbox:
                m = self._messages[message_id]
                entries.append(MailboxEntry(entry_id, message_id, m.sender, delivered, m.size))
        return entries

    async def mailbox_content(self, mailbox: str, entry_id: int) -> bytes | None:
        if not 1 <= entry_id <= len(self._entries):
            return None
        box, message_id, _ = self._entries[entry_id - 1]
        return self._messages[message_id].content if box == mailbox else None

    async def open_mailbox_content(self, mailbox: str, entry_id: int) -> BinaryIO | None:
        content = await self.mailbox_content(mailbox, entry_id)
        return None if content is None else io.BytesIO(content)

    async def queue(
        self, states: Sequence[str] = (), limit: int = 1000, after: QueueKey | None = None
    ) -> list[QueueEntry]:
        wanted = tuple(dict.fromkeys(states)) or NON_FINAL
        unknown = set(wanted) - set(STATES)
        if unknown:
            raise ValueError(f"unknown states {sorted(unknown)}")
        start = _START if after is None else after
        rows = [r for r in self._jobs.values() if r.state in wanted and r.order > start]
        rows.sort(key=lambda r: r.order)
        return [self._entry(row) for row in rows[: max(limit, 0)]]

    def _entry(self, row: _Row) -> QueueEntry:
        m = self._messages[row.message_id]
        return QueueEntry(
            row.message_id, row.rcpt_id, m.sender, row.address, row.location, row.queue,
            row.state, row.attempts, row.next_attempt, row.created, m.size, row.last_reply,
        )  # fmt: skip

    async def counts(self) -> dict[str, int]:
        found = [row.state for row in self._jobs.values()]
        return {state: found.count(state) for state in STATES}

    async def hops(self, message_id: str) -> list[Hop]:
        return [hop for hop in self._hops if hop.message_id == message_id]

    async def check(self) -> str:
        return "ok"

    async def version(self) -> int:
        return schema.VERSION

    async def aclose(self) -> None:
        """Nothing waits to be written; a spool folder this store made is removed."""
        if self._own_spool and self._spool is not None:
            shutil.rmtree(self._spool, ignore_errors=True)

    def _rows(self, queue: str, state: str | None = None) -> list[_Row]:
        """The jobs of `queue` (in `state`), oldest first."""
        rows = [r for r in self._jobs.values() if r.queue == queue and state in (None, r.state)]
        return sorted(rows, key=lambda r: r.order)

    def _rows_of(self, message_id: str) -> list[_Row]:
        message = self._messages.get(message_id)
        keys = [(message_id, i) for i in range(message.recipients if message else 0)]
        return [self._jobs[key] for key in keys if key in self._jobs]

    def _remove(self, row: _Row) -> None:
        """Forget a job, and its message once no job or mailbox entry refers to it."""
        del self._jobs[row.key]
        if not self._messages[row.message_id].in_mailbox and not self._rows_of(row.message_id):
            del self._messages[row.message_id]

    def _hop(self, row: _Row, event: str, detail: str, now: float, at: str = "") -> None:
        """A trace row for the job, where it is (or `at` that postoffice)."""
        hop = Hop(row.message_id, row.rcpt_id, row.address, now, event, at or row.location, detail)
        self._hops.append(hop)


def _detail(relay: str, reply: str) -> str:
    return f"relay={relay} {reply}" if relay else reply


def fair_pick(expired: list[T], incoming: list[T], deferred: list[T], limit: int) -> list[T]:
    """Expired leases first, then fresh and due-retry jobs sharing the room
    (fresh get at least half, rounded up; unused share goes to the other)."""
    picked = expired[:limit]
    room = limit - len(picked)
    fresh = min(len(incoming), max(room - len(deferred), (room + 1) // 2))
    return picked + incoming[:fresh] + deferred[: room - fresh]
