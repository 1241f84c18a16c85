"""Where and how fast the send side may connect: host order, sessions, rate.

`Relays` orders a destination's hosts (smart hosts in failover or spread
order, or MX hosts by preference) and puts a host that could not be reached
last for a while. `Gate` bounds the sessions open to one host and halves that
bound for a while after a 421. `Pace` spaces transactions to a rate.
Must not know: SMTP, the store, the topology file. The clock is passed in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gatepost.policy import DEAD_HOST, PLAIN_FOR, SHRINK_FOR
from gatepost.topology.model import HostPort

Clock = Callable[[], float]


@dataclass
class Relays:
    """Host order with a memory of the hosts that could not be reached."""

    spread: bool = False
    dead_for: float = DEAD_HOST
    dead_until: dict[HostPort, float] = field(default_factory=dict)
    plain_until: dict[HostPort, float] = field(default_factory=dict)
    turn: int = 0

    def order(self, hosts: Sequence[HostPort], now: float) -> list[HostPort]:
        """Every host, the ones to try first first. Hosts marked dead go last
        (never left out: with every host down, the retry is what waits)."""
        hosts = list(hosts)
        if self.spread and hosts:
            self.turn = (self.turn + 1) % len(hosts)
            hosts = hosts[self.turn :] + hosts[: self.turn]
        alive = [h for h in hosts if self.dead_until.get(h, 0.0) <= now]
        return alive + [h for h in hosts if h not in alive]

    def dead(self, host: HostPort, now: float) -> None:
        self.dead_until[host] = now + self.dead_for

    def alive(self, host: HostPort) -> None:
        self.dead_until.pop(host, None)

    def handshake_failed(self, host: HostPort, now: float) -> None:
        """Opportunistic TLS with `host` failed: go without it for a while."""
        self.plain_until[host] = now + PLAIN_FOR

    def plain(self, host: HostPort, now: float) -> bool:
        """Should a session to `host` skip STARTTLS (its handshake failed lately)?"""
        return self.plain_until.get(host, 0.0) > now


class Gate:
    """At most `limit` sessions to one host; after a 421 at most half as many
    (at least one) for `shrink_for` seconds."""

    def __init__(self, limit: int, clock: Clock, shrink_for: float = SHRINK_FOR) -> None:
        self.limit = limit
        self.clock = clock
        self.shrink_for = shrink_for
        self.allowed = limit
        self.until = 0.0
        self.open = 0

    def capacity(self) -> int:
        if self.allowed < self.limit and self.clock() >= self.until:
            self.allowed = self.limit
        return self.allowed

    def try_enter(self) -> bool:
        if self.open >= self.capacity():
            return False
        self.open += 1
        return True

    def leave(self) -> None:
        self.open = max(0, self.open - 1)

    def shrink(self) -> None:
        """The host said 421 (too busy): halve the sessions allowed, for a while."""
        self.allowed = max(1, min(self.allowed, self.open) // 2)
        self.until = self.clock() + self.shrink_for


class Pace:
    """Spaces transactions to at most `rate` per second (None: no limit)."""

    def __init__(self, rate: float | None, clock: Clock) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.clock = clock
        self.next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = self.clock()
        at = max(now, self.next)
        self.next = at + self.interval
        if at > now:
            await asyncio.sleep(at - now)
