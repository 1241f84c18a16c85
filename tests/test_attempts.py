"""Exactly one delivery per attempt, on the send side, in process (issue 10).

A claim is a lease held by one attempt, renewed while the attempt runs and
extended past the final-reply timeout before the final dot; an attempt that
cannot extend it in time (the store unreachable) never sends the dot; and
queue commands on a message in delivery cancel the attempt before its dot
(hold, delete) or wait for it to end (hold after the dot, requeue), and say
so. The leases here last 2 s and the smart host takes several leases to
answer: a lease that ran out would show as a second copy at the host.

The host (tests/scripted.py) is held at a stage (`hold_at`) while the test
acts: before its 354 (the client has not reached its final dot), or before
its reply to the final dot (the dot is sent; the message is the host's).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

from gatepost.store import Hop
from gatepost.store.base import Changes
from scripted import ALICE, Clock, DnsServer, Harness, Script, ScriptedHost
from support import gatepost

LEASE = 2.0  # seconds: the [queue] lease of every test here
QUEUE = 'lease = "2s"'
FAST_RETRY = 'retry_min = "1s"\nretry_max = "2s"'  # a wrongful deferral soon shows as a copy
SLOW = 3 * LEASE  # seconds the host takes over a reply the tests hold back
SETTLE = 60.0  # seconds allowed for an outcome (loaded machines)
RCPT = "r@example.org"
OUTCOMES = ("delivered", "deferred", "bounced")


# ---- helpers ------------------------------------------------------------------------


def smarthost(host: ScriptedHost) -> str:
    return f'smarthost = "{host.address}"\ntls = "none"'


def harness(root: Path, gateway: str) -> Harness:
    return Harness(root, gateway, FAST_RETRY, Clock(), queue=QUEUE)


def events(trace: list[Hop], address: str = RCPT) -> list[str]:
    return [hop.event for hop in trace if hop.address == address]


def outcomes(trace: list[Hop], address: str = RCPT) -> list[str]:
    return [event for event in events(trace, address) if event in OUTCOMES]


def in_order(found: list[str], *wanted: str) -> bool:
    """Does `found` hold `wanted` in this order (other events between)?"""
    rest = iter(found)
    return all(event in rest for event in wanted)


async def delivered(h: Harness, qid: str, *addresses: str) -> list[Hop]:
    """The trace once every address's latest outcome is "delivered"."""
    await h.until(lambda: _delivered(h, qid, addresses or (RCPT,)),
                  f"{addresses or RCPT} delivered", timeout=SETTLE)
    trace: list[Hop] = await h.store.hops(qid)
    return trace


async def _delivered(h: Harness, qid: str, addresses: tuple[str, ...]) -> bool:
    trace = await h.store.hops(qid)
    return all(outcomes(trace, a)[-1:] == ["delivered"] for a in addresses)


async def state_of(h: Harness, qid: str) -> set[str]:
    """The states of the message's recipients not yet final (empty: none left)."""
    return {entry.state for entry in await h.store.queue() if entry.message_id == qid}


@contextlib.asynccontextmanager
async def held(host: ScriptedHost, stage: str) -> AsyncIterator[None]:
    """The host holds its sessions at `stage` (before their reply there) until
    the block ends, or `host.go(stage)` inside it."""
    host.hold_at(stage)
    try:
        yield
    finally:
        host.go(stage)


def cli(h: Harness, *args: str) -> subprocess.CompletedProcess[bytes]:
    """A gatepost command, as a user runs it, on the harness's topology and store."""
    return gatepost(h.config, *args)


def said(result: subprocess.CompletedProcess[bytes]) -> str:
    return (result.stdout + result.stderr).decode()


