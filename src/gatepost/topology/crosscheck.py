"""Checks of a topology that need all of it: mailbox clashes, gateway roles and
postoffices, listen-address clashes, smart hosts that are a listen address of
the topology (mail loops), which postoffices are served, and whether mail can
reach where it must. Pure: reads the loaded model, reports findings; it
resolves no host name and knows no address of the machine beyond loopback.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from gatepost.topology.model import Gateway, HostPort, Problem, Topology
from gatepost.topology.routes import NoRoute, path


@dataclass
class Findings:
    """Errors and warnings found in one file, each with its key path."""

    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def error(self, key: str, message: str) -> None:
        self.errors.append(Problem(key, message))

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(Problem(key, message))

    def error_once(self, key: str, message: str) -> None:
        """An error, unless `key` already has one (a bad value is not also missing)."""
        if all(p.key != key for p in self.errors):
            self.error(key, message)

class Crosscheck:
    """Checks that need the whole topology: reachability, clashes, coverage."""

    def __init__(self, topo: Topology, findings: Findings) -> None:
        self.topo = topo
        self.f = findings

    def run(self) -> None:
        self._mailbox_clashes()
        self._postoffice_warnings()
        self._gateway_roles()
        self._shared_gateway_postoffices()
        self._listen_clashes()
        self._smarthost_loops()
        self._coverage()
        self._inbound_reach()

    def _mailbox_clashes(self) -> None:
        if not self.topo.domains:
            return
        owner: dict[str, str] = {}
        for po in self.topo.postoffices.values():
            for index, mailbox in enumerate(po.mailboxes):
                if mailbox != "postmaster" and mailbox in owner:
                    self.f.error(
                        f"postoffices.{po.name}.mailboxes[{index}]",
                        f"mailbox {mailbox} also exists in postoffice {owner[mailbox]}: "
                        f"ambiguous under network domain {self.topo.domains[0]}",
                    )
                owner.setdefault(mailbox, po.name)

    def _postoffice_warnings(self) -> None:
        for po in self.topo.postoffices.values():
            key = f"postoffices.{po.name}"
            if not po.domains and not self.topo.domains:
                self.f.warn(
                    f"{key}.domains", "no domain here or on the network: SMTP cannot reach it"
                )
            if "postmaster" not in po.mailboxes:
                self.f.warn(f"{key}.mailboxes", "no postmaster mailbox (bounces to <> map to it)")

    def _gateway_roles(self) -> None:
        for gw in self.topo.gateways.values():
            key = f"gateways.{gw.name}"
            if gw.sends and gw.smarthost is None and not gw.mx:
                self.f.error_once(
                    f"{key}.smarthost",
                    f"a {gw.role} gateway needs a smarthost (host:port), smarthosts (a list), "
                    'or smarthost = "mx" to deliver to the recipient domains\' MX hosts',
                )
            if gw.receives and gw.listen is None:
                self.f.error_once(f"{key}.listen", f"a {gw.role} gateway needs a listen address")
            if not gw.sends and gw.smarthost is not None:
                self.f.warn(f"{key}.smarthost", "ignored: a receive gateway does not send")
            if not gw.receives and gw.listen is not None:
                self.f.warn(f"{key}.listen", "ignored: a send gateway does not receive")
            if not gw.sends and gw.serves:
                self.f.warn(f"{key}.serves", "ignored: a receive gateway carries no outbound mail")

    def _shared_gateway_postoffices(self) -> None:
        first: dict[str, str] = {}
        for gw in self.topo.gateways.values():
            if gw.postoffice in first:
                self.f.warn(
                    f"gateways.{gw.name}.postoffice",
                    f"postoffice {gw.postoffice} already hosts gateway {first[gw.postoffice]}; "
                    "give each gateway its own gateway postoffice",
                )
            first.setdefault(gw.postoffice, gw.name)

    def _listen_clashes(self) -> None:
        taken: dict[HostPort, str] = {}
        for gw in self.topo.gateways.values():
            if gw.receives and gw.listen is not None:
                self._claim(taken, gw.listen, f"gateways.{gw.name}.listen")
        if self.topo.capture is not None:
            self._claim(taken, self.topo.capture.listen, "capture.listen")

    def _claim(self, taken: dict[HostPort, str], address: HostPort, key: str) -> None:
        if address.port == 0:
            return
        for other, owner in taken.items():
            if _same_socket(address, other):
                self.f.error(key, f"listen address {address} is already used by {owner}")
                break
        taken.setdefault(address, key)

    def _smarthost_loops(self) -> None:
        """A smart host that is a receiving gateway's listen address hands mail
        straight back: it would loop until the hop limit ends it."""
        listens = [
            (gw.listen, f"gateways.{gw.name}")
            for gw in self.topo.gateways.values()
            if gw.receives and gw.listen is not None and gw.listen.port != 0
        ]
        for gw in self.topo.gateways.values():
            if not gw.sends:
                continue
            for key, host in _smarthost_keys(gw):
                owner = next((o for listen, o in listens if _reaches(host, listen)), None)
                if owner is not None:
                    mine = " (this gateway)" if owner == f"gateways.{gw.name}" else ""
                    self.f.error(key, f"{host} is the listen address of {owner}{mine}: "
                                 "a mail loop (mail sent there comes back)")

    def _coverage(self) -> None:
        served: set[str] = set()
        for gw in self.topo.gateways.values():
            if not gw.sends:
                continue
            for index, po in enumerate(gw.serves):
                served.add(po)
                if not _reachable(self.topo, po, gw.postoffice):
                    self.f.warn(
                        f"gateways.{gw.name}.serves[{index}]",
                        f"no route over links from {po} to gateway postoffice {gw.postoffice}:"
                        " its outbound mail would bounce (the old design advised against it)",
                    )
        for name in self.topo.postoffices:
            if name not in served:
                self.f.error(f"postoffices.{name}", "no sending gateway serves it")

    def _inbound_reach(self) -> None:
        for gw in self.topo.gateways.values():
            if not gw.receives:
                continue
            for name in self.topo.postoffices:
                if not _reachable(self.topo, gw.postoffice, name):
                    self.f.warn(
                        f"gateways.{gw.name}.postoffice",
                        f"no route over links from {gw.postoffice} to {name}: "
                        "mail received here could not be delivered",
                    )


def _same_socket(a: HostPort, b: HostPort) -> bool:
    """Would binding both fail? Same port and same host, or either is a wildcard."""
    hosts = {"localhost": "127.0.0.1"}
    a_host, b_host = hosts.get(a.host, a.host), hosts.get(b.host, b.host)
    wildcard = {"0.0.0.0", "::"}
    return a.port == b.port and (a_host == b_host or bool({a_host, b_host} & wildcard))


def _smarthost_keys(gw: Gateway) -> list[tuple[str, HostPort]]:
    """Each smart host with its key: `smarthost` for one, `smarthosts[i]` for several."""
    key = f"gateways.{gw.name}"
    if len(gw.smarthosts) == 1:
        return [(f"{key}.smarthost", gw.smarthosts[0])]
    return [(f"{key}.smarthosts[{i}]", host) for i, host in enumerate(gw.smarthosts)]


def _reaches(target: HostPort, listen: HostPort) -> bool:
    """Would connecting to `target` reach a server listening on `listen`? Same
    port, and: the same host; "localhost" and a loopback address; or a wildcard
    (0.0.0.0, ::) and a loopback address or wildcard (a wildcard listen address
    takes connections to loopback; a connection to a wildcard goes to loopback).
    Other addresses of the machine and other host names are not known here."""
    if target.port != listen.port:
        return False
    if target.host == listen.host:
        return True
    kinds = {_kind(target.host), _kind(listen.host)}
    if kinds == {"loopback"}:
        return "localhost" in (target.host, listen.host)
    return "wildcard" in kinds and "other" not in kinds


def _kind(host: str) -> str:
    """"loopback" (localhost, 127/8, ::1), "wildcard" (0.0.0.0, ::), or "other"."""
    if host == "localhost":
        return "loopback"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "other"
    if address.is_unspecified:
        return "wildcard"
    return "loopback" if address.is_loopback else "other"


def _reachable(topo: Topology, src: str, dst: str) -> bool:
    try:
        path(topo, src, dst)
    except NoRoute:
        return False
    return True
