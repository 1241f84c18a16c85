"""The store's interface: what every store implementation provides.

The store is the only code that writes mail state. It decides no policy:
callers say where a recipient goes next and when it is retried.

Mail state is per recipient ("job"): one row per (message, recipient), with
the postoffice it waits in (`location`), the worker queue that handles it
next (`queue`: "router" or "send:<GATEWAY>"), and its state:
incoming → active → (delivered | deferred → active … | bounced), plus hold.

Ownership: `active` is a lease held by ONE attempt. A claim gives every job it
takes the same new token; only an attempt that shows the token renews the
lease, and a deferral (or a move) counts only while the token still holds it.
Delivered and bounced count whatever the token: the remote host has the
message, or refused it for good. So a stale attempt can never free or undo
what a newer one holds, and nothing is lost. Leases and heartbeats run on the
store's lease clock (`clock.Clock.lease`), never on the wall clock.

Admin actions on a job in an attempt ("hold", "delete", "requeue") wait for
the attempt: the job keeps the action as `pending`; the attempt sees it when
it renews (and may cancel before its final dot), and the store applies it when
the attempt's outcome is not final.

The interface is split by caller: `Intake` (receive side, CLI submit),
`Workers` (router and send sides), `Mailboxes` (mailbox readers) and `Admin`
(queue commands and reads). A backend implements all of them: `Store`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

STATES = ("incoming", "active", "deferred", "hold", "delivered", "bounced")
NON_FINAL = ("incoming", "active", "deferred", "hold")
FINAL = ("delivered", "bounced")
ROUTER = "router"


def send_queue(gateway: str) -> str:
    return f"send:{gateway}"


@dataclass(frozen=True, slots=True)
class NewRecipient:
    address: str  # as the envelope says it (SMTP form), or native "NET/PO/MAILBOX"
    mailbox: str | None  # "PO/mailbox" when local, None when foreign


@dataclass(frozen=True, slots=True)
class NewMessage:
    sender: str  # SMTP reverse path; "" is the null sender
    recipients: tuple[NewRecipient, ...]
    content: bytes = field(repr=False)
    location: str  # postoffice where it enters the network
    origin: str  # postoffice whose gateway group carries its outbound mail
    received_by: str  # "gateway:GW1", "cli", "bounce"
    queue_id: str = ""  # given in advance (store.new_queue_id), or made by enqueue
    content_file: Path | None = None  # large content: store.spool_path(queue_id), fsync'ed;
    # then `content` is b"" and the file belongs to the store once enqueued
    hop_count: int = 0  # Received and Delivered-To fields it came with; a copy the
    # network re-sends (alias, list) carries on the count of the message it copies, plus one


@dataclass(frozen=True, slots=True)
class Job:
    """One recipient of one message, as claimed by a worker."""

    message_id: str
    rcpt_id: int
    sender: str
    address: str
    mailbox: str | None
    location: str
    origin: str
    queue: str
    attempts: int
    created: float  # when the message was enqueued (epoch seconds)
    first_attempt: float | None
    size: int
    owner: str = ""  # the process that claimed it ("ROLE@HOST:PID")
    token: str = ""  # the attempt's lease: the claim's own token
    warned: bool = False  # the sender was already told that the message is delayed
    hop_count: int = 0  # of its message (NewMessage.hop_count)


# Outcomes a worker reports for claimed jobs; `Store.complete` applies them.
@dataclass(frozen=True, slots=True)
class Moved:
    job: Job
    to: str  # postoffice it moves to (one hop)
    queue: str  # who handles it there


@dataclass(frozen=True, slots=True)
class Delivered:
    job: Job
    relay: str = ""  # smart host, or "" for a mailbox delivery
    reply: str = ""


@dataclass(frozen=True, slots=True)
class Deferred:
    job: Job
    retry_at: float
    reply: str
    relay: str = ""


@dataclass(frozen=True, slots=True)
class Bounced:
    job: Job
    reply: str
    relay: str = ""


@dataclass(frozen=True, slots=True)
class Held:
    """Set aside by its attempt (its content is damaged): hold, never sent in part."""

    job: Job
    why: str


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The attempt stopped before its final dot because an admin action waits
    (`Renewal.pending`): that action is applied now; no attempt is counted."""

    job: Job


Outcome = Moved | Delivered | Deferred | Bounced | Held | Cancelled
JobKey = tuple[str, int]  # (message_id, rcpt_id)


def key_of(job: Job) -> JobKey:
    return (job.message_id, job.rcpt_id)


@dataclass(frozen=True, slots=True)
class Renewal:
    """What a renewal found: the jobs whose lease the attempt still holds (and
    now holds longer), and the admin action waiting for any of them."""

    held: frozenset[JobKey]
    pending: dict[JobKey, str]  # "hold", "delete" or "requeue"

    def lost(self, jobs: Sequence[Job]) -> list[Job]:
        return [job for job in jobs if key_of(job) not in self.held]


