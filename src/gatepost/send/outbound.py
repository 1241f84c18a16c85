"""An outbound SMTP session: the asyncio shell around the client core.

Opens a connection, says EHLO, upgrades to TLS with STARTTLS (and says EHLO
again) and authenticates when told to, runs pipelined transactions and
reports one reply per recipient. Content given as a file is streamed in
pieces (the client core stuffs them). Every read and every write has a
deadline (the module's timeouts, RFC 5321's defaults).

It holds no protocol knowledge of its own and decides nothing about outcomes:
trouble with the host itself (a refused greeting, EHLO, STARTTLS or AUTH, a
closed connection) is raised as a SessionError saying what happened, and the
client core's ProtocolError and socket errors pass through; what any of it
means for the mail is policy's to say. Once a transaction's replies have
decided its recipients they stand: trouble after that is kept in `broken`,
and the session is not used again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gatepost.policy import NEEDS_SMTPUTF8
from gatepost.send.credentials import Login
from gatepost.smtp.client import ClientConnection, auth_login, auth_plain
from gatepost.smtp.events import (
    ClientCommand,
    ConnectionClosed,
    Content,
    Ehlo,
    Mail,
    Message,
    ProtocolError,
    Quit,
    Reply,
    Response,
    StartTls,
)
from gatepost.smtp.transaction import Broken, Finished, Step, Transaction, WriteContent
from gatepost.topology.model import TlsMode

CONNECT_TIMEOUT = 30.0
REPLY_TIMEOUT = 300.0  # RFC 5321 4.5.3.2: 5 minutes for MAIL, RCPT, the greeting
FINAL_TIMEOUT = 600.0  # RFC 5321 4.5.3.2.6: 10 minutes for the reply to the final dot
SEND_TIMEOUT = 180.0  # RFC 5321 4.5.3.2.5: 3 minutes for the host to take each write
QUIT_TIMEOUT = 5.0
READ_SIZE = 65536
CONTENT_PIECE = 256 * 1024  # bytes read from a content file per write
CLOSED = "4.4.2 connection closed by the smart host"

Payload = bytes | BinaryIO  # a message's content: whole, or a file to stream
DotCheck = Callable[[], Awaitable[str | None]]  # None: the final dot may go; else why not


class SessionError(Exception):
    """The session cannot go on: `trouble` is the host's reply, or an account of
    what went wrong that starts with its status ("4.7.4 TLS is required ...");
    what it means for the recipients is policy.session_failed's to say."""

    def __init__(self, trouble: Reply | str) -> None:
        super().__init__(trouble if isinstance(trouble, str) else f"{trouble.code} {trouble.text}")
        self.trouble = trouble


@dataclass(frozen=True, slots=True)
class Security:
    """How to protect a session: STARTTLS mode and context, and AUTH login.
    `fallback`: STARTTLS is skipped for this session only (its handshake failed
    before), which never lets the AUTH password go in clear."""

    tls: TlsMode = "none"
    context: ssl.SSLContext | None = None
    login: Login | None = None
    fallback: bool = False

    @property
    def clear_auth(self) -> bool:
        """May the password go without TLS (tls = "none" on purpose)?"""
        return self.tls == "none" and not self.fallback


class DotWithheld(SessionError):
    """The content went but not the final dot (the `DotCheck` said why): the
    connection is closed, so the host discards the message."""

    def __init__(self, why: str) -> None:
        super().__init__(f"4.4.0 the final dot was withheld: {why}")
        self.why = why


class HandshakeFailed(SessionError):
    """The TLS handshake itself failed (not the certificate check): with
    opportunistic TLS the next session to that host goes without it."""