class StoreLock:
    """Another connection holding the store's write lock: to the send side,
    the store is unreachable (no renewal, no outcome) while it is held."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(str(path), timeout=30, isolation_level=None,
                                    check_same_thread=False)
        self.conn.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


# ---- a host slower than a lease --------------------------------------------------------


def test_a_host_answering_the_dot_after_three_leases_gets_one_copy(
    tmp_path: Path, host: ScriptedHost
) -> None:
    host.script.pause["dot"] = SLOW

    async def main() -> list[Hop]:
        async with harness(tmp_path, smarthost(host)) as h:
            qid = await h.submit(ALICE, [RCPT], subject="slow dot")
            await delivered(h, qid)
            await asyncio.sleep(2 * LEASE + 1)  # room for a second copy, were one coming
            trace: list[Hop] = await h.store.hops(qid)
            return trace

    trace = asyncio.run(main())
    assert host.copies("slow dot") == 1, host.history
    assert host.reached["MAIL"] == 1 and host.dots == 1, host.history  # one attempt only
    assert host.peak_transacting == 1
    assert outcomes(trace) == ["delivered"], events(trace)


def test_a_store_unreachable_after_the_dot_frees_nothing_for_a_second_attempt(
    tmp_path: Path, host: ScriptedHost
) -> None:
    """The lease was extended past the final-reply timeout before the dot: renewals
    that fail while the host takes its time cost nothing, and no one takes over."""

    async def main() -> tuple[int, list[Hop]]:
        async with harness(tmp_path, smarthost(host)) as h:
            async with held(host, "dot"):  # the dot is sent; the host holds its reply
                qid = await h.submit(ALICE, [RCPT], subject="extended")
                await host.wait_reached("dot")
                lock = await asyncio.to_thread(StoreLock, h.path)
                try:
                    await asyncio.sleep(3 * LEASE)  # no renewal gets through
                finally:
                    await asyncio.to_thread(lock.release)
                await asyncio.sleep(2 * LEASE + 1)  # another worker would take it by now
                mails = host.reached["MAIL"]
            trace = await delivered(h, qid)
            await asyncio.sleep(2 * LEASE + 1)
            return mails, trace

    mails, trace = asyncio.run(main())
    assert mails == 1, host.history
    assert host.copies("extended") == 1 and host.dots == 1, host.history
    assert outcomes(trace) == ["delivered"], events(trace)


def test_with_the_store_unreachable_before_the_dot_the_dot_is_never_sent(
    tmp_path: Path, host: ScriptedHost
) -> None:
    locked_for = 4 * LEASE  # far beyond any lease the attempt could still hold

    async def main() -> tuple[int, list[str], list[Hop]]:
        async with harness(tmp_path, smarthost(host)) as h:
            async with held(host, "DATA"):  # the client waits for its 354
                qid = await h.submit(ALICE, [RCPT], subject="unreachable")
                await host.wait_reached("DATA")
                lock = await asyncio.to_thread(StoreLock, h.path)
            try:  # the 354 goes out now: the client's next step is its final dot
                await asyncio.sleep(locked_for)
                dots_while_locked, seen = host.dots, list(host.history)
            finally:
                await asyncio.to_thread(lock.release)
            await delivered(h, qid)  # retried once the store answers again
            await asyncio.sleep(2 * LEASE + 1)
            return dots_while_locked, seen, await h.store.hops(qid)

    dots_while_locked, seen, trace = asyncio.run(main())
    assert dots_while_locked == 0, seen  # no dot while the lease could not be extended
    assert host.history[:3] == ["MAIL", "354", "no dot"], host.history  # nor once it could
    assert host.without_dot == 1
    assert host.copies("unreachable") == 1, host.history
    assert outcomes(trace)[-1:] == ["delivered"] and outcomes(trace).count("delivered") == 1


def test_mx_delivery_with_two_slow_domains_in_one_claim_gives_each_one_copy(
    tmp_path: Path,
) -> None:
    one = ScriptedHost(Script(pause={"dot": SLOW}), bind="127.0.0.2").start()
    two = ScriptedHost(Script(pause={"dot": SLOW}), bind="127.0.0.3")
    two.port = one.port  # each domain's MX host, on its own address, at `mx_port`
    dns = DnsServer({"d1.example": [(10, "mx.d1.example")], "d2.example": [(10, "mx.d2.example")]},
                    {"mx.d1.example": ["127.0.0.2"], "mx.d2.example": ["127.0.0.3"]})
    gateway = (f'smarthost = "mx"\nresolver = "127.0.0.1:{dns.port}"\n'
               f'mx_port = {one.port}\ntls = "none"')
    d1, d2 = "u@d1.example", "u@d2.example"

    async def main() -> list[Hop]:
        async with harness(tmp_path, gateway) as h:
            qid = await h.submit(ALICE, [d1, d2], subject="two slow")
            await delivered(h, qid, d1, d2)
            await asyncio.sleep(2 * LEASE + 1)
            trace: list[Hop] = await h.store.hops(qid)
            return trace

    try:
        two.start()
        trace = asyncio.run(main())
    finally:
        for closing in (one.close, two.close, dns.close):
            closing()
    for address, mx in ((d1, one), (d2, two)):
        assert mx.copies("two slow") == 1, (address, mx.history)
        assert mx.reached["MAIL"] == 1 and mx.dots == 1, (address, mx.history)
        assert outcomes(trace, address) == ["delivered"], events(trace, address)


def test_mx_with_the_store_unreachable_during_the_first_domain_the_second_gets_one_copy(
    tmp_path: Path,
) -> None:
    """While the first domain's host holds its reply to the dot, the store is
    unreachable for longer than a lease: the second domain's lease may run out
    and another attempt take it, but its host still gets one copy, not two."""
    one = ScriptedHost(Script(pause={"dot": LEASE}), bind="127.0.0.2").start()
    two = ScriptedHost(Script(pause={"dot": LEASE}), bind="127.0.0.3")
    two.port = one.port
    dns = DnsServer({"d1.example": [(10, "mx.d1.example")], "d2.example": [(10, "mx.d2.example")]},
                    {"mx.d1.example": ["127.0.0.2"], "mx.d2.example": ["127.0.0.3"]})
    gateway = (f'smarthost = "mx"\nresolver = "127.0.0.1:{dns.port}"\n'
               f'mx_port = {one.port}\ntls = "none"')
    d1, d2 = "u@d1.example", "u@d2.example"

    async def main() -> list[Hop]:
        async with harness(tmp_path, gateway) as h:
            async with held(one, "dot"):
                qid = await h.submit(ALICE, [d1, d2], subject="split")
                await one.wait_reached("dot")
                lock = await asyncio.to_thread(StoreLock, h.path)
                try:
                    await asyncio.sleep(3 * LEASE)
                finally:
                    await asyncio.to_thread(lock.release)
                await asyncio.sleep(2 * LEASE + 1)  # time for another attempt at d2
            await delivered(h, qid, d1, d2)
            await asyncio.sleep(2 * LEASE + 1)
            trace: list[Hop] = await h.store.hops(qid)
            return trace

    try:
        two.start()
        trace = asyncio.run(main())
    finally:
        for closing in (one.close, two.close, dns.close):
            closing()
    assert one.copies("split") == 1 and one.dots == 1, one.history
    assert two.copies("split") == 1 and two.dots == 1, two.history
    for address in (d1, d2):
        assert outcomes(trace, address).count("delivered") == 1, events(trace, address)


# ---- queue commands on a message in delivery --------------------------------------------


def test_hold_before_the_dot_cancels_the_attempt_and_the_message_is_held(
    tmp_path: Path, host: ScriptedHost
) -> None:
    async def main() -> tuple[subprocess.CompletedProcess[bytes], set[str], list[Hop]]:
        async with harness(tmp_path, smarthost(host)) as h:
            async with held(host, "DATA"):  # the client waits for its 354
                qid = await h.submit(ALICE, [RCPT], subject="held")
                await host.wait_reached("DATA")
                result = await asyncio.to_thread(cli, h, "hold", qid)
            await h.until(lambda: _held(h, qid), "the message on hold", timeout=SETTLE)
            await asyncio.sleep(2 * LEASE + 1)  # a held message is not attempted again
            return result, await state_of(h, qid), await h.store.hops(qid)

    result, states, trace = asyncio.run(main())
    assert result.returncode == 0, said(result)
    assert said(result).startswith("hold: 0 changed, 1 after its current attempt"), said(result)
    assert host.dots == 0 and host.copies("held") == 0, host.history
    assert host.history == ["MAIL", "354", "no dot"], host.history
    assert states == {"hold"}
    assert in_order(events(trace), "hold requested", "hold"), events(trace)
    assert not outcomes(trace), events(trace)


async def _held(h: Harness, qid: str) -> bool:
    return await state_of(h, qid) == {"hold"}


def test_delete_before_the_dot_cancels_the_attempt_and_the_message_is_gone(
    tmp_path: Path, host: ScriptedHost
) -> None:
    async def main() -> tuple[Changes, list[Hop]]:
        async with harness(tmp_path, smarthost(host)) as h:
            async with held(host, "DATA"):
                qid = await h.submit(ALICE, [RCPT], subject="deleted")
                await host.wait_reached("DATA")
                changes = await h.store.set_state([qid], "delete")
            await h.until(lambda: _gone(h, qid), "the message gone", timeout=SETTLE)
            await asyncio.sleep(2 * LEASE + 1)
            assert await _gone(h, qid)
            return changes, await h.store.hops(qid)

    changes, trace = asyncio.run(main())
    assert changes == Changes(now=0, later=1)
    assert host.dots == 0 and host.copies("deleted") == 0, host.history
    assert host.history == ["MAIL", "354", "no dot"], host.history
    assert not outcomes(trace), events(trace)
    if trace:  # what is left of the trace says what happened
        assert in_order(events(trace), "delete requested", "delete"), events(trace)


async def _gone(h: Harness, qid: str) -> bool:
    return not await state_of(h, qid)


def test_hold_after_the_dot_is_dropped_when_the_message_is_delivered(
    tmp_path: Path, host: ScriptedHost
) -> None:
    async def main() -> tuple[Changes, set[str], list[Hop]]:
        async with harness(tmp_path, smarthost(host)) as h:
            async with held(host, "dot"):  # the dot is sent; the host holds its reply
                qid = await h.submit(ALICE, [RCPT], subject="too late")
                await host.wait_reached("dot")
                changes = await h.store.set_state([qid], "hold")
            trace = await delivered(h, qid)
            await asyncio.sleep(2 * LEASE + 1)
            return changes, await state_of(h, qid), trace

    changes, states, trace = asyncio.run(main())
    assert changes == Changes(now=0, later=1)
    assert host.copies("too late") == 1 and host.dots == 1, host.history
    assert not states  # nothing left on hold
    assert outcomes(trace) == ["delivered"], events(trace)
    assert in_order(events(trace), "hold requested", "delivered", "hold dropped"), events(trace)
    assert "hold" not in events(trace)


def test_requeue_waits_for_the_attempt_then_the_router_takes_the_message_again(
    tmp_path: Path, host: ScriptedHost
) -> None:
    host.script.dot_replies = ["451 4.3.0 try again later"]  # the first attempt only

    async def main() -> tuple[subprocess.CompletedProcess[bytes], int, int, list[Hop]]:
        async with harness(tmp_path, smarthost(host)) as h:
            async with held(host, "dot"):
                qid = await h.submit(ALICE, [RCPT], subject="requeued")
                await host.wait_reached("dot")
                result = await asyncio.to_thread(cli, h, "requeue", qid)
                await asyncio.sleep(2 * LEASE + 1)  # a second worker would start by now
                mails, peak = host.reached["MAIL"], host.peak_transacting
            trace = await delivered(h, qid)  # 451, back to the router, then sent again
            return result, mails, peak, trace

    result, mails, peak, trace = asyncio.run(main())
    assert result.returncode == 0, said(result)
    assert said(result).startswith("requeue: 0 changed, 1 after its current attempt"), said(result)
    assert mails == 1 and peak == 1, host.history  # nothing else ran during the attempt
    assert host.peak_transacting == 1, host.history
    assert in_order(events(trace), "requeue requested", "deferred", "requeue", "delivered"), \
        events(trace)
    assert outcomes(trace) == ["deferred", "delivered"], events(trace)
    assert host.copies("requeued") == 1 and host.dots == 2, host.history


def test_a_queue_command_naming_no_message_changes_nothing_and_says_so(tmp_path: Path) -> None:
    h = Harness(tmp_path, 'smarthost = "127.0.0.1:25"', queue=QUEUE)
    result = cli(h, "hold", "NO-SUCH-ID")
    assert result.returncode == 1, said(result)
    assert "0 changed" in said(result)
    asyncio.run(h.store.aclose())
