"""Small helpers shared by the benchmark modules: constants, ports, bounded waiting.

Every loop here is bounded by a deadline and raises BenchError when it runs out,
so a stuck run ends with an error instead of hanging.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

HOST = "127.0.0.1"
INBOUND_DOMAIN = "hq.bench.example"
INBOUND_USER = "alice"
INBOUND_RCPT = f"{INBOUND_USER}@{INBOUND_DOMAIN}"
RELAY_RCPT = "rcpt@example.net"
SENDER = "sender@example.org"


class BenchError(RuntimeError):
    """A benchmark step failed or timed out."""


def short(text: str, lines: int = 3, width: int = 300) -> str:
    """The first line of `text` plus its last exception line (or last few lines), for summaries."""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in kept if "Error:" in line or "Exception:" in line]
    tail = kept[:1] + errors[-1:] if errors else kept[-lines:]
    return " | ".join(tail)[-width:]


def wait_until(ready: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.05) -> None:
    """Poll `ready` until it returns true; raise BenchError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float, what: str) -> None:
    wait_until(lambda: port_open(port), timeout, f"{what} on port {port}", interval=0.1)
