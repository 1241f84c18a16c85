"""The server-session loop that the receive side and the capture sink share.

Does: feed the server core what the client sends, hand each event that needs
a decision (MAIL, RCPT, a content piece, the whole message) to the session's
own method, and write the core's replies. A session subclass says what MAIL,
RCPT and a message mean; it may also wrap reading, flushing and STARTTLS with
deadlines. Must not know: the store, the topology, SMTP syntax (the core's).
"""

from __future__ import annotations

import asyncio

from gatepost.smtp.events import (
    NEED_DATA,
    ConnectionClosed,
    Content,
    Ehlo,
    Mail,
    Message,
    Rcpt,
    Reply,
    StartTls,
)
from gatepost.smtp.server import ServerConnection
from gatepost.smtp.table import State

READ_SIZE = 65536


class ServerSession:
    """One SMTP connection, server side: `converse` until the client leaves."""

    conn: ServerConnection

    async def converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = self.conn
        while True:
            event = conn.next_event()
            if conn.state is not State.DATA and not isinstance(event, Message):
                self.drop_body()  # the core refused the message: no Message follows
            if event is NEED_DATA:
                await self.flush(writer)
                conn.receive_data(await self.read(reader))
            elif isinstance(event, ConnectionClosed):
                await self.flush(writer)
                return
            elif isinstance(event, StartTls):
                await self.flush(writer)
                await self.upgrade(reader, writer)
            elif isinstance(event, Mail):
                conn.send(self.mail(event.sender))
            elif isinstance(event, Rcpt):
                conn.send(self.recipient(event.recipient))
            elif isinstance(event, Content):
                await self.collect(event.data)
            elif isinstance(event, Message):
                writer.write(conn.data_to_send())  # earlier replies go before a slow accept
                conn.send(await self.accept(event.content))
            elif isinstance(event, Ehlo):
                self.hello(event)

    async def flush(self, writer: asyncio.StreamWriter) -> None:
        writer.write(self.conn.data_to_send())
        await writer.drain()

    async def read(self, reader: asyncio.StreamReader) -> bytes:
        return await reader.read(READ_SIZE)

    async def upgrade(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError("this session offers no STARTTLS")

    def hello(self, ehlo: Ehlo) -> None:
        """The client said EHLO or HELO (the core has answered it)."""

    def mail(self, sender: str) -> Reply:
        raise NotImplementedError

    def recipient(self, address: str) -> Reply:
        raise NotImplementedError

    async def collect(self, data: bytes) -> None:
        """One piece of a large message's content (whole lines), before its Message."""
        raise NotImplementedError

    async def accept(self, last: bytes) -> Reply:
        """The message is complete: `last` is its content, or its last piece."""
        raise NotImplementedError

    def drop_body(self) -> None:
        """Forget the pieces collected so far, if any: the message was refused."""
