"""The router (External): moves each recipient from postoffice to postoffice.

It claims router jobs from the store, walks them along the shortest path
over links to their mailbox (and delivers there) or to the gateway
postoffice of the gateway serving their origin (and hands them to that
gateway's send queue). Every hop is one recorded outcome. A message that has
made too many hops (a loop inside the network, through copies re-sent with one
more hop each) is bounced to its sender. It never speaks SMTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from gatepost import notify, policy
from gatepost.store import (
    ROUTER,
    Bounced,
    Delivered,
    Job,
    Moved,
    NewMessage,
    Outcome,
    Workers,
    leases,
    send_queue,
)
from gatepost.store.waiting import idle, wait_any
from gatepost.topology import NoRoute, Topology, outbound_gateway, path

log = logging.getLogger("gatepost.router")

BATCH = 512
STORE_PAUSE = 1.0  # seconds the router waits after the store failed
LEADER = "router"  # the duty of the router that leads: failover and purge


def plan(topo: Topology, job: Job, alive: Callable[[str], bool]) -> list[Outcome]:
    """Every hop of one job from where it waits to where the router lets go of it."""
    if policy.too_many_hops(job.hop_count, topo.limits.hopcount_limit):
        return [looped(job, topo.limits.hopcount_limit)]
    if job.mailbox is not None:
        postoffice, mailbox = job.mailbox.split("/", 1)
        if postoffice not in topo.postoffices or mailbox not in topo.postoffices[postoffice].mailboxes:
            return [Bounced(job, "550 5.1.1 mailbox no longer exists in the topology")]
        target = postoffice
    try:
        if job.mailbox is None:
            gateway = outbound_gateway(topo, job.origin, alive)
            target, last = gateway.postoffice, send_queue(gateway.name)
        hops = path(topo, job.location, target)[1:]
    except NoRoute as error:  # e.g. the topology changed under queued mail
        return [Bounced(job, f"554 5.4.4 no route from {job.location}: {error}")]
    if job.mailbox is not None:
        return [*(Moved(job, hop, ROUTER) for hop in hops), Delivered(job)]
    return [*(Moved(job, hop, ROUTER) for hop in hops[:-1]), Moved(job, target, last)]


def looped(job: Job, limit: int) -> Bounced:
    """The bounce of a recipient whose message made too many hops."""
    reply = policy.TOO_MANY_HOPS
    return Bounced(job, f"{reply.code} {reply.text} ({job.hop_count}, limit {limit}): a mail loop")


class Router:
    def __init__(
        self,
        topo: Topology,
        store: Workers,
        wake_send: Callable[[str], None] = lambda gateway: None,
    ) -> None:
        self.topo = topo
        self.store = store
        self.wake_send = wake_send
        self.owner = leases.owner("router")
        self.wakeup = asyncio.Event()
        self.living: set[str] = set()
        self.checked = -float("inf")  # time.monotonic() of the last failover check
        self.leading = False  # this router does the network's failover and purge

    def alive(self, gateway: str) -> bool:
        return f"gateway:{gateway}" in self.living

    def wake(self) -> None:
        self.wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._run(stop)
        finally:
            if self.leading:
                with contextlib.suppress(Exception):  # else its term runs out
                    await self.store.resign(LEADER, self.owner)

    async def _run(self, stop: asyncio.Event) -> None:
        self.store.watch(ROUTER, self.wakeup)
        await leases.reclaim(self.store, ROUTER)
        timing, purged = self.topo.queue, -float("inf")
        while not stop.is_set():
            try:
                if time.monotonic() - self.checked >= timing.heartbeat:
                    await self.failover()
                if self.leading and time.monotonic() - purged >= policy.PURGE_EVERY:
                    purged = time.monotonic()
                    await self.purge()
                if not await self.step():
                    await idle(self.store, ROUTER, self.wakeup, stop, timing.heartbeat)
            except Exception as error:  # noqa: BLE001 - the store failed for a moment: wait
                log.warning("the store failed: %s; trying again in %g s", error, STORE_PAUSE)
                await wait_any(stop, stop, STORE_PAUSE)

    async def purge(self) -> None:
        """Forget what the [delivery] retentions keep no longer."""
        delivery = self.topo.delivery
        await self.store.purge(delivery.final_retention, delivery.trace_retention)

    async def step(self) -> int:
        """Route one batch; returns how many jobs it handled."""
        jobs = await self.store.claim(ROUTER, self.owner, BATCH, self.topo.queue.lease)
        if not jobs:
            return 0
        now = time.time()  # after the claim, which may have waited for the write lock
        outcomes = [o for job in jobs for o in plan(self.topo, job, self.alive)]
        reports = await self.reports(outcomes, now)
        await self.store.complete(outcomes, reports)
        self.log(outcomes)
        for queue in {o.queue for o in outcomes if isinstance(o, Moved) and o.queue != ROUTER}:
            self.wake_send(queue.removeprefix("send:"))
        return len(jobs)

    async def failover(self) -> None:
        """Learn which gateways run; when this router leads (one of the network's
        routers does, for a term of `failover_after`), give the mail waiting for
        a stopped one to the router again wherever another running gateway
        serves its origin."""
        self.checked = time.monotonic()
        self.living = await self.store.alive(self.topo.queue.failover_after)
        await self.lead()
        if not self.leading:
            return
        for name, gateway in self.topo.gateways.items():
            if not gateway.sends or self.alive(name):
                continue
            origins = [po for po in gateway.serves if self.takes_over(po, name)]
            queue = send_queue(name)
            # Its mail in delivery too: the process that holds it has died, or is cut off
            # from the store and sends no final dot (QueueTiming.fence) by now.
            owners = list(await self.store.owners(queue))
            within = self.topo.queue.failover_after  # unless it is back by now
            moved = await self.store.requeue(queue, origins, owners, within)
            if moved:
                log.info("gateway %s is not running: %d recipients go to another gateway",
                         name, moved)

    async def lead(self) -> None:
        """Take or keep the lead: its term ends `failover_after` from now on the
        store's lease clock unless renewed (every heartbeat), so a router cut off
        from the store loses it within that time and another one leads."""
        try:
            leading = await self.store.lead(LEADER, self.owner, self.topo.queue.failover_after)
        except Exception:
            if self.leading:
                log.warning("%s no longer knows it leads (the store failed)", self.owner)
            self.leading = False  # another router may lead by now
            raise
        if leading != self.leading:
            log.info("%s %s the network's failover and purge", self.owner,
                     "now leads" if leading else "no longer leads")
        self.leading = leading

    def takes_over(self, postoffice: str, stopped: str) -> bool:
        try:
            gateway = outbound_gateway(self.topo, postoffice, self.alive)
        except NoRoute:
            return False
        return gateway.name != stopped and self.alive(gateway.name)

    async def reports(self, outcomes: list[Outcome], now: float) -> list[NewMessage]:
        reports = []
        for o in outcomes:
            if isinstance(o, Bounced):
                status = policy.reply_status(o.reply, "5.0.0")
                failure = policy.Failure(o.job.address, status, f"x-gatepost; {o.reply}")
                try:
                    original = await self.store.content_head(o.job.message_id)
                except KeyError:  # deleted meanwhile (gatepost delete): nothing to report
                    continue
                dsn = notify.report(self.topo, o.job, [failure], original, now)
                reports += [dsn] if dsn else []
        return reports

    def log(self, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            job = o.job
            if isinstance(o, Moved):
                log.info("%s: moved to=<%s> postoffice=%s queue=%s",
                         job.message_id, job.address, o.to, o.queue)
            elif isinstance(o, Delivered):
                log.info("%s: delivered to=<%s> mailbox=%s", job.message_id, job.address, job.mailbox)
            elif isinstance(o, Bounced):
                log.info("%s: bounced to=<%s> %s", job.message_id, job.address, o.reply)
