"""Outbound hygiene: whatever a stored message holds (bare CR, bare LF, lines
of dots, NULs, a fake end of data), the send side never puts a bare CR or LF or
an unstuffed dot on the wire to the smart host. A raw socket sink records the
exact bytes; the send side runs as `gatepost run --only router,gateway:GW1`."""

from __future__ import annotations

import contextlib
import re
import socket
import sqlite3
import threading
import time
from pathlib import Path

from gatepost.store import NewMessage, NewRecipient, SqliteDb
from soak import Process
from support import SEND_ONLY, wait_for

CONTENTS = [
    b"Subject: bare CR\r\n\r\nbare\rCR\r\n",
    b"Subject: bare LF\n\nbare\nLF\n",
    b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\n",
    b"Subject: fake end\r\n\r\nx\r\n.\r\nMAIL FROM:<evil@example.org>\r\n",
    b"Subject: fake ends\r\n\r\nx\n.\nRSET\r.\r\n.\n",
    b"Subject: NUL\r\n\r\nNUL\x00here\r\n",
    b"Subject: no final line end\r\n\r\nlast",
    b"Subject: CR CR LF\r\n\r\nx\r\r\n.\r\r\n",
    b".",
    b"",
]
EHLO_REPLY = b"250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10000000\r\n"


class RawSink:
    """A smart host that records every byte it is sent, per connection."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.wire = bytearray()  # everything received, in arrival order
        self.payloads: list[bytes] = []  # each DATA payload, terminator included
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(sock,), daemon=True).start()

    def serve(self, sock: socket.socket) -> None:
        with sock, contextlib.suppress(ConnectionError):  # a client may reset at the end
            self.converse(sock)

    def converse(self, sock: socket.socket) -> None:
        buffer, in_data = b"", False
        sock.sendall(b"220 sink.test ESMTP\r\n")
        while chunk := sock.recv(65536):
            with self.lock:
                self.wire += chunk
            buffer += chunk
            buffer, in_data = self.answer(sock, buffer, in_data)

    def answer(self, sock: socket.socket, buffer: bytes, in_data: bool) -> tuple[bytes, bool]:
        while True:
            if in_data:
                end = 0 if buffer.startswith(b".\r\n") else buffer.find(b"\r\n.\r\n")
                if end < 0:
                    return buffer, True
                cut = 3 if end == 0 else end + 5
                with self.lock:
                    self.payloads.append(buffer[:cut])
                buffer, in_data = buffer[cut:], False
                sock.sendall(b"250 2.0.0 Ok: recorded\r\n")
                continue
            line, found, rest = buffer.partition(b"\n")
            if not found:
                return buffer, False
            buffer = rest
            verb = line[:4].upper()
            if verb == b"EHLO":
                sock.sendall(EHLO_REPLY)
            elif verb == b"DATA":
                sock.sendall(b"354 go ahead\r\n")
                in_data = True
            elif verb == b"QUIT":
                sock.sendall(b"221 bye\r\n")
            else:
                sock.sendall(b"250 2.0.0 Ok\r\n")

    def close(self) -> None:
        self.server.close()


def clean(wire: bytes) -> list[str]:
    """What is wrong with these bytes as SMTP: bare CR or LF, unstuffed dots."""
    problems = []
    if re.search(rb"\r(?!\n)", wire):
        problems.append("bare CR")
    if re.search(rb"(?<!\r)\n", wire):
        problems.append("bare LF")
    return problems


def unstuffed(payload: bytes) -> list[bytes]:
    """Lines of a DATA payload that begin with a dot but are not stuffed."""
    lines = payload[: -len(b".\r\n")].split(b"\r\n")[:-1] if payload != b".\r\n" else []
    return [line for line in lines if line.startswith(b".") and not line.startswith(b"..")]


def test_the_send_side_never_emits_bare_line_ends_or_unstuffed_dots(tmp_path: Path) -> None:
    sink = RawSink()
    config = tmp_path / "gatepost.toml"
    config.write_text(SEND_ONLY.format(smarthost=f"127.0.0.1:{sink.port}"))
    db = tmp_path / "var" / "acme.db"
    store = SqliteDb(db)
    recipient = (NewRecipient("someone@example.org", None),)
    store.enqueue(
        [NewMessage("alice@hq.acme.example", recipient, content, "HQ", "HQ", "test")
         for content in CONTENTS],
        time.time(),
    )
    store.close()
    process = Process(config, "router,gateway:GW1")
    process.start()
    try:
        def settled() -> bool:
            with sqlite3.connect(db) as conn:
                rows = conn.execute("SELECT count(*) FROM jobs WHERE message_id IN "
                                    "(SELECT id FROM messages WHERE received_by = 'test') "
                                    "AND state IN ('delivered', 'bounced')").fetchone()
            return int(rows[0]) == len(CONTENTS)

        wait_for(settled, 60, "every hostile message delivered or bounced")
    finally:
        process.stop()
        sink.close()
    wire = bytes(sink.wire)
    assert wire, "the sink recorded nothing"
    assert clean(wire) == []
    assert len(sink.payloads) >= len(CONTENTS) - 2  # refusing NUL or bare-CR mail is allowed
    for payload in sink.payloads:
        assert unstuffed(payload) == [], payload
        assert payload.count(b"\r\n.\r\n") + payload.startswith(b".\r\n") == 1, payload
