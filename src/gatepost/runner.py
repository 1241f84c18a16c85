"""`gatepost run`: starts the roles of a topology in one asyncio process.

Roles: "router", "gateway:NAME" (its receive and/or send side, as its role
says) and "capture". Every role talks to the others only through the store;
in-process wake-ups are hints, the periodic scans guarantee progress.
SIGTERM and SIGINT stop accepting, finish what is in flight, and return; the
`gatepost run` process ignores them outside `serve` (`ignore_stop_signals`): the
stop may be signalled twice (to the whole process group, and by the supervisor)
while the process is on its way out, and must not kill it then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from gatepost.network import network_store
from gatepost.receive import ReceiveSide
from gatepost.receive.capture import Capture
from gatepost.router import Router
from gatepost.send import SendSide
from gatepost.send.credentials import MissingSecret
from gatepost.store import Store, StoreDamaged, leases
from gatepost.supervisor import STOP_SIGNALS
from gatepost.topology import Topology

log = logging.getLogger("gatepost.run")


def all_roles(topo: Topology) -> list[str]:
    roles = ["router", *(f"gateway:{name}" for name in topo.gateways)]
    return roles + (["capture"] if topo.capture else [])


def side_roles(topo: Topology) -> list[str]:
    """Each side of each gateway as a role of its own: "gateway:GW1:receive"."""
    return [
        f"gateway:{name}:{side}"
        for name, gw in topo.gateways.items()
        for side, used in (("receive", gw.receives), ("send", gw.sends))
        if used
    ]


def process_roles(topo: Topology) -> list[str]:
    """The roles `run` gives a process each: the router, capture, and every gateway
    side, so that receiving, routing and sending use all the cores."""
    return ["router", *side_roles(topo), *(["capture"] if topo.capture else [])]


def parse_roles(topo: Topology, text: str | None) -> list[str]:
    """The roles named by --only (comma-separated), or all of them."""
    known = all_roles(topo)
    if not text:
        return known
    roles = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in roles if r not in known and r not in side_roles(topo)]
    if unknown:
        raise ValueError(f"unknown role {', '.join(unknown)}; this topology has: {', '.join(known)}"
                         f" (or one side of a gateway: {', '.join(side_roles(topo))})")
    return roles


def runs_side(roles: list[str], gateway: str, side: str) -> bool:
    return f"gateway:{gateway}" in roles or f"gateway:{gateway}:{side}" in roles


@dataclass
class Running:
    """What one process runs: servers to close and loops to await."""

    stoppers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    loops: list[Awaitable[None]] = field(default_factory=list)
    listening: list[str] = field(default_factory=list)


class StartError(Exception):
    """A role could not start; the message names the topology key."""


async def listening(opening: Awaitable[object], what: str) -> None:
    try:
        await opening
    except OSError as error:
        raise StartError(f"{what}: cannot listen: {error.strerror or error}") from error


async def start(topo: Topology, roles: list[str], store: Store, stop: asyncio.Event) -> Running:
    running = Running()
    senders = {
        name: SendSide(topo, gw, store)
        for name, gw in topo.gateways.items()
        if gw.sends and runs_side(roles, name, "send")
    }
    router = Router(topo, store, wake_send=lambda g: senders[g].wake() if g in senders else None)
    if "router" in roles:
        running.loops.append(router.run(stop))
    if "capture" in roles and topo.capture:
        capture = Capture(topo.capture.listen.host, topo.capture.listen.port, topo.capture.dir)
        await listening(capture.start(), f"capture.listen {topo.capture.listen}")
        running.stoppers.append(capture.stop)
        running.listening.append(f"capture smart host on {topo.capture.listen}")
    for name, gw in topo.gateways.items():
        if gw.receives and runs_side(roles, name, "receive"):
            receive = ReceiveSide(topo, gw, store, wake_router=router.wake)
            await listening(receive.start(), f"gateways.{name}.listen {gw.listen}")
            running.stoppers.append(receive.stop)
            # not for failover (the router counts send sides): so that `store copy`
            # and operators can tell that a receive side still accepts mail
            beating = leases.owner(f"receive:{name}")
            running.loops.append(leases.beat(store, f"receive:{name}", beating,
                                             topo.queue.heartbeat, stop))
            running.listening.append(f"gateway {name} receive side on {receive.address}")
    for side in senders.values():
        await side.alive()  # before `ready`, so the router counts on it at once
        running.loops.append(side.run(stop))
    return running


async def opening(store: Store, url: str) -> None:
    """Open the store and read its schema version, waiting while other processes
    hold it; the whole-file check is `gatepost check --store`'s, not every start's."""
    try:
        await store.version()
    except StoreDamaged as error:
        raise StartError(f"network.store {url}: damaged ({error}); move it aside"
                         " (gatepost check --store tells more)") from error
    except Exception as error:
        raise StartError(f"network.store {url}: cannot open: {error}") from error


@contextlib.contextmanager
def stop_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set `stop` inside the block; then what was there before
    is put back. Plain signal handlers, not the loop's: closing the loop would
    put the default (fatal) action back, whatever the process wanted."""
    loop = asyncio.get_running_loop()

    def handler(signum: int, frame: object) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)

    before = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, previous in before.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)


async def serve(topo: Topology, roles: list[str], announce: Callable[[list[str]], None]) -> None:
    stop = asyncio.Event()
    with stop_signals(stop):
        await serve_roles(topo, roles, announce, stop)


async def serve_roles(
    topo: Topology, roles: list[str], announce: Callable[[list[str]], None], stop: asyncio.Event
) -> None:
    try:
        store = network_store(topo)
    except MissingSecret as error:
        raise StartError(f"network.store: {error}") from error
    try:
        await opening(store, topo.store)
        running = await start(topo, roles, store, stop)
        announce(running.listening)
        tasks = [asyncio.ensure_future(job) for job in running.loops]
        failed = await first_failure(tasks, stop)
        stop.set()
        log.info("stopping: no new connections, finishing what is in flight")
        for stopper in running.stoppers:
            await stopper()
        await asyncio.gather(*tasks, return_exceptions=True)
        if failed is not None:
            raise failed  # exit non-zero: the supervisor starts the role again
    finally:
        with contextlib.suppress(Exception):
            await store.aclose()


async def first_failure(
    tasks: list[asyncio.Task[None]], stop: asyncio.Event
) -> BaseException | None:
    """Wait for a stop, or for a loop to end by itself (a bug or a broken store):
    then the process must not go on half alive."""
    stopped = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    errors = [task.exception() for task in tasks if task in done]
    failed = [error for error in errors if error is not None]
    if stop.is_set() and not failed:
        return None  # a loop that saw the stop first may end with it: that is no failure
    error = failed[0] if failed else RuntimeError("a loop ended by itself")
    log.error("stopping: a worker loop failed: %r", error)
    return error


def run(topo: Topology, roles: list[str], announce: Callable[[list[str]], None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; fall back if absent
        asyncio.run(serve(topo, roles, announce))
    else:
        uvloop.run(serve(topo, roles, announce))
