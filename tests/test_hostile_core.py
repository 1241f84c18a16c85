"""The server core's defences the receive side relies on, byte by byte: STARTTLS
drops what was pipelined behind it, strict synchronization, and the shell's
close_with (timeouts, early talkers)."""

from __future__ import annotations

from gatepost.receive.guard import Admission, Deadlines, Pace
from gatepost.smtp.events import (
    NEED_DATA,
    ConnectionClosed,
    Ehlo,
    Mail,
    Rcpt,
    Reply,
    StartTls,
)
from gatepost.smtp.replies import OUT_OF_SYNC, TALKED_FIRST, TIMED_OUT
from gatepost.smtp.server import ServerConnection
from gatepost.smtp.table import State

EHLO = b"EHLO client.test\r\n"


def events(conn: ServerConnection, chunks: list[bytes]) -> list[object]:
    """Feed chunks one at a time; collect events (answering Mail with 250)."""
    seen: list[object] = []
    pending = list(chunks)
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            if not pending:
                return seen
            conn.receive_data(pending.pop(0))
            continue
        seen.append(event)
        if isinstance(event, Mail | Rcpt):
            conn.send(Reply.of(250, "2.1.0 Ok"))
        if isinstance(event, ConnectionClosed):
            return seen


def test_starttls_is_offered_and_drops_what_was_pipelined_behind_it() -> None:
    conn = ServerConnection("mx.test", starttls=True)
    script = EHLO + b"STARTTLS\r\nEHLO evil.test\r\nMAIL FROM:<a@b.example>\r\n"
    assert events(conn, [script]) == [Ehlo("client.test"), StartTls()]
    out = conn.data_to_send()
    assert out.endswith(b"250-SMTPUTF8\r\n250 STARTTLS\r\n220 2.0.0 Ready to start TLS\r\n")
    assert conn.state is State.START and conn.tls_active
    conn.receive_data(b"MAIL FROM:<a@b.example>\r\n")  # after the upgrade: EHLO again first
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b"503 5.5.1 Error: send HELO/EHLO first\r\n"
    conn.receive_data(EHLO)
    assert conn.next_event() == Ehlo("client.test")
    assert b"STARTTLS" not in conn.data_to_send()


def test_strict_sync_refuses_bytes_behind_ehlo_and_data_only_when_already_there() -> None:
    conn = ServerConnection("mx.test", strict_sync=True)
    assert events(conn, [EHLO + b"NOOP\r\n"]) == [ConnectionClosed()]
    assert conn.data_to_send().endswith(OUT_OF_SYNC.to_bytes())
    polite = ServerConnection("mx.test", strict_sync=True)
    got = events(polite, [EHLO, b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"])
    assert got == [Ehlo("client.test"), Mail("a@b.example"), Rcpt("c@d.example")]
    lax = ServerConnection("mx.test")  # the default (capture sink): no check
    assert events(lax, [EHLO + b"NOOP\r\n"])[0] == Ehlo("client.test")


def test_close_with_replaces_an_unsent_greeting_and_ends_the_session() -> None:
    early = ServerConnection("mx.test")
    early.receive_data(EHLO)
    early.close_with(TALKED_FIRST)
    assert early.data_to_send() == TALKED_FIRST.to_bytes()
    assert early.next_event() == ConnectionClosed()
    slow = ServerConnection("mx.test")
    assert slow.data_to_send().startswith(b"220 ")
    slow.receive_data(b"MAIL FR")
    slow.close_with(TIMED_OUT)
    assert slow.data_to_send() == b"421 4.4.2 Error: timeout exceeded\r\n"
    assert slow.next_event() == ConnectionClosed()


def test_pace_gives_idle_time_between_commands_and_paced_time_in_data() -> None:
    pace = Pace(Deadlines(idle=300, command=60, data_base=100, data_rate=1000))
    assert pace.timeout(now=0) == 300  # nothing begun: the idle timeout
    pace.received(1, now=10)  # a command line begins
    assert pace.timeout(now=10) == 60 and pace.timeout(now=69) == 1
    pace.received(1, now=20)  # more bytes of it do not extend it
    assert pace.timeout(now=70) <= 0
    pace.replied()
    assert pace.timeout(now=500) == 300
    pace.reading(in_data=True, now=1000)
    pace.received(50_000, now=1001)
    assert pace.timeout(now=1100) == 50  # 100 s + 50 s earned by 50 kB, 100 s gone
    pace.reading(in_data=False, now=1100)
    assert pace.timeout(now=1100) == 300


def test_admission_counts_per_client_and_in_all() -> None:
    gate = Admission(max_total=3, max_per_client=2)
    assert [gate.enter("a"), gate.enter("a"), gate.enter("a")] == [True, True, False]
    assert [gate.enter("b"), gate.enter("c")] == [True, False]
    gate.leave("a")
    assert gate.enter("c") and not gate.enter("b")
    for client in ("a", "b", "c"):
        gate.leave(client)
    assert gate.total == 0 and not gate.open
