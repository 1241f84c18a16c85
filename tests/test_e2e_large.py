"""Layer 4: a 50 MB message through a running `gatepost run`, to a mailbox and
through the send side to smtp-sink: it arrives byte-identical, and no gatepost
process's peak memory (VmHWM) grows by 64 MB over what it used before."""

from __future__ import annotations

import hashlib
import smtplib
from collections.abc import Callable
from pathlib import Path

from conftest import MakeNet
from support import Gatepost, Sink, wait_for

SIZE = 50 * 1024 * 1024
BOUND = 64 * 1024 * 1024


def big_message() -> bytes:
    """50 MB of 78-byte lines, every 7th line starting with a dot (stuffed on the wire)."""
    lines = [b"%077d" % i if i % 7 else b".%076d" % i for i in range(1000)]
    block = b"\r\n".join(lines) + b"\r\n"
    header = b"From: x@example.org\r\nTo: alice@hq.acme.example\r\nSubject: large\r\n\r\n"
    return header + block * (SIZE // len(block))


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def memory(pid: int, field: str) -> int:
    """VmRSS or VmHWM of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def test_a_50mb_message_streams_through_receive_store_and_send(
    make_net: MakeNet, sink: Sink, run_net: Callable[..., Gatepost]
) -> None:
    net = make_net(sink.port)
    net.config.write_text(net.config.read_text() + "\n[limits]\nmax_message_size = 60000000\n")
    supervisor = run_net(net)
    pids = children(supervisor.process.pid)
    assert len(pids) == 3  # router, GW1's receive side, GW1's send side
    baseline = {pid: memory(pid, "VmRSS") for pid in pids}
    message = big_message()
    digest = hashlib.sha256(message).hexdigest()

    with smtplib.SMTP("127.0.0.1", net.port, timeout=60) as client:
        client.sendmail("x@example.org", ["alice@hq.acme.example", "someone@example.org"], message)

    wait_for(lambda: len(net.mailbox("alice@hq.acme.example")) == 1, 30, "the mailbox delivery")
    wait_for(lambda: any(sink.directory.iterdir()), 30, "the relayed message")
    shown = net.show("alice@hq.acme.example", net.mailbox("alice@hq.acme.example")[0]["id"])
    assert shown.startswith(b"Received: ")
    assert hashlib.sha256(shown[-len(message):]).hexdigest() == digest
    as_sunk = message.replace(b"\r\n", b"\n")  # smtp-sink -d stores LF line ends
    relayed = wait_sunk(sink, len(as_sunk))[:-1]  # and ends its file with one more LF
    assert hashlib.sha256(relayed[-len(as_sunk):]).digest() == hashlib.sha256(as_sunk).digest()

    growth = {pid: memory(pid, "VmHWM") - baseline[pid] for pid in pids}
    print("peak RSS growth (MB):", {pid: round(grew / 2**20, 1) for pid, grew in growth.items()})
    assert all(grew < BOUND for grew in growth.values()), growth


def wait_sunk(sink: Sink, size: int) -> bytes:
    """The one message smtp-sink wrote, once it is whole."""
    def whole() -> bool:
        files = [p for p in sink.directory.iterdir() if p.is_file()]
        return len(files) == 1 and files[0].stat().st_size >= size
    wait_for(whole, 30, "the relayed message to be written")
    [data] = sink.messages()
    return data
