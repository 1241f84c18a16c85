"""Receive side of a gateway: an asyncio server around the SMTP server core.

It checks recipients against the topology, stores each message (durably,
through the group-committing store) before answering 250, and leaves the
rest to the router. It knows no SMTP syntax (the core does) and never
delivers or routes. It holds the clock for the core: idle, command and DATA
deadlines, the early-talker wait, connection limits (see `guard`), and the
socket's STARTTLS upgrade. A large message arrives as Content pieces that a
`spooling.Body` collects (in a spool file beyond a threshold) until the core's
Message ends it; when the core refuses the message instead, they are dropped.
Loops end here: the Received and Delivered-To fields of the header section are
counted as the pieces arrive (the body is never scanned), and a message with
too many is refused at the end of DATA; the count is stored with the message.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gatepost import notify, policy
from gatepost.smtp.events import (
    Ehlo,
    Reply,
)
from gatepost.smtp.replies import TALKED_FIRST, TIMED_OUT, TOO_MANY_CONNECTIONS
from gatepost.smtp.server import Limits, ServerConnection
from gatepost.smtp.table import State
from gatepost.store import Intake, NewMessage, NewRecipient, new_queue_id
from gatepost.topology import (
    AddressError,
    Gateway,
    Topology,
    UnknownMailbox,
    lookup,
    sender_native,
)
from gatepost.topology.model import Limits as TopologyLimits

from .driver import READ_SIZE, ServerSession
from .guard import Admission, Deadlines, Pace
from .spooling import Body

log = logging.getLogger("gatepost.receive")

STOP_GRACE = 10.0  # seconds a stop gives sessions storing a message to answer
HOP_FIELD = re.compile(rb"^(?:received|delivered-to)[ \t]*:", re.IGNORECASE | re.MULTILINE)
# The first line that is neither a header field ("name:") nor a continuation:
# the empty line before the body, usually. Only ever tried at line starts.
PAST_HEADER = re.compile(rb"^(?![!-9;-~]+[ \t]*:|[ \t])", re.MULTILINE)


class HopCount:
    """The Received and Delivered-To fields of one message's header section,
    counted as its content arrives in pieces of whole lines. Once the header
    section has ended, the rest of the content is not looked at."""

    __slots__ = ("count", "in_header")

    def __init__(self) -> None:
        self.count = 0
        self.in_header = True

    def add(self, lines: bytes) -> None:
        if not self.in_header:
            return
        end = len(lines)
        past = PAST_HEADER.search(lines)
        if past is not None and past.start() < end:  # a match at the very end is the next piece
            end, self.in_header = past.start(), False
        self.count += len(HOP_FIELD.findall(lines, 0, end))


@dataclass(slots=True)
class Envelope:
    sender: str = ""
    recipients: list[NewRecipient] = field(default_factory=list)
    hops: HopCount = field(default_factory=HopCount)  # in the content received so far


class ReceiveSide:
    """Accepts SMTP for one gateway into its gateway postoffice."""

    def __init__(
        self,
        topo: Topology,
        gateway: Gateway,
        store: Intake,
        wake_router: Callable[[], None] = lambda: None,
        limits: Limits | None = None,
        deadlines: Deadlines | None = None,
    ) -> None:
        self.topo = topo
        self.gateway = gateway
        self.store = store
        self.wake_router = wake_router
        self.limits = limits or core_limits(topo.limits)
        self.deadlines = deadlines or deadlines_of(topo.limits)
        self.admission = Admission(
            topo.limits.max_connections, topo.limits.max_connections_per_client
        )
        self.tls = server_tls(gateway)
        self.hostname = notify.mta_name(topo, gateway.postoffice)
        self.server: asyncio.Server | None = None
        self.sessions: dict[Session, asyncio.Task[None]] = {}

    async def start(self) -> asyncio.Server:
        assert self.gateway.listen is not None
        listen = self.gateway.listen
        self.server = await asyncio.start_server(
            self.serve, listen.host, listen.port, limit=READ_SIZE, backlog=512
        )
        log.info("gateway %s listening on %s", self.gateway.name, self.address)
        return self.server

    @property
    def address(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def stop(self) -> None:
        """Accept no more connections; end the sessions that wait for a command,
        and give those in the middle of storing a message time to answer it."""
        if self.server is not None:
            self.server.close()
        for session in self.sessions:
            if session.waiting:
                session.writer.close()
        tasks = list(self.sessions.values())
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_GRACE)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("unknown", 0)
        client = str(peer[0])
        if not self.admission.enter(client):
            writer.write(TOO_MANY_CONNECTIONS.to_bytes())
            writer.close()
            return
        session = Session(self, client, writer)
        self.sessions[session] = asyncio.current_task()  # type: ignore[assignment]
        try:
            await session.run(reader, writer)
        except TimeoutError:
            session.conn.close_with(TIMED_OUT)
            writer.write(session.conn.data_to_send())
        except OSError:  # the peer went away, or a TLS handshake failed
            pass
        finally:
            self.sessions.pop(session, None)
            self.admission.leave(client)
            writer.close()


def core_limits(limits: TopologyLimits) -> Limits:
    return Limits(max_message_size=limits.max_message_size, max_recipients=limits.max_recipients)


def server_tls(gateway: Gateway) -> ssl.SSLContext | None:
    """The context for STARTTLS, when the gateway has a certificate and key."""
    if gateway.tls_cert is None or gateway.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(gateway.tls_cert, gateway.tls_key)
    return context


def deadlines_of(limits: TopologyLimits) -> Deadlines:
    return Deadlines(
        idle=limits.idle_timeout, command=limits.command_timeout, data_base=limits.data_timeout,
        data_rate=float(limits.data_rate), pregreet=limits.greet_wait,
    )


def same_recipient(a: NewRecipient, b: NewRecipient) -> bool:
    """The same mailbox (by any of its addresses), or the same outside address."""
    if a.mailbox is not None or b.mailbox is not None:
        return a.mailbox == b.mailbox
    return a.address.lower() == b.address.lower()


class Session(ServerSession):
    """One SMTP connection of a gateway: answers the core's decision events."""

    def __init__(self, side: ReceiveSide, peer: str, writer: asyncio.StreamWriter) -> None:
        self.side = side
        self.peer = peer
        self.writer = writer
        self.waiting = False  # for the client's next command: nothing to answer yet
        self.helo = ""
        self.esmtp = False  # EHLO rather than HELO
        self.envelope = Envelope()
        self.conn = ServerConnection(
            side.hostname, side.limits, starttls=side.tls is not None, strict_sync=True
        )
        self.may_relay = relay_allowed(peer, side.gateway)
        self.pace = Pace(side.deadlines)
        self.body: Body | None = None  # a large message's content so far

    async def run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self.converse(reader, writer)
        finally:
            self.drop_body()

    async def converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.pregreet(reader)
        await super().converse(reader, writer)

    def hello(self, ehlo: Ehlo) -> None:
        self.helo, self.esmtp = ehlo.domain, ehlo.esmtp

    def mail(self, sender: str) -> Reply:
        self.envelope = Envelope(sender)
        return Reply.of(250, "2.1.0 Ok")

    async def pregreet(self, reader: asyncio.StreamReader) -> None:
        """Wait a moment before the greeting: whoever talks first gets 554."""
        wait = self.side.deadlines.pregreet
        if wait <= 0:
            return
        try:
            early = await asyncio.wait_for(reader.read(1), wait)
        except TimeoutError:
            return
        if early:
            log.info("client %s talked before the greeting", self.peer)
            self.conn.close_with(TALKED_FIRST)
        else:
            self.conn.receive_data(b"")

    async def flush(self, writer: asyncio.StreamWriter) -> None:
        out = self.conn.data_to_send()
        if out:
            writer.write(out)
            self.pace.replied()
        if writer.transport.get_write_buffer_size():  # only a slow reader makes us wait
            async with asyncio.timeout(self.side.deadlines.idle):
                await writer.drain()

    async def read(self, reader: asyncio.StreamReader) -> bytes:
        now = time.monotonic()
        self.pace.reading(self.conn.state is State.DATA, now)
        timeout = self.pace.timeout(now)
        if timeout <= 0:
            raise TimeoutError
        self.waiting = self.conn.state is not State.DATA
        try:
            async with asyncio.timeout(timeout):  # cheaper than wait_for: no task per read
                data = await reader.read(READ_SIZE)
        finally:
            self.waiting = False
        self.pace.received(len(data), time.monotonic())
        return data

    async def upgrade(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """STARTTLS: drop clear text the stream already buffered (the core dropped
        what it had), then handshake. No await between the two lets bytes in."""
        assert self.side.tls is not None
        reader._buffer.clear()  # type: ignore[attr-defined]  # no public way to discard it
        await writer.start_tls(
            self.side.tls, ssl_handshake_timeout=self.side.deadlines.command
        )
        self.helo, self.envelope = "", Envelope()

    def recipient(self, address: str) -> Reply:
        try:
            native = lookup(self.side.topo, address)
        except UnknownMailbox:
            return Reply.of(550, f"5.1.1 <{address}>: Recipient address rejected: no such mailbox")
        except AddressError:
            return Reply.of(550, f"5.1.3 <{address}>: Recipient address rejected: bad address")
        if native is None and not self.may_relay:
            return Reply.of(550, f"5.7.1 <{address}>: Relay access denied")
        recipient = NewRecipient(address, native.key if native is not None else None)
        if not any(same_recipient(recipient, r) for r in self.envelope.recipients):
            self.envelope.recipients.append(recipient)  # one copy, however often it is named
        return Reply.of(250, "2.1.5 Ok")

    def trace(self, queue_id: str) -> bytes:
        """The Received header that goes first in the stored message."""
        side = self.side
        helo = self.helo or "unknown"
        protocol = ("ESMTPS" if self.conn.tls_active else "ESMTP") if self.esmtp else "SMTP"
        return policy.received_header(
            side.hostname, helo, self.peer, queue_id, time.time(), protocol
        )

    async def collect(self, data: bytes) -> None:
        if self.body is None:
            queue_id = new_queue_id()
            self.body = Body(self.side.store, queue_id, self.trace(queue_id))
        self.envelope.hops.add(data)
        await self.body.add(data)

    def drop_body(self) -> None:
        if self.body is not None:
            self.body.discard()
            self.body = None

    async def accept(self, last: bytes) -> Reply:
        """Store the message (`last` is its content, or the last piece of it)."""
        envelope, self.envelope = self.envelope, Envelope()
        body, self.body = self.body, None  # from here the file may be the store's
        envelope.hops.add(last)
        if policy.too_many_hops(envelope.hops.count, self.side.topo.limits.hopcount_limit):
            return self.refuse_loop(envelope, body)
        try:
            if body is None:
                queue_id = new_queue_id()
                content, spooled, size = self.trace(queue_id) + last, None, 0
            else:
                queue_id = body.queue_id
                await body.add(last)
                (content, spooled), size = await body.finish(), body.size
            queue_id = await self.side.store.enqueue(self.message(envelope, queue_id, content, spooled))
        except Exception as error:  # noqa: BLE001 - any failed commit: 4xx, never 250
            if body is not None:
                body.discard()  # not committed: the file is no one's
            return store_failure(error)
        self.side.wake_router()
        log.info(
            "%s: received from=<%s> rcpts=%d size=%d client=%s", queue_id, envelope.sender,
            len(envelope.recipients), size or len(content), self.peer,
        )
        return Reply.of(250, f"2.0.0 Ok: queued as {queue_id}")

    def refuse_loop(self, envelope: Envelope, body: Body | None) -> Reply:
        if body is not None:
            body.discard()
        log.info(
            "client %s: message from=<%s> refused: %d hops (limit %d), a mail loop?", self.peer,
            envelope.sender, envelope.hops.count, self.side.topo.limits.hopcount_limit,
        )
        return policy.TOO_MANY_HOPS

    def message(
        self, envelope: Envelope, queue_id: str, content: bytes, spooled: Path | None
    ) -> NewMessage:
        side = self.side
        return NewMessage(
            queue_id=queue_id,
            sender=envelope.sender,
            recipients=tuple(envelope.recipients),
            content=content,
            location=side.gateway.postoffice,
            origin=origin_of(side.topo, envelope.sender, side.gateway.postoffice),
            received_by=f"gateway:{side.gateway.name}",
            content_file=spooled,
            hop_count=envelope.hops.count,
        )


def store_failure(error: Exception) -> Reply:
    log.error("store failure, message refused with 4xx: %s", error)
    no_space = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
    if no_space or "full" in str(error):  # SQLite: "database or disk is full"
        return Reply.of(452, "4.3.1 Insufficient system storage")
    return Reply.of(451, "4.3.0 Error: queue file write error")


def relay_allowed(peer: str, gateway: Gateway) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in gateway.relay_from)


def origin_of(topo: Topology, sender: str, fallback: str) -> str:
    """The postoffice whose gateway group carries this message's outbound mail:
    the sender's own postoffice when the sender is one of ours."""
    native = sender_native(topo, sender, fallback)
    return native.postoffice if native is not None else fallback
