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
    """Seconds. A byte-at-a-time client resets no idle timer it cannot also beat
    with `command`; an honest slow upload keeps earning time at `data_rate`."""

    idle: float = 300.0  # silence between two reads ([limits] idle_timeout)
    command: float = 60.0  # from the last reply until the next command line is complete
    data_base: float = 120.0  # DATA: this long for any message...
    data_rate: float = 1024.0  # ...plus one second for every this many bytes received
    pregreet: float = 0.0  # wait this long before the greeting; a client talking first gets 554


class Pace:
    """The time left for the next read of one session."""

    def __init__(self, deadlines: Deadlines, now: float) -> None:
        self.deadlines = deadlines
        self.command_until = now + deadlines.command
        self.data_since: float | None = None
        self.data_bytes = 0

    def replied(self, now: float) -> None:
        """A reply went out: the client may start a new command line."""
        self.command_until = now + self.deadlines.command

    def reading(self, in_data: bool, now: float) -> None:
        if not in_data:
            self.data_since = None
        elif self.data_since is None:
            self.data_since, self.data_bytes = now, 0

    def received(self, count: int) -> None:
        if self.data_since is not None:
            self.data_bytes += count

    def timeout(self, now: float) -> float:
        """Seconds to wait for the next bytes; <= 0 means the time is up."""
        d = self.deadlines
        if self.data_since is None:
            until = self.command_until
        else:
            until = self.data_since + d.data_base + self.data_bytes / d.data_rate
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
