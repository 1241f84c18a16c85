"""Hypothesis against the client core, as tests/test_smtp_server.py does for the
server: arbitrary reply bytes split at arbitrary points never raise anything
but ProtocolError and give the same Responses however they are split; any
message content goes on the wire CRLF-only, dot-stuffed, with one terminator,
and reaches our server core intact."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from gatepost.smtp.client import ClientConnection
from gatepost.smtp.events import (
    NEED_DATA,
    ConnectionClosed,
    Data,
    Ehlo,
    Mail,
    Message,
    Noop,
    ProtocolError,
    Quit,
    Rcpt,
    Reply,
    Rset,
    StartTls,
)
from gatepost.smtp.server import ServerConnection

COMMANDS = [Ehlo("client.test"), Mail("a@example.org", size=10), Rcpt("b@example.net"), Data(),
            Message(b"x\r\n"), Rset(), Noop(), StartTls(), Quit()]
REPLY_TOKENS = [
    b"220 mx.test ESMTP\r\n", b"250-mx.test\r\n", b"250-PIPELINING\r\n", b"250-SIZE 1000\r\n",
    b"250 SMTPUTF8\r\n", b"250 2.0.0 Ok\r\n", b"354 go\r\n", b"220 2.0.0 Ready\r\n",
    b"421 4.3.2 bye\r\n", b"550-5.1.1 no\r\n", b"550 5.1.1 no\r\n", b"250\r\n", b"\n", b"\r",
    b"999 x\r\n", b"25", b"0 ok\r\n", b"\x00", b"\xff\xfe", b"-", b" ",
]


def drive(chunks: list[bytes], commands: list[object]) -> list[object]:
    """Events until the end (EOF after the last chunk), or the ProtocolError."""
    conn = ClientConnection()
    for command in commands:
        conn.send(command)  # type: ignore[arg-type]
    pending, events = [*chunks, b""], list[object]()
    try:
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                conn.receive_data(pending.pop(0))
                continue
            events.append(event)
            if isinstance(event, ConnectionClosed):
                return events
    except ProtocolError as error:
        return [*events, ("ProtocolError", str(error))]


replies = st.lists(st.one_of(st.sampled_from(REPLY_TOKENS), st.binary(max_size=30)), max_size=25)
commands = st.lists(st.sampled_from(COMMANDS), max_size=12)


@settings(max_examples=400, deadline=None)
@given(replies, commands, st.data())
def test_client_core_random_splits_same_result_and_only_protocol_errors(
    parts: list[bytes], sent: list[object], data: st.DataObject
) -> None:
    script = b"".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(script)), max_size=15)))
    chunks = [script[a:b] for a, b in zip([0, *cuts], [*cuts, len(script)], strict=True)]
    whole = drive([script] if script else [], sent)
    assert drive([c for c in chunks if c], sent) == whole
    assert drive([script[i : i + 1] for i in range(len(script))], sent) == whole


def test_a_good_session_is_read_the_same_byte_by_byte() -> None:
    """The property above is not vacuous: a whole session gives real Responses."""
    sent = [Ehlo("client.test"), Mail("a@example.org"), Rcpt("b@example.net"), Data(), Quit()]
    script = b"".join(REPLY_TOKENS[:5]) + b"250 2.0.0 Ok\r\n" * 2 + b"354 go\r\n221 bye\r\n"
    events = drive([script[i : i + 1] for i in range(len(script))], sent)
    assert [e.reply.code for e in events[:-1]] == [220, 250, 250, 250, 354, 221]  # type: ignore[attr-defined]
    assert events[1].reply == Reply.of(250, "mx.test", "PIPELINING", "SIZE 1000", "SMTPUTF8")  # type: ignore[attr-defined]
    assert events[-1] == ConnectionClosed()


content = st.lists(
    st.one_of(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"..", b"\x00", b"\r\n.\r\n", b"x"]),
              st.binary(max_size=20)),
    max_size=30,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(content)
def test_any_content_goes_out_crlf_only_and_dot_stuffed(body: bytes) -> None:
    wire = ClientConnection().send(Message(body))
    assert not re.search(rb"\r(?!\n)|(?<!\r)\n", wire), wire
    assert wire.endswith(b".\r\n") and (wire == b".\r\n" or wire.endswith(b"\r\n.\r\n"))
    lines = wire.split(b"\r\n")[:-2]  # without the terminator
    assert all(line.startswith(b"..") for line in lines if line.startswith(b".")), wire
    server = ServerConnection("mx.test")
    server.receive_data(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
    server.next_event()
    for _ in range(2):
        event = server.next_event()
        server.send(Reply.of(250, "2.1.0 Ok"))
    server.receive_data(wire)
    event = server.next_event()
    if b"\x00" in body or len(max(wire.split(b"\r\n"), key=len)) > 998:
        return  # our server refuses NUL and over-long lines; that is not the client's job
    assert isinstance(event, Message), (event, server.data_to_send())
    lines_in = re.split(rb"\r\n|\r|\n", body)
    expected = b"\r\n".join(lines_in) + (b"" if body.endswith((b"\r", b"\n")) or not body
                                          else b"\r\n")
    assert event.content == expected
