"""The router and a send side depend on the store interface only: the same
components, unchanged, move mail through the in-memory fake (MemoryStore) to a
real smart host on loopback, and keep the lease rules there too."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gatepost.router import Router
from gatepost.send import SendSide
from gatepost.store import NewMessage, NewRecipient
from gatepost.store.memory import MemoryStore
from gatepost.topology import load
from scripted import ALICE, TOPOLOGY, Script, ScriptedHost

RCPT = "r@example.org"


def topology(tmp_path: Path, host: ScriptedHost, queue: str = "") -> Path:
    config = tmp_path / "gatepost.toml"
    gateway = f'smarthost = "{host.address}"\ntls = "none"'
    config.write_text(TOPOLOGY.format(gateway=gateway, delivery="") + queue)
    return config


async def run_until(store: MemoryStore, config: Path, queue_id: str, seconds: float) -> list[str]:
    """Run the router and GW1's send side on `store` until `queue_id` is final
    (or `seconds` pass); the trace events of its recipient."""
    topo = load(config)
    stop = asyncio.Event()
    send = SendSide(topo, topo.gateways["GW1"], store)
    router = Router(topo, store, wake_send=lambda gateway: send.wake())
    running = [asyncio.ensure_future(router.run(stop)), asyncio.ensure_future(send.run(stop))]
    try:
        async with asyncio.timeout(seconds):
            while not {h.event for h in await store.hops(queue_id)} & {"delivered", "bounced"}:
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*running)
    return [hop.event for hop in await store.hops(queue_id)]


def message(subject: str) -> NewMessage:
    content = f"From: {ALICE}\r\nSubject: {subject}\r\n\r\nhi\r\n".encode()
    return NewMessage(ALICE, (NewRecipient(RCPT, None),), content, "HQ", "HQ", "test")


def test_router_and_send_side_deliver_through_the_fake(tmp_path: Path, host: ScriptedHost) -> None:
    async def main() -> list[str]:
        store = MemoryStore()
        queue_id = await store.enqueue(message("on the fake"))
        return await run_until(store, topology(tmp_path, host), queue_id, 60)

    events = asyncio.run(main())
    assert events == ["received", "moved", "delivered"], events
    assert host.copies("on the fake") == 1


def test_a_host_slower_than_the_lease_gets_one_copy_on_the_fake(tmp_path: Path) -> None:
    host = ScriptedHost(Script(pause={"dot": 3.0})).start()  # the dot's reply after 1.5 leases
    try:
        async def main() -> list[str]:
            store = MemoryStore()
            queue_id = await store.enqueue(message("slow on the fake"))
            config = topology(tmp_path, host, '\n[queue]\nlease = "2s"\n')
            events = await run_until(store, config, queue_id, 60)
            return events

        events = asyncio.run(main())
    finally:
        host.close()
    assert events.count("delivered") == 1 and "deferred" not in events, events
    assert host.copies("slow on the fake") == 1 and host.dots == 1
