"""Receive side: a recipient named twice gets one copy, and a stop lets a session
that is storing a message give its answer before the store closes."""

from __future__ import annotations

import smtplib
import sqlite3
import threading
from pathlib import Path

from hostile import ALICE, Receiver, topology


def recipients_stored(receiver: Receiver) -> list[str]:
    with sqlite3.connect(receiver.db) as db:
        return [row[0] for row in db.execute("SELECT address FROM jobs ORDER BY rcpt_id")]


def test_a_mailbox_named_twice_gets_one_copy(tmp_path: Path) -> None:
    receiver = Receiver(topology(tmp_path))
    try:
        with smtplib.SMTP("127.0.0.1", receiver.port, timeout=20) as client:
            names = [ALICE, "alice@acme.example", "ALICE@hq.acme.example", "x@example.org",
                     "X@EXAMPLE.ORG"]
            refused = client.sendmail("a@example.org", names, b"Subject: twice\r\n\r\nhi\r\n")
        assert refused == {}  # every name is accepted...
        assert recipients_stored(receiver) == [ALICE, "x@example.org"]  # ...one copy each
    finally:
        receiver.stop()


def test_stop_closes_idle_sessions_and_answers_one_being_stored(tmp_path: Path) -> None:
    receiver = Receiver(topology(tmp_path))
    idle = receiver.connect()
    assert idle.reply().startswith("220")
    busy = receiver.connect()
    busy.reply()
    for line in ("EHLO c.test", "MAIL FROM:<a@example.org>", f"RCPT TO:<{ALICE}>", "DATA"):
        busy.command(line)
    busy.send(b"Subject: last\r\n\r\nhi\r\n")
    stopping = threading.Thread(target=lambda: receiver.call(receiver.side.stop()))
    stopping.start()
    busy.send(b".\r\n")
    answer = busy.reply()
    stopping.join(20)
    try:
        assert answer.startswith("250 ")  # stored, and told so
        assert idle.sock.recv(100) == b""  # the idle one was closed
    finally:
        receiver.stop()


def test_received_header_names_the_protocol_and_the_address_literal(tmp_path: Path) -> None:
    receiver = Receiver(topology(tmp_path))
    try:
        for hello, protocol in (("ehlo", "ESMTP"), ("helo", "SMTP")):
            with smtplib.SMTP("127.0.0.1", receiver.port, timeout=20) as client:
                getattr(client, hello)("c.test")
                client.sendmail("a@example.org", [ALICE], b"Subject: hi\r\n\r\nhi\r\n")
        headers = [m.split(b";", 1)[0] for m in receiver.stored()]
        assert [b"([127.0.0.1])" in h for h in headers] == [True, True]
        assert [h.split(b" with ", 1)[1].split()[0] for h in headers] == [b"ESMTP", b"SMTP"]
    finally:
        receiver.stop()
