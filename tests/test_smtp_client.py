"""Layer 1: the client core's bytes out and Responses in, whole and byte by byte."""

from __future__ import annotations

import pytest

from gatepost.smtp import (
    NEED_DATA,
    ClientConnection,
    Command,
    ConnectionClosed,
    Data,
    Ehlo,
    Greeting,
    LocalProtocolError,
    Mail,
    Message,
    Noop,
    ProtocolError,
    Quit,
    Rcpt,
    Reply,
    Response,
    Rset,
)
from gatepost.smtp.client import MAX_REPLY_LINE, MAX_REPLY_LINES

EHLO_REPLY = (
    b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n250 SMTPUTF8\r\n"
)


def responses(conn: ClientConnection, data: bytes, bytewise: bool = False) -> list[object]:
    """Feed `data` (whole or byte by byte) and collect events until NEED_DATA."""
    events: list[object] = []
    for chunk in [data[i : i + 1] for i in range(len(data))] if bytewise else [data]:
        conn.receive_data(chunk)
        while (event := conn.next_event()) is not NEED_DATA:
            events.append(event)
            if isinstance(event, ConnectionClosed):
                return events
    return events


def greeted(ehlo_reply: bytes = EHLO_REPLY) -> ClientConnection:
    conn = ClientConnection()
    assert conn.send(Ehlo("client.test")) == b"EHLO client.test\r\n"
    events = responses(conn, b"220 mx.test ESMTP\r\n" + ehlo_reply)
    assert [e.command for e in events] == [Greeting(), Ehlo("client.test")]  # type: ignore[attr-defined]
    return conn


def test_greeting_and_ehlo_extensions() -> None:
    conn = ClientConnection()
    conn.send(Ehlo("client.test"))
    events = responses(conn, b"220 mx.test ESMTP\r\n" + EHLO_REPLY, bytewise=True)
    assert events == [
        Response(Greeting(), Reply.of(220, "mx.test ESMTP")),
        Response(
            Ehlo("client.test"),
            Reply.of(
                250,
                "mx.test",
                "PIPELINING",
                "SIZE 1000",
                "8BITMIME",
                "ENHANCEDSTATUSCODES",
                "SMTPUTF8",
            ),
        ),
    ]
    assert conn.extensions == {
        "PIPELINING": "",
        "SIZE": "1000",
        "8BITMIME": "",
        "ENHANCEDSTATUSCODES": "",
        "SMTPUTF8": "",
    }


def test_lf_only_replies_and_bare_code_are_tolerated() -> None:
    conn = ClientConnection()
    conn.send(Noop())
    events = responses(conn, b"220-hi\n220 there\n250\n")
    assert events == [
        Response(Greeting(), Reply.of(220, "hi", "there")),
        Response(Noop(), Reply.of(250, "")),
    ]


@pytest.mark.parametrize(
    ("command", "wire"),
    [
        (Ehlo("c.test", esmtp=False), b"HELO c.test\r\n"),
        (Mail(""), b"MAIL FROM:<>\r\n"),
        (
            Mail("jörg@b.example", size=12, body="8BITMIME", smtputf8=True),
            "MAIL FROM:<jörg@b.example> SIZE=12 BODY=8BITMIME SMTPUTF8\r\n".encode(),
        ),
        (Rcpt("postmaster"), b"RCPT TO:<postmaster>\r\n"),
        (Data(), b"DATA\r\n"),
        (Rset(), b"RSET\r\n"),
        (Noop(), b"NOOP\r\n"),
        (Quit(), b"QUIT\r\n"),
    ],
)
def test_command_serialization_after_ehlo(command: Command, wire: bytes) -> None:
    assert greeted().send(command) == wire


def test_mail_parameters_only_when_advertised() -> None:
    mail = Mail("a@b.example", size=12, body="8BITMIME", smtputf8=True)
    assert ClientConnection().send(mail) == b"MAIL FROM:<a@b.example>\r\n"
    conn = greeted(b"250-mx.test\r\n250 SIZE\r\n")
    assert conn.send(mail) == b"MAIL FROM:<a@b.example> SIZE=12\r\n"
    conn.send(Ehlo("c.test", esmtp=False))
    responses(conn, b"250 2.1.0 Ok\r\n250 mx.test\r\n")
    assert conn.extensions == {}
    assert conn.send(mail) == b"MAIL FROM:<a@b.example>\r\n"


