"""Sans-I/O SMTP client core: commands to bytes, received bytes to Responses.

Each reply is paired, in order, with the command it answers (the first with the
pseudo-command Greeting), so a pipelined batch is read back one Response at a
time. After a 220 to STARTTLS the core forgets the extensions and any bytes
that came with the 220 (RFC 3207): the shell upgrades the socket and says EHLO
again. AUTH PLAIN and LOGIN (RFC 4954) are commands like any other. Message
content is always sent with CRLF-only line ends and dot-stuffed; a large one
goes as Content pieces (any split) then the Message that ends it, and comes
out as the same bytes as when sent whole (`Stuffer` carries line state across).
Whatever the server sends that is not a reply answering a command we sent (a
malformed or overlong line, a code that changes inside a multi-line reply,
more than MAX_REPLY_LINES lines or MAX_REPLY_BYTES bytes) raises ProtocolError, naming what came.
Must not know sockets, asyncio, the clock, the store, or what a reply code means
for the queue (that is policy).
"""

from __future__ import annotations

import base64
import re
from collections import deque

from gatepost.smtp.events import (
    NEED_DATA,
    Auth,
    AuthResponse,
    ClientCommand,
    ConnectionClosed,
    Content,
    Data,
    Ehlo,
    Greeting,
    LocalProtocolError,
    Mail,
    Message,
    NeedData,
    Noop,
    ProtocolError,
    Quit,
    Rcpt,
    Reply,
    Response,
    Rset,
    StartTls,
)

MAX_REPLY_LINE = 64 * 1024
MAX_REPLY_LINES = 1000  # in one multi-line reply
MAX_REPLY_BYTES = 64 * 1024  # the text of one whole reply, all its lines
SHOWN = 80  # bytes of a refused line quoted in a ProtocolError
_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])(?:([ -])(.*))?", re.DOTALL)


class ClientConnection:
    """One SMTP session, client side. See the module docstring."""

    def __init__(self) -> None:
        self.extensions: dict[str, str] = {}  # upper-case EHLO keyword -> parameters
        self._in = bytearray()
        self._awaiting: deque[ClientCommand | Greeting] = deque([Greeting()])
        self._code: int | None = None  # of the multiline reply being read
        self._lines: list[str] = []
        self._size = 0  # bytes of the reply being read
        self._eof = False
        self._closed = False
        self._stuffer: Stuffer | None = None  # inside a message sent in pieces
        self._before_tls = False  # STARTTLS accepted, the handshake not yet done

    def send(self, command: ClientCommand) -> bytes:
        """The bytes to write for `command`; its reply will come back as a Response.
        Content pieces get no reply: the Message after them does."""
        if self._closed:
            raise LocalProtocolError("the connection is closed")
        self._before_tls = False
        if isinstance(command, Content):
            self._stuffer = self._stuffer or Stuffer()
            return self._stuffer.feed(command.data)
        if self._stuffer is not None:
            if not isinstance(command, Message):
                raise LocalProtocolError("Content must end with a Message")
            stuffer, self._stuffer = self._stuffer, None
            self._awaiting.append(command)
            return stuffer.feed(command.content) + stuffer.end()
        data = serialize(command, self.extensions)
        self._awaiting.append(command)
        return data

    def receive_data(self, data: bytes) -> None:
        """Feed received bytes; b"" means the server closed its side. Between a
        220 to STARTTLS and our next command, clear text is dropped unread."""
        if not data:
            self._eof = True
        elif not (self._eof or self._before_tls):
            self._in += data

    @property
    def awaiting_reply(self) -> bool:
        """Has a command been sent whose reply has not been read yet?"""
        return bool(self._awaiting)

    def next_event(self) -> Response | ConnectionClosed | NeedData:
        while not self._closed:
            end = self._in.find(b"\n")
            if end < 0:
                return self._starved()
            if end > MAX_REPLY_LINE:
                raise ProtocolError(f"reply line too long: {shown(self._in)}")
            line = bytes(self._in[:end])
            del self._in[: end + 1]
            reply = self._read_line(line[:-1] if line.endswith(b"\r") else line)
            if reply is not None:
                return self._pair(reply)
        return ConnectionClosed()

    def _starved(self) -> ConnectionClosed | NeedData:
        if len(self._in) > MAX_REPLY_LINE:
            raise ProtocolError(f"reply line too long: {shown(self._in)}")
        if self._eof:
            self._closed = True
            return ConnectionClosed()
        return NEED_DATA

    def _read_line(self, line: bytes) -> Reply | None:
        """Add one reply line; the whole Reply once its last line is read."""
        match = _REPLY_LINE.fullmatch(line)
        if match is None:
            raise ProtocolError(f"malformed reply line: {shown(line)}")
        code = int(match[1])
        if self._code is not None and code != self._code:
            raise ProtocolError(f"reply code changed from {self._code} mid-reply: {shown(line)}")
        if len(self._lines) >= MAX_REPLY_LINES:
            raise ProtocolError(f"reply of more than {MAX_REPLY_LINES} lines: {shown(line)}")
        self._size += len(line)
        if self._size > MAX_REPLY_BYTES:
            raise ProtocolError(f"reply of more than {MAX_REPLY_BYTES} bytes: {shown(line)}")
        self._lines.append((match[3] or b"").decode("utf-8", "replace"))
        if match[2] == b"-":
            self._code = code
            return None
        reply = Reply(code, tuple(self._lines))
        self._code, self._lines, self._size = None, [], 0
        return reply

    def _pair(self, reply: Reply) -> Response:
        if not self._awaiting:
            text = f"{reply.code} {reply.text}".encode("utf-8", "replace")
            raise ProtocolError(f"reply answers no command we sent: {shown(text)}")
        command = self._awaiting.popleft()
        if isinstance(command, Ehlo):
            self._learn_extensions(command, reply)
        elif isinstance(command, StartTls) and reply.code == 220:
            self._start_over()
        return Response(command, reply)

    def _start_over(self) -> None:
        """TLS begins: nothing learnt or received in clear counts any more."""
        self.extensions = {}
        self._in.clear()
        self._awaiting.clear()
        self._before_tls = True

    @property
    def auth_mechanisms(self) -> set[str]:
        """The SASL mechanisms the server offered in its EHLO reply."""
        return set(self.extensions.get("AUTH", "").upper().split())

    def _learn_extensions(self, ehlo: Ehlo, reply: Reply) -> None:
        self.extensions = {}
        if not ehlo.esmtp or reply.code // 100 != 2:
            return
        for line in reply.lines[1:]:
            keyword, _, params = line.strip().partition(" ")
            self.extensions[keyword.upper()] = params.strip()


