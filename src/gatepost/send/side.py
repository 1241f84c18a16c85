"""Send side of a gateway: hands what waits in its gateway postoffice to the
smart hosts (or the recipient domains' MX hosts), over several SMTP sessions,
several messages per session, pipelined.

Each claim is one attempt (`leases.Attempt`): its lease is renewed while it
runs, and a message's final dot goes only once its lease outlasts the wait
for the final reply and no hold or delete waits for it. Each message's
outcome is recorded as soon as its transaction ends, with the bounces and
delay warnings it calls for; what a reply or an error means, and when to retry,
warn or bounce, is `policy`'s decision, where to connect and how often is
`relays'`. Whatever a remote host does ends that session at most: what its
replies decided stands, the rest is deferred, and the worker goes on. It
knows no SMTP syntax (the client core does) and no DNS (`mx` does).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import TypeVar

from gatepost import notify, policy
from gatepost.send import credentials, deliverylog, outbound
from gatepost.send.mx import MxResolver, NoMailHost
from gatepost.send.outbound import (
    DotWithheld,
    HandshakeFailed,
    Outbound,
    Payload,
    Security,
    SessionError,
    client_context,
)
from gatepost.send.relays import Gate, Pace, Relays
from gatepost.send.signing import Signer
from gatepost.smtp.events import ProtocolError, Reply
from gatepost.store import (
    Bounced,
    Cancelled,
    DamagedMessage,
    Deferred,
    Held,
    Job,
    NewMessage,
    Outcome,
    Workers,
    key_of,
    leases,
    send_queue,
)
from gatepost.store.leases import Attempt
from gatepost.store.waiting import idle, wait_any
from gatepost.topology import Gateway, Topology
from gatepost.topology.model import HostPort

T = TypeVar("T")
log = logging.getLogger("gatepost.send")
trouble_log = logging.getLogger("gatepost.send.session")

PER_CLAIM = 64  # recipients claimed per batch
MX_ADDRESSES = 5  # MX host addresses tried per attempt, best first (as Postfix's default)
KEEP_OPEN = 2.0  # seconds an idle session to the smart host stays open
GATE_WAIT = 30.0  # seconds a worker waits for a free session before deferring
STREAM_ABOVE = 1 << 20  # bytes of content beyond which it is streamed from the store
STORE_PAUSE = 1.0  # seconds a worker waits after the store failed a claim
SHOWN = 300  # characters of a host's reply (or of what it sent) in a log line


@dataclass(frozen=True, slots=True)
class Target:
    """One host to connect to, and the name its certificate must carry."""

    address: HostPort
    name: str

    def __str__(self) -> str:
        if self.name == self.address.host:
            return str(self.address)
        return f"{self.name}[{self.address.host}]:{self.address.port}"


@dataclass
class Link:
    """An open session, the gate it holds a place in, and what it carried."""

    session: Outbound
    target: Target
    gate: Gate
    destination: str
    sent: int = 0


def destination_of(job: Job, by_domain: bool) -> str:
    return job.address.rpartition("@")[2].lower() if by_domain else ""


def by_destination(jobs: list[Job], by_domain: bool) -> Iterator[tuple[str, list[Job]]]:
    """Jobs grouped per destination (one per recipient domain for MX delivery),
    each group ordered by message."""
    ordered = sorted(jobs, key=lambda job: (destination_of(job, by_domain), job.message_id))
    for key, group in groupby(ordered, key=lambda job: destination_of(job, by_domain)):
        yield key, list(group)


def by_message(items: Iterable[T], job: Callable[[T], Job]) -> Iterator[list[T]]:
    """Jobs, or outcomes, grouped per message (`job` gives each one's job)."""
    ordered = sorted(items, key=lambda item: job(item).message_id)
    for _, group in groupby(ordered, key=lambda item: job(item).message_id):
        yield list(group)


class SendSide:
    def __init__(
        self,
        topo: Topology,
        gateway: Gateway,
        store: Workers,
        sessions: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`clock` is the wall clock outcomes are dated by (retry times)."""
        assert gateway.smarthosts or gateway.mx, "a sending gateway needs smart hosts or MX"
        self.topo = topo
        self.gateway = gateway
        self.store = store
        self.delivery = topo.delivery
        self.timing = topo.queue
        self.clock = clock
        spread = gateway.smarthost_policy == "spread"
        hosts = max(1, len(gateway.smarthosts)) if spread else 1
        self.sessions = sessions or gateway.max_sessions * hosts
        self.relays = Relays(spread=spread)
        self.gates: dict[HostPort, Gate] = {}
        self.freed = asyncio.Event()
        self.pace = Pace(gateway.rate, time.monotonic)
        self.signer = Signer(gateway.dkim)
        self.context = client_context(gateway.tls, gateway.tls_ca, gateway.tls_verify)
        # After a failed handshake, clear text only where nothing is lost by it: TLS is
        # opportunistic, unverified, and no AUTH password would need it.
        self.may_go_plain = (gateway.tls == "opportunistic" and not gateway.tls_verify
                             and gateway.auth_user is None)
        self.mx = MxResolver(gateway.resolver, gateway.mx_port) if gateway.mx else None
        self.queue = send_queue(gateway.name)
        self.owner = leases.owner(self.queue)
        self.wakeup = asyncio.Event()
        self.name = f"gateway:{gateway.name}"
        self.helo = notify.mta_name(topo, gateway.postoffice)

    def wake(self) -> None:
        self.wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        self.store.watch(self.queue, self.wakeup)
        await leases.reclaim(self.store, self.queue)
        workers = [self.worker(stop) for _ in range(self.sessions)]
        beating = leases.beat(self.store, self.name, self.owner, self.timing.heartbeat, stop)
        await asyncio.gather(beating, *workers)
        await self.store.forget(self.name, self.owner)  # only once nothing is in flight

    async def alive(self) -> None:
        await self.store.heartbeat(self.name, self.owner)

    async def worker(self, stop: asyncio.Event) -> None:
        link: Link | None = None
        try:
            while not stop.is_set():
                claimed = time.monotonic()
                try:
                    jobs = await self.store.claim(self.queue, self.owner, PER_CLAIM,
                                                  self.timing.lease)
                    more = jobs or await idle(self.store, self.queue, self.wakeup, stop, KEEP_OPEN)
                except Exception as error:  # noqa: BLE001 - the store failed: wait, never die
                    log.warning("could not claim mail: %s; trying again in %g s", error, STORE_PAUSE)
                    await wait_any(stop, stop, STORE_PAUSE)
                    continue
                if not jobs:
                    if not more:  # quiet for a while: say goodbye to the smart host
                        await self.release(link)
                        link = None
                    continue
                fence = self.timing.fence
                async with Attempt(self.store, jobs, self.timing.lease, claimed, fence) as attempt:
                    for destination, group in by_destination(jobs, self.mx is not None):
                        link = await self.deliver(attempt, link, destination, group)
        finally:
            await self.release(link)

    async def deliver(
        self, attempt: Attempt, link: Link | None, destination: str, jobs: list[Job]
    ) -> Link | None:
        """Deliver jobs for one destination, over `link` when it goes there,
        recording each message's outcome as its transaction ends; returns the
        link to reuse, or None when it broke or was used up."""
        if link is not None and link.destination != destination:
            await self.release(link)
            link = None
        try:
            for group in by_message(jobs, lambda job: job):
                group = [job for job in group if not attempt.gone([job])]  # others' now
                if not group:
                    continue
                link = await self.spent(link)
                link = link or await self.connect(destination)
                try:
                    outcomes = await self.transact(attempt, link, group)
                except DotWithheld as withheld:
                    outcomes = self.withheld(group, withheld.why)
                    await self.release(link, polite=False)
                    link = None
                await self.record(attempt, outcomes)  # before the next command: see README
        except NoMailHost as error:
            reply = policy.no_mail_host(error.why, error.domain, error.detail)
            await self.record(attempt, self.undecided(attempt, jobs, reply, ""))
        except Exception as error:  # noqa: BLE001 - the host's doing or a bug: this session only
            relay = str(link.target) if link else ""
            reply = self.ended(link, error) if link else reply_for(error)
            await self.record(attempt, self.undecided(attempt, jobs, reply, relay))
            await self.release(link, polite=False)
            link = None
        link = await self.spent(link)
        if link is not None and link.gate.open > link.gate.capacity():
            await self.release(link)
            link = None
        return link

    def withheld(self, jobs: list[Job], why: str) -> list[Outcome]:
        """Outcomes of a message whose final dot did not go: the admin action
        that stopped it, or (its lease in doubt) a retry at once, which counts
        only if the lease is still this attempt's."""
        if why in ("hold", "delete"):
            log.info("%s: not sent: %s while it was being sent", jobs[0].message_id, why)
            return [Cancelled(job) for job in jobs]
        reply = Reply.of(451, f"4.4.0 not sent: the final dot was withheld ({why} lease)")
        now = self.clock()
        return [policy.outcome(job, reply, "", now, self.delivery) for job in jobs]

    async def spent(self, link: Link | None) -> Link | None:
        """`link` while it can carry another message, else None (and it is closed):
        not after trouble, nor when the host spoke or closed while it was idle."""
        if link is None:
            return None
        broken = link.session.broken
        quiet = broken is None and link.session.quiet()
        if quiet and link.sent < self.gateway.max_per_session:
            return link
        if broken is not None:
            self.ended(link, broken)
        elif not quiet:
            log.info("%s spoke or closed while idle: the next message takes a new session",
                     link.target)
        await self.release(link, polite=quiet)
        return None

    def ended(self, link: Link, error: Exception) -> Reply:
        """What an error that ended `link`'s session means (policy's word); logged."""
        reply = reply_for(error)
        if policy.host_busy(reply):
            link.gate.shrink()
        log_trouble(str(link.target), reply, error)
        return reply

    def undecided(
        self, attempt: Attempt, jobs: list[Job], reply: Reply, relay: str
    ) -> list[Outcome]:
        """Outcomes for the jobs of `jobs` not decided yet in this attempt."""
        now = self.clock()
        return [
            policy.outcome(job, reply, relay, now, self.delivery)
            for job in jobs
            if key_of(job) in attempt.open and not attempt.gone([job])
        ]

    async def targets(self, destination: str) -> list[Target]:
        if self.mx is None:
            return [Target(host, host.host) for host in self.gateway.smarthosts]
        hosts = await self.mx.hosts(destination)
        return [Target(address, name) for address, name in hosts[:MX_ADDRESSES]]

    async def connect(self, destination: str) -> Link:
        """A session to the first host of `destination` that answers, in the
        order `relays` gives; waits while every host's gate is full."""
        targets = await self.targets(destination)
        busy = f"4.4.5 every session to {destination or 'the smart host'} is busy"
        reply = policy.session_failed(busy)
        deadline = time.monotonic() + GATE_WAIT
        while time.monotonic() < deadline:
            tried = False
            for target in self.relays.order([t.address for t in targets], time.monotonic()):
                found = next(t for t in targets if t.address == target)
                gate = self.gate(target)
                if not gate.try_enter():
                    continue
                tried = True
                try:
                    return Link(await self.open(found), found, gate, destination)
                except Exception as error:  # noqa: BLE001 - logged; the next host is tried
                    reply = reply_for(error)
                    log_trouble(str(found), reply, error)
                    if policy.host_busy(reply):
                        gate.shrink()
                gate.leave()
                self.freed.set()
            if tried and not policy.host_busy(reply):
                break
            self.freed.clear()
            await wait_any(self.freed, self.freed, 1.0)
        raise SessionError(reply)

    def gate(self, host: HostPort) -> Gate:
        if host not in self.gates:
            self.gates[host] = Gate(self.gateway.max_sessions, time.monotonic)
        return self.gates[host]

    def security(self, host: HostPort, login: credentials.Login | None) -> Security:
        """How to protect a session to `host`: as configured, or without STARTTLS
        while an opportunistic handshake with it failed lately."""
        if self.may_go_plain and self.relays.plain(host, time.monotonic()):
            return Security("none", None, login, fallback=True)
        return Security(self.gateway.tls, self.context, login)

    async def open(self, target: Target) -> Outbound:
        """Open one session; a host that cannot be reached (or times out) goes
        last for a while, a busy one (421) gets fewer sessions."""
        host = target.address
        try:
            login = credentials.login(self.gateway)
        except credentials.MissingSecret as exc:
            raise SessionError(f"4.7.0 no AUTH password: {exc}") from exc
        security = self.security(host, login)
        try:
            session = await Outbound.open(host.host, host.port, self.helo, security, target.name)
        except (OSError, TimeoutError) as exc:
            self.relays.dead(host, time.monotonic())
            raise SessionError(f"4.4.1 no session with {target}: {exc or 'timed out'}") from exc
        except HandshakeFailed:
            if self.may_go_plain:  # like Postfix's "may": clear text next time
                self.relays.handshake_failed(host, time.monotonic())
                log.warning("TLS with %s failed: its next sessions go without TLS for %d s",
                            target, policy.PLAIN_FOR)
            raise
        self.relays.alive(host)
        return session

    async def transact(self, attempt: Attempt, link: Link, jobs: list[Job]) -> list[Outcome]:
        first = jobs[0]
        action = attempt.cancelled(jobs)
        if action is not None:  # a hold or delete waits for it: do not start
            return [Cancelled(job) for job in jobs]
        try:
            content = await self.payload(first)
        except KeyError:  # deleted (gatepost delete) since it was claimed: nothing to send
            log.info("%s: deleted while queued; not sent", first.message_id)
            return []
        except DamagedMessage as error:  # never send part of a message: set it aside
            log.error("%s: damaged, put on hold (see mailq --state hold): %s",
                      first.message_id, error)
            return [Held(job, f"damaged: {error}") for job in jobs]
        await self.pace.wait()
        rcpts = [job.address for job in jobs]
        try:
            replies = await link.session.transact(
                first.sender, rcpts, content, lambda: attempt.before_dot(jobs, outbound.FINAL_TIMEOUT)
            )
        finally:
            if not isinstance(content, bytes):
                content.close()
        link.sent += 1
        now = self.clock()
        relay = str(link.target)
        return [policy.outcome(job, reply, relay, now, self.delivery) for job, reply in zip(jobs, replies)]

    async def payload(self, job: Job) -> Payload:
        """The content to send: whole (and DKIM-signed) when small, else a
        file to stream, sent unsigned (dkimpy signs whole messages only)."""
        if job.size <= STREAM_ABOVE:
            content = await self.store.content(job.message_id)
            return self.signer.sign(content) if self.signer else content
        if self.signer:
            log.warning("%s: %d bytes, above %d: sent without a DKIM signature",
                        job.message_id, job.size, STREAM_ABOVE)
        return await self.store.open_content(job.message_id)

    async def release(self, link: Link | None, polite: bool = True) -> None:
        """Close `link` (QUIT first when `polite`) and free its gate place."""
        if link is not None:
            if polite:
                await link.session.quit()
            else:
                link.session.close()
            link.gate.leave()
            self.freed.set()

    async def record(self, attempt: Attempt, outcomes: list[Outcome]) -> None:
        """Commit one message's outcomes (with the reports they call for) before
        the session sends another command: a kill then resends only a message
        whose final reply had not come back."""
        attempt.decided(o.job for o in outcomes)
        await self.commit(outcomes)

    async def commit(self, outcomes: list[Outcome]) -> None:
        """Commit outcomes, trying again while the store fails, as long as the
        final dot's extension holds the lease: a delivery not written down would
        be sent again."""
        if not outcomes:
            return
        now = self.clock()
        bounces, warnings = await self.bounces(outcomes, now), await self.warnings(outcomes, now)
        deadline, pause = time.monotonic() + outbound.FINAL_TIMEOUT, 0.1
        while True:
            try:
                await self.store.complete(outcomes, bounces, warnings)
                break
            except Exception as error:
                if time.monotonic() + pause > deadline:
                    raise
                log.warning("%s: outcome not recorded yet (%s); trying again in %.1f s",
                            outcomes[0].job.message_id, error, pause)
                await asyncio.sleep(pause)
                pause = min(2 * pause, 10.0)
        deliverylog.write(outcomes, now)

    async def bounces(self, outcomes: Iterable[Outcome], now: float) -> list[NewMessage]:
        bounced = [o for o in outcomes if isinstance(o, Bounced)]
        return [report for _, report in await self.reports(bounced, now, "failed")]

    async def warnings(
        self, outcomes: Iterable[Outcome], now: float
    ) -> list[tuple[str, NewMessage]]:
        """Delay warnings, with the first deferral at least warn_after since the
        message was queued; the store enqueues each message's first one only."""
        due = [
            o for o in outcomes
            if isinstance(o, Deferred) and o.job.sender and not o.job.warned
            and policy.warn_due(o.job.created, now, self.delivery)
        ]
        return await self.reports(due, now, "delayed")

    async def reports(
        self, items: Sequence[Outcome], now: float, action: str
    ) -> list[tuple[str, NewMessage]]:
        """One report per message: (the message's queue id, the report)."""
        reports = []
        for group in by_message(items, lambda o: o.job):
            job = group[0].job
            failures = [policy.failure(o, action, self.delivery) for o in group]
            try:
                original = await self.store.content_head(job.message_id)
            except KeyError:  # deleted meanwhile: no one to tell about it
                continue
            dsn = notify.report(self.topo, job, failures, original, now)
            reports += [(job.message_id, dsn)] if dsn else []
        return reports


def reply_for(error: Exception) -> Reply:
    """What an error that ended a session means for the recipients it had not
    decided: a 4.x.x reply (policy's word)."""
    trouble = error.trouble if isinstance(error, SessionError) else policy.error_trouble(error)
    return policy.session_failed(trouble)


def log_trouble(relay: str, reply: Reply, error: Exception) -> None:
    """One line naming the host and what went wrong; a traceback when it was not
    the host's doing but ours."""
    expected = isinstance(error, SessionError | ProtocolError | OSError)
    shown = policy.one_line(f"{reply.code} {reply.text}")[:SHOWN]
    if expected:
        trouble_log.warning("%s: session ended: %s", relay, shown)
    else:
        trouble_log.error("%s: session ended: %s", relay, shown, exc_info=error)
