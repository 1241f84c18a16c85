"""The topology as loaded: postoffices, links, gateways, capture sink.

Pure data, validated by `topology.load`; nothing here reads files.
Postoffice and mailbox names keep the case written in the file; lookups
of mailboxes and domains are case-insensitive (stored lower-case).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Role = Literal["both", "send", "receive"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def valid_domain(text: str) -> bool:
    """RFC 1035 host name syntax (letters, digits, hyphens; labels up to 63)."""
    if not text or len(text) > 253:
        return False
    return all(LABEL.fullmatch(label) for label in text.lower().split("."))


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> HostPort:
        """Parse "127.0.0.1:25", "localhost:25", "[::1]:25"; ValueError otherwise."""
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError("expected host:port")
        if host.startswith("[") and host.endswith("]"):
            host = str(ipaddress.IPv6Address(host[1:-1]))
        elif not (_is_ipv4(host) or _is_hostname(host)):
            raise ValueError(f"bad host {host!r}")
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ValueError(f"bad port {port_text!r} (0-65535)")
        return cls(host.lower(), int(port_text))


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _is_hostname(text: str) -> bool:
    return valid_domain(text) and not text.replace(".", "").isdigit()


@dataclass(frozen=True, slots=True)
class Postoffice:
    name: str
    domains: tuple[str, ...]  # lower-case; the first is written on outbound mail
    mailboxes: tuple[str, ...]  # lower-case
    links: tuple[str, ...]  # both directions, already made symmetric by the loader


TlsMode = Literal["none", "opportunistic", "required"]
SmarthostPolicy = Literal["failover", "spread"]


@dataclass(frozen=True, slots=True)
class DkimKey:
    """Sign outbound mail whose From domain is `domain` with this key."""

    domain: str
    selector: str
    key_file: Path  # absolute


@dataclass(frozen=True, slots=True)
class Gateway:
    name: str
    postoffice: str
    role: Role
    listen: HostPort | None
    smarthost: HostPort | None  # the first of `smarthosts`, when there are any
    serves: tuple[str, ...]
    relay_from: tuple[IPNetwork, ...]
    # send side
    smarthosts: tuple[HostPort, ...] = ()  # in order; empty with `mx`: deliver to MX hosts
    mx: bool = False  # `smarthost = "mx"`: deliver to the recipient domains' MX hosts
    smarthost_policy: SmarthostPolicy = "failover"
    tls: TlsMode = "opportunistic"  # STARTTLS toward the smart host
    tls_ca: Path | None = None  # CA file to verify the smart host; default: system CAs
    tls_verify: bool = True  # verify the host's certificate and name (default: not for MX)
    auth_user: str | None = None
    auth_password_env: str | None = None  # name of the environment variable
    auth_password_file: Path | None = None
    max_sessions: int = 8  # concurrent sessions per smart host
    max_per_session: int = 100  # messages per session before it is renewed
    rate: float | None = None  # messages per second toward the smart host, at most
    resolver: HostPort | None = None  # DNS server for MX lookups; default: the system's
    mx_port: int = 25  # port of the MX hosts (tests point it elsewhere)
    dkim: tuple[DkimKey, ...] = ()
    # receive side
    tls_cert: Path | None = None  # certificate chain for STARTTLS
    tls_key: Path | None = None

    @property
    def sends(self) -> bool:
        return self.role in ("both", "send")

    @property
    def receives(self) -> bool:
        return self.role in ("both", "receive")


@dataclass(frozen=True, slots=True)
class Capture:
    listen: HostPort
    dir: Path  # absolute


@dataclass(frozen=True, slots=True)
class Delivery:
    """Retry and notification timing, and how long finished mail and its
    trace are kept ([delivery]), in seconds."""

    retry_min: float = 60.0
    retry_max: float = 3600.0
    warn_after: float = 4 * 3600.0  # delay notification to the sender
    lifetime: float = 5 * 24 * 3600.0  # bounce what is still undelivered
    final_retention: float = 7 * 24 * 3600.0  # delivered and bounced mail stays listed
    trace_retention: float = 30 * 24 * 3600.0  # `gatepost trace` history of each recipient


@dataclass(frozen=True, slots=True)
class Limits:
    """Receive-side limits ([limits]); the hop limit holds inside the network too."""

    max_message_size: int = 35_000_000
    max_recipients: int = 1000
    idle_timeout: float = 300.0  # seconds a client may stay silent
    max_connections: int = 1000  # at once, all clients
    max_connections_per_client: int = 50  # at once, from one address
    command_timeout: float = 60.0  # from a command line's first byte to its end
    data_timeout: float = 120.0  # DATA may take this long for any message...
    data_rate: int = 1024  # ...plus one second per this many bytes received
    greet_wait: float = 0.0  # pause before the greeting; a client talking first gets 554
    hopcount_limit: int = 50  # Received + Delivered-To fields at which mail is refused (a loop)


@dataclass(frozen=True, slots=True)
class QueueTiming:
    """How long an attempt's lease lasts between renewals, and how gateways
    tell the router they run ([queue]), in seconds of the lease clock."""

    lease: float = 120.0  # renewed every third of it while the attempt runs
    heartbeat: float = 1.0  # a running send side says so this often
    failover_after: float = 5.0  # a send side silent this long counts as stopped

    @property
    def fence(self) -> float:
        """How long a send side goes on sending final dots on the store's last word
        (then it asks again, and sends none while the store is away): shorter than
        the time between its last heartbeat and another gateway taking its mail over."""
        return min(self.lease / 3, (self.failover_after - self.heartbeat) / 2)


@dataclass(frozen=True, slots=True)
class Topology:
    name: str
    domains: tuple[str, ...]  # org-wide domains, lower-case
    store: str  # "sqlite:/absolute/path.db" or "postgresql://user@host:port/dbname"
    postoffices: dict[str, Postoffice]  # in file order
    gateways: dict[str, Gateway]  # in file order
    capture: Capture | None
    source: Path  # the file it came from, absolute
    delivery: Delivery = Delivery()
    limits: Limits = Limits()
    queue: QueueTiming = QueueTiming()
    store_password_env: str | None = None  # the PostgreSQL password's variable, or
    store_password_file: Path | None = None  # its file (else libpq: PGPASSWORD, ~/.pgpass)


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding about a topology file: the key path and what is wrong."""

    key: str  # e.g. "gateways.GW1.serves[1]"
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class TopologyError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems
