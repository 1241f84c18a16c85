"""Resource abuse against a real receive side: silent, byte-at-a-time and early
clients are cut off, connection limits hold without hurting open sessions, and
thousands of idle connections cost bounded memory."""

from __future__ import annotations

import dataclasses
import resource
import socket
import time
from pathlib import Path

from gatepost.receive.guard import Deadlines
from gatepost.topology.model import Limits
from hostile import ALICE, OUTSIDE, Client, Receiver, served_next, topology
from support import wait_for

TIMEOUT = "421 4.4.2 Error: timeout exceeded"
TOO_MANY = "421 4.7.0 Too many connections"


def trickle(client: Client, data: bytes, pause: float) -> bool:
    """Send one byte at a time; False once the server has closed on us."""
    for byte in data:
        try:
            client.send(bytes([byte]))
        except OSError:
            return False
        time.sleep(pause)
    return True


def test_a_silent_client_gets_421_and_the_server_serves_on(tmp_path: Path) -> None:
    receiver = Receiver(topology(tmp_path), Deadlines(idle=0.5))
    try:
        client = receiver.connect()
        client.hello()
        assert client.reply() == TIMEOUT  # nothing sent after EHLO
        assert client.closed()
        served_next(receiver)
    finally:
        receiver.stop()


def test_a_byte_at_a_time_command_sender_is_cut_off(tmp_path: Path) -> None:
    """Each byte comes well within the idle timeout, but the line takes too long."""
    receiver = Receiver(topology(tmp_path), Deadlines(idle=5.0, command=1.0))
    try:
        client = receiver.connect()
        client.hello()
        trickle(client, f"MAIL FROM:<{OUTSIDE}>\r\n".encode(), 0.1)  # about 3 seconds
        assert client.reply() == TIMEOUT
        assert client.closed()
        served_next(receiver)
    finally:
        receiver.stop()


def test_a_pause_between_commands_is_bounded_by_idle_not_by_the_command_deadline(
    tmp_path: Path,
) -> None:
    receiver = Receiver(topology(tmp_path), Deadlines(idle=10.0, command=0.3))
    try:
        client = receiver.connect()
        client.hello()
        time.sleep(1.0)  # more than `command`, well within `idle`
        assert client.command("NOOP") == "250 2.0.0 Ok"
    finally:
        receiver.stop()


def test_data_gets_time_by_its_size(tmp_path: Path) -> None:
    """A slow but steady upload succeeds; a trickle inside DATA is cut off."""
    deadlines = Deadlines(idle=5.0, command=5.0, data_base=1.0, data_rate=20_000)
    receiver = Receiver(topology(tmp_path), deadlines)
    try:
        honest, trickler = receiver.connect(), receiver.connect()
        for client in (honest, trickler):
            client.hello()
            client.command(f"MAIL FROM:<{OUTSIDE}>")
            client.command(f"RCPT TO:<{ALICE}>")
            assert client.command("DATA").startswith("354 ")
        chunk = (b"z" * 98 + b"\r\n") * 60  # 6 kB every 0.1 s: 60 kB/s, 3 times the rate
        for _ in range(25):  # 2.5 s in all, far beyond data_base
            honest.send(chunk)
            time.sleep(0.1)
        assert honest.command(".").startswith("250 2.0.0 Ok: queued as ")
        trickle(trickler, b"Subject: slow\r\n" * 10, 0.1)
        assert trickler.reply() == TIMEOUT
        assert len(receiver.stored()) == 1
    finally:
        receiver.stop()


def test_a_client_talking_before_the_greeting_gets_554(tmp_path: Path) -> None:
    receiver = Receiver(topology(tmp_path), Deadlines(pregreet=0.5))
    try:
        early = receiver.connect()
        early.send(f"EHLO x\r\nMAIL FROM:<{OUTSIDE}>\r\nRCPT TO:<{ALICE}>\r\n".encode())
        assert early.reply() == "554 5.5.1 Error: talking before the greeting"
        assert early.closed()
        served_next(receiver)  # a client that waits for the greeting is served
        assert receiver.stored()[0].count(b"still serving") == 1
    finally:
        receiver.stop()


def connect_from(receiver: Receiver, source: str) -> Client:
    sock = socket.create_connection(("127.0.0.1", receiver.port), 10, (source, 0))
    return Client(sock)


def test_connection_limits_per_client_and_in_all(tmp_path: Path) -> None:
    limits = Limits(max_connections=5, max_connections_per_client=3)
    receiver = Receiver(dataclasses.replace(topology(tmp_path), limits=limits))
    try:
        mine = [connect_from(receiver, "127.0.0.1") for _ in range(3)]
        for client in mine:
            assert client.reply().startswith("220 ")
        fourth = connect_from(receiver, "127.0.0.1")
        assert fourth.reply() == TOO_MANY and fourth.closed()
        others = [connect_from(receiver, "127.0.0.2") for _ in range(2)]
        assert [c.reply()[:4] for c in others] == ["220 "] * 2
        sixth = connect_from(receiver, "127.0.0.3")
        assert sixth.reply() == TOO_MANY and sixth.closed()
        open_session = mine[0]  # the open sessions are not hurt
        open_session.ehlo()
        assert open_session.command(f"MAIL FROM:<{OUTSIDE}>") == "250 2.1.0 Ok"
        assert open_session.command(f"RCPT TO:<{ALICE}>") == "250 2.1.5 Ok"
        assert open_session.command("DATA").startswith("354 ")
        assert open_session.command("x\r\n.").startswith("250 2.0.0 Ok: queued")
        assert open_session.command("QUIT").startswith("221 ")
        assert open_session.closed()

        def admitted() -> bool:
            client = connect_from(receiver, "127.0.0.3")
            return client.reply().startswith("220 ")

        wait_for(admitted, 10, "a place freed by QUIT")
    finally:
        receiver.stop()


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def test_two_thousand_idle_connections_cost_bounded_memory(tmp_path: Path) -> None:
    count = 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 3 * count:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 3 * count + 100), hard))
    limits = Limits(max_connections=count + 10, max_connections_per_client=count + 10)
    receiver = Receiver(dataclasses.replace(topology(tmp_path), limits=limits))
    clients: list[Client] = []
    try:
        before = rss_kib()
        for _ in range(count):
            clients.append(receiver.connect())
        assert all(c.reply().startswith("220 ") for c in clients)
        grown_mib = (rss_kib() - before) / 1024
        assert grown_mib < 200, f"{count} idle connections grew RSS by {grown_mib:.0f} MiB"
        assert receiver.side.admission.total == count
        served_next(receiver)
    finally:
        for client in clients:
            client.close()
        receiver.stop()
