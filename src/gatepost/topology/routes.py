"""Routes: the shortest path over External links, and which gateway carries what.

Pure functions over a loaded `Topology`: breadth-first search with
neighbours in file order, so every process computes the same path. Knows
nothing about queues, the store, or whether a gateway is up (callers pass
an `alive` predicate).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from gatepost.topology.addresses import Native, to_smtp
from gatepost.topology.model import Gateway, Topology


class NoRoute(Exception):
    """No path over links (or no gateway) gets the mail where it must go."""


def path(topo: Topology, src: str, dst: str) -> tuple[str, ...]:
    """Postoffices from `src` to `dst` inclusive, fewest hops, ties by file order."""
    for name in (src, dst):
        if name not in topo.postoffices:
            raise NoRoute(f"unknown postoffice {name!r}")
    previous: dict[str, str | None] = {src: None}
    queue = deque([src])
    while queue:
        current = queue.popleft()
        if current == dst:
            return _walk_back(previous, dst)
        for other in topo.postoffices[current].links:
            if other not in previous:
                previous[other] = current
                queue.append(other)
    raise NoRoute(f"no route over links from {src} to {dst}")


def _walk_back(previous: dict[str, str | None], dst: str) -> tuple[str, ...]:
    hops: list[str] = []
    node: str | None = dst
    while node is not None:
        hops.append(node)
        node = previous[node]
    return tuple(reversed(hops))


def sending_gateways(topo: Topology, postoffice: str) -> tuple[Gateway, ...]:
    """Gateways that send and serve `postoffice`, file order; the first is primary."""
    return tuple(g for g in topo.gateways.values() if g.sends and postoffice in g.serves)


def outbound_gateway(
    topo: Topology, postoffice: str, alive: Callable[[str], bool] = lambda g: True
) -> Gateway:
    """The first alive sending gateway serving `postoffice`, else its primary."""
    gateways = sending_gateways(topo, postoffice)
    if not gateways:
        raise NoRoute(f"no sending gateway serves postoffice {postoffice}")
    for gateway in gateways:
        if alive(gateway.name):
            return gateway
    return gateways[0]


def describe_route(topo: Topology, dst: Native | str, sender_po: str) -> list[str]:
    """Human lines for `gatepost route`: postoffice by postoffice, then the exit."""
    target = dst.postoffice if isinstance(dst, Native) else _exit_po(topo, sender_po)
    hops = path(topo, sender_po, target)
    lines = [f"from postoffice {sender_po}"]
    lines += [f"  over External link to postoffice {hop}" for hop in hops[1:]]
    if isinstance(dst, Native):
        lines.append(f"  deliver to mailbox {dst.key} ({_smtp_or_native(topo, dst)})")
        return lines
    return lines + _exit_lines(topo, sender_po, dst)


def _exit_po(topo: Topology, sender_po: str) -> str:
    return outbound_gateway(topo, sender_po).postoffice


def _exit_lines(topo: Topology, sender_po: str, recipient: str) -> list[str]:
    primary, *standby = sending_gateways(topo, sender_po)
    exit_line = (
        f"  out through gateway {primary.name} (postoffice {primary.postoffice}) "
        f"to smart host {primary.smarthost}"
    )
    lines = [exit_line, f"  SMTP recipient {recipient}"]
    if standby:
        names = ", ".join(f"{g.name} (postoffice {g.postoffice})" for g in standby)
        lines.append(f"  if {primary.name} is down: {names}")
    return lines


def _smtp_or_native(topo: Topology, n: Native) -> str:
    try:
        return to_smtp(topo, n)
    except ValueError:
        return f"{topo.name}/{n.key}"
