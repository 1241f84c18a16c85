"""The unruly smart host (tests/unruly.py) records exactly the messages it
answered 250 to at the final dot: with smtplib and raw sockets, each session's
behaviour chosen explicitly."""

from __future__ import annotations

import contextlib
import random
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from unruly import KINDS, STAGES, Plan, accepted_ids, choose, running

SENDER, RECIPIENT = "load@client.example", "someone@example.org"
CONTENT = (b"From: load@client.example\r\nX-Soak-Id: t-1\r\n\r\n"
           b"first line\r\n.a line that starts with a dot\r\nlast line\r\n")


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def read_reply(sock: socket.socket, buffer: bytearray) -> bytes:
    """One whole reply (the last line has a space after the code)."""
    while True:
        lines = bytes(buffer).split(b"\r\n")
        for count, line in enumerate(lines[:-1], 1):
            if line[3:4] == b" ":
                del buffer[: sum(len(each) + 2 for each in lines[:count])]
                return b"\r\n".join(lines[:count])
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        buffer += chunk


def send_with_smtplib(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, "client.example", timeout=30) as smtp:
        smtp.sendmail(SENDER, [RECIPIENT], CONTENT)


def test_a_well_behaved_session_records_the_message(tmp_path: Path) -> None:
    with running(tmp_path) as host:
        send_with_smtplib(host.port)
        wait_until(lambda: host.finished == 1)
        assert len(host.accepted) == 1
        stored = host.accepted[0].read_bytes()
    assert stored == (b"X-Envelope-From: <load@client.example>\r\n"
                      b"X-Envelope-To: <someone@example.org>\r\n" + CONTENT)
    assert accepted_ids(tmp_path) == {"t-1": 1}
    assert [p.name for p in tmp_path.iterdir()] == [host.accepted[0].name]


def test_pipelined_commands_are_answered_in_order(tmp_path: Path) -> None:
    with running(tmp_path) as host, socket.create_connection(("127.0.0.1", host.port)) as sock:
        buffer = bytearray()
        assert read_reply(sock, buffer).startswith(b"220 ")
        sock.sendall(b"EHLO client.example\r\n")
        assert b"250-PIPELINING" in read_reply(sock, buffer)
        sock.sendall(f"MAIL FROM:<{SENDER}> SIZE={len(CONTENT)} BODY=8BITMIME\r\n"
                     f"RCPT TO:<{RECIPIENT}>\r\nRCPT TO:<other@example.org>\r\nDATA\r\n".encode())
        codes = [read_reply(sock, buffer)[:3] for _ in range(4)]
        assert codes == [b"250", b"250", b"250", b"354"]
        sock.sendall(CONTENT.replace(b"\r\n.", b"\r\n..") + b".\r\nQUIT\r\n")
        assert read_reply(sock, buffer).startswith(b"250 ")
        assert read_reply(sock, buffer).startswith(b"221 ")
        wait_until(lambda: host.finished == 1)
        stored = host.accepted[0].read_bytes()
    assert stored.endswith(b"X-Envelope-To: <other@example.org>\r\n" + CONTENT)


def test_garbage_after_the_250_still_counts_as_accepted(tmp_path: Path) -> None:
    with running(tmp_path, plan=Plan("dot", "garbage")) as host:
        smtp = smtplib.SMTP("127.0.0.1", host.port, "client.example", timeout=30)
        assert smtp.sendmail(SENDER, [RECIPIENT], CONTENT) == {}
        with contextlib.suppress(smtplib.SMTPException, OSError):
            assert smtp.noop()[0] != 250  # the garbage answers it
        smtp.close()
        wait_until(lambda: host.finished == 1)
        assert len(host.accepted) == 1
    assert accepted_ids(tmp_path) == {"t-1": 1}


@pytest.mark.parametrize("stage", ["data", "dot"])
def test_a_reset_before_the_250_records_nothing(tmp_path: Path, stage: str) -> None:
    with running(tmp_path, plan=Plan(stage, "reset")) as host:
        with pytest.raises((smtplib.SMTPException, OSError)):
            send_with_smtplib(host.port)
        wait_until(lambda: host.finished == 1)
        assert host.accepted == []
    assert list(tmp_path.iterdir()) == []  # no file, not even a temporary one


def test_a_reset_is_a_tcp_reset(tmp_path: Path) -> None:
    with (running(tmp_path, plan=Plan("mail", "reset")) as host,
          socket.create_connection(("127.0.0.1", host.port)) as sock):
        buffer = bytearray()
        read_reply(sock, buffer)
        sock.sendall(b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n")
        assert read_reply(sock, buffer).startswith(b"250-")
        with pytest.raises(ConnectionResetError):
            read_reply(sock, buffer)


def test_a_temporary_refusal_at_the_dot_records_nothing(tmp_path: Path) -> None:
    with running(tmp_path, plan=Plan("dot", "4xx")) as host:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send_with_smtplib(host.port)
        assert refused.value.smtp_code == 451
        wait_until(lambda: host.finished == 1)
        assert host.accepted == []


def test_plans_are_seeded_and_only_name_known_misbehaviours() -> None:
    plans = [choose(random.Random(f"7-{n}"), 0.3) for n in range(2000)]
    assert plans == [choose(random.Random(f"7-{n}"), 0.3) for n in range(2000)]
    chosen = [p for p in plans if p is not None]
    assert 0.25 < len(chosen) / len(plans) < 0.35
    assert {p.stage for p in chosen} == set(STAGES)
    assert all(p.kind in KINDS[p.stage] for p in chosen)
    assert all(choose(random.Random(n), 0.0) is None for n in range(100))
    with pytest.raises(ValueError):
        Plan("greeting", "garbage")


def test_the_command_prints_ready_and_stops_on_sigterm(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, str(Path(__file__).with_name("unruly.py")), "--listen",
               f"127.0.0.1:{port}", "--dir", str(tmp_path), "--seed", "1", "--misbehave", "0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as process:
        assert process.stdout is not None
        assert process.stdout.readline() == b"ready\n"
        send_with_smtplib(port)
        wait_until(lambda: accepted_ids(tmp_path) == {"t-1": 1})
        process.terminate()
        assert process.wait(10) == 0

