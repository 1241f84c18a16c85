"""Read a topology TOML file, validate it, and build a `Topology`.

Every problem is collected (never the first one only) as a `Problem` with
the key path it concerns; `check` returns errors and warnings, `load` raises
`TopologyError` when there is any error. Reading the one file is the only
I/O here: no sockets, no store, no knowledge of how mail is moved.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from gatepost.topology.crosscheck import Crosscheck, Findings
from gatepost.topology.model import (
    Capture,
    Delivery,
    Gateway,
    HostPort,
    IPNetwork,
    Limits,
    Postoffice,
    Problem,
    QueueTiming,
    Role,
    Topology,
    TopologyError,
    valid_domain,
)
from gatepost.topology.options import (
    DELIVERY_KEYS,
    LIMITS_KEYS,
    MX,
    QUEUE_KEYS,
    SECRET_KEYS,
    SEND_KEYS,
    delivery_options,
    limits_options,
    queue_options,
    send_options,
    store_secret,
)

POSTGRES = ("postgresql://", "postgres://")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,15}")
MAILBOX = re.compile(r"[A-Za-z0-9._+-]{1,64}")
ROLES: tuple[Role, ...] = ("both", "send", "receive")
FILE = "<file>"
Table = dict[str, Any]

TOP_KEYS = ("network", "postoffices", "gateways", "capture", "delivery", "limits", "queue")
NETWORK_KEYS = ("name", "domains", "store", "store_password_env", "store_password_file")
PO_KEYS = ("domains", "mailboxes", "links")
GW_KEYS = ("postoffice", "role", "listen", "smarthost", "serves", "relay_from", *SEND_KEYS)
CAPTURE_KEYS = ("listen", "dir")


def load(path: Path) -> Topology:
    """The topology in `path`; TopologyError listing every error otherwise."""
    topo, errors, _warnings = check(path)
    if topo is None:
        raise TopologyError(errors)
    return topo


def check(path: Path) -> tuple[Topology | None, list[Problem], list[Problem]]:
    """(topology or None when there are errors, errors, warnings)."""
    findings = Findings()
    raw = _read(path, findings)
    if raw is None:
        return None, findings.errors, findings.warnings
    topo = _Builder(path.resolve(), findings).build(raw)
    if findings.errors:
        return None, findings.errors, findings.warnings
    return topo, findings.errors, findings.warnings


def _read(path: Path, findings: Findings) -> Table | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        findings.error(FILE, f"cannot read {path}: {exc}")
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        findings.error(FILE, f"TOML syntax error in {path}: {exc}")
        return None


# ---- field readers: each reports its own type errors -------------------------


def _table(f: Findings, value: object, key: str) -> Table | None:
    if not isinstance(value, dict):
        f.error(key, "must be a table")
        return None
    return cast(Table, value)


def _only(f: Findings, table: Table, allowed: Iterable[str], prefix: str) -> None:
    known = set(allowed)
    for name in table:
        if name not in known:
            f.error(_join(prefix, name), f"unknown key (expected one of: {', '.join(allowed)})")


def _string(f: Findings, table: Table, name: str, prefix: str) -> str | None:
    value = table.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        f.error(_join(prefix, name), "must be a string")
        return None
    return value


def _strings(f: Findings, table: Table, name: str, prefix: str) -> list[tuple[str, str]]:
    """The string items of list `name` as (key path, value); bad items reported."""
    key = _join(prefix, name)
    value = table.get(name, [])
    if not isinstance(value, list):
        f.error(key, "must be a list of strings")
        return []
    items: list[tuple[str, str]] = []
    for index, item in enumerate(value):
        if isinstance(item, str):
            items.append((f"{key}[{index}]", item))
        else:
            f.error(f"{key}[{index}]", "must be a string")
    return items


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _resolve(base: Path, text: str) -> Path:
    return (base / Path(text).expanduser()).resolve()


# ---- the builder ----------------------------------------------------------------


class _Builder:
    """Turns the parsed TOML into model objects, then checks them as a whole."""

    def __init__(self, source: Path, findings: Findings) -> None:
        self.source = source
        self.base = source.parent
        self.f = findings
        self.domain_owner: dict[str, str] = {}  # domain -> "network" or "postoffice X"

    def build(self, raw: Table) -> Topology | None:
        _only(self.f, raw, TOP_KEYS, "")
        network = self._network(raw.get("network"))
        postoffices = self._postoffices(raw.get("postoffices"), network is not None)
        gateways = self._gateways(raw.get("gateways"), postoffices)
        capture = self._capture(raw.get("capture"))
        delivery = self._delivery(raw.get("delivery"))
        limits = self._limits(raw.get("limits"))
        queue = self._queue(raw.get("queue"))
        if network is None:
            return None
        name, domains, store, secret = network
        topo = Topology(
            name, domains, store, postoffices, gateways, capture, self.source, delivery, limits,
            queue, **secret,
        )
        Crosscheck(topo, self.f).run()
        return topo

    # [network]
    def _network(
        self, value: object
    ) -> tuple[str, tuple[str, ...], str, dict[str, Any]] | None:
        if value is None:
            self.f.error("network", "missing [network] table")
            return None
        table = _table(self.f, value, "network")
        if table is None:
            return None
        _only(self.f, table, NETWORK_KEYS, "network")
        name = _string(self.f, table, "name", "network")
        if name is None:
            if "name" not in table:
                self.f.error("network.name", "missing network name")
            return None
        if not NAME.fullmatch(name):
            self.f.error("network.name", _bad_name(name))
        domains = self._domains(table, "network", "network")
        store = self._store(_string(self.f, table, "store", "network"), name)
        secret = store_secret(table, self.base, self.f.error)
        if any(secret.values()) and not store.startswith(POSTGRES):
            self.f.error("network.store", "store_password_env and store_password_file are for "
                         "a postgresql:// store")
        return name, domains, store, secret

    def _store(self, text: str | None, name: str) -> str:
        text = f"sqlite:var/{name.lower()}.db" if text is None else text
        if text.startswith(POSTGRES):
            self._postgres_url(text)
            return text
        if not text.startswith("sqlite:") or text == "sqlite:":
            self.f.error("network.store", f"store {text!r} must be a URL like sqlite:var/x.db "
                         "or postgresql://user@host:port/dbname")
            return text
        return "sqlite:" + str(_resolve(self.base, text.removeprefix("sqlite:")))

    def _postgres_url(self, text: str) -> None:
        """A libpq URL without a password (it lives in store_password_env or
        store_password_file, PGPASSWORD or ~/.pgpass) and with a database name."""
        try:
            url = urlsplit(text)
            url.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            self.f.error("network.store", f"bad PostgreSQL URL: {exc}")
            return
        query = parse_qs(url.query)
        if url.password is not None or "password" in query:
            self.f.error("network.store", "never write a password in the topology file: give "
                         "store_password_env or store_password_file (or use PGPASSWORD, ~/.pgpass)")
        if not url.path.strip("/") and "dbname" not in query:
            self.f.error("network.store", f"{text!r} names no database: postgresql://user@host/DBNAME")

    def _domains(self, table: Table, prefix: str, owner: str) -> tuple[str, ...]:
        domains: list[str] = []
        for key, text in _strings(self.f, table, "domains", prefix):
            domain = text.lower()
            if not valid_domain(domain):
                self.f.error(key, f"bad domain syntax {text!r}")
            elif domain in self.domain_owner:
                self.f.error(key, f"domain {domain} already belongs to {self.domain_owner[domain]}")
            else:
                self.domain_owner[domain] = owner
                domains.append(domain)
        return tuple(domains)

    # [postoffices.X]
    def _postoffices(self, value: object, has_network: bool) -> dict[str, Postoffice]:
        if value is None:
            self.f.error("postoffices", "no postoffices defined")
            return {}
        table = _table(self.f, value, "postoffices")
        if table is None:
            return {}
        found: dict[str, Postoffice] = {}
        seen: dict[str, str] = {}
        for name, body in table.items():
            key = f"postoffices.{name}"
            if not self._unique_name(name, key, seen, "postoffice"):
                continue
            po = self._postoffice(name, body, key)
            if po is not None:
                found[name] = po
        links = self._links(table, found)
        return {n: Postoffice(p.name, p.domains, p.mailboxes, links[n]) for n, p in found.items()}

    def _unique_name(self, name: str, key: str, seen: dict[str, str], kind: str) -> bool:
        if not NAME.fullmatch(name):
            self.f.error(key, _bad_name(name))
            return False
        if name.lower() in seen:
            other = seen[name.lower()]
            self.f.error(key, f"{kind} name clashes with {other} (names are unique ignoring case)")
            return False
        seen[name.lower()] = name
        return True

    def _postoffice(self, name: str, body: object, key: str) -> Postoffice | None:
        table = _table(self.f, body, key)
        if table is None:
            return None
        _only(self.f, table, PO_KEYS, key)
        domains = self._domains(table, key, f"postoffice {name}")
        mailboxes: list[str] = []
        for item_key, text in _strings(self.f, table, "mailboxes", key):
            mailbox = text.lower()
            if not MAILBOX.fullmatch(text):
                self.f.error(item_key, f"bad mailbox name {text!r} (letters, digits . _ - +; 1-64)")
            elif mailbox in mailboxes:
                self.f.error(item_key, f"mailbox {mailbox} listed twice")
            else:
                mailboxes.append(mailbox)
        return Postoffice(name, domains, tuple(mailboxes), ())

    def _links(self, table: Table, found: dict[str, Postoffice]) -> dict[str, tuple[str, ...]]:
        """Symmetric links, each postoffice's neighbours in file order."""
        pairs: set[tuple[str, str]] = set()
        for name in found:
            body = cast(Table, table[name])
            for key, other in _strings(self.f, body, "links", f"postoffices.{name}"):
                if self._known_po(key, other, found) and other == name:
                    self.f.error(key, "a postoffice cannot link to itself")
                elif other in found:
                    pairs |= {(name, other), (other, name)}
        order = list(found)
        return {n: tuple(o for o in order if (n, o) in pairs) for n in order}

    def _known_po(self, key: str, name: str, found: dict[str, Postoffice]) -> bool:
        if name in found:
            return True
        hint = [po for po in found if po.lower() == name.lower()]
        extra = f" (did you mean {hint[0]!r}? names are case-sensitive)" if hint else ""
        self.f.error(key, f"unknown postoffice {name!r}{extra}")
        return False

    # [gateways.X]
    def _gateways(self, value: object, pos: dict[str, Postoffice]) -> dict[str, Gateway]:
        table = {} if value is None else _table(self.f, value, "gateways")
        found: dict[str, Gateway] = {}
        seen: dict[str, str] = {}
        for name, body in (table or {}).items():
            key = f"gateways.{name}"
            if self._unique_name(name, key, seen, "gateway"):
                gateway = self._gateway(name, body, key, pos)
                if gateway is not None:
                    found[name] = gateway
        return found

    def _gateway(
        self, name: str, body: object, key: str, pos: dict[str, Postoffice]
    ) -> Gateway | None:
        table = _table(self.f, body, key)
        if table is None:
            return None
        _only(self.f, {k: v for k, v in table.items() if k not in SECRET_KEYS}, GW_KEYS, key)
        postoffice = _string(self.f, table, "postoffice", key)
        if postoffice is None and "postoffice" not in table:
            self.f.error(f"{key}.postoffice", "missing: the gateway postoffice")
        elif postoffice is not None and not self._known_po(f"{key}.postoffice", postoffice, pos):
            postoffice = None
        role = self._role(_string(self.f, table, "role", key), key)
        listen = self._hostport(table, "listen", key)
        options = send_options(table, key, self.base, self.f.error)
        smarthosts = options.get("smarthosts") or ()
        if table.get("smarthost") != MX:
            single = self._hostport(table, "smarthost", key)
            smarthosts = smarthosts or ((single,) if single else ())
        options["smarthosts"] = smarthosts
        smarthost = smarthosts[0] if smarthosts else None
        serves = tuple(
            v for k, v in _strings(self.f, table, "serves", key) if self._known_po(k, v, pos)
        )
        relay = self._relay_from(table, key)
        if postoffice is None or role is None:
            return None
        return Gateway(name, postoffice, role, listen, smarthost, serves, relay, **options)

    def _role(self, text: str | None, key: str) -> Role | None:
        if text is None:
            return "both"
        for role in ROLES:
            if text == role:
                return role
        self.f.error(f"{key}.role", f"role {text!r} must be one of: both, send, receive")
        return None

    def _hostport(self, table: Table, name: str, prefix: str) -> HostPort | None:
        text = _string(self.f, table, name, prefix)
        if text is None:
            return None
        try:
            return HostPort.parse(text)
        except ValueError as exc:
            self.f.error(_join(prefix, name), f"bad host:port {text!r}: {exc}")
            return None

    def _relay_from(self, table: Table, prefix: str) -> tuple[IPNetwork, ...]:
        networks: list[IPNetwork] = []
        for key, text in _strings(self.f, table, "relay_from", prefix):
            try:
                networks.append(ipaddress.ip_network(text, strict=True))
            except ValueError as exc:
                self.f.error(key, f"bad CIDR {text!r}: {exc}")
        return tuple(networks)

    def _limits(self, value: object) -> Limits:
        table = None if value is None else _table(self.f, value, "limits")
        if table is None:
            return Limits()
        _only(self.f, table, LIMITS_KEYS, "limits")
        return Limits(**limits_options(table, self.f.error))

    # [queue]
    def _queue(self, value: object) -> QueueTiming:
        table = None if value is None else _table(self.f, value, "queue")
        if table is None:
            return QueueTiming()
        _only(self.f, table, QUEUE_KEYS, "queue")
        timing = QueueTiming(**queue_options(table, self.f.error))
        if timing.heartbeat >= timing.failover_after:
            self.f.error("queue.failover_after", "must be longer than queue.heartbeat")
        return timing

    # [delivery]
    def _delivery(self, value: object) -> Delivery:
        table = None if value is None else _table(self.f, value, "delivery")
        if table is None:
            return Delivery()
        _only(self.f, table, DELIVERY_KEYS, "delivery")
        delivery = Delivery(**delivery_options(table, self.f.error))
        if delivery.retry_min > delivery.retry_max:
            self.f.error("delivery.retry_max", "must be at least retry_min")
        if delivery.warn_after >= delivery.lifetime:
            self.f.warn("delivery.warn_after", "not before lifetime: no delay warning is ever sent")
        return delivery

    # [capture]
    def _capture(self, value: object) -> Capture | None:
        table = None if value is None else _table(self.f, value, "capture")
        if table is None:
            return None
        _only(self.f, table, CAPTURE_KEYS, "capture")
        listen = self._hostport(table, "listen", "capture")
        if listen is None and "listen" not in table:
            self.f.error("capture.listen", "missing: the address the capture sink listens on")
        folder = _string(self.f, table, "dir", "capture") or "var/captured"
        return None if listen is None else Capture(listen, _resolve(self.base, folder))


def _bad_name(name: str) -> str:
    return f"bad name {name!r} (letters, digits, _ and -; at most 16; starts with letter/digit)"
