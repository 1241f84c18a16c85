"""The AUTH password for a smart host, and the store's database password, read
where the topology says it lives.

Does: read it from the named environment variable or file, at the moment a
session needs it (so a rotated secret is picked up). Must not know: SMTP,
the store; it never logs or returns a password in an error message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from gatepost.topology.model import Gateway, Topology


class MissingSecret(Exception):
    """The password's source is configured but empty or unreadable."""


@dataclass(frozen=True, slots=True)
class Login:
    user: str
    password: str = field(repr=False)


def login(gateway: Gateway) -> Login | None:
    """The user and password for AUTH, or None when the gateway has no auth_user."""
    if gateway.auth_user is None:
        return None
    return Login(gateway.auth_user, password(gateway))


def password(gateway: Gateway) -> str:
    return secret(gateway.auth_password_env, gateway.auth_password_file, "auth_password")


def store_password(topo: Topology) -> str | None:
    """The [network] store's password, or None: then libpq looks (PGPASSWORD, ~/.pgpass)."""
    if topo.store_password_env is None and topo.store_password_file is None:
        return None
    return secret(topo.store_password_env, topo.store_password_file, "store_password")


def secret(env: str | None, file: Path | None, stem: str) -> str:
    """From the environment variable, else the file's first line (without its line end)."""
    if env is not None:
        value = os.environ.get(env, "")
        if not value:
            raise MissingSecret(f"environment variable {env} is not set")
        return value
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise MissingSecret(f"cannot read {file}: {exc.__class__.__name__}") from exc
        first = text.splitlines()[0] if text else ""
        if not first:
            raise MissingSecret(f"{file} has an empty first line")
        return first
    raise MissingSecret(f"no {stem}_env or {stem}_file")
