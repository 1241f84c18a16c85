"""The AUTH password for a smart host, read where the topology says it lives.

Does: read it from the named environment variable or file, at the moment a
session needs it (so a rotated secret is picked up). Must not know: SMTP,
the store; it never logs or returns a password in an error message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from gatepost.topology.model import Gateway


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
    """From the environment variable, else the file's first line (without its line end)."""
    if gateway.auth_password_env is not None:
        value = os.environ.get(gateway.auth_password_env, "")
        if not value:
            raise MissingSecret(f"environment variable {gateway.auth_password_env} is not set")
        return value
    if gateway.auth_password_file is not None:
        try:
            text = gateway.auth_password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise MissingSecret(f"cannot read {gateway.auth_password_file}: {exc.__class__.__name__}") from exc
        first = text.splitlines()[0] if text else ""
        if not first:
            raise MissingSecret(f"{gateway.auth_password_file} has an empty first line")
        return first
    raise MissingSecret("no auth_password_env or auth_password_file")
