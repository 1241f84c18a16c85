"""The store's interface: what every store implementation provides.

The store is the only code that writes mail state. It decides no policy:
callers say where a recipient goes next and when it is retried.

Mail state is per recipient ("job"): one row per (message, recipient), with
the postoffice it waits in (`location`), the worker queue that handles it
next (`queue`: "router" or "send:<GATEWAY>"), and its state:
incoming → active → (delivered | deferred → active … | bounced), plus hold.
`active` is a lease: owner and expiry; an expired lease is claimable again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

STATES = ("incoming", "active", "deferred", "hold", "delivered", "bounced")
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
    owner: str = ""  # the lease owner that claimed it
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


Outcome = Moved | Delivered | Deferred | Bounced

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


class Store(Protocol):
    def enqueue(self, messages: Sequence[NewMessage], now: float) -> list[str]:
        """Store messages in one transaction, durable (fsync'ed) on return.
        Every recipient starts `incoming` in queue "router" at the message's
        location. Returns the new queue ids, in order."""
        ...

    def claim(self, queue: str, owner: str, limit: int, lease: float, now: float) -> list[Job]:
        """Lease up to `limit` claimable jobs of `queue`: incoming, deferred
        with retry time reached, or active with an expired lease. Oldest first."""
        ...

    def complete(
        self,
        outcomes: Sequence[Outcome],
        now: float,
        new: Sequence[NewMessage] = (),
        warnings: Sequence[tuple[str, NewMessage]] = (),
    ) -> list[str]:
        """Apply outcomes (and enqueue `new` messages, e.g. bounces) in one
        transaction; returns the ids of `new`. Each (message id, warning) in
        `warnings` is enqueued only if that message had no warning yet: a
        delay notification goes out once, whichever worker defers first. Outcomes for jobs whose lease
        this owner no longer holds are still applied (deliver twice rather
        than lose)."""
        ...

    def content(self, message_id: str) -> bytes: ...

    def open_content(self, message_id: str) -> BinaryIO:
        """The content to read in pieces (large content is never read whole)."""
        ...

    def spool_path(self, queue_id: str) -> Path:
        """Where to write (with spool.SpoolWriter) the content of a large message
        before it is enqueued as `queue_id` with content_file set. The file is
        written once; moves change rows; delete and purge remove it."""
        ...

    def queue(
        self, states: Sequence[str] = (), limit: int = 1000, after: QueueKey | None = None
    ) -> list[QueueEntry]:
        """Up to `limit` jobs not yet final (or in `states`), oldest first by
        (created, message_id, rcpt_id), starting after the key `after` (one
        page; pass the last entry's `key` for the next). Fast at any depth."""
        ...

    def mailbox(self, mailbox: str) -> list[MailboxEntry]:
        """Mail delivered to "PO/mailbox", oldest first."""
        ...

    def mailbox_content(self, mailbox: str, entry_id: int) -> bytes | None: ...

    def open_mailbox_content(self, mailbox: str, entry_id: int) -> BinaryIO | None: ...

    def hops(self, message_id: str) -> list[Hop]: ...

    def set_state(self, message_ids: Sequence[str], state: str, now: float) -> int:
        """Admin action on every recipient of the messages; returns rows changed.
        "hold": non-final jobs → hold (never claimed); "release": hold → incoming;
        "flush": deferred → due now; "delete": remove non-final jobs, and the
        message itself once no job or mailbox entry refers to it."""
        ...

    def counts(self) -> dict[str, int]:
        """Number of jobs in each of STATES (zero included)."""
        ...

    def pending(self, queue: str, now: float | None = None) -> int:
        """Jobs of `queue` that are claimable at `now` (default: the clock) or
        active (leased)."""
        ...

    def due(self, queue: str, now: float) -> bool:
        """Is anything in `queue` claimable now? Cheap, and takes no write lock."""
        ...

    def owners(self, queue: str) -> set[str]:
        """Who holds leases on jobs of `queue`."""
        ...

    def release_owner(self, queue: str, owner: str, now: float) -> int:
        """Give back every job of `queue` leased by `owner` (it died)."""
        ...

    def check(self) -> str:
        """A quick check of the whole store: "ok", or what is damaged. Reads every
        page (seconds on a large store): for `gatepost check --store`, not for start."""
        ...

    def version(self) -> int:
        """The schema version (opening the store checked and migrated it)."""
        ...

    def heartbeat(self, name: str, owner: str, now: float) -> None:
        """Record that worker `name` (e.g. "gateway:GW1") run by `owner` is alive."""
        ...

    def forget(self, name: str, owner: str) -> None:
        """A clean stop: `name` is no longer alive (if `owner` still holds it)."""
        ...

    def alive(self, since: float) -> set[str]:
        """Workers whose last heartbeat is at or after `since`."""
        ...

    def requeue(
        self, queue: str, origins: Sequence[str], now: float, dead: Sequence[str] = ()
    ) -> int:
        """Hand the jobs of `queue` whose message origin is in `origins` back to
        the router: the gateway stopped, another one takes them. Active jobs go
        too when their lease ran out or their owner is among the `dead`."""
        ...

    def renew(self, jobs: Sequence[Job], until: float) -> int:
        """Extend the leases of jobs their owner still holds; returns how many."""
        ...

    def purge(
        self, before: float, now: float | None = None, traces_before: float | None = None
    ) -> int:
        """Forget final (delivered/bounced) jobs last changed before `before`, and
        messages nothing refers to any more; trace rows (`hops`) recorded before
        `traces_before` (default: `before`); and content a crash left behind that
        no message names, once it is an hour older than `now` (default: the time
        now). Deletes in bounded transactions; returns jobs removed."""
        ...

    def close(self) -> None: ...
