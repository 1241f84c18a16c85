"""Sans-I/O SMTP server core: RFC 5321 with PIPELINING, SIZE, 8BITMIME,
ENHANCEDSTATUSCODES, SMTPUTF8 and (when the shell can do TLS) STARTTLS.

Turns received bytes into events and the shell's replies into bytes. The order of
commands is the one table TABLE (state x verb -> state on success, or refusal).
The core answers everything that needs no decision; Mail, Rcpt and Message wait
for the shell's send(Reply). Must not know sockets, asyncio, the clock, the store
or any policy about who may send mail to whom.

Message data ends only at <CRLF>.<CRLF>; bare CR, bare LF or NUL anywhere in it is
refused after that end (never normalised), closing the SMTP-smuggling hole.
A message larger than `Limits.content_chunk` comes out as Content events (whole
unstuffed lines, as they arrive) before its Message; the checks and the size
limit still cover the whole message, and refuse it at its end.

With `strict_sync`, bytes already buffered behind a command that must end a
pipelined group (EHLO, HELO, DATA; RFC 2920 3.1) end the session with 554:
such a client does not wait for replies, and after a refused DATA its message
text would be read as commands. STARTTLS drops whatever was pipelined behind it
and returns to the state before EHLO (RFC 3207 4.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from gatepost.smtp.events import (
    NEED_DATA,
    ConnectionClosed,
    Content,
    Ehlo,
    LocalProtocolError,
    Mail,
    Message,
    NeedData,
    Noop,
    Quit,
    Rcpt,
    Reply,
    Rset,
    StartTls,
)
from gatepost.smtp.parse import parse_mail, parse_rcpt
from gatepost.smtp.replies import (
    BAD_CHARACTER,
    BARE_CR_LF_DATA,
    BARE_LF_COMMAND,
    BYE,
    COMMAND_TOO_LONG,
    DATA_LINE_TOO_LONG,
    HELP_REPLY,
    MESSAGE_TOO_BIG,
    NO_TLS,
    NUL_DATA,
    OK,
    OUT_OF_SYNC,
    READY_FOR_TLS,
    START_DATA,
    SYNTAX_EHLO,
    SYNTAX_HELO,
    SYNTAX_VRFY,
    TLS_ACTIVE,
    TOO_MANY_RECIPIENTS,
    UNRECOGNIZED,
    VRFY_REPLY,
)
from gatepost.smtp.table import MUST_END_GROUP, NO_ARGUMENT, TABLE, VERBS, State, Verb


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_size: int = 35_000_000  # bytes of DATA as sent (dot-stuffed)
    max_recipients: int = 1000
    max_line: int = 1000  # a text line in DATA, CRLF included
    max_command_line: int = 512  # CRLF included
    max_path: int = 256  # <path>, brackets included, in UTF-8 bytes
    max_errors: int = 20  # refused commands before 421 and close
    content_chunk: int = 256 * 1024  # buffered DATA bytes beyond which Content is emitted


Event = Ehlo | Mail | Rcpt | Content | Message | Rset | Noop | Quit | StartTls | ConnectionClosed
_E = TypeVar("_E", Ehlo, Noop, Quit, Rset, StartTls)

_R = Reply.of
_END_OF_DATA = b"\r\n.\r\n"
_EMPTY_DATA = b".\r\n"


class ServerConnection:
    """One SMTP session, server side. See the module docstring."""

    def __init__(
        self,
        hostname: str,
        limits: Limits = Limits(),
        *,
        starttls: bool = False,
        strict_sync: bool = False,
    ) -> None:
        self.hostname = hostname
        self.limits = limits
        self.starttls = starttls  # the shell can upgrade to TLS: offer STARTTLS
        self.strict_sync = strict_sync
        self.tls_active = False
        self.state = State.START
        self._in = bytearray()
        self._out = bytearray(_R(220, f"{hostname} ESMTP gatepost").to_bytes())
        self._eof = False
        self._pending: tuple[Verb, State] | None = None
        self._discarding = False  # inside an over-long command line
        self._errors = 0
        self._recipients = 0
        self._smtputf8 = False
        self._scan_from = 0  # where to resume searching for the end of data
        self._oversize = False  # data beyond max_message_size is being drained
        self._wire_seen = 0  # bytes of this message's data taken out of the buffer
        self._line_start = True  # the buffer starts a line of message data
        self._fault: Reply | None = None  # why the data taken so far is refused
        self._greeted = False  # the greeting was taken by data_to_send()

    # -- the shell's interface -------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed received bytes; b"" means the peer closed its side."""
        if not data:
            self._eof = True
        elif not self._eof and self.state is not State.CLOSED:
            self._in += data

    def next_event(self) -> Event | NeedData:
        if self._pending is not None:
            raise LocalProtocolError("a Mail, Rcpt or Message awaits send(Reply)")
        while True:
            if self.state is State.CLOSED:
                return ConnectionClosed()
            data_mode = self.state is State.DATA
            event = self._read_content() if data_mode else self._read_command()
            if event is not None:
                return event

    def send(self, reply: Reply) -> None:
        """Answer the pending Mail, Rcpt or Message."""
        if self._pending is None:
            raise LocalProtocolError("send() with no Mail, Rcpt or Message pending")
        verb, on_success = self._pending
        self._pending = None
        self._out += reply.to_bytes()
        if reply.code == 421:
            self.state = State.CLOSED
        elif verb is Verb.DATA:
            self._end_transaction()
        elif 200 <= reply.code < 300:
            self.state = on_success
            if verb is Verb.RCPT:
                self._recipients += 1

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        self._greeted = True
        return out

    def close_with(self, reply: Reply) -> None:
        """The shell ends the session (a timeout, a connection limit): `reply`
        is the last thing sent. Before the greeting was taken it replaces it."""
        if not self._greeted:
            self._out.clear()
        self._out += reply.to_bytes()
        self.state = State.CLOSED
        self._pending = None
        self._in.clear()

    # -- command lines -----------------------------------------------------------

    def _read_command(self) -> Event | NeedData | None:
        buf = self._in
        end = buf.find(b"\n")
        if self._discarding:
            if end < 0:
                buf.clear()
                return self._starved()
            del buf[: end + 1]
            self._discarding = False
            return None
        if end < 0:
            if len(buf) < self.limits.max_command_line:
                return self._starved()
            buf.clear()
            self._discarding = True
            self._refuse(COMMAND_TOO_LONG)
            return None
        line = bytes(buf[: end + 1])
        del buf[: end + 1]
        if len(line) > self.limits.max_command_line:
            self._refuse(COMMAND_TOO_LONG)
            return None
        return self._command(line)

    def _starved(self) -> ConnectionClosed | NeedData:
        if self._eof:
            self.state = State.CLOSED
            return ConnectionClosed()
        return NEED_DATA

    def _command(self, line: bytes) -> Event | None:
        if not line.endswith(b"\r\n"):
            self._refuse(BARE_LF_COMMAND)
            return None
        raw = line[:-2]
        if b"\r" in raw or b"\0" in raw:
            self._refuse(BAD_CHARACTER)
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._refuse(BAD_CHARACTER)
            return None
        name, _, argument = text.partition(" ")
        verb = VERBS.get(name.upper())
        if verb is None:
            self._refuse(UNRECOGNIZED)
            return None
        if self.strict_sync and verb in MUST_END_GROUP and self._in:
            self.close_with(OUT_OF_SYNC)
            return None
        step = TABLE[self.state][verb]
        if isinstance(step, Reply):
            self._refuse(step)
            return None
        argument = argument.strip(" ")
        if argument and verb in NO_ARGUMENT:
            self._refuse(_R(501, f"5.5.4 Syntax: {NO_ARGUMENT[verb]}"))
            return None
        return self._perform(verb, argument, step)

    def _perform(self, verb: Verb, argument: str, next_state: State) -> Event | None:
        if verb is Verb.EHLO or verb is Verb.HELO:
            return self._hello(argument, verb is Verb.EHLO)
        if verb is Verb.MAIL:
            return self._mail(argument, next_state)
        if verb is Verb.RCPT:
            return self._rcpt(argument, next_state)
        if verb is Verb.DATA:
            self._start_data()
            return None
        if verb is Verb.STARTTLS:
            return self._start_tls()
        if verb is Verb.VRFY or verb is Verb.HELP:
            self._say_or_refuse(verb, argument)
            return None
        if verb is Verb.NOOP:
            return self._answer(OK, Noop())
        if verb is Verb.QUIT:
            self.state = State.CLOSED
            return self._answer(BYE, Quit())
        self._end_transaction(next_state)
        return self._answer(OK, Rset())

    def _hello(self, domain: str, esmtp: bool) -> Ehlo | None:
        if not domain or " " in domain:
            self._refuse(SYNTAX_EHLO if esmtp else SYNTAX_HELO)
            return None
        self._end_transaction()
        return self._answer(self._hello_reply(esmtp), Ehlo(domain, esmtp))

    def _hello_reply(self, esmtp: bool) -> Reply:
        if not esmtp:
            return _R(250, self.hostname)
        size = f"SIZE {self.limits.max_message_size}"
        extensions: tuple[str, ...] = ("PIPELINING", size, "8BITMIME", "ENHANCEDSTATUSCODES")
        extensions += ("SMTPUTF8",)
        if self.starttls and not self.tls_active:
            extensions += ("STARTTLS",)
        return _R(250, self.hostname, *extensions)

    def _start_tls(self) -> StartTls | None:
        if not self.starttls:
            self._refuse(NO_TLS)
            return None
        if self.tls_active:
            self._refuse(TLS_ACTIVE)
            return None
        self._in.clear()  # nothing sent in clear text may count after the upgrade
        self._discarding = False
        self.tls_active = True
        self._end_transaction(State.START)
        return self._answer(READY_FOR_TLS, StartTls())

    def _mail(self, argument: str, next_state: State) -> Mail | None:
        limits = self.limits
        mail = parse_mail(argument, limits.max_path, limits.max_message_size)
        if isinstance(mail, Reply):
            self._refuse(mail)
            return None
        self._smtputf8 = mail.smtputf8
        self._pending = (Verb.MAIL, next_state)
        return mail

    def _rcpt(self, argument: str, next_state: State) -> Rcpt | None:
        rcpt = parse_rcpt(argument, self.limits.max_path, self._smtputf8)
        if isinstance(rcpt, Reply):
            self._refuse(rcpt)
            return None
        if self._recipients >= self.limits.max_recipients:
            self._out += TOO_MANY_RECIPIENTS.to_bytes()
            return None
        self._pending = (Verb.RCPT, next_state)
        return rcpt

    def _start_data(self) -> None:
        self._out += START_DATA.to_bytes()
        self.state = State.DATA
        self._scan_from = 0
        self._oversize = False
        self._wire_seen = 0
        self._line_start = True
        self._fault = None

    def _say_or_refuse(self, verb: Verb, argument: str) -> None:
        if verb is Verb.HELP:
            self._out += HELP_REPLY.to_bytes()
        elif argument:
            self._out += VRFY_REPLY.to_bytes()
        else:
            self._refuse(SYNTAX_VRFY)

    def _answer(self, reply: Reply, event: _E) -> _E:
        self._out += reply.to_bytes()
        return event

    def _refuse(self, reply: Reply) -> None:
        """Answer a bad command; too many of them end the session with 421."""
        self._out += reply.to_bytes()
        self._errors += 1
        if self._errors >= self.limits.max_errors:
            self._out += _R(421, f"4.7.0 {self.hostname} Error: too many errors").to_bytes()
            self.state = State.CLOSED

    def _end_transaction(self, state: State = State.READY) -> None:
        self.state = state
        self._recipients = 0
        self._smtputf8 = False

    # -- message content ---------------------------------------------------------

    def _read_content(self) -> Message | Content | ConnectionClosed | NeedData | None:
        """The receive buffer holds the content not yet taken as Content pieces
        (or drained); it starts a line unless the data was drained."""
        buf = self._in
        if self._line_start and buf.startswith(_EMPTY_DATA):
            return self._end_data(0, len(_EMPTY_DATA))  # "." alone on a line ends it
        found = buf.find(_END_OF_DATA, self._scan_from)
        if found >= 0:
            return self._end_data(found + 2, found + len(_END_OF_DATA))
        return self._await_end()

    def _end_data(self, end: int, consumed: int) -> Message | None:
        content = self._take(end, consumed)
        refusal = self._refusal()
        if refusal is not None:
            self._end_transaction()
            self._out += refusal.to_bytes()
            return None
        self.state = State.READY
        self._pending = (Verb.DATA, State.READY)
        return Message(content)

    def _await_end(self) -> Content | ConnectionClosed | NeedData | None:
        buf = self._in
        if self._eof:
            self.state = State.CLOSED
            buf.clear()
            return ConnectionClosed()
        keep_from = len(buf) - (len(_END_OF_DATA) - 1)  # a terminator may start here
        too_big = self._wire_seen + keep_from + 2 > self.limits.max_message_size
        if keep_from > 0 and (self._oversize or too_big):
            self._oversize = True  # its CRLF is content: too big whatever follows
            self._drain(keep_from, check=False)
        elif len(buf) >= self.limits.content_chunk:
            line_end = buf.rfind(b"\r\n")
            if line_end >= 0:
                content = self._take(line_end + 2, line_end + 2)
                return Content(content) if content else None
            if keep_from > self.limits.max_line:  # no line end in sight: refused
                self._drain(keep_from, check=True)
        self._scan_from = max(len(buf) - (len(_END_OF_DATA) - 1), 0)
        return NEED_DATA

    def _take(self, end: int, consumed: int) -> bytes:
        """Take the content's wire bytes up to `end` (a line end) out of the
        buffer; their unstuffed form, or b"" once the message is refused."""
        buf = self._in
        with memoryview(buf) as view:
            wire = bytes(view[:end]) if not self._oversize else b""
        del buf[:consumed]
        self._wire_seen += end
        self._scan_from = 0
        if self._oversize:
            return b""
        self._note(_fault(wire, self.limits.max_line))
        refused = self._fault is not None or self._wire_seen > self.limits.max_message_size
        content = b"" if refused else _unstuff(wire, self._line_start)
        self._line_start = True
        return content

    def _drain(self, keep_from: int, check: bool) -> None:
        """Drop the buffer but its last bytes (where a terminator may start);
        with `check`, note why the dropped bytes (no CRLF in them) are refused."""
        if check:
            with memoryview(self._in) as view:
                dropped = bytes(view[:keep_from])
            self._note(_fault(dropped, self.limits.max_line) or DATA_LINE_TOO_LONG)
        del self._in[:keep_from]
        self._wire_seen += keep_from
        self._line_start = False

    def _note(self, fault: Reply | None) -> None:
        """Keep the fault that checking the whole message at once would report."""
        if fault is not None and (self._fault is None or _RANK[fault] < _RANK[self._fault]):
            self._fault = fault

    def _refusal(self) -> Reply | None:
        if self._oversize or self._wire_seen > self.limits.max_message_size:
            return MESSAGE_TOO_BIG  # first: a drained message cannot be checked further
        return self._fault


_RANK = {BARE_CR_LF_DATA: 0, NUL_DATA: 1, DATA_LINE_TOO_LONG: 2}


def _fault(wire: bytes, max_line: int) -> Reply | None:
    """What is wrong with `wire`, content as sent (stuffed) that ends with CRLF
    or is followed by no CRLF that it splits; None when nothing is."""
    line_ends = wire.count(b"\r\n")
    if wire.count(b"\n") != line_ends or wire.count(b"\r") != line_ends:
        return BARE_CR_LF_DATA
    if b"\0" in wire:
        return NUL_DATA
    if _has_long_line(wire, max_line):
        return DATA_LINE_TOO_LONG
    return None


def _has_long_line(data: bytes, limit: int) -> bool:
    """Whether a LF-ended line in `data` is longer than `limit`, LF included.
    Jumps a whole window per step instead of visiting every line."""
    start = 0
    while len(data) - start > limit:
        last_lf = data.rfind(b"\n", start, start + limit)
        if last_lf < 0:
            return True
        start = last_lf + 1
    return False


def _unstuff(wire: bytes, line_start: bool = True) -> bytes:
    content = wire.replace(b"\r\n.", b"\r\n")
    return content[1:] if line_start and content[:1] == b"." else content
