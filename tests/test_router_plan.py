"""The router's plan for one recipient, and a worker loop that fails."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from gatepost.router import plan
from gatepost.runner import first_failure
from gatepost.store import ROUTER, Bounced, Delivered, Job, Moved, send_queue
from gatepost.topology import load

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "single-gateway.toml"


def job(location: str, mailbox: str | None, origin: str = "SALES") -> Job:
    return Job("Q1", 0, "carol@sales.acme.example", "x@example.org", mailbox, location, origin,
               ROUTER, 0, 0.0, None, 10)


def test_a_local_recipient_moves_hop_by_hop_then_is_delivered() -> None:
    topo = load(EXAMPLE)
    steps = plan(topo, job("SALES", "ENG/erin"), lambda gateway: True)
    assert [type(s) for s in steps] == [Moved, Moved, Delivered]
    assert [s.to for s in steps if isinstance(s, Moved)] == ["HQ", "ENG"]


def test_a_foreign_recipient_ends_in_its_gateways_send_queue() -> None:
    topo = load(EXAMPLE)
    steps = plan(topo, job("SALES", None), lambda gateway: True)
    assert [(s.to, s.queue) for s in steps if isinstance(s, Moved)] == [("HQ", send_queue("GW1"))]


def test_an_origin_no_gateway_serves_any_more_bounces_instead_of_stopping_the_router() -> None:
    topo = load(EXAMPLE)
    gateway = dataclasses.replace(topo.gateways["GW1"], serves=("HQ",))
    changed = dataclasses.replace(topo, gateways={"GW1": gateway})
    [step] = plan(changed, job("SALES", None, origin="SALES"), lambda gateway: True)
    assert isinstance(step, Bounced) and step.reply.startswith("554 5.4.4")


def test_a_failed_loop_is_reported_and_a_stop_is_not() -> None:
    async def failing() -> None:
        raise OSError("disk gone")

    async def forever() -> None:
        await asyncio.sleep(3600)

    async def main() -> tuple[BaseException | None, BaseException | None]:
        stop = asyncio.Event()
        failed = await first_failure([asyncio.ensure_future(failing())], stop)
        stop.set()
        quiet = asyncio.ensure_future(forever())
        stopped = await first_failure([quiet], stop)
        quiet.cancel()
        return failed, stopped

    failed, stopped = asyncio.run(main())
    assert isinstance(failed, OSError) and stopped is None
