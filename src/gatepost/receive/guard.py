"""Receive-side guards against resource abuse: how long a client may take
(idle silence, one command line, a DATA upload paced by its size) and how many
connections may be open at once, in all and per client address.

Pure bookkeeping for the receive shell; the caller passes the clock's readings.
Must not know SMTP syntax, sockets or the store.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Deadlines:
    """Seconds. Silence is bounded by `idle`; a command line, once its first byte
    arrived, must be complete within `command` (a byte-at-a-time client cannot
    live on the idle timer); DATA earns time by its size, so an honest slow
    upload finishes while a trickle is cut off."""

    idle: float = 300.0  # silence between two reads ([limits] idle_timeout; RFC 5321 4.5.3.2)
    command: float = 60.0  # from the first byte of a command line until it is answered
    data_base: float = 120.0  # DATA: this long for any message...
    data_rate: float = 1024.0  # ...plus one second for every this many bytes received
    pregreet: float = 0.0  # wait this long before the greeting; a client talking first gets 554


class Pace:
    """The time left for the next read of one session."""

    def __init__(self, deadlines: Deadlines) -> None:
        self.deadlines = deadlines
        self.command_until: float | None = None  # None: no command line begun
        self.data_since: float | None = None
        self.data_bytes = 0

    def replied(self) -> None:
        """A reply went out: what was received so far has been answered."""
        self.command_until = None

    def reading(self, in_data: bool, now: float) -> None:
        if not in_data:
            self.data_since = None
        elif self.data_since is None:
            self.data_since, self.data_bytes = now, 0

    def received(self, count: int, now: float) -> None:
        if self.data_since is not None:
            self.data_bytes += count
        elif count and self.command_until is None:
            self.command_until = now + self.deadlines.command

    def timeout(self, now: float) -> float:
        """Seconds to wait for the next bytes; <= 0 means the time is up."""
        d = self.deadlines
        if self.data_since is not None:
            until = self.data_since + d.data_base + self.data_bytes / d.data_rate
        elif self.command_until is not None:
            until = self.command_until
        else:
            return d.idle
        return min(d.idle, until - now)


class Admission:
    """Open connections, in all and per client address."""

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.open: Counter[str] = Counter()
        self.total = 0

    def enter(self, client: str) -> bool:
        if self.total >= self.max_total or self.open[client] >= self.max_per_client:
            return False
        self.open[client] += 1
        self.total += 1
        return True

    def leave(self, client: str) -> None:
        self.total -= 1
        self.open[client] -= 1
        if self.open[client] <= 0:
            del self.open[client]
