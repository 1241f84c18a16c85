"""SMTP commands, replies and events shared by the server and client cores.

Pure data: frozen, slotted dataclasses. No parsing state, no I/O.
A server core turns received bytes into these commands; a client core
turns these commands into bytes. Replies travel the other way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Final, Literal, TypeAlias


class _Sentinel(Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = _Sentinel.NEED_DATA
"""next_event() returns this when more bytes must be received first."""

NeedData: TypeAlias = Literal[_Sentinel.NEED_DATA]
"""The type of NEED_DATA, for annotations."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply. `lines` holds the text of each line, enhanced code included."""

    code: int
    lines: tuple[str, ...] = ("",)

    @classmethod
    def of(cls, code: int, *lines: str) -> Reply:
        return cls(code, lines or ("",))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def to_bytes(self) -> bytes:
        last = len(self.lines) - 1
        return b"".join(
            f"{self.code}{' ' if i == last else '-'}{line}\r\n".encode()
            for i, line in enumerate(self.lines)
        )


@dataclass(frozen=True, slots=True)
class Ehlo:
    """EHLO (esmtp=True) or HELO (esmtp=False)."""

    domain: str
    esmtp: bool = True


@dataclass(frozen=True, slots=True)
class Mail:
    """MAIL FROM. sender is "" for the null reverse path <>."""

    sender: str
    size: int | None = None
    body: str | None = None  # "7BIT" | "8BITMIME" when given
    smtputf8: bool = False


@dataclass(frozen=True, slots=True)
class Rcpt:
    recipient: str


@dataclass(frozen=True, slots=True)
class Data:
    pass


@dataclass(frozen=True, slots=True)
class Content:
    """A piece of a large message's content, before the Message that ends it.

    Server side: unstuffed whole lines, emitted as they arrive; not a decision.
    The shell keeps the pieces until the Message; when the core refuses the
    message instead, no Message follows and the shell drops them. Client side:
    a piece to send (any split); the Message that follows ends the content."""

    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Message:
    """The message content of one DATA transaction: unstuffed, CRLF line ends,
    without the terminating <CRLF>.<CRLF> (content ends with CRLF unless empty).
    After Content events, `content` is only the last piece: the message is
    every Content's data followed by this."""

    content: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Rset:
    pass


@dataclass(frozen=True, slots=True)
class Noop:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class StartTls:
    """STARTTLS. Client side: the command. Server side: the event saying that
    STARTTLS was accepted (220 queued). The shell flushes
    data_to_send(), discards whatever it has buffered, and upgrades the socket;
    the core has already dropped the bytes pipelined behind STARTTLS (RFC 3207)."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed the connection, or the core ended the session (after QUIT
    or a 421); the shell flushes data_to_send() and closes the socket."""


Command = Ehlo | Mail | Rcpt | Data | Message | Rset | Noop | Quit


@dataclass(frozen=True, slots=True)
class Auth:
    """Client side: AUTH (RFC 4954). `initial` is the base64 initial response
    (PLAIN sends its credentials here), None to wait for the server's 334."""

    mechanism: str  # "PLAIN" | "LOGIN"
    initial: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """Client side: one base64 line answering a 334 challenge."""

    line: str = field(repr=False)


ClientCommand = Command | Content | StartTls | Auth | AuthResponse
"""What the client core sends: the commands, STARTTLS and the AUTH exchange."""


@dataclass(frozen=True, slots=True)
class Greeting:
    """Client side: the pseudo-command that the server's opening 220 answers."""


@dataclass(frozen=True, slots=True)
class Response:
    """Client side: the reply the server gave to one command we sent."""

    command: ClientCommand | Greeting
    reply: Reply


class ProtocolError(Exception):
    """The peer broke the protocol in a way that ends the session; `reply` is
    what to send (server side) before closing, when there is one."""

    def __init__(self, message: str, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class LocalProtocolError(Exception):
    """Our own code used a core out of order (a bug in the shell, not the peer)."""