@dataclass(frozen=True, slots=True)
class Changes:
    """What an admin action did: recipients changed now, and recipients in an
    attempt whose change waits for the attempt to end."""

    now: int = 0
    later: int = 0

    def __add__(self, other: Changes) -> Changes:
        return Changes(self.now + other.now, self.later + other.later)

# Where a queue listing resumes: (created, message_id, rcpt_id) of the last entry
# seen. Keyset paging: a later page costs as little as the first, and entries that
# change or leave the queue meanwhile never shift the pages after them.
QueueKey = tuple[float, str, int]


@dataclass(frozen=True, slots=True)
class QueueEntry:
    message_id: str
    rcpt_id: int
    sender: str
    address: str
    location: str
    queue: str
    state: str
    attempts: int
    next_attempt: float | None
    created: float
    size: int
    last_reply: str

    @property
    def key(self) -> QueueKey:
        """Its place in the listing order; pass it as `after` for the next page."""
        return (self.created, self.message_id, self.rcpt_id)


@dataclass(frozen=True, slots=True)
class MailboxEntry:
    entry_id: int
    message_id: str
    sender: str
    delivered: float
    size: int


@dataclass(frozen=True, slots=True)
class Hop:
    message_id: str
    rcpt_id: int
    address: str
    at: float
    event: str  # "received", "moved", "delivered", "deferred", "bounced", ...
    postoffice: str  # where it happened (to, for a move)
    detail: str


ADMIN_ACTIONS = ("hold", "release", "flush", "requeue", "delete")
WAITING_ORDER = ("requeue", "hold", "delete")  # of two actions waiting, the later one here wins
# The states an action that may wait for an attempt changes at once.
AT_ONCE = {
    "hold": ("incoming", "deferred"),
    "requeue": ("incoming", "deferred"),
    "delete": ("incoming", "deferred", "hold"),
}
# What the trace says of admin actions (hop details).
BY_ADMIN = "admin"
WAITS = "admin: waits for the attempt in progress"
AFTER_ATTEMPT = "admin, after the attempt"
CANCELLED = "admin: attempt cancelled before its final dot"
WITHDRAWN = "admin: the hold waiting for the attempt is withdrawn"


def ended_it(state: str) -> str:
    """The trace detail of an admin action dropped: its attempt ended in `state`."""
    return f"admin: the attempt ended it ({state})"


def stronger(waiting: str | None, action: str) -> str:
    """The action that waits for an attempt once `action` is asked on top of
    `waiting`: a delete is never undone by a hold, nor a hold by a requeue."""
    if waiting is None:
        return action
    return max(waiting, action, key=WAITING_ORDER.index)


class Intake(Protocol):
    """What mail enters through: the receive side and `gatepost submit`."""

    async def enqueue(self, message: NewMessage) -> str:
        """Store one message durably (on disk, fsync'ed) before returning its
        queue id. Every recipient starts `incoming` in queue "router" at the
        message's location. Concurrent calls may share one commit."""
        ...

    async def spool_path(self, queue_id: str) -> Path:
        """Where to write (with spool.SpoolWriter) the content of a large message
        before it is enqueued as `queue_id` with content_file set. The file is
        written once; moves change rows; delete and purge remove it."""
        ...


