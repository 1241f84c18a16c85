"""The store's two clocks: the wall clock for what people read (when a
message came, when it is retried) and the lease clock for leases and
heartbeats, which processes compare with one another and which must not jump
when the wall clock is set.

On one host the lease clock is the kernel's monotonic clock, counted from
boot and the same in every process; the boot it counts from is named by the
boot id, stored beside the leases (a reboot expires them all). Knows nothing
about mail.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True, slots=True)
class Clock:
    wall: Callable[[], float] = field(default=time.time)
    lease: Callable[[], float] = field(default=time.monotonic)  # seconds since boot


def boot_id() -> str:
    """This boot's id ("" where the kernel does not say)."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


class ManualClock:
    """Two clocks a test sets by hand, each on its own."""

    def __init__(self, wall: float = 1_700_000_000.0, lease: float = 1000.0) -> None:
        self.wall_now = wall
        self.lease_now = lease

    def step(self, wall: float = 0.0, lease: float = 0.0) -> None:
        self.wall_now += wall
        self.lease_now += lease

    def clock(self) -> Clock:
        return Clock(lambda: self.wall_now, lambda: self.lease_now)
