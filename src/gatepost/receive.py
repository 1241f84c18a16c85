"""Receive side of a gateway: an asyncio server around the SMTP server core.

It checks recipients against the topology, stores each message (durably,
through the group-committing store) before answering 250, and leaves the
rest to the router. It knows no SMTP syntax (the core does) and never
delivers or routes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gatepost import policy
from gatepost.smtp.events import (
    NEED_DATA,
    ConnectionClosed,
    Ehlo,
    Mail,
    Message,
    Rcpt,
    Reply,
)
from gatepost.smtp.server import Limits, ServerConnection
from gatepost.store import AsyncStore, NewMessage, NewRecipient
from gatepost.topology import Gateway, Topology, UnknownMailbox, lookup

log = logging.getLogger("gatepost.receive")

IDLE_TIMEOUT = 300.0  # RFC 5321 4.5.3.2: at least 5 minutes per command
READ_SIZE = 65536


@dataclass(slots=True)
class Envelope:
    sender: str = ""
    recipients: list[NewRecipient] = field(default_factory=list)


class ReceiveSide:
    """Accepts SMTP for one gateway into its gateway postoffice."""

    def __init__(
        self,
        topo: Topology,
        gateway: Gateway,
        store: AsyncStore,
        wake_router: Callable[[], None] = lambda: None,
        limits: Limits | None = None,
    ) -> None:
        self.topo = topo
        self.gateway = gateway
        self.store = store
        self.wake_router = wake_router
        self.limits = limits or Limits()
        self.hostname = hostname_of(topo, gateway)
        self.server: asyncio.Server | None = None

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
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("unknown", 0)
        session = Session(self, str(peer[0]))
        try:
            await session.run(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except TimeoutError:
            writer.write(b"421 4.4.2 Error: timeout exceeded\r\n")
        finally:
            writer.close()


def hostname_of(topo: Topology, gateway: Gateway) -> str:
    po = topo.postoffices[gateway.postoffice]
    domains = po.domains or topo.domains
    return domains[0] if domains else f"{gateway.name.lower()}.{topo.name.lower()}"


class Session:
    """One SMTP connection: answers the core's decision events."""

    def __init__(self, side: ReceiveSide, peer: str) -> None:
        self.side = side
        self.peer = peer
        self.helo = ""
        self.envelope = Envelope()
        self.conn = ServerConnection(side.hostname, side.limits)
        self.may_relay = relay_allowed(peer, side.gateway)

    async def run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                writer.write(conn.data_to_send())
                await writer.drain()
                data = await asyncio.wait_for(reader.read(READ_SIZE), IDLE_TIMEOUT)
                conn.receive_data(data)
            elif isinstance(event, ConnectionClosed):
                writer.write(conn.data_to_send())
                await writer.drain()
                return
            elif isinstance(event, Mail):
                self.envelope = Envelope(event.sender)
                conn.send(Reply.of(250, "2.1.0 Ok"))
            elif isinstance(event, Rcpt):
                conn.send(self.recipient(event.recipient))
            elif isinstance(event, Message):
                writer.write(conn.data_to_send())
                conn.send(await self.accept(event.content))
            elif isinstance(event, Ehlo):
                self.helo = event.domain

    def recipient(self, address: str) -> Reply:
        try:
            native = lookup(self.side.topo, address)
        except UnknownMailbox:
            return Reply.of(550, f"5.1.1 <{address}>: Recipient address rejected: no such mailbox")
        if native is None and not self.may_relay:
            return Reply.of(550, f"5.7.1 <{address}>: Relay access denied")
        self.envelope.recipients.append(
            NewRecipient(address, native.key if native is not None else None)
        )
        return Reply.of(250, "2.1.5 Ok")

    async def accept(self, content: bytes) -> Reply:
        envelope, self.envelope = self.envelope, Envelope()
        side = self.side
        now = time.time()
        trace = policy.received_header(side.hostname, self.helo or "unknown", self.peer, "", now)
        message = NewMessage(
            sender=envelope.sender,
            recipients=tuple(envelope.recipients),
            content=trace + content,
            location=side.gateway.postoffice,
            origin=origin_of(side.topo, envelope.sender, side.gateway.postoffice),
            received_by=f"gateway:{side.gateway.name}",
        )
        try:
            queue_id = await side.store.enqueue(message)
        except Exception as error:  # noqa: BLE001 - any failed commit: 4xx, never 250
            return store_failure(error)
        side.wake_router()
        log.info(
            "%s: received from=<%s> rcpts=%d size=%d client=%s",
            queue_id, envelope.sender, len(envelope.recipients), len(message.content), self.peer,
        )
        return Reply.of(250, f"2.0.0 Ok: queued as {queue_id}")


def store_failure(error: Exception) -> Reply:
    log.error("store failure, message refused with 4xx: %s", error)
    if "full" in str(error):
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
    try:
        native = lookup(topo, sender) if sender else None
    except UnknownMailbox:
        native = None
    return native.postoffice if native is not None else fallback
