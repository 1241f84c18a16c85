"""Layer 1: the server core fed bytes whole, byte by byte and in random splits."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatepost.smtp import (
    NEED_DATA,
    ConnectionClosed,
    Ehlo,
    Limits,
    LocalProtocolError,
    Mail,
    Message,
    Noop,
    Quit,
    Rcpt,
    Reply,
    Rset,
    ServerConnection,
)

Decide = Callable[[object], Reply]
DEFAULT = Limits()
GREETING = "220 mx.test ESMTP gatepost"
EHLO = b"EHLO client.test\r\n"
EHLO_LINES = [
    "250-mx.test",
    "250-PIPELINING",
    "250-SIZE 35000000",
    "250-8BITMIME",
    "250-ENHANCEDSTATUSCODES",
    "250 SMTPUTF8",
]
OK = "250 2.0.0 Ok"
MAIL_OK = "250 2.1.0 Ok"
RCPT_OK = "250 2.1.5 Ok"
QUEUED = "250 2.0.0 Ok: queued"
START_DATA = "354 End data with <CR><LF>.<CR><LF>"
BARE = "550 5.6.11 Error: bare CR or LF in message data"
ENVELOPE = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"


def accept(event: object) -> Reply:
    """A shell that accepts everything, except addresses that contain "bad"."""
    if isinstance(event, Mail):
        return Reply.of(550, "5.7.1 no") if "bad" in event.sender else Reply.of(250, "2.1.0 Ok")
    if isinstance(event, Rcpt):
        return Reply.of(550, "5.1.1 no") if "bad" in event.recipient else Reply.of(250, "2.1.5 Ok")
    return Reply.of(250, "2.0.0 Ok: queued")


def run(
    chunks: Sequence[bytes], limits: Limits = DEFAULT, decide: Decide = accept
) -> tuple[list[object], bytes]:
    """Drive a server as the shell does; EOF after the last chunk."""
    conn = ServerConnection("mx.test", limits)
    pending = [*chunks, b""]
    events: list[object] = []
    out = bytearray()
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            out += conn.data_to_send()
            conn.receive_data(pending.pop(0))
            continue
        events.append(event)
        if isinstance(event, Mail | Rcpt | Message):
            conn.send(decide(event))
        if isinstance(event, ConnectionClosed):
            return events, bytes(out + conn.data_to_send())


def session(data: bytes, limits: Limits = DEFAULT) -> tuple[list[object], list[str]]:
    """Events and reply lines, checked to be the same whole and byte by byte."""
    whole = run([data], limits)
    bytewise = run([data[i : i + 1] for i in range(len(data))], limits)
    assert bytewise == whole
    events, out = whole
    return events, out.decode().split("\r\n")[:-1]


def after_ehlo(data: bytes, limits: Limits = DEFAULT) -> tuple[list[object], list[str]]:
    """Like session() with EHLO first; the greeting and EHLO reply are checked and dropped."""
    events, lines = session(EHLO + data, limits)
    size_line = f"250-SIZE {limits.max_message_size}"
    assert lines[:7] == [GREETING, *EHLO_LINES[:2], size_line, *EHLO_LINES[3:]]
    assert events[0] == Ehlo("client.test")
    return events[1:], lines[7:]


def test_greeting_is_queued_by_the_constructor() -> None:
    assert ServerConnection("mx.test").data_to_send() == b"220 mx.test ESMTP gatepost\r\n"


def test_full_transaction_events_and_bytes() -> None:
    events, out = run([EHLO + ENVELOPE + b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n"])
    assert events == [
        Ehlo("client.test"),
        Mail("a@example.org"),
        Rcpt("b@example.net"),
        Message(b"Subject: x\r\n\r\nbody\r\n"),
        Quit(),
        ConnectionClosed(),
    ]
    assert events[3].content == b"Subject: x\r\n\r\nbody\r\n"  # type: ignore[attr-defined]
    expected = [GREETING, *EHLO_LINES, MAIL_OK, RCPT_OK, START_DATA, QUEUED, "221 2.0.0 Bye"]
    assert out == ("\r\n".join(expected) + "\r\n").encode()


def test_helo_gets_a_plain_250_and_lowercase_verbs_work() -> None:
    events, lines = session(b"helo client.test\r\nmail from:<a@b.example>\r\nquit\r\n")
    assert events[:2] == [Ehlo("client.test", esmtp=False), Mail("a@b.example")]
    assert lines == [GREETING, "250 mx.test", MAIL_OK, "221 2.0.0 Bye"]


def test_pipelined_transactions_answered_in_order() -> None:
    batch = (
        b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<bad@y.example>\r\n"
        b"RCPT TO:<c@y.example>\r\nDATA\r\none\r\n.\r\n"
        b"MAIL FROM:<>\r\nRCPT TO:<d@y.example>\r\nDATA\r\ntwo\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n"
    )
    events, lines = after_ehlo(batch)
    assert events == [
        Mail("a@x.example"),
        Rcpt("b@y.example"),
        Rcpt("bad@y.example"),
        Rcpt("c@y.example"),
        Message(b"one\r\n"),
        Mail(""),
        Rcpt("d@y.example"),
        Message(b"two\r\n"),
        Rset(),
        Noop(),
        Quit(),
        ConnectionClosed(),
    ]
    assert [e.content for e in events if isinstance(e, Message)] == [b"one\r\n", b"two\r\n"]
    assert lines == [
        *(MAIL_OK, RCPT_OK, "550 5.1.1 no", RCPT_OK, START_DATA, QUEUED),
        *(MAIL_OK, RCPT_OK, START_DATA, QUEUED, OK, OK, "221 2.0.0 Bye"),
    ]


@pytest.mark.parametrize(
    ("argument", "sender"),
    [
        (b"FROM:<>", ""),
        (b"from:<User.Name+tag@Example.ORG>", "User.Name+tag@Example.ORG"),
        (b"FROM: <a@b.example>", "a@b.example"),
        (b'FROM:<"john doe>\\"x"@b.example>', '"john doe>\\"x"@b.example'),
        (b"FROM:<@relay.example,@r2.example:a@b.example>", "a@b.example"),
        (b"FROM:<a@[192.0.2.1]>", "a@[192.0.2.1]"),
        (b"FROM:<a@[IPv6:2001:db8::1]>", "a@[IPv6:2001:db8::1]"),
    ],
)
def test_valid_reverse_paths(argument: bytes, sender: str) -> None:
    events, lines = after_ehlo(b"MAIL " + argument + b"\r\n")
    assert events[0] == Mail(sender)
    assert lines == [MAIL_OK]


@pytest.mark.parametrize(
    ("argument", "reply"),
    [
        (b"FROM:a@b.example", "501 5.5.4 Syntax: MAIL FROM:<address>"),
        (b"FROM<a@b.example>", "501 5.5.4 Syntax: MAIL FROM:<address>"),
        (b"", "501 5.5.4 Syntax: MAIL FROM:<address>"),
        (b"FROM:<a@b.example", "501 5.1.7 Bad sender address syntax"),
        (b"FROM:<a..b@b.example>", "501 5.1.7 Bad sender address syntax"),
        (b"FROM:<a@-b.example>", "501 5.1.7 Bad sender address syntax"),
        (b"FROM:<a@b.example.>", "501 5.1.7 Bad sender address syntax"),
        (b"FROM:<postmaster>", "501 5.1.7 Bad sender address syntax"),
        (b"FROM:<a@[300.1.1.1]>", "501 5.1.7 Bad sender address syntax"),
        (b"FROM:<a b@c.example>", "501 5.1.7 Bad sender address syntax"),
        (b"FROM:<a@b.example>x", "501 5.5.4 Error: bad parameter syntax"),
        (b"FROM:<" + b"a" * 250 + b"@b.example>", "501 5.1.3 Error: path too long"),
        (b"FROM:<a@b.example> SIZE=35000001", "552 5.3.4 Message size exceeds fixed limit"),
        (b"FROM:<a@b.example> SIZE=big", "501 5.5.4 Error: bad SIZE parameter"),
        (b"FROM:<a@b.example> BODY=BINARYMIME", "501 5.5.4 Error: bad BODY parameter"),
        (b"FROM:<a@b.example> AUTH=<>", "555 5.5.4 Error: unsupported parameter AUTH"),
        (b"FROM:<a@b.example> SIZE=1 SIZE=2", "501 5.5.4 Error: duplicate parameter"),
        (
            "FROM:<jörg@b.example>".encode(),
            "553 5.6.7 Error: SMTPUTF8 required for non-ASCII address",
        ),
    ],
)
def test_refused_mail_commands(argument: bytes, reply: str) -> None:
    events, lines = after_ehlo(b"MAIL " + argument + b"\r\nMAIL FROM:<ok@b.example>\r\n")
    assert events[0] == Mail("ok@b.example")
    assert lines == [reply, MAIL_OK]


def test_mail_parameters_reach_the_event() -> None:
    line = "MAIL FROM:<jörg@bücher.example> SIZE=1234 body=8bitmime SMTPUTF8\r\n"
    events, _ = after_ehlo(line.encode())
    assert events[0] == Mail("jörg@bücher.example", size=1234, body="8BITMIME", smtputf8=True)


def test_recipient_syntax_and_smtputf8() -> None:
    events, lines = after_ehlo(
        "MAIL FROM:<a@b.example>\r\nRCPT TO:<Postmaster>\r\nRCPT TO:<ü@b.example>\r\n"
        "RCPT TO:b@b.example\r\nRCPT TO:<b@b.example> NOTIFY=NEVER\r\nRCPT TO:<@x.example>\r\n"
        "RSET\r\nMAIL FROM:<a@b.example> SMTPUTF8\r\nRCPT TO:<ü@b.example>\r\n".encode()
    )
    assert events[:2] == [Mail("a@b.example"), Rcpt("postmaster")]
    assert events[-2:] == [Rcpt("ü@b.example"), ConnectionClosed()]
    assert lines == [
        MAIL_OK,
        RCPT_OK,
        "553 5.6.7 Error: SMTPUTF8 required for non-ASCII address",
        "501 5.5.4 Syntax: RCPT TO:<address>",
        "555 5.5.4 Error: unsupported parameter NOTIFY",
        "501 5.1.3 Bad recipient address syntax",
        OK,
        MAIL_OK,
        RCPT_OK,
    ]


@pytest.mark.parametrize(
    ("script", "reply"),
    [
        (b"MAIL FROM:<a@b.example>\r\n", "503 5.5.1 Error: send HELO/EHLO first"),
        (EHLO + b"RCPT TO:<a@b.example>\r\n", "503 5.5.1 Error: need MAIL command"),
        (EHLO + b"DATA\r\n", "503 5.5.1 Error: need RCPT command"),
        (EHLO + b"MAIL FROM:<a@b.example>\r\nDATA\r\n", "554 5.5.1 Error: no valid recipients"),
        (
            EHLO + b"MAIL FROM:<a@b.example>\r\nMAIL FROM:<c@b.example>\r\n",
            "503 5.5.1 Error: nested MAIL command",
        ),
        (
            EHLO + b"MAIL FROM:<bad@b.example>\r\nRCPT TO:<c@b.example>\r\n",
            "503 5.5.1 Error: need MAIL command",
        ),
        (
            EHLO + b"MAIL FROM:<a@b.example>\r\nRCPT TO:<bad@b.example>\r\nDATA\r\n",
            "554 5.5.1 Error: no valid recipients",
        ),
        (
            EHLO + b"MAIL FROM:<a@b.example>\r\nRSET\r\nRCPT TO:<c@b.example>\r\n",
            "503 5.5.1 Error: need MAIL command",
        ),
        (
            EHLO + b"MAIL FROM:<a@b.example>\r\nEHLO again\r\nRCPT TO:<c@b.example>\r\n",
            "503 5.5.1 Error: need MAIL command",
        ),
        (b"EXPN staff\r\n", "500 5.5.2 Error: command not recognized"),
        (b"\r\n", "500 5.5.2 Error: command not recognized"),
        (b"EHLO\r\n", "501 5.5.4 Syntax: EHLO hostname"),
        (b"HELO\r\n", "501 5.5.4 Syntax: HELO hostname"),
        (b"VRFY\r\n", "501 5.5.4 Syntax: VRFY address"),
        (
            EHLO + b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@b.example>\r\nDATA now\r\n",
            "501 5.5.4 Syntax: DATA",
        ),
        (b"NOOP\n", "500 5.5.2 Error: bare LF in command"),
        (b"NO\x00OP\r\n", "500 5.5.2 Error: bad character in command"),
        (b"NOOP\rRSET\r\n", "500 5.5.2 Error: bad character in command"),
        (b"NOOP \xff\r\n", "500 5.5.2 Error: bad character in command"),
    ],
)
def test_core_refusals_then_session_continues(script: bytes, reply: str) -> None:
    events, lines = session(script + b"NOOP\r\n")
    assert lines[-2:] == [reply, OK]
    assert events[-2:] == [Noop(), ConnectionClosed()]


def test_commands_answered_by_the_core() -> None:
    events, lines = after_ehlo(b"VRFY someone\r\nHELP\r\nNOOP hi\r\nRSET\r\nQUIT\r\n")
    assert events == [Noop(), Rset(), Quit(), ConnectionClosed()]
    assert lines == [
        "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery",
        "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY HELP QUIT",
        OK,
        OK,
        "221 2.0.0 Bye",
    ]


def test_nothing_is_processed_after_quit() -> None:
    events, lines = after_ehlo(b"QUIT\r\nNOOP\r\nMAIL FROM:<a@b.example>\r\n")
    assert events == [Quit(), ConnectionClosed()]
    assert lines == ["221 2.0.0 Bye"]


def test_eof_mid_command_and_mid_data_closes_without_events() -> None:
    assert after_ehlo(b"NOOP") == ([ConnectionClosed()], [])
    events, lines = after_ehlo(ENVELOPE + b"unfinished\r\n")
    assert events == [Mail("a@example.org"), Rcpt("b@example.net"), ConnectionClosed()]
    assert lines == [MAIL_OK, RCPT_OK, START_DATA]


def test_command_line_length_limit() -> None:
    exact = b"NOOP " + b"x" * (512 - 7) + b"\r\n"
    too_long = b"NOOP " + b"x" * (512 - 6) + b"\r\n"
    assert len(exact) == 512
    events, lines = after_ehlo(exact + too_long + b"x" * 5000 + b"\r\nNOOP\r\n")
    assert events == [Noop(), Noop(), ConnectionClosed()]
    assert lines == [OK, "500 5.5.0 Error: line too long", "500 5.5.0 Error: line too long", OK]


def test_too_many_errors_ends_with_421() -> None:
    events, lines = session(b"BAD\r\n" * 3 + b"NOOP\r\n", Limits(max_errors=3))
    assert events == [ConnectionClosed()]
    assert lines == [
        GREETING,
        *["500 5.5.2 Error: command not recognized"] * 3,
        "421 4.7.0 mx.test Error: too many errors",
    ]


def test_too_many_recipients_answered_452_without_event() -> None:
    rcpts = b"".join(b"RCPT TO:<r%d@b.example>\r\n" % i for i in range(4))
    script = (
        b"MAIL FROM:<a@b.example>\r\nRCPT TO:<bad@b.example>\r\n" + rcpts + b"DATA\r\nx\r\n.\r\n"
    )
    events, lines = after_ehlo(script, Limits(max_recipients=2))
    assert [e for e in events if isinstance(e, Rcpt)] == [
        Rcpt("bad@b.example"),
        Rcpt("r0@b.example"),
        Rcpt("r1@b.example"),
    ]
    too_many = "452 4.5.3 Error: too many recipients"
    assert lines == [
        MAIL_OK,
        "550 5.1.1 no",
        RCPT_OK,
        RCPT_OK,
        too_many,
        too_many,
        START_DATA,
        QUEUED,
    ]


@pytest.mark.parametrize(
    ("data", "content"),
    [
        (b".\r\n", b""),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"..leading\r\n.\r\n", b".leading\r\n"),
        (b"a\r\n..\r\n...b\r\n.c\r\n\r\n.\r\n", b"a\r\n.\r\n..b\r\nc\r\n\r\n"),
        (b"\r\n.\r\n", b"\r\n"),
        (b"8bit \xc3\xa9\xff\r\n.\r\n", b"8bit \xc3\xa9\xff\r\n"),
    ],
)
def test_dot_unstuffing(data: bytes, content: bytes) -> None:
    events, lines = after_ehlo(ENVELOPE + data + b"NOOP\r\n")
    assert events[2] == Message(content) and events[2].content == content  # type: ignore[attr-defined]
    assert lines[-2:] == [QUEUED, OK]


SMUGGLED = b"MAIL FROM:<evil@x.example>\r\nRCPT TO:<victim@y.example>\r\nDATA\r\nforged\r\n"


@pytest.mark.parametrize(
    ("fake_end", "reply"),
    [
        (b"\n.\n", BARE),
        (b"\r.\r", BARE),
        (b"\r\n.\n", BARE),
        (b"\n.\r\n", BARE),
        (b"\r\n.\r", BARE),
        (b"\r.\r\n", BARE),
        (b"\r\n\x00.\r\n", "550 5.6.0 Error: NUL character in message data"),
    ],
)
def test_smuggling_is_refused_at_the_real_end(fake_end: bytes, reply: str) -> None:
    script = ENVELOPE + b"hello" + fake_end + SMUGGLED + b".\r\n"
    script += b"MAIL FROM:<next@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\nreal\r\n.\r\n"
    events, lines = after_ehlo(script)
    assert events == [
        Mail("a@example.org"),
        Rcpt("b@example.net"),
        Mail("next@x.example"),
        Rcpt("b@y.example"),
        Message(b"real\r\n"),
        ConnectionClosed(),
    ]
    assert [e.content for e in events if isinstance(e, Message)] == [b"real\r\n"]
    assert lines == [MAIL_OK, RCPT_OK, START_DATA, reply, MAIL_OK, RCPT_OK, START_DATA, QUEUED]


def test_bare_lf_alone_and_bare_cr_alone_are_refused() -> None:
    for body in (b"line\nmore\r\n", b"line\rmore\r\n", b"end\r\r\n"):
        events, lines = after_ehlo(ENVELOPE + body + b".\r\n")
        assert not any(isinstance(e, Message) for e in events)
        assert lines[-1] == BARE


def test_data_line_length_limit() -> None:
    limits = Limits(max_line=20)
    exact = b"x" * 18 + b"\r\n"
    stuffed = b"." + b"x" * 17 + b"\r\n"
    events, lines = after_ehlo(ENVELOPE + exact + stuffed + b".\r\n", limits)
    assert events[2] == Message(exact + stuffed[1:])
    events, lines = after_ehlo(ENVELOPE + exact + b"y" * 19 + b"\r\n" + exact + b".\r\n", limits)
    assert not any(isinstance(e, Message) for e in events)
    assert lines[-1] == "552 5.3.4 Error: line too long"


def test_size_limit_exact_and_over() -> None:
    limits = Limits(max_message_size=100)
    body = b"y" * 98 + b"\r\n"
    events, lines = after_ehlo(ENVELOPE + body + b".\r\n", limits)
    assert events[2] == Message(body) and lines[-1] == QUEUED
    events, lines = after_ehlo(ENVELOPE + b"z" + body + b".\r\nNOOP\r\n", limits)
    assert events[2:] == [Noop(), ConnectionClosed()]
    assert lines[-2:] == ["552 5.3.4 Message size exceeds fixed limit", OK]


def test_oversize_data_is_drained_in_bounded_memory() -> None:
    conn = ServerConnection("mx.test", Limits(max_message_size=1000))
    conn.receive_data(EHLO + ENVELOPE)
    assert isinstance(conn.next_event(), Ehlo)
    conn.send(accept(conn.next_event()))
    conn.send(accept(conn.next_event()))
    assert conn.next_event() is NEED_DATA
    conn.data_to_send()
    chunk = b"0123456789" * 50 + b"\r\n"
    for _ in range(2000):  # 1 MB
        conn.receive_data(chunk)
        assert conn.next_event() is NEED_DATA
        assert len(conn._in) < 2000  # memory stays bounded (white-box)
    conn.receive_data(b"\r\n.")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\r\nNOOP\r\n")
    assert conn.next_event() == Noop()
    assert conn.data_to_send() == b"552 5.3.4 Message size exceeds fixed limit\r\n250 2.0.0 Ok\r\n"


def test_shell_misuse_raises_local_protocol_error() -> None:
    conn = ServerConnection("mx.test")
    with pytest.raises(LocalProtocolError):
        conn.send(Reply.of(250, "2.0.0 Ok"))
    conn.receive_data(EHLO + b"MAIL FROM:<a@b.example>\r\n")
    conn.next_event()
    assert conn.next_event() == Mail("a@b.example")
    with pytest.raises(LocalProtocolError):
        conn.next_event()


def test_shell_421_closes_the_session() -> None:
    conn = ServerConnection("mx.test")
    conn.receive_data(EHLO + b"MAIL FROM:<a@b.example>\r\nNOOP\r\n")
    conn.next_event()
    conn.next_event()
    conn.send(Reply.of(421, "4.3.2 shutting down"))
    assert conn.next_event() == ConnectionClosed()
    assert conn.data_to_send().endswith(b"\r\n421 4.3.2 shutting down\r\n")


SCRIPTS = [
    EHLO
    + ENVELOPE
    + b"a\r\n..b\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n.\r\nQUIT\r\n",
    EHLO + ENVELOPE + b"x\n.\r\n" + SMUGGLED + b".\r\nNOOP\r\n",
    EHLO + b"NOOP " + b"x" * 700 + b"\r\nRSET\r\n" + ENVELOPE + b"y" * 30 + b"\r\n.\r\n",
    EHLO + ENVELOPE + (b"z" * 16 + b"\r\n") * 2 + b"." * 12 + b"\r\n.\r\n" + ENVELOPE + b".\r\n",
    EHLO + ENVELOPE + (b"z" * 16 + b"\r\n") * 2 + b"." * 13 + b"\r\n.\r\nNOOP\r\n",
]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(SCRIPTS), st.data())
def test_random_splits_give_the_same_events_and_bytes(script: bytes, data: st.DataObject) -> None:
    limits = Limits(max_message_size=50, max_line=20)  # SCRIPTS[3:] are 50 and 51 bytes
    cuts = sorted(data.draw(st.lists(st.integers(0, len(script)), max_size=20)))
    chunks = [script[a:b] for a, b in zip([0, *cuts], [*cuts, len(script)], strict=True)]
    assert run([c for c in chunks if c], limits) == run([script], limits)


TOKENS = [
    b"EHLO x\r\n",
    b"MAIL FROM:<a@b.c>\r\n",
    b"RCPT TO:<d@e.f>\r\n",
    b"DATA\r\n",
    b"\r\n.\r\n",
    b".",
    b"\r",
    b"\n",
    b"\x00",
    b"QUIT\r\n",
    b"RSET\r\n",
    b"x" * 600,
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=40), st.sampled_from(TOKENS)), max_size=30))
def test_arbitrary_input_never_raises(parts: list[bytes]) -> None:
    events, out = run(parts, Limits(max_message_size=200, max_line=50, max_errors=10))
    assert events[-1] == ConnectionClosed()
    assert out.startswith(b"220 ") and out.endswith(b"\r\n")
