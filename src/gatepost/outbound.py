"""An outbound SMTP session: the asyncio shell around the client core.

Opens a connection, says EHLO, runs pipelined transactions and reports one
reply per recipient. It holds no protocol knowledge of its own and decides
nothing about retries.
"""

from __future__ import annotations

import asyncio

from gatepost.smtp.client import ClientConnection
from gatepost.smtp.events import (
    NEED_DATA,
    Command,
    ConnectionClosed,
    Data,
    Ehlo,
    Mail,
    Message,
    Quit,
    Rcpt,
    Reply,
    Response,
    Rset,
)

CONNECT_TIMEOUT = 30.0
REPLY_TIMEOUT = 300.0  # RFC 5321 4.5.3.2: 5 minutes for MAIL, RCPT, the greeting
FINAL_TIMEOUT = 600.0  # RFC 5321 4.5.3.2.6: 10 minutes for the reply to the final dot
READ_SIZE = 65536


class SessionError(Exception):
    """The session cannot go on; `reply` is what to record for the recipients."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"{reply.code} {reply.text}")
        self.reply = reply


class Outbound:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = ClientConnection()

    @classmethod
    async def open(cls, host: str, port: int, helo: str) -> Outbound:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=READ_SIZE), CONNECT_TIMEOUT
        )
        session = cls(reader, writer)
        try:
            await session.expect_positive((await session.response()).reply)
            await session.hello(helo)
        except BaseException:
            writer.close()
            raise
        return session

    async def hello(self, helo: str) -> None:
        reply = await self.command(Ehlo(helo))
        if reply.code >= 500:
            reply = await self.command(Ehlo(helo, esmtp=False))
        await self.expect_positive(reply)

    async def expect_positive(self, reply: Reply) -> None:
        if not reply.is_positive:
            raise SessionError(reply)

    async def command(self, command: Command, timeout: float = REPLY_TIMEOUT) -> Reply:
        self.writer.write(self.conn.send(command))
        return (await self.response(timeout)).reply

    async def response(self, timeout: float = REPLY_TIMEOUT) -> Response:
        while True:
            event = self.conn.next_event()
            if isinstance(event, Response):
                if event.reply.code == 421:
                    raise SessionError(event.reply)
                return event
            if isinstance(event, ConnectionClosed):
                raise SessionError(Reply.of(451, "4.4.2 connection closed by the smart host"))
            assert event is NEED_DATA
            await self.writer.drain()
            data = await asyncio.wait_for(self.reader.read(READ_SIZE), timeout)
            self.conn.receive_data(data)

    async def transact(self, sender: str, recipients: list[str], content: bytes) -> list[Reply]:
        """One mail transaction; returns the reply that decides each recipient."""
        eight_bit = not content.isascii()
        utf8 = not (sender.isascii() and all(r.isascii() for r in recipients))
        mail = Mail(sender, len(content), "8BITMIME" if eight_bit else None, utf8)
        if "PIPELINING" in self.conn.extensions:
            return await self.pipelined(mail, recipients, content)
        return await self.stepwise(mail, recipients, content)

    async def pipelined(self, mail: Mail, recipients: list[str], content: bytes) -> list[Reply]:
        commands: list[Command] = [mail, *(Rcpt(r) for r in recipients), Data()]
        self.writer.write(b"".join(self.conn.send(c) for c in commands))
        replies = [(await self.response()).reply for _ in commands]
        mail_reply, rcpt_replies, data_reply = replies[0], replies[1:-1], replies[-1]
        if not mail_reply.is_positive:
            await self.reset(data_reply)
            return [mail_reply] * len(recipients)
        return await self.finish(rcpt_replies, data_reply, content)

    async def stepwise(self, mail: Mail, recipients: list[str], content: bytes) -> list[Reply]:
        mail_reply = await self.command(mail)
        if not mail_reply.is_positive:
            await self.reset(None)
            return [mail_reply] * len(recipients)
        rcpt_replies = [await self.command(Rcpt(r)) for r in recipients]
        if not any(r.is_positive for r in rcpt_replies):
            await self.reset(None)
            return rcpt_replies
        return await self.finish(rcpt_replies, await self.command(Data()), content)

    async def finish(self, rcpt_replies: list[Reply], data_reply: Reply, content: bytes) -> list[Reply]:
        accepted = any(r.is_positive for r in rcpt_replies)
        if data_reply.code != 354:
            if data_reply.is_positive:
                raise SessionError(Reply.of(451, "4.5.0 smart host accepted DATA without 354"))
            await self.reset(None)
            return [r if not r.is_positive else data_reply for r in rcpt_replies]
        final = await self.command(Message(content if accepted else b""), FINAL_TIMEOUT)
        if not accepted:
            return rcpt_replies
        return [r if not r.is_positive else final for r in rcpt_replies]

    async def reset(self, data_reply: Reply | None) -> None:
        if data_reply is not None and data_reply.code == 354:
            await self.command(Message(b""), FINAL_TIMEOUT)
        reply = await self.command(Rset())
        await self.expect_positive(reply)

    async def quit(self) -> None:
        try:
            self.writer.write(self.conn.send(Quit()))
            await asyncio.wait_for(self.writer.drain(), 5)
        except (OSError, TimeoutError):
            pass
        finally:
            self.writer.close()
