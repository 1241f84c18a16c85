"""An outbound SMTP session: the asyncio shell around the client core.

Opens a connection, says EHLO, upgrades to TLS with STARTTLS (and says EHLO
again) and authenticates when told to, runs pipelined transactions and
reports one reply per recipient. Content given as a file is streamed in
pieces (the client core stuffs them). It holds no protocol knowledge of its own
and decides nothing about retries: trouble with the host itself (TLS, AUTH)
is raised as a SessionError with a 4xx reply, so the mail waits.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gatepost.send.credentials import Login
from gatepost.smtp.client import ClientConnection, auth_login, auth_plain
from gatepost.smtp.events import (
    NEED_DATA,
    ClientCommand,
    ConnectionClosed,
    Content,
    Ehlo,
    Mail,
    Message,
    Quit,
    Reply,
    Response,
    StartTls,
)
from gatepost.smtp.transaction import (
    Broken,
    Finished,
    Step,
    Transaction,
    WriteContent,
)
from gatepost.topology.model import TlsMode

CONNECT_TIMEOUT = 30.0
REPLY_TIMEOUT = 300.0  # RFC 5321 4.5.3.2: 5 minutes for MAIL, RCPT, the greeting
FINAL_TIMEOUT = 600.0  # RFC 5321 4.5.3.2.6: 10 minutes for the reply to the final dot
READ_SIZE = 65536
CONTENT_PIECE = 256 * 1024  # bytes read from a content file per write

Payload = bytes | BinaryIO  # a message's content: whole, or a file to stream


NEEDS_SMTPUTF8 = Reply.of(553, "5.6.7 non-ASCII address, and the server does not offer SMTPUTF8")


class SessionError(Exception):
    """The session cannot go on; `reply` is what to record for the recipients."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"{reply.code} {reply.text}")
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Security:
    """How to protect a session: STARTTLS mode and context, and AUTH login."""

    tls: TlsMode = "none"
    context: ssl.SSLContext | None = None
    login: Login | None = None


def client_context(tls: TlsMode, ca_file: Path | None, verify: bool) -> ssl.SSLContext | None:
    """The TLS context toward a smart host: system CAs (or `ca_file`), names checked."""
    if tls == "none":
        return None
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def defer(text: str) -> SessionError:
    return SessionError(Reply.of(451, text))


class Outbound:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = ClientConnection()
        self.tls_active = False

    @classmethod
    async def open(
        cls, host: str, port: int, helo: str,
        security: Security = Security(), server_name: str | None = None,
    ) -> Outbound:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=READ_SIZE), CONNECT_TIMEOUT
        )
        session = cls(reader, writer)
        try:
            await session.expect_positive((await session.response()).reply)
            await session.hello(helo)
            await session.secure(security, helo, server_name or host)
            await session.authenticate(security.login, clear_ok=security.tls == "none")
        except BaseException:
            writer.close()
            raise
        return session

    async def secure(self, security: Security, helo: str, server_name: str) -> None:
        """STARTTLS when offered (or required), then EHLO again over TLS."""
        if security.tls == "none" or security.context is None:
            return
        if "STARTTLS" not in self.conn.extensions:
            if security.tls == "required":
                raise defer(f"4.7.4 TLS is required but {server_name} does not offer STARTTLS")
            return
        reply = await self.command(StartTls())
        if reply.code != 220:
            if security.tls == "required":
                raise defer(f"4.7.4 TLS is required but STARTTLS was refused: {reply.code} {reply.text}")
            return
        try:
            await self.writer.start_tls(security.context, server_hostname=server_name)
        except (ssl.SSLError, ssl.CertificateError, ConnectionError) as exc:
            raise defer(f"4.7.5 TLS with {server_name} failed: {exc}") from exc
        self.tls_active = True
        await self.hello(helo)

    async def authenticate(self, login: Login | None, clear_ok: bool) -> None:
        """AUTH PLAIN (or LOGIN); refuses to send a password in clear unless
        TLS was switched off on purpose (tls = "none")."""
        if login is None:
            return
        if not self.tls_active and not clear_ok:
            raise defer("4.7.0 will not send the AUTH password in clear: no STARTTLS")
        offered = self.conn.auth_mechanisms
        if "PLAIN" in offered:
            steps: tuple[ClientCommand, ...] = (auth_plain(login.user, login.password),)
        elif "LOGIN" in offered:
            steps = auth_login(login.user, login.password)
        else:
            raise defer("4.7.0 the smart host offers neither AUTH PLAIN nor AUTH LOGIN")
        for step in steps:
            reply = await self.command(step)
            if reply.code not in (235, 334):
                raise defer(f"4.7.8 authentication as {login.user} failed: {reply.code} {reply.text}")
        if reply.code != 235:
            raise defer(f"4.7.8 authentication as {login.user} not completed: {reply.code}")

    async def hello(self, helo: str) -> None:
        reply = await self.command(Ehlo(helo))
        if reply.code >= 500:
            reply = await self.command(Ehlo(helo, esmtp=False))
        await self.expect_positive(reply)

    async def expect_positive(self, reply: Reply) -> None:
        if not reply.is_positive:
            raise SessionError(reply)

    async def command(self, command: ClientCommand, timeout: float = REPLY_TIMEOUT) -> Reply:
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

    async def transact(self, sender: str, recipients: list[str], content: Payload) -> list[Reply]:
        """One mail transaction; returns the reply that decides each recipient."""
        if isinstance(content, bytes):
            size, eight_bit = len(content), not content.isascii()
        else:
            size, eight_bit = await asyncio.to_thread(measure, content)
        utf8 = not (sender.isascii() and all(r.isascii() for r in recipients))
        if utf8 and "SMTPUTF8" not in self.conn.extensions:  # RFC 6531 3.4: must not send
            return [NEEDS_SMTPUTF8] * len(recipients)
        mail = Mail(sender, size, "8BITMIME" if eight_bit else None, utf8)
        transaction = Transaction(mail, recipients, "PIPELINING" in self.conn.extensions)
        step: Step = transaction.start()
        while True:
            if isinstance(step, Finished):
                return list(step.replies)
            if isinstance(step, Broken):
                raise SessionError(step.reply)
            if isinstance(step, WriteContent):
                await self.send_content(content)
            else:
                self.writer.write(b"".join(self.conn.send(c) for c in step.commands))
            timeout = FINAL_TIMEOUT if transaction.awaiting_final else REPLY_TIMEOUT
            step = transaction.answer((await self.response(timeout)).reply)

    async def send_content(self, content: Payload) -> None:
        """Send the content after 354; a file goes piece by piece."""
        if isinstance(content, bytes):
            self.writer.write(self.conn.send(Message(content)))
            return
        while piece := content.read(CONTENT_PIECE):
            self.writer.write(self.conn.send(Content(piece)))
            await asyncio.wait_for(self.writer.drain(), FINAL_TIMEOUT)
        self.writer.write(self.conn.send(Message(b"")))

    async def quit(self) -> None:
        try:
            self.writer.write(self.conn.send(Quit()))
            await asyncio.wait_for(self.writer.drain(), 5)
        except (OSError, TimeoutError):
            pass
        finally:
            self.writer.close()


def measure(content: BinaryIO) -> tuple[int, bool]:
    """Size of a content file, and whether it holds 8-bit bytes; rewinds it."""
    size, eight_bit = 0, False
    content.seek(0)
    while piece := content.read(CONTENT_PIECE):
        size += len(piece)
        eight_bit = eight_bit or not piece.isascii()
    content.seek(0)
    return size, eight_bit
