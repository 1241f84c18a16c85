"""A gateway cut off from the store (or dead) loses its mail in delivery to another
gateway within about `[queue] failover_after`, and sends no final dot once the
store's last word is older than `QueueTiming.fence`: so the two never overlap.
On the fake store with clocks stepped by hand; no sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

from gatepost.router import Router
from gatepost.store import ROUTER, Job, NewMessage, NewRecipient, Renewal, send_queue
from gatepost.store.clock import ManualClock
from gatepost.store.leases import Attempt
from gatepost.store.memory import MemoryStore
from gatepost.topology import load
from gatepost.topology.model import QueueTiming

TOPOLOGY = """\
[network]
name = "FENCE"

[postoffices.BRANCH]
domains = ["branch.fence.example"]
mailboxes = ["ann"]
links = ["PA", "PB"]

[postoffices.PA]
[postoffices.PB]

[gateways.GW_A]
postoffice = "PA"
role = "send"
smarthost = "127.0.0.1:1"
serves = ["BRANCH", "PA", "PB"]

[gateways.GW_B]
postoffice = "PB"
role = "send"
smarthost = "127.0.0.1:2"
serves = ["BRANCH", "PA", "PB"]

[queue]
lease = "120s"
heartbeat = "1s"
failover_after = "5s"
"""


def test_the_fence_closes_well_before_another_gateway_takes_over() -> None:
    timing = QueueTiming(lease=120.0, heartbeat=1.0, failover_after=5.0)
    assert timing.fence == 2.0  # (5 - 1) / 2: a cut-off sender stops 2 s before takeover
    assert QueueTiming(lease=3.0, heartbeat=1.0, failover_after=60.0).fence == 1.0  # lease / 3


def test_mail_in_delivery_at_a_silent_gateway_goes_to_the_other_before_its_lease_ends(
    tmp_path: Path,
) -> None:
    config = tmp_path / "fence.toml"
    config.write_text(TOPOLOGY)
    topo = load(config)
    manual = ManualClock()

    async def main() -> tuple[list[str], list[str], list[str]]:
        store = MemoryStore(manual.clock(), tmp_path / "spool")
        router = Router(topo, store)
        await store.heartbeat("gateway:GW_A", "send:GW_A@host-a:1")
        await store.heartbeat("gateway:GW_B", "send:GW_B@host-b:1")
        new = NewMessage("ann@branch.fence.example", (NewRecipient("x@example.org", None),),
                         b"Subject: s\r\n\r\nb\r\n", "BRANCH", "BRANCH", "test")
        await store.enqueue(new)
        await router.failover()
        await router.step()  # to GW_A, the primary
        jobs = await store.claim(send_queue("GW_A"), "send:GW_A@host-a:1", 10, 120.0)
        manual.step(lease=3.0)  # GW_A quiet for 3 s: still counted as running
        await store.heartbeat("gateway:GW_B", "send:GW_B@host-b:1")
        await router.failover()
        kept = [e.queue for e in await store.queue()]
        manual.step(lease=3.0)  # 6 s: GW_A counts as stopped, its lease has 114 s left
        await store.heartbeat("gateway:GW_B", "send:GW_B@host-b:1")
        await router.failover()
        handed = [e.queue for e in await store.queue()]
        await router.step()  # one hop at a time: PA to BRANCH,
        await router.step()  # then BRANCH to PB, GW_B's postoffice
        routed = [e.queue for e in await store.queue()]
        assert len(jobs) == 1
        return kept, handed, routed

    kept, handed, routed = asyncio.run(main())
    assert kept == [send_queue("GW_A")]
    assert handed == [ROUTER]
    assert routed == [send_queue("GW_B")]


class Unreachable:
    """A store that answers renewals until it is cut off; then each call fails
    after a moment, as a connection to a silent database does."""

    def __init__(self) -> None:
        self.cut = False
        self.renewals = 0

    async def renew(self, jobs: Sequence[Job], lease: float) -> Renewal:
        if self.cut:
            await asyncio.sleep(0.05)
            raise ConnectionError("no route to the database")
        self.renewals += 1
        return Renewal(frozenset((j.message_id, j.rcpt_id) for j in jobs), {})


def job() -> Job:
    return Job("m1", 0, "a@x", "b@y", None, "BRANCH", "BRANCH", "send:GW_A", 0, 0.0, None, 10)


def test_a_sender_cut_off_from_the_store_stops_its_dots_within_the_fence() -> None:
    async def main() -> list[str | None]:
        store = Unreachable()
        jobs = [job()]
        answers = []
        attempt = Attempt(store, jobs, 120.0, time.monotonic(), fresh=0.3)  # type: ignore[arg-type]
        async with attempt:
            answers.append(await attempt.before_dot(jobs, 600.0))  # asks: extended
            answers.append(await attempt.before_dot(jobs, 600.0))  # fresh: goes at once
            store.cut = True
            await asyncio.sleep(0.4)  # the store's last word is older than `fresh`
            answers.append(await attempt.before_dot(jobs, 600.0))
        return answers

    assert asyncio.run(main()) == [None, None, "lost"]
