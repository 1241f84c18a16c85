"""Layer 1: large messages in pieces. The server core's Content events and the
client core's Stuffer must give the same bytes however the input is split."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatepost.smtp import (
    NEED_DATA,
    ClientConnection,
    Content,
    Limits,
    LocalProtocolError,
    Message,
    Rset,
    ServerConnection,
)
from gatepost.smtp.client import Stuffer, stuff
from test_smtp_server import EHLO, ENVELOPE, SCRIPTS, accept, run


def merged(events: Sequence[object]) -> list[object]:
    """Events with each message's Content pieces joined into its Message; pieces
    that no Message follows (a refused message) are dropped, as a shell does."""
    out: list[object] = []
    pieces: list[bytes] = []
    for event in events:
        if isinstance(event, Content):
            pieces.append(event.data)
            continue
        if isinstance(event, Message):
            event = Message(b"".join(pieces) + event.content)
        pieces = []
        out.append(event)
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted(cuts)
    parts = [data[a:b] for a, b in zip([0, *bounds], [*bounds, len(data)], strict=True)]
    return [part for part in parts if part]


BIG = (
    b"Subject: big\r\n\r\n" + b"".join(b"line %d\r\n" % i for i in range(30))
    + b".dot\r\n..two\r\n\r\n.\r\n"
)
STREAM_SCRIPTS = [
    *SCRIPTS,
    EHLO + ENVELOPE + b"..a\r\n" + b"b" * 40 + b"\r\n.c\r\n" + b"d\r\n" * 20 + b".\r\nNOOP\r\n",
    EHLO + ENVELOPE + b"x\r\n" * 10 + b"bare\nlf\r\n" + b"y\r\n" * 10 + b".\r\nNOOP\r\n",
    EHLO + ENVELOPE + b"x\r\n" * 10 + b"n\0l\r\n" + b"y" * 60 + b"\r\n.\r\nNOOP\r\n",
    EHLO + ENVELOPE + b"z" * 120 + b"\r\n.\r\n" + ENVELOPE + b"ok\r\n.\r\nQUIT\r\n",
    EHLO + ENVELOPE + b"x\r\n" * 10 + b"w" * 70 + b"\r\n.\r\n" + ENVELOPE + b"ok\r\n.\r\n",
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(STREAM_SCRIPTS), st.integers(1, 64), st.data())
def test_content_pieces_join_to_the_whole_message_however_split(
    script: bytes, chunk: int, data: st.DataObject
) -> None:
    whole = Limits(max_message_size=100, max_line=50)
    pieces = Limits(max_message_size=100, max_line=50, content_chunk=chunk)
    cuts = data.draw(st.lists(st.integers(0, len(script)), max_size=30))
    events, out = run(split(script, cuts), pieces)
    expected_events, expected_out = run([script], whole)
    assert merged(events) == expected_events
    assert out == expected_out


def test_a_large_message_comes_in_pieces_of_whole_unstuffed_lines() -> None:
    events, _ = run([EHLO + ENVELOPE, *split(BIG, list(range(40, len(BIG), 40)))], Limits(content_chunk=32))
    contents = [e.data for e in events if isinstance(e, Content)]
    assert len(contents) >= 3
    assert all(piece.endswith(b"\r\n") for piece in contents)
    last = next(e.content for e in events if isinstance(e, Message))
    assert b"".join(contents) + last == BIG[:-3].replace(b"\r\n.", b"\r\n")


def test_a_small_message_is_one_message_event() -> None:
    events, _ = run([EHLO + ENVELOPE + b"small\r\n.\r\n"], Limits(content_chunk=1024))
    assert not any(isinstance(e, Content) for e in events)
    assert Message(b"small\r\n") in events


def test_streamed_data_is_held_in_bounded_memory() -> None:
    conn = ServerConnection("mx.test", Limits(max_message_size=10**9, content_chunk=4096))
    conn.receive_data(EHLO + ENVELOPE)
    conn.next_event()
    conn.send(accept(conn.next_event()))
    conn.send(accept(conn.next_event()))
    total = 0
    line = b"0123456789" * 50 + b"\r\n"
    for _ in range(4000):  # 2 MB
        conn.receive_data(line * 4)
        while (event := conn.next_event()) is not NEED_DATA:
            assert isinstance(event, Content)
            total += len(event.data)
        assert len(conn._in) < 4096 + len(line) * 4  # white-box: the core keeps one piece
    conn.receive_data(b".\r\n")
    last = conn.next_event()
    assert isinstance(last, Message)
    assert total + len(last.content) == 4000 * 4 * len(line)


def test_data_without_line_ends_is_drained_and_refused() -> None:
    conn = ServerConnection("mx.test", Limits(max_line=100, content_chunk=1000))
    conn.receive_data(EHLO + ENVELOPE)
    conn.next_event()
    conn.send(accept(conn.next_event()))
    conn.send(accept(conn.next_event()))
    for _ in range(1000):
        conn.receive_data(b"x" * 1000)
        assert conn.next_event() is NEED_DATA
        assert len(conn._in) < 2000
    conn.receive_data(b"\r\n.\r\nNOOP\r\n")
    assert not isinstance(conn.next_event(), Message | Content)
    assert conn.data_to_send().endswith(b"552 5.3.4 Error: line too long\r\n250 2.0.0 Ok\r\n")


CONTENTS = [
    b"", b".", b"\r", b"\n", b"\r\n", b".\r\n", b"a\r\n.b", b"a\r\r\n.\n.", b"\n.\r.",
    b"x\r\n..\r\n...\r\n", b"no final line end", b"mixed\rline\nends\r\n.last",
]


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(st.sampled_from(CONTENTS), st.binary(max_size=60),
              st.lists(st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n"]), max_size=40)
              .map(b"".join)),
    st.data(),
)
def test_stuffer_matches_the_whole_message_serializer(content: bytes, data: st.DataObject) -> None:
    parts = split(content, data.draw(st.lists(st.integers(0, len(content)), max_size=12)))
    stuffer = Stuffer()
    wire = b"".join(stuffer.feed(part) for part in parts) + stuffer.end()
    assert wire == stuff(content) + b".\r\n"


@pytest.mark.parametrize("content", CONTENTS)
def test_client_sends_content_pieces_as_the_whole_message(content: bytes) -> None:
    whole = ClientConnection().send(Message(content))
    conn = ClientConnection()
    middle = len(content) // 2
    wire = conn.send(Content(content[:1])) + conn.send(Content(content[1:middle]))
    assert wire + conn.send(Message(content[max(middle, 1):])) == whole


def test_content_must_end_with_a_message() -> None:
    conn = ClientConnection()
    conn.send(Content(b"abc"))
    with pytest.raises(LocalProtocolError):
        conn.send(Rset())