def client_context(tls: TlsMode, ca_file: Path | None, verify: bool) -> ssl.SSLContext | None:
    """The TLS context toward a smart host: system CAs (or `ca_file`), names checked."""
    if tls == "none":
        return None
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class Outbound:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = ClientConnection()
        self.tls_active = False
        self.broken: Exception | None = None  # why no further transaction may use it

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
            await session.expect_positive((await session.response(REPLY_TIMEOUT)).reply)
            await session.hello(helo)
            await session.secure(security, helo, server_name or host)
            await session.authenticate(security.login, clear_ok=security.clear_auth)
        except BaseException:
            session.close()
            raise
        return session

    async def secure(self, security: Security, helo: str, server_name: str) -> None:
        """STARTTLS when offered (or required), then EHLO again over TLS."""
        if security.tls == "none" or security.context is None:
            return
        if "STARTTLS" not in self.conn.extensions:
            if security.tls == "required":
                raise SessionError(
                    f"4.7.4 TLS is required but {server_name} does not offer STARTTLS")
            return
        reply = await self.command(StartTls())
        if reply.code != 220:
            if security.tls == "required":
                raise SessionError(
                    f"4.7.4 TLS is required but STARTTLS was refused: {reply.code} {reply.text}")
            return
        if self.unread():
            raise SessionError(f"4.7.0 {server_name} sent clear text after its 220 to STARTTLS")
        try:
            await self.writer.start_tls(security.context, server_hostname=server_name,
                                        ssl_handshake_timeout=REPLY_TIMEOUT)
        except ssl.CertificateError as exc:  # the handshake worked; the check did not
            raise SessionError(f"4.7.5 TLS with {server_name} failed: {exc}") from exc
        except (ssl.SSLError, ConnectionError, TimeoutError) as exc:
            why = str(exc) or type(exc).__name__
            raise HandshakeFailed(f"4.7.5 TLS with {server_name} failed: {why}") from exc
        self.tls_active = True
        await self.hello(helo)

    async def authenticate(self, login: Login | None, clear_ok: bool) -> None:
        """AUTH PLAIN (or LOGIN); refuses to send a password in clear unless
        TLS was switched off on purpose (tls = "none")."""
        if login is None:
            return
        if not self.tls_active and not clear_ok:
            raise SessionError("4.7.0 will not send the AUTH password in clear: no STARTTLS")
        offered = self.conn.auth_mechanisms
        if "PLAIN" in offered:
            steps: tuple[ClientCommand, ...] = (auth_plain(login.user, login.password),)
        elif "LOGIN" in offered:
            steps = auth_login(login.user, login.password)
        else:
            raise SessionError("4.7.0 the smart host offers neither AUTH PLAIN nor AUTH LOGIN")
        for step in steps:
            reply = await self.command(step)
            if reply.code not in (235, 334):
                raise SessionError(
                    f"4.7.8 authentication as {login.user} failed: {reply.code} {reply.text}")
        if reply.code != 235:
            raise SessionError(f"4.7.8 authentication as {login.user} not completed: {reply.code}")

    async def hello(self, helo: str) -> None:
        reply = await self.command(Ehlo(helo))
        if reply.code >= 500:
            reply = await self.command(Ehlo(helo, esmtp=False))
        await self.expect_positive(reply)

    async def expect_positive(self, reply: Reply) -> None:
        if not reply.is_positive:
            raise SessionError(reply)

    async def command(self, command: ClientCommand) -> Reply:
        """Send one command outside a transaction; a 421 (closing) ends the session."""
        await self.send(command)
        reply = (await self.response(REPLY_TIMEOUT)).reply
        if reply.code == 421:
            raise SessionError(reply)
        return reply

    async def send(self, *commands: ClientCommand) -> None:
        """Write commands; when no reply was due, the host must have sent nothing."""
        if not self.conn.awaiting_reply:
            self.expect_silence()
        await self.write(b"".join(self.conn.send(c) for c in commands))

    def expect_silence(self) -> None:
        """Raise if the host sent anything while no reply was due (the core's
        ProtocolError for a line, a SessionError for a closed connection)."""
        if isinstance(self.conn.next_event(), ConnectionClosed):
            raise SessionError(CLOSED)

    async def write(self, data: bytes, timeout: float | None = None) -> None:
        """Write, and wait (at most SEND_TIMEOUT) while the host takes it in."""
        self.writer.write(data)
        if self.writer.transport.get_write_buffer_size():
            await asyncio.wait_for(self.writer.drain(), timeout or SEND_TIMEOUT)

    async def response(self, timeout: float) -> Response:
        """The next Response, whole within `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while True:
                event = self.conn.next_event()
                if isinstance(event, Response):
                    return event
                if isinstance(event, ConnectionClosed):
                    raise SessionError(CLOSED)
                self.conn.receive_data(await self.reader.read(READ_SIZE))

    async def transact(
        self, sender: str, recipients: list[str], content: Payload, before_dot: DotCheck | None = None
    ) -> list[Reply]:
        """One mail transaction; returns the reply that decides each recipient.
        `before_dot` is asked, once the content is sent, whether the final dot
        may go; when not, DotWithheld is raised and the session is closed."""
        if isinstance(content, bytes):
            size, eight_bit = len(content), not content.isascii()
        else:
            size, eight_bit = await asyncio.to_thread(measure, content)
        utf8 = not (sender.isascii() and all(r.isascii() for r in recipients))
        if utf8 and "SMTPUTF8" not in self.conn.extensions:  # RFC 6531 3.4: must not send
            return [NEEDS_SMTPUTF8] * len(recipients)
        mail = Mail(sender, size, "8BITMIME" if eight_bit else None, utf8)
        transaction = Transaction(mail, recipients, "PIPELINING" in self.conn.extensions)
        try:
            replies = await self.run(transaction, content, before_dot)
        except Exception as error:
            if transaction.settled is None:
                raise
            self.broken = error  # the replies decided every recipient before it
            return list(transaction.settled)
        self.broken = self.unasked()
        return replies

    async def run(
        self, transaction: Transaction, content: Payload, before_dot: DotCheck | None
    ) -> list[Reply]:
        step: Step = transaction.start()
        while True:
            if isinstance(step, Finished):
                return list(step.replies)
            if isinstance(step, Broken):
                raise SessionError(step.reply)
            if isinstance(step, WriteContent):
                await self.send_content(content, before_dot)
            elif step.commands:
                await self.send(*step.commands)
            timeout = FINAL_TIMEOUT if transaction.awaiting_final else REPLY_TIMEOUT
            step = transaction.answer((await self.response(timeout)).reply)

    def quiet(self) -> bool:
        """Has the host sent nothing since its last reply, and not closed? Only
        then may the session carry another message: a late reply would be
        taken for the answer to the next command."""
        return not self.unread() and not self.reader.at_eof() and self.unasked() is None

    def unread(self) -> bool:
        """Has the stream taken bytes from the host that we have not read yet?"""
        return bool(self.reader._buffer)  # type: ignore[attr-defined]  # no public way to look

    def unasked(self) -> Exception | None:
        """What the host already sent after the last reply it owed, if anything."""
        try:
            self.expect_silence()
        except (SessionError, ProtocolError) as error:
            return error
        return None

    async def send_content(self, content: Payload, before_dot: DotCheck | None = None) -> None:
        """Send the content after 354 (a file piece by piece), then the final
        dot once `before_dot` lets it go."""
        if isinstance(content, bytes) and before_dot is None:
            await self.send(Message(content))
            return
        if isinstance(content, bytes):
            await self.send(Content(content))
        else:
            while piece := content.read(CONTENT_PIECE):
                await self.write(self.conn.send(Content(piece)))
        why = await before_dot() if before_dot is not None else None
        if why is not None:
            self.close()
            raise DotWithheld(why)
        await self.send(Message(b""))

    async def quit(self) -> None:
        """QUIT (its reply is not awaited), then close."""
        with contextlib.suppress(Exception):
            await self.write(self.conn.send(Quit()), QUIT_TIMEOUT)
        self.close()

    def close(self) -> None:
        """Close at once, dropping whatever the host has not taken yet."""
        self.writer.transport.abort()


def measure(content: BinaryIO) -> tuple[int, bool]:
    """Size of a content file, and whether it holds 8-bit bytes; rewinds it."""
    size, eight_bit = 0, False
    content.seek(0)
    while piece := content.read(CONTENT_PIECE):
        size += len(piece)
        eight_bit = eight_bit or not piece.isascii()
    content.seek(0)
    return size, eight_bit
