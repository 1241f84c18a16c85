"""Hostile and malformed SMTP input against a real receive side over loopback:
every refusal is pinned, nothing smuggled is stored, and the server goes on
serving the next client."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatepost.topology.model import Limits
from hostile import ALICE, OUTSIDE, Client, Receiver, served_next, topology

BARE = "550 5.6.11 Error: bare CR or LF in message data"
NUL = "550 5.6.0 Error: NUL character in message data"
SYNC = "554 5.5.0 Error: SMTP protocol synchronization"
SMUGGLED = (
    b"MAIL FROM:<admin@example.org>\r\nRCPT TO:<" + ALICE.encode() + b">\r\nDATA\r\n"
    b"From: admin@example.org\r\nSubject: smuggled\r\n\r\nSMUGGLED\r\n"
)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    topo = topology(tmp_path, relay_from=())
    limits = Limits(max_message_size=100_000, max_recipients=3)
    server = Receiver(dataclasses.replace(topo, limits=limits))
    yield server
    server.stop()


def envelope(client: Client) -> None:
    client.hello()
    assert client.command(f"MAIL FROM:<{OUTSIDE}>") == "250 2.1.0 Ok"
    assert client.command(f"RCPT TO:<{ALICE}>") == "250 2.1.5 Ok"
    assert client.command("DATA").startswith("354 ")


FAKE_ENDS = [
    (b"\n.\n", BARE), (b"\r.\r", BARE), (b"\n.\r\n", BARE), (b"\r\n.\n", BARE),
    (b"\r.\r\n", BARE), (b"\r\n.\r", BARE), (b"\n.\r", BARE), (b"\r.\n", BARE),
    (b"\r\n.\n\r\n", BARE), (b"\r\n\x00.\r\n", NUL), (b"\r\n.\x00\r\n", NUL),
]


@pytest.mark.parametrize(("fake_end", "reply"), FAKE_ENDS, ids=[repr(f) for f, _ in FAKE_ENDS])
def test_smuggling_end_of_data_variants_store_nothing(
    receiver: Receiver, fake_end: bytes, reply: str
) -> None:
    """Only <CRLF>.<CRLF> ends the data, so the smuggled transaction is message text
    and the whole message is refused for the bare CR/LF or NUL in it."""
    client = receiver.connect()
    envelope(client)
    client.send(b"Subject: cover\r\n\r\ncover" + fake_end + SMUGGLED + b".\r\n")
    assert client.reply() == reply
    assert client.command("QUIT").startswith("221 ")
    assert receiver.stored() == []
    served_next(receiver)
    assert all(b"SMUGGLED" not in m for m in receiver.stored())


REAL_ENDS = [b"\n\r\n.\r\n", b"\r\r\n.\r\n", b"\x00\r\n.\r\n"]


@pytest.mark.parametrize("real_end", REAL_ENDS, ids=[repr(f) for f in REAL_ENDS])
def test_smuggled_transaction_after_a_real_end_is_cut_off(
    receiver: Receiver, real_end: bytes
) -> None:
    """A bare CR/LF or NUL right before a real <CRLF>.<CRLF>: the cover message is
    refused; the smuggled commands pipelined behind it reach DATA with message text
    already waiting, which is a synchronization error: nothing is stored."""
    client = receiver.connect()
    envelope(client)
    client.send(b"Subject: cover\r\n\r\ncover" + real_end + SMUGGLED + b".\r\n")
    first = NUL if b"\x00" in real_end else BARE
    assert client.replies(4) == [first, "250 2.1.0 Ok", "250 2.1.5 Ok", SYNC]
    assert client.closed()
    assert receiver.stored() == []
    served_next(receiver)


@pytest.mark.parametrize(
    "header", [b"Subject: hi\rBcc: victim@example.net\r\n", b"Subject: hi\nX-Injected: 1\r\n",
               b"Subject: hi\r\nX-Evil: a\rb\r\n", b"X-Nul: a\x00b\r\n"],
)
def test_header_injection_through_bare_cr_lf_or_nul_is_refused(
    receiver: Receiver, header: bytes
) -> None:
    client = receiver.connect()
    envelope(client)
    client.send(header + b"\r\nbody\r\n.\r\n")
    assert client.reply() == (NUL if b"\x00" in header else BARE)
    assert receiver.stored() == []
    served_next(receiver)


COMMANDS = [
    (b"NOOP\n", "500 5.5.2 Error: bare LF in command"),
    (b"NO\rOP\r\n", "500 5.5.2 Error: bad character in command"),
    (b"NOOP\x00\r\n", "500 5.5.2 Error: bad character in command"),
    (b"NOOP " + b"x" * 600 + b"\r\n", "500 5.5.0 Error: line too long"),
    (b"HELO \xff\xfe\r\n", "500 5.5.2 Error: bad character in command"),
    (b"MAIL FROM:<" + b"a" * 300 + b"@example.org>\r\n", "501 5.1.3 Error: path too long"),
    (b"MAIL FROM:<a@@example.org>\r\n", "501 5.1.7 Bad sender address syntax"),
    (b"MAIL FROM:a@example.org\r\n", "501 5.5.4 Syntax: MAIL FROM:<address>"),
    ("MAIL FROM:<jörg@example.org>\r\n".encode(),
     "553 5.6.7 Error: SMTPUTF8 required for non-ASCII address"),
    (b"MAIL FROM:<a@example.org> SIZE=100001\r\n", "552 5.3.4 Message size exceeds fixed limit"),
    (b"MAIL FROM:<a@example.org> SIZE=99999999999999999999999\r\n",
     "501 5.5.4 Error: bad SIZE parameter"),
    (b"MAIL FROM:<a@example.org> SIZE=-1\r\n", "501 5.5.4 Error: bad SIZE parameter"),
    (b"MAIL FROM:<a@example.org> X-EVIL=1\r\n", "555 5.5.4 Error: unsupported parameter X-EVIL"),
    (b"RCPT TO:<alice@hq.acme.example>\r\n", "503 5.5.1 Error: need MAIL command"),
    (b"DATA\r\n", "503 5.5.1 Error: need RCPT command"),
    (b"STARTTLS\r\n", "502 5.5.1 Error: command not implemented"),
    (b"EXPN postmaster\r\n", "500 5.5.2 Error: command not recognized"),
    (b"GET / HTTP/1.1\r\n", "500 5.5.2 Error: command not recognized"),
]


@pytest.mark.parametrize(("line", "reply"), COMMANDS, ids=[repr(c[:24]) for c, _ in COMMANDS])
def test_malformed_commands_are_refused_and_the_session_goes_on(
    receiver: Receiver, line: bytes, reply: str
) -> None:
    client = receiver.connect()
    client.hello()
    client.send(line)
    assert client.reply() == reply
    assert client.command("NOOP") == "250 2.0.0 Ok"
    served_next(receiver)


def test_malformed_recipients_are_refused(receiver: Receiver) -> None:
    client = receiver.connect()
    client.hello()
    assert client.command(f"MAIL FROM:<{OUTSIDE}>") == "250 2.1.0 Ok"
    assert client.command("RCPT TO:<alice>") == "501 5.1.3 Bad recipient address syntax"
    assert client.command("RCPT TO:<>") == "501 5.1.3 Bad recipient address syntax"
    assert client.command("RCPT TO:<älice@hq.acme.example>") == (
        "553 5.6.7 Error: SMTPUTF8 required for non-ASCII address")
    assert client.command(f"RCPT TO:<{ALICE}> NOTIFY=NEVER") == (
        "555 5.5.4 Error: unsupported parameter NOTIFY")
    assert client.command("DATA") == "554 5.5.1 Error: no valid recipients"


def test_more_recipients_than_the_limit_get_452(receiver: Receiver) -> None:
    client = receiver.connect()
    client.hello()
    client.command(f"MAIL FROM:<{OUTSIDE}>")
    replies = [client.command(f"RCPT TO:<{box}@hq.acme.example>")
               for box in ("alice", "bob", "postmaster", "alice", "bob")]
    assert replies == ["250 2.1.5 Ok"] * 3 + ["452 4.5.3 Error: too many recipients"] * 2
    assert client.command("DATA").startswith("354 ")
    assert client.command("Subject: x\r\n\r\nx\r\n.").startswith("250 2.0.0 Ok: queued as ")


def test_undeclared_oversize_data_is_drained_then_552(receiver: Receiver) -> None:
    client = receiver.connect()
    envelope(client)
    line = b"x" * 998 + b"\r\n"
    client.send(line * 1000 + b".\r\n")  # 1 MB against a 100 kB limit
    assert client.reply() == "552 5.3.4 Message size exceeds fixed limit"
    assert receiver.stored() == []
    served_next(receiver)


def test_overlong_text_line_in_data_is_refused(receiver: Receiver) -> None:
    client = receiver.connect()
    envelope(client)
    client.send(b"Subject: " + b"y" * 1000 + b"\r\n\r\nbody\r\n.\r\n")
    assert client.reply() == "552 5.3.4 Error: line too long"
    assert receiver.stored() == []


def test_unknown_command_flood_ends_with_421(receiver: Receiver) -> None:
    client = receiver.connect()
    client.hello()
    for _ in range(19):
        assert client.command("XYZZY") == "500 5.5.2 Error: command not recognized"
    assert client.command("XYZZY") == "500 5.5.2 Error: command not recognized"
    assert client.reply() == "421 4.7.0 hq.acme.example Error: too many errors"
    assert client.closed()
    served_next(receiver)


def test_pipelining_past_ehlo_is_a_synchronization_error(receiver: Receiver) -> None:
    client = receiver.connect()
    assert client.reply().startswith("220 ")
    client.send(b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\n")
    assert client.reply() == SYNC
    assert client.closed()
    served_next(receiver)


def test_message_text_pipelined_behind_a_refused_data_is_never_read_as_commands(
    receiver: Receiver,
) -> None:
    client = receiver.connect()
    client.hello()
    client.send(
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<nobody@hq.acme.example>\r\nDATA\r\n"
        + SMUGGLED + b".\r\n"
    )
    assert client.replies(3) == [
        "250 2.1.0 Ok",
        "550 5.1.1 <nobody@hq.acme.example>: Recipient address rejected: no such mailbox",
        SYNC,
    ]
    assert client.closed()
    assert receiver.stored() == []
    served_next(receiver)


def test_legitimate_pipelining_still_works(receiver: Receiver) -> None:
    client = receiver.connect()
    client.hello()
    client.send(f"MAIL FROM:<{OUTSIDE}>\r\nRCPT TO:<{ALICE}>\r\nRCPT TO:<bob@hq.acme.example>"
                "\r\nDATA\r\n".encode())
    assert client.replies(4)[:3] == ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok"]
    client.send(b"Subject: one\r\n\r\n1\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<" + ALICE.encode()
                + b">\r\nDATA\r\n")
    replies = client.replies(4)
    assert replies[0].startswith("250 2.0.0 Ok: queued as ") and replies[3].startswith("354 ")
    assert client.command("Subject: two\r\n\r\n2\r\n.").startswith("250 2.0.0 Ok: queued as ")
    assert len(receiver.stored()) == 2


def unknown(path: str) -> str:
    return f"550 5.1.1 {path}: Recipient address rejected: no such mailbox"


RELAY_ATTEMPTS = [
    ("<someone@example.org>", "550 5.7.1 <someone@example.org>: Relay access denied"),
    ("<SOMEONE@EXAMPLE.ORG>", "550 5.7.1 <SOMEONE@EXAMPLE.ORG>: Relay access denied"),
    ("<@evil.example:user@example.org>", "550 5.7.1 <user@example.org>: Relay access denied"),
    ("<@hq.acme.example,@evil.example:user@example.org>",
     "550 5.7.1 <user@example.org>: Relay access denied"),
    ("<user%example.org@hq.acme.example>", unknown("<user%example.org@hq.acme.example>")),
    ("<example.org!user@hq.acme.example>", unknown("<example.org!user@hq.acme.example>")),
    ('<"user@example.org"@hq.acme.example>', unknown('<"user@example.org"@hq.acme.example>')),
    ('<"user%example.org"@acme.example>', unknown('<"user%example.org"@acme.example>')),
    ("<user@example.org@hq.acme.example>", "501 5.1.3 Bad recipient address syntax"),
    ("<user@example.org.>", "501 5.1.3 Bad recipient address syntax"),
    ("<alice@hq.acme.example.>", "501 5.1.3 Bad recipient address syntax"),
    ("<user@[127.0.0.1]>", "550 5.7.1 <user@[127.0.0.1]>: Relay access denied"),
    ("<alice@[127.0.0.1]>", "550 5.7.1 <alice@[127.0.0.1]>: Relay access denied"),
    ("<user@[IPv6:::1]>", "550 5.7.1 <user@[IPv6:::1]>: Relay access denied"),
    ("<user@[999.0.0.1]>", "501 5.1.3 Bad recipient address syntax"),
    ("<postmaster@example.org>", "550 5.7.1 <postmaster@example.org>: Relay access denied"),
]


@pytest.mark.parametrize(("path", "reply"), RELAY_ATTEMPTS, ids=[p for p, _ in RELAY_ATTEMPTS])
def test_open_relay_attempts_from_outside_relay_from_are_refused(
    receiver: Receiver, path: str, reply: str
) -> None:
    client = receiver.connect()
    client.hello()
    assert client.command(f"MAIL FROM:<{OUTSIDE}>") == "250 2.1.0 Ok"
    assert client.command(f"RCPT TO:{path}") == reply
    assert client.command("DATA") == "554 5.5.1 Error: no valid recipients"
    assert receiver.stored() == []


def test_a_trusted_client_may_relay(tmp_path: Path) -> None:
    """The other side of the relay tests: from relay_from, a foreign address is taken."""
    server = Receiver(topology(tmp_path))
    try:
        client = server.connect()
        client.hello()
        client.command(f"MAIL FROM:<{ALICE}>")
        assert client.command("RCPT TO:<someone@example.org>") == "250 2.1.5 Ok"
    finally:
        server.stop()
