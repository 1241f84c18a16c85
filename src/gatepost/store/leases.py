"""Who holds a lease, and taking back the leases of a process that died.

A lease belongs to one attempt (its token, given by the claim); the process
that runs the attempt is its owner, "ROLE@HOST:PID". When a worker starts, the leases in its queue
held by processes of this host that no longer exist go back to the queue at
once, instead of waiting for the lease to run out (a restart after kill -9).
`Attempt` keeps one claim's lease while it is being worked on. Knows nothing
about mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterable, Sequence
from typing import Self

from .base import Job, JobKey, Workers, key_of
from .waiting import wait_any

# The name this host goes by in lease owners: GATEPOST_HOST where several hosts
# share one name (containers, network namespaces), else the hostname.
HOST = os.environ.get("GATEPOST_HOST") or socket.gethostname()
MARGIN = 0.1  # of a lease: a renewal must come back this long before the lease ends
log = logging.getLogger("gatepost.leases")


def owner(role: str) -> str:
    return f"{role}@{HOST}:{os.getpid()}"


def dead_here(name: str) -> bool:
    """Is `name` the owner name of a process of this host that no longer runs?"""
    role_host, _, pid = name.rpartition(":")
    if not role_host.endswith(f"@{HOST}") or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


async def beat(store: Workers, name: str, owner: str, every: float, stop: asyncio.Event) -> None:
    """Record every `every` seconds that `name`, run by `owner`, is alive, until
    `stop`; a store that fails is tried again at the next beat."""
    while not stop.is_set():
        try:
            await store.heartbeat(name, owner)
        except Exception as error:  # noqa: BLE001 - the store failed for a moment
            log.warning("heartbeat of %s not recorded: %s", name, error)
        await wait_any(stop, stop, every)


async def reclaim(store: Workers, queue: str) -> int:
    """Give back the jobs of `queue` leased by dead processes of this host."""
    dead = [name for name in await store.owners(queue) if dead_here(name)]
    return sum([await store.release_owner(queue, name) for name in dead])


class Attempt:
    """The lease of one claim, kept while its attempt runs, however long a
    remote host takes: renewed every half of `fresh`; the jobs it lost and the
    admin actions waiting for it are noted as renewals report them.

    `before_dot` says whether a message's final dot may go. The first one
    extends the whole claim's lease past the final reply's timeout, and from
    then on every renewal does: a later dot goes at once while what the store
    last said is fresh (asked for under `fresh` seconds ago) and the lease
    outlasts the wait; otherwise it asks the store again first, so a process
    cut off from the store stops sending within `fresh`, before the router
    gives its mail to another gateway. Durations are monotonic."""

    def __init__(
        self, store: Workers, jobs: list[Job], lease: float, claimed: float,
        fresh: float | None = None,
    ) -> None:
        """`claimed`: time.monotonic() when the claim was asked for. `fresh`: how
        long what the store last said holds for a dot (default a third of the
        lease); renewals come twice as often."""
        self.store = store
        self.lease = lease
        self.fresh = lease / 3 if fresh is None else min(fresh, lease / 3)
        self.open = {key_of(job): job for job in jobs}  # not yet decided
        self.held_until = claimed + lease  # the lease ends no earlier than this
        self.heard = claimed  # when the last renewal that came back was asked for
        self.final_wait = 0.0  # renewals add it once a final dot is due
        self.lost: set[JobKey] = set()
        self.pending: dict[JobKey, str] = {}
        self._renewing: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._renewing = asyncio.ensure_future(self._renew_often())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing

    def decided(self, jobs: Iterable[Job]) -> None:
        """These jobs' outcomes are in: no more renewals for them."""
        for job in jobs:
            self.open.pop(key_of(job), None)

    def gone(self, jobs: Sequence[Job]) -> bool:
        """Has another attempt taken any of these jobs?"""
        return any(key_of(job) in self.lost for job in jobs)

    def cancelled(self, jobs: Sequence[Job]) -> str | None:
        """"hold" or "delete" when such an action waits for every one of `jobs`:
        their message should not go out now."""
        actions = {self.pending.get(key_of(job)) for job in jobs}
        return actions.pop() if len(actions) == 1 and actions <= {"hold", "delete"} else None

    async def _renew_often(self) -> None:
        while True:
            await asyncio.sleep(self.fresh / 2)
            try:
                await self.renew()
            except Exception as error:  # noqa: BLE001 - try again at the next third
                log.warning("could not renew %d leases: %s", len(self.open), error)

    async def renew(self) -> None:
        """Renew every open job (past the final wait once a dot is due); note
        what the store says: jobs lost, admin actions waiting."""
        jobs, lease, asked = list(self.open.values()), self.final_wait + self.lease, time.monotonic()
        if not jobs:
            return
        renewal = await self.store.renew(jobs, lease)
        self.lost |= {key_of(job) for job in renewal.lost(jobs)}
        self.pending = dict(renewal.pending)
        self.held_until = max(self.held_until, asked + lease)  # for all it still holds
        self.heard = max(self.heard, asked)

    async def before_dot(self, jobs: Sequence[Job], final_wait: float) -> str | None:
        """None when the final dot of `jobs`' message may go: their lease
        outlasts `final_wait` (the final reply's timeout). Otherwise why not:
        "lost" (another attempt has them, or the store did not answer while
        the lease lasted) or the admin action waiting ("hold", "delete")."""
        if not self._may_go(final_wait):
            self.final_wait = max(self.final_wait, final_wait)
        while not self._may_go(final_wait):
            room = self.held_until - time.monotonic() - self.lease * MARGIN
            if room <= 0 or self.gone(jobs):
                return "lost"
            try:  # an answer later than `fresh` may be one the router no longer stands by
                async with asyncio.timeout(min(room, self.fresh)):
                    await self.renew()
            except TimeoutError:
                continue
            except Exception as error:  # noqa: BLE001 - a lease not known to hold is lost
                log.warning("lease not renewed before the final dot: %s", error)
                return "lost"
        return "lost" if self.gone(jobs) else self.cancelled(jobs)

    def _may_go(self, final_wait: float) -> bool:
        """Is what the store last said fresh, and does the lease outlast `final_wait`?"""
        now = time.monotonic()
        return (now - self.heard < self.fresh
                and self.held_until - now >= final_wait + self.lease * MARGIN)
