"""Layer 2: our ClientConnection and ServerConnection joined in memory."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from gatepost.smtp import (
    NEED_DATA,
    ClientConnection,
    Command,
    ConnectionClosed,
    Data,
    Ehlo,
    Greeting,
    Limits,
    Mail,
    Message,
    Quit,
    Rcpt,
    Reply,
    Response,
    Rset,
    ServerConnection,
)

DEFAULT = Limits()


class Pair:
    """A client and a server; the server's shell accepts all but "bad" recipients."""

    def __init__(self, limits: Limits = DEFAULT) -> None:
        self.client = ClientConnection()
        self.server = ServerConnection("mx.test", limits)
        self.received: list[bytes] = []
        self.closed = False

    def exchange(self, *commands: Command) -> list[Response]:
        """Send `commands` in one write, run the server, read back every Response."""
        self.server.receive_data(b"".join(self.client.send(c) for c in commands))
        self._run_server()
        self.client.receive_data(self.server.data_to_send())
        found: list[Response] = []
        while (event := self.client.next_event()) is not NEED_DATA:
            assert isinstance(event, Response)
            found.append(event)
        return found

    def _run_server(self) -> None:
        while (event := self.server.next_event()) is not NEED_DATA:
            if isinstance(event, ConnectionClosed):
                self.closed = True
                return
            if isinstance(event, Rcpt) and "bad" in event.recipient:
                self.server.send(Reply.of(550, "5.1.1 no such user"))
            elif isinstance(event, Mail | Rcpt):
                self.server.send(Reply.of(250, "2.1.0 Ok"))
            elif isinstance(event, Message):
                self.received.append(event.content)
                self.server.send(Reply.of(250, f"2.0.0 Ok: queued as {len(self.received)}"))


def codes(found: list[Response]) -> list[int]:
    return [r.reply.code for r in found]


def send_message(pair: Pair, content: bytes, *rcpts: str) -> list[Response]:
    envelope = [Mail("a@x.example", size=len(content)), *(Rcpt(r) for r in rcpts), Data()]
    found = pair.exchange(*envelope)
    if found[-1].reply.code == 354:
        found += pair.exchange(Message(content))
    return found


def test_session_with_several_pipelined_messages() -> None:
    pair = Pair()
    opening = pair.exchange(Ehlo("client.test"))
    assert [r.command for r in opening] == [Greeting(), Ehlo("client.test")]
    assert pair.client.extensions["SIZE"] == "35000000" and "PIPELINING" in pair.client.extensions
    contents = [b"Subject: one\r\n\r\n.hidden\r\n", b"two\n..\n", b"", b"three"]
    for i, content in enumerate(contents):
        found = send_message(pair, content, "b@y.example", "bad@y.example", "c@y.example")
        assert codes(found) == [250, 250, 550, 250, 354, 250]
        assert found[-1] == Response(
            Message(content), Reply.of(250, f"2.0.0 Ok: queued as {i + 1}")
        )
        assert [r.command for r in found][:2] == [
            Mail("a@x.example", size=len(content)),
            Rcpt("b@y.example"),
        ]
    assert pair.received == [
        b"Subject: one\r\n\r\n.hidden\r\n",
        b"two\r\n..\r\n",
        b"",
        b"three\r\n",
    ]
    assert codes(pair.exchange(Quit())) == [221]
    assert pair.closed


def test_no_valid_recipient_means_no_message() -> None:
    pair = Pair()
    pair.exchange(Ehlo("client.test"))
    found = send_message(pair, b"x", "bad@y.example")
    assert codes(found) == [250, 550, 554]
    assert found[-1].reply == Reply.of(554, "5.5.1 Error: no valid recipients")
    assert pair.received == []
    assert codes(pair.exchange(Rset())) == [250]  # the transaction stays open until RSET
    assert codes(send_message(pair, b"y", "ok@y.example")) == [250, 250, 354, 250]
    assert pair.received == [b"y\r\n"]


def expected_content(content: bytes) -> bytes:
    """What the server must store: every line end CRLF, a final CRLF, nothing else changed."""
    normal = re.sub(rb"\r\n|\r|\n", b"\r\n", content)
    return normal if not normal or normal.endswith(b"\r\n") else normal + b"\r\n"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=30),
            st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"\r\n.\r\n", b"..", b"\n.\n"]),
        ),
        max_size=20,
    )
)
def test_any_content_survives_exactly_once_normalised(parts: list[bytes]) -> None:
    content = b"".join(parts)
    pair = Pair(Limits(max_line=100_000))
    pair.exchange(Ehlo("client.test"))
    found = send_message(pair, content, "b@y.example")
    if b"\x00" in content:
        assert found[-1].reply == Reply.of(550, "5.6.0 Error: NUL character in message data")
        assert pair.received == []
    else:
        assert codes(found) == [250, 250, 354, 250]
        assert pair.received == [expected_content(content)]