@pytest.mark.parametrize(
    ("content", "wire"),
    [
        (b"", b".\r\n"),
        (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
        (b"no final line end", b"no final line end\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b".lead\r\nx\r\n.\r\n..two\r\n", b"..lead\r\nx\r\n..\r\n...two\r\n.\r\n"),
        (b"bare\nlf\n.\nend", b"bare\r\nlf\r\n..\r\nend\r\n.\r\n"),
        (b"bare\rcr\r\r\n.", b"bare\r\ncr\r\n\r\n..\r\n.\r\n"),
        (b"\n.\n", b"\r\n..\r\n.\r\n"),
    ],
)
def test_message_is_normalised_and_stuffed(content: bytes, wire: bytes) -> None:
    assert ClientConnection().send(Message(content)) == wire


def test_pipelined_responses_pair_in_order() -> None:
    conn = greeted()
    sent = [Mail("a@b.example"), Rcpt("c@d.example"), Rcpt("e@f.example"), Data()]
    for command in sent:
        conn.send(command)
    replies = b"250 2.1.0 Ok\r\n550-5.1.1 no\r\n550 5.1.1 such user\r\n250 2.1.5 Ok\r\n354 go\r\n"
    for bytewise in (False, True):
        copy = greeted()
        for command in sent:
            copy.send(command)
        assert responses(copy, replies, bytewise) == [
            Response(sent[0], Reply.of(250, "2.1.0 Ok")),
            Response(sent[1], Reply.of(550, "5.1.1 no", "5.1.1 such user")),
            Response(sent[2], Reply.of(250, "2.1.5 Ok")),
            Response(sent[3], Reply.of(354, "go")),
        ]
    conn.send(Message(b"x\r\n"))
    assert responses(conn, replies)[-1] == Response(Data(), Reply.of(354, "go"))


@pytest.mark.parametrize(
    "data",
    [b"hello\r\n", b"25 short\r\n", b"250x\r\n", b"600 no\r\n", b"250-a\r\n251 b\r\n"],
)
def test_malformed_replies_raise_protocol_error(data: bytes) -> None:
    conn = ClientConnection()
    conn.receive_data(data)
    with pytest.raises(ProtocolError):
        conn.next_event()


def test_unsolicited_reply_and_huge_line_raise_protocol_error() -> None:
    conn = ClientConnection()
    conn.receive_data(b"220 hi\r\n250 what\r\n")
    assert conn.next_event() == Response(Greeting(), Reply.of(220, "hi"))
    with pytest.raises(ProtocolError):
        conn.next_event()
    conn = ClientConnection()
    conn.receive_data(b"220-" + b"x" * 70_000)
    with pytest.raises(ProtocolError):
        conn.next_event()


def test_eof_closes_and_send_after_close_is_a_local_error() -> None:
    conn = ClientConnection()
    conn.send(Quit())
    events = responses(conn, b"220 hi\r\n221 2.0.0 Bye\r\n")
    assert events == [
        Response(Greeting(), Reply.of(220, "hi")),
        Response(Quit(), Reply.of(221, "2.0.0 Bye")),
    ]
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()
    assert conn.next_event() == ConnectionClosed()
    with pytest.raises(LocalProtocolError):
        conn.send(Noop())


def test_a_whole_reply_line_over_the_limit_is_refused() -> None:
    """A line longer than MAX_REPLY_LINE is refused even when its end has come."""
    conn = ClientConnection()
    conn.receive_data(b"220 " + b"x" * MAX_REPLY_LINE + b"\r\n")
    with pytest.raises(ProtocolError, match="too long"):
        conn.next_event()


def test_a_reply_of_too_many_lines_is_refused() -> None:
    conn = ClientConnection()
    conn.receive_data(b"220-x\r\n" * MAX_REPLY_LINES + b"220 end\r\n")
    with pytest.raises(ProtocolError, match="lines"):
        conn.next_event()


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "b'SSH-2.0-OpenSSH_9.2'"),
        (b"\x1b[31m\xff\x00" + b"y" * 200 + b"\r\n", "b'\\x1b[31m\\xff\\x00yyy"),
        (b"220-a\r\n550 changed\r\n", "b'550 changed'"),
    ],
)
def test_a_refused_reply_is_named_printable_and_truncated(data: bytes, shown: str) -> None:
    conn = ClientConnection()
    conn.receive_data(data)
    with pytest.raises(ProtocolError) as refused:
        conn.next_event()
    message = str(refused.value)
    assert shown in message and message.isprintable() and len(message) < 200


def test_awaiting_reply_tells_whether_a_reply_is_due() -> None:
    conn = ClientConnection()
    assert conn.awaiting_reply  # the greeting
    conn.receive_data(b"220 hi\r\n")
    conn.next_event()
    assert not conn.awaiting_reply
    conn.send(Noop())
    assert conn.awaiting_reply
