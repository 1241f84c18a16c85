"""Reads the send-side keys of a gateway and the [delivery] table.

Does: turn the raw TOML values of the keys listed in SEND_KEYS and
DELIVERY_KEYS into model values (durations, modes, limits, credentials
sources, DKIM keys), reporting each problem with its key path through the
`Error` callback. Must not know: how mail is sent, sockets, the store, and
the secrets themselves (a password is never read here, only where it lives).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gatepost.topology.model import (
    DkimKey,
    HostPort,
    SmarthostPolicy,
    TlsMode,
    valid_domain,
)

Error = Callable[[str, str], None]  # (key path, message)
Table = dict[str, Any]

SEND_KEYS = (
    "smarthosts", "smarthost_policy", "tls", "tls_ca", "tls_verify", "auth_user",
    "auth_password_env", "auth_password_file", "max_sessions", "max_per_session", "rate",
    "resolver", "mx_port", "dkim", "tls_cert", "tls_key",
)
SECRET_KEYS = ("password", "auth_password", "secret")
DELIVERY_KEYS = ("retry_min", "retry_max", "warn_after", "lifetime", "final_retention",
                 "trace_retention")
QUEUE_KEYS = ("lease", "heartbeat", "failover_after")
DKIM_KEYS = ("domain", "selector", "key_file")
LIMIT_COUNTS = ("max_message_size", "max_recipients", "max_connections",
                "max_connections_per_client", "data_rate", "hopcount_limit")
LIMIT_DURATIONS = ("idle_timeout", "command_timeout", "data_timeout", "greet_wait")
LIMITS_KEYS = LIMIT_COUNTS + LIMIT_DURATIONS
MX = "mx"  # `smarthost = "mx"`: deliver to the recipient domains' MX hosts

TLS_MODES: tuple[TlsMode, ...] = ("none", "opportunistic", "required")
POLICIES: tuple[SmarthostPolicy, ...] = ("failover", "spread")
UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PIECE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_SELECTOR = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,62})")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_duration(value: object) -> float:
    """Seconds from 90, 1.5, "90s", "30m", "4h", "5d", "1h30m"; ValueError otherwise."""
    seconds = _seconds(value)
    if seconds is None:
        raise ValueError(f"bad duration {value!r} (e.g. 90, \"90s\", \"30m\", \"4h\", \"5d\")")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def _seconds(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        return None
    text = value.strip().lower().replace(" ", "")
    pieces = _PIECE.findall(text)
    if not text or "".join(a + b for a, b in pieces) != text:
        return None
    return sum(float(number) * UNITS[unit] for number, unit in pieces)


def durations(table: Table, names: tuple[str, ...], prefix: str, error: Error) -> dict[str, float]:
    """The durations among `names` that `table` gives; each bad one reported."""
    found: dict[str, float] = {}
    for name in names:
        if name in table:
            try:
                found[name] = parse_duration(table[name])
            except ValueError as exc:
                error(f"{prefix}.{name}", str(exc))
    return found


def above_zero(found: dict[str, float], names: tuple[str, ...], prefix: str, error: Error) -> None:
    for name in names:
        if found.get(name) == 0:
            error(f"{prefix}.{name}", "must be more than 0")


def delivery_options(table: Table, error: Error) -> dict[str, float]:
    """Keyword arguments for `Delivery` from the [delivery] table."""
    found = durations(table, DELIVERY_KEYS, "delivery", error)
    above_zero(found, ("retry_min", "lifetime"), "delivery", error)
    return found


def queue_options(table: Table, error: Error) -> dict[str, float]:
    """Keyword arguments for `QueueTiming` from the [queue] table: durations above 0."""
    found = durations(table, QUEUE_KEYS, "queue", error)
    above_zero(found, QUEUE_KEYS, "queue", error)
    return found


def limits_options(table: Table, error: Error) -> dict[str, Any]:
    """Keyword arguments for `Limits` from the [limits] table."""
    found: dict[str, Any] = {}
    for name in LIMIT_COUNTS:
        value = table.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            error(f"limits.{name}", "must be a whole number of at least 1")
        else:
            found[name] = value
    found.update(durations(table, LIMIT_DURATIONS, "limits", error))
    return found


def send_options(table: Table, key: str, base: Path, error: Error) -> dict[str, Any]:
    """Keyword arguments for `Gateway` from the send-side keys of one gateway
    (`smarthosts` already parsed into HostPorts; `smarthost` is the caller's)."""
    reader = _Reader(table, key, base, error)
    options: dict[str, Any] = {
        "smarthosts": reader.smarthosts(),
        "mx": table.get("smarthost") == MX,
        "smarthost_policy": reader.choice("smarthost_policy", POLICIES),
        "tls": reader.choice("tls", TLS_MODES),
        "tls_ca": reader.path("tls_ca"),
        "tls_verify": verify_default(reader.boolean("tls_verify"), table.get("smarthost") == MX),
        "max_sessions": reader.count("max_sessions"),
        "max_per_session": reader.count("max_per_session"),
        "rate": reader.rate(),
        "resolver": reader.hostport("resolver"),
        "mx_port": reader.port("mx_port"),
        "dkim": reader.dkim(),
        "tls_cert": reader.path("tls_cert"),
        "tls_key": reader.path("tls_key"),
        **reader.auth(),
    }
    return {name: value for name, value in options.items() if value is not None}


def store_secret(table: Table, base: Path, error: Error) -> dict[str, Any]:
    """Where the [network] store's database password lives (never the password)."""
    env, file = _Reader(table, "network", base, error).secret_source("store_password")
    return {"store_password_env": env, "store_password_file": file}


def verify_default(verify: bool | None, mx: bool) -> bool | None:
    """Configured smart hosts are verified unless told not to; MX hosts, like
    Postfix's `may` level, are not unless told to (most have no certificate a
    CA signed for their name, and refusing them would bounce the mail)."""
    return (not mx) if verify is None else verify


class _Reader:
    def __init__(self, table: Table, key: str, base: Path, error: Error) -> None:
        self.table, self.key, self.base, self.error = table, key, base, error

    def bad(self, name: str, message: str) -> None:
        self.error(f"{self.key}.{name}", message)

    def string(self, name: str) -> str | None:
        value = self.table.get(name)
        if value is not None and not isinstance(value, str):
            self.bad(name, "must be a string")
            return None
        return value

    def smarthosts(self) -> tuple[HostPort, ...] | None:
        if "smarthosts" not in self.table:
            return None
        if "smarthost" in self.table:
            self.bad("smarthosts", "give either smarthost or smarthosts, not both")
        value = self.table["smarthosts"]
        if not isinstance(value, list) or not value:
            self.bad("smarthosts", "must be a non-empty list of \"host:port\" strings")
            return None
        hosts = []
        for index, item in enumerate(value):
            try:
                hosts.append(HostPort.parse(item if isinstance(item, str) else ""))
            except ValueError as exc:
                self.bad(f"smarthosts[{index}]", f"bad host:port {item!r}: {exc}")
        return tuple(hosts)

    def choice(self, name: str, allowed: tuple[str, ...]) -> Any:
        text = self.string(name)
        if text is not None and text not in allowed:
            self.bad(name, f"{text!r} must be one of: {', '.join(allowed)}")
            return None
        return text

    def path(self, name: str) -> Path | None:
        text = self.string(name)
        return None if text is None else (self.base / Path(text).expanduser()).resolve()

    def boolean(self, name: str) -> bool | None:
        value = self.table.get(name)
        if value is not None and not isinstance(value, bool):
            self.bad(name, "must be true or false")
            return None
        return value

    def count(self, name: str) -> int | None:
        value = self.table.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.bad(name, "must be a whole number, at least 1")
            return None
        return value

    def rate(self) -> float | None:
        value = self.table.get("rate")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            self.bad("rate", "must be a number of messages per second, more than 0")
            return None
        return float(value)

    def port(self, name: str) -> int | None:
        value = self.table.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            self.bad(name, "must be a port number (1-65535)")
            return None
        return value

    def hostport(self, name: str) -> HostPort | None:
        text = self.string(name)
        if text is None:
            return None
        try:
            return HostPort.parse(text)
        except ValueError as exc:
            self.bad(name, f"bad host:port {text!r}: {exc}")
            return None

    def auth(self) -> dict[str, Any]:
        for name in SECRET_KEYS:
            if name in self.table:
                self.bad(name, "never write a password in the topology file: name where it "
                         "lives with auth_password_env (a variable) or auth_password_file")
        user = self.string("auth_user")
        env, file = self.secret_source("auth_password")
        if user is not None and env is None and file is None:
            self.bad("auth_user", "needs auth_password_env or auth_password_file")
        if user is None and (env is not None or file is not None):
            self.bad("auth_user", "missing: the user name for the password given")
        return {"auth_user": user, "auth_password_env": env, "auth_password_file": file}

    def secret_source(self, stem: str) -> tuple[str | None, Path | None]:
        """Where a secret lives: the variable `STEM_env` names, or the file `STEM_file`."""
        env = self.string(f"{stem}_env")
        file = self.path(f"{stem}_file")
        if env is not None and not _ENV_NAME.fullmatch(env):
            self.bad(f"{stem}_env", f"{env!r} is not an environment variable name")
        if env is not None and file is not None:
            self.bad(f"{stem}_file", f"give {stem}_env or {stem}_file, not both")
        return env, file

    def dkim(self) -> tuple[DkimKey, ...] | None:
        value = self.table.get("dkim")
        if value is None:
            return None
        if not isinstance(value, list):
            self.bad("dkim", "must be an array of tables ([[gateways.NAME.dkim]])")
            return None
        keys = [self.dkim_key(item, f"dkim[{index}]") for index, item in enumerate(value)]
        return tuple(k for k in keys if k is not None)

    def dkim_key(self, item: object, name: str) -> DkimKey | None:
        if not isinstance(item, dict):
            self.bad(name, "must be a table with domain, selector and key_file")
            return None
        sub = _Reader(item, f"{self.key}.{name}", self.base, self.error)
        for extra in set(item) - set(DKIM_KEYS):
            sub.bad(extra, f"unknown key (expected one of: {', '.join(DKIM_KEYS)})")
        domain, selector, key_file = sub.string("domain"), sub.string("selector"), sub.path("key_file")
        if domain is not None and not valid_domain(domain.lower()):
            sub.bad("domain", f"bad domain syntax {domain!r}")
            domain = None
        if selector is not None and not _SELECTOR.fullmatch(selector):
            sub.bad("selector", f"bad selector {selector!r}")
            selector = None
        for field_name, field_value in (("domain", domain), ("selector", selector), ("key_file", key_file)):
            if field_value is None and field_name not in item:
                sub.bad(field_name, "missing")
        if domain is None or selector is None or key_file is None:
            return None
        return DkimKey(domain.lower(), selector, key_file)