def shown(data: bytes | bytearray) -> str:
    """The start of what the server sent, printable, for an error message."""
    return repr(bytes(data[:SHOWN])) + ("..." if len(data) > SHOWN else "")


def serialize(command: ClientCommand, extensions: dict[str, str]) -> bytes:
    """The wire form of `command`; MAIL parameters only where `extensions` allow."""
    if isinstance(command, Message):
        return stuff(command.content) + b".\r\n"
    if isinstance(command, Content):
        raise LocalProtocolError("Content is sent through ClientConnection.send")
    return (_command_line(command, extensions) + "\r\n").encode("utf-8")


def _command_line(command: ClientCommand, extensions: dict[str, str]) -> str:
    if isinstance(command, Auth):
        initial = f" {command.initial or '='}" if command.initial is not None else ""
        return f"AUTH {command.mechanism}{initial}"
    if isinstance(command, AuthResponse):
        return command.line
    if isinstance(command, Ehlo):
        return f"{'EHLO' if command.esmtp else 'HELO'} {command.domain}"
    if isinstance(command, Mail):
        return f"MAIL FROM:<{command.sender}>{_mail_params(command, extensions)}"
    if isinstance(command, Rcpt):
        return f"RCPT TO:<{command.recipient}>"
    words = {Data: "DATA", Rset: "RSET", Noop: "NOOP", Quit: "QUIT", StartTls: "STARTTLS"}
    return words[type(command)]


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def auth_plain(user: str, password: str) -> Auth:
    """AUTH PLAIN with its initial response (RFC 4616): NUL user NUL password."""
    return Auth("PLAIN", b64(f"\0{user}\0{password}"))


def auth_login(user: str, password: str) -> tuple[Auth, AuthResponse, AuthResponse]:
    """AUTH LOGIN: the command, then the user name and the password, each
    answering one 334."""
    return Auth("LOGIN"), AuthResponse(b64(user)), AuthResponse(b64(password))


def _mail_params(mail: Mail, extensions: dict[str, str]) -> str:
    params = ""
    if mail.size is not None and "SIZE" in extensions:
        params += f" SIZE={mail.size}"
    if mail.body is not None and "8BITMIME" in extensions:
        params += f" BODY={mail.body}"
    if mail.smtputf8 and "SMTPUTF8" in extensions:
        params += " SMTPUTF8"
    return params


def stuff(content: bytes) -> bytes:
    """`content` with every bare CR or LF made CRLF, a final CRLF, and
    dot-stuffed (RFC 5321 4.5.2); the ".\\r\\n" terminator is not included."""
    line_ends = content.count(b"\r\n")
    if content.count(b"\r") != line_ends or content.count(b"\n") != line_ends:
        content = content.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if content and not content.endswith(b"\r\n"):
        content += b"\r\n"
    content = content.replace(b"\r\n.", b"\r\n..")
    return b"." + content if content[:1] == b"." else content


class Stuffer:
    """`stuff` for content that comes in pieces split anywhere: `feed` each
    piece, then `end`; the bytes are those of stuff(whole) + b".\\r\\n".
    A CR at the end of a piece waits for the next one (it may start with LF)."""

    def __init__(self) -> None:
        self._cr = False  # a CR held back from the last piece
        self._line_start = True  # what was sent so far ends a line (or is nothing)

    def feed(self, data: bytes) -> bytes:
        if self._cr:
            data = b"\r" + data
        self._cr = data.endswith(b"\r")
        if self._cr:
            data = data[:-1]
        if not data:
            return b""
        line_ends = data.count(b"\r\n")
        if data.count(b"\r") != line_ends or data.count(b"\n") != line_ends:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        data = data.replace(b"\r\n.", b"\r\n..")
        if self._line_start and data[:1] == b".":
            data = b"." + data
        self._line_start = data.endswith(b"\r\n")
        return data

    def end(self) -> bytes:
        """The rest: a held CR as a line end, a final CRLF, the terminator."""
        if self._cr:
            return b"\r\n.\r\n"
        return b".\r\n" if self._line_start else b"\r\n.\r\n"