class Workers(Protocol):
    """What the router and the send sides work with: claims, renewals, outcomes."""

    poll: float  # seconds between looks at an idle queue (`due`): work that no wake-up told of

    def watch(self, queue: str, wakeup: asyncio.Event) -> None:
        """Set `wakeup` (on the running event loop) when another process commits
        work for `queue`, where the backend hears of it (PostgreSQL's LISTEN);
        a wake-up may be lost, so callers still look every `poll` seconds."""
        ...

    async def claim(self, queue: str, owner: str, limit: int, lease: float) -> list[Job]:
        """Lease up to `limit` claimable jobs of `queue` for `lease` seconds of
        the lease clock, all under one new token (one attempt): incoming,
        deferred with retry time reached, or active with an expired lease.
        Expired leases first, then fresh and due retries share the room (fresh
        get at least half). Returned oldest first."""
        ...

    async def renew(self, jobs: Sequence[Job], lease: float) -> Renewal:
        """Extend to `lease` seconds from now (never shorten) the leases that
        these jobs' token still holds, and only those; report them and any
        admin action waiting."""
        ...

    async def complete(
        self,
        outcomes: Sequence[Outcome],
        new: Sequence[NewMessage] = (),
        warnings: Sequence[tuple[str, NewMessage]] = (),
    ) -> list[str]:
        """Apply outcomes, enqueue `new` messages (bounces), and each (message id,
        warning) whose message had no warning yet; returns the ids of `new`.
        Delivered and bounced apply to any job not yet final; the others only
        while the job's token still holds its lease (a stale deferral is dropped).
        A new message whose queue id is taken is there already (the call was
        made again after a commit whose answer was lost): it is not added twice.
        An admin action waiting on a job is applied after a non-final outcome.
        Not fsync'ed; concurrent calls may share one commit."""
        ...

    async def content(self, message_id: str) -> bytes: ...

    async def content_head(self, message_id: str) -> bytes:
        """The start of a message (its header, for a report)."""
        ...

    async def open_content(self, message_id: str) -> BinaryIO:
        """The content to read in pieces (large content is never read whole)."""
        ...

    async def due(self, queue: str) -> bool:
        """Is anything in `queue` claimable now? Cheap, and takes no write lock."""
        ...

    async def heartbeat(self, name: str, owner: str) -> None:
        """Record that worker `name` (e.g. "gateway:GW1") run by `owner` is alive."""
        ...

    async def forget(self, name: str, owner: str) -> None:
        """A clean stop: `name` is no longer alive (if `owner` still holds it)."""
        ...

    async def alive(self, within: float) -> set[str]:
        """Workers whose last heartbeat is at most `within` lease-clock seconds old."""
        ...

    async def lead(self, duty: str, owner: str, term: float) -> bool:
        """Take, or keep, the duty `duty` (work that one process of the network
        does at a time: "failover", "purge") for `term` lease-clock seconds.
        False while another owner holds it and its term has not run out."""
        ...

    async def resign(self, duty: str, owner: str) -> None:
        """A clean stop: give the duty up at once (if `owner` still holds it)."""
        ...

    async def owners(self, queue: str) -> set[str]:
        """Who holds leases on jobs of `queue`."""
        ...

    async def release_owner(self, queue: str, owner: str) -> int:
        """Give back every job of `queue` leased by `owner` (it died)."""
        ...

    async def requeue(
        self, queue: str, origins: Sequence[str], dead: Sequence[str] = (), within: float = 0.0
    ) -> int:
        """Hand the jobs of `queue` whose message origin is in `origins` back to
        the router: the gateway stopped, another one takes them. Active jobs go
        too when their lease ran out, or when their owner is among the `dead`
        and has not heartbeated in the last `within` lease-clock seconds (one
        that is back keeps what it holds). One transaction."""
        ...

    async def purge(self, final_retention: float, trace_retention: float) -> int:
        """Forget final jobs last changed more than `final_retention` seconds ago
        and the messages nothing refers to any more; trace rows older than
        `trace_retention`; content a crash left behind that no message names,
        an hour after it was written. Bounded transactions; returns jobs removed."""
        ...


class Mailboxes(Protocol):
    """What reads the postoffices' mailboxes."""

    async def mailbox(self, mailbox: str) -> list[MailboxEntry]:
        """Mail delivered to "PO/mailbox", oldest first."""
        ...

    async def mailbox_content(self, mailbox: str, entry_id: int) -> bytes | None: ...

    async def open_mailbox_content(self, mailbox: str, entry_id: int) -> BinaryIO | None: ...


class Admin(Protocol):
    """Queue commands and reads."""

    async def queue(
        self, states: Sequence[str] = (), limit: int = 1000, after: QueueKey | None = None
    ) -> list[QueueEntry]:
        """Up to `limit` jobs not yet final (or in `states`), oldest first by
        (created, message_id, rcpt_id), starting after the key `after` (one
        page; pass the last entry's `key` for the next). Fast at any depth."""
        ...

    async def counts(self) -> dict[str, int]:
        """Number of jobs in each of STATES (zero included)."""
        ...

    async def pending(self, queue: str) -> int:
        """Jobs of `queue` that are claimable now or active (leased)."""
        ...

    async def hops(self, message_id: str) -> list[Hop]: ...

    async def set_state(self, message_ids: Sequence[str], action: str) -> Changes:
        """An admin action (ADMIN_ACTIONS) on every recipient of the messages.
        "hold": incoming/deferred → hold (never claimed); "release": hold →
        incoming; "flush": deferred → due now; "requeue": incoming/deferred →
        the router; "delete": remove non-final jobs, and the message once
        nothing refers to it. A job in an attempt changes later: hold, delete
        and requeue wait as its `pending` action; release clears a pending hold."""
        ...

    async def check(self) -> str:
        """A check of the whole store: "ok", or what is damaged. Reads every page
        (seconds on a large store): for `gatepost check --store`, not for start."""
        ...

    async def version(self) -> int:
        """The schema version (opening the store checked and migrated it)."""
        ...


class Store(Intake, Workers, Mailboxes, Admin, Protocol):
    """Everything a backend provides."""

    async def aclose(self) -> None:
        """Commit what waits, then close."""
        ...
