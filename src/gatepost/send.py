"""Send side of a gateway: hands what waits in its gateway postoffice to the
smart host, over several SMTP sessions, several messages per session, pipelined.

It records each recipient's outcome in the store; when to retry or bounce is
`policy`'s decision. It knows no SMTP syntax (the client core does).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable
from itertools import groupby

from gatepost import notify, policy
from gatepost.outbound import Outbound, SessionError
from gatepost.router import wait_any
from gatepost.smtp.events import Reply
from gatepost.store import (
    AsyncStore,
    Bounced,
    Deferred,
    Delivered,
    Job,
    NewMessage,
    Outcome,
    send_queue,
)
from gatepost.topology import Gateway, Topology

log = logging.getLogger("gatepost.send")

SESSIONS = 8  # concurrent sessions to the smart host
PER_SESSION = 64  # recipients claimed per batch
POLL = 0.25


def outcome(job: Job, reply: Reply, relay: str, now: float, retry: policy.Retry) -> Outcome:
    """What one reply means for one recipient."""
    text = f"{reply.code} {reply.text}"
    if reply.is_positive:
        return Delivered(job, relay, text)
    if reply.is_permanent or policy.expired(job.created, now, retry):
        return Bounced(job, text, relay)
    return Deferred(job, now + policy.retry_delay(job.attempts, retry), text, relay)


class SendSide:
    def __init__(
        self,
        topo: Topology,
        gateway: Gateway,
        store: AsyncStore,
        sessions: int = SESSIONS,
        retry: policy.Retry | None = None,
    ) -> None:
        assert gateway.smarthost is not None
        self.topo = topo
        self.gateway = gateway
        self.store = store
        self.sessions = sessions
        self.retry = retry or policy.Retry()
        self.queue = send_queue(gateway.name)
        self.owner = f"{self.queue}:{os.getpid()}"
        self.wakeup = asyncio.Event()
        self.helo = notify.mta_name(topo, gateway.postoffice)

    def wake(self) -> None:
        self.wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        workers = [self.worker(stop) for _ in range(self.sessions)]
        await asyncio.gather(self.heartbeat(stop), *workers)

    async def heartbeat(self, stop: asyncio.Event) -> None:
        """Tell the store this gateway runs; on a clean stop, that it does not."""
        name = f"gateway:{self.gateway.name}"
        while not stop.is_set():
            await self.store.heartbeat(name, self.owner, time.time())
            await wait_any(stop, stop, policy.HEARTBEAT)
        await self.store.forget(name, self.owner)

    async def worker(self, stop: asyncio.Event) -> None:
        session: Outbound | None = None
        try:
            while not stop.is_set():
                jobs = await self.store.claim(
                    self.queue, self.owner, PER_SESSION, policy.LEASE, time.time()
                )
                if not jobs:
                    await close(session)
                    session = None
                    await wait_any(self.wakeup, stop, POLL)
                    self.wakeup.clear()
                    continue
                session = await self.deliver(session, jobs)
        finally:
            await close(session)

    async def deliver(self, session: Outbound | None, jobs: list[Job]) -> Outbound | None:
        """Deliver a batch over `session` (opened if needed); returns the session
        to reuse, or None when it broke."""
        outcomes: list[Outcome] = []
        relay = str(self.gateway.smarthost)
        try:
            session = session or await self.connect()
            for _, group in groupby(jobs, key=lambda job: job.message_id):
                outcomes += await self.transact(session, list(group), relay)
        except (SessionError, OSError, TimeoutError) as error:
            done = {(o.job.message_id, o.job.rcpt_id) for o in outcomes}
            reply = getattr(error, "reply", None) or Reply.of(451, f"4.4.1 {relay}: {error or 'timeout'}")
            now = time.time()
            outcomes += [
                outcome(job, reply, relay, now, self.retry)
                for job in jobs
                if (job.message_id, job.rcpt_id) not in done
            ]
            await close(session)
            session = None
        await self.record(outcomes)
        return session

    async def connect(self) -> Outbound:
        smarthost = self.gateway.smarthost
        assert smarthost is not None
        return await Outbound.open(smarthost.host, smarthost.port, self.helo)

    async def transact(self, session: Outbound, jobs: list[Job], relay: str) -> list[Outcome]:
        first = jobs[0]
        content = await self.store.content(first.message_id)
        replies = await session.transact(first.sender, [job.address for job in jobs], content)
        now = time.time()
        return [outcome(job, reply, relay, now, self.retry) for job, reply in zip(jobs, replies)]

    async def record(self, outcomes: list[Outcome]) -> None:
        now = time.time()
        reports = await self.reports(outcomes, now)
        await self.store.complete(outcomes, now, reports)
        for o in outcomes:
            log_outcome(o, now)

    async def reports(self, outcomes: Iterable[Outcome], now: float) -> list[NewMessage]:
        bounced = [o for o in outcomes if isinstance(o, Bounced)]
        reports = []
        for message_id, group in groupby(bounced, key=lambda o: o.job.message_id):
            items = list(group)
            failures = [failure(o) for o in items]
            original = await self.store.content(message_id)
            dsn = notify.report(self.topo, items[0].job, failures, original, now)
            reports += [dsn] if dsn else []
        return reports


def failure(o: Bounced) -> policy.Failure:
    code, _, text = o.reply.partition(" ")
    status = policy.status_of(int(code), text) if code.isdigit() else "5.0.0"
    return policy.Failure(o.job.address, status, f"smtp; {o.reply}", o.relay)


def log_outcome(o: Outcome, now: float) -> None:
    job = o.job
    delay = now - job.created
    if isinstance(o, Delivered):
        log.info("%s: to=<%s> relay=%s delay=%.2f status=sent (%s)",
                 job.message_id, job.address, o.relay, delay, o.reply)
    elif isinstance(o, Deferred):
        log.info("%s: to=<%s> relay=%s delay=%.2f status=deferred (%s)",
                 job.message_id, job.address, o.relay, delay, o.reply)
    elif isinstance(o, Bounced):
        log.info("%s: to=<%s> relay=%s delay=%.2f status=bounced (%s)",
                 job.message_id, job.address, o.relay, delay, o.reply)


async def close(session: Outbound | None) -> None:
    """Say QUIT and close, if there is a session; always leaves none."""
    if session is not None:
        await session.quit()
