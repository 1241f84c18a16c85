"""STARTTLS and AUTH toward the smart host, with real certificates (trustme)
and a smart host that checks credentials: mail goes encrypted and
authenticated, or waits with a clear reply; it is never sent in clear when
TLS is required, and a password never travels in clear."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
import trustme

from scripted import ALICE, Harness, ScriptedHost


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def deliver(tmp_path: Path, gateway: str, *, expect: str) -> str:
    """Send one message through GW1; wait for its outcome; return the hop detail."""
    async def main() -> str:
        async with Harness(tmp_path, gateway) as h:
            qid = await h.submit(ALICE, ["r@example.org"])
            events = await h.settled(qid, expect, "r@example.org")
            return events["r@example.org"].detail
    return asyncio.run(main())


def test_starttls_verified_against_the_ca(tmp_path: Path, host: ScriptedHost, ca: trustme.CA, ca_file: Path) -> None:
    host.script.tls = server_context(ca)
    deliver(tmp_path, f'smarthost = "{host.address}"\ntls = "required"\ntls_ca = "{ca_file}"',
            expect="delivered")
    [message] = host.received
    assert message.tls


def test_opportunistic_tls_is_used_when_offered(tmp_path: Path, host: ScriptedHost, ca: trustme.CA, ca_file: Path) -> None:
    host.script.tls = server_context(ca)
    deliver(tmp_path, f'smarthost = "{host.address}"\ntls_ca = "{ca_file}"', expect="delivered")
    assert [m.tls for m in host.received] == [True]


def test_required_tls_without_starttls_defers_and_sends_nothing(tmp_path: Path, host: ScriptedHost, ca_file: Path) -> None:
    detail = deliver(tmp_path, f'smarthost = "{host.address}"\ntls = "required"\ntls_ca = "{ca_file}"',
                     expect="deferred")
    assert "4.7.4 TLS is required" in detail and "does not offer STARTTLS" in detail
    assert host.received == []


def test_a_certificate_that_fails_verification_defers(tmp_path: Path, host: ScriptedHost, ca: trustme.CA) -> None:
    other = trustme.CA()
    other_file = tmp_path / "other-ca.pem"
    other.cert_pem.write_to_path(str(other_file))
    host.script.tls = server_context(ca)
    detail = deliver(tmp_path, f'smarthost = "{host.address}"\ntls = "required"\ntls_ca = "{other_file}"',
                     expect="deferred")
    assert "4.7.5 TLS with 127.0.0.1 failed" in detail and "CERTIFICATE_VERIFY_FAILED" in detail
    assert host.received == []


@pytest.mark.parametrize("mechanisms", ["PLAIN", "LOGIN"])
def test_auth_with_a_password_from_the_environment(
    tmp_path: Path, host: ScriptedHost, ca: trustme.CA, ca_file: Path,
    monkeypatch: pytest.MonkeyPatch, mechanisms: str,
) -> None:
    monkeypatch.setenv("RELAY_PASSWORD", "s3cret pass")
    host.script.tls = server_context(ca)
    host.script.login = ("gw1", "s3cret pass")
    host.script.mechanisms = mechanisms
    deliver(tmp_path, f'smarthost = "{host.address}"\ntls_ca = "{ca_file}"\n'
                      'auth_user = "gw1"\nauth_password_env = "RELAY_PASSWORD"', expect="delivered")
    assert [(m.user, m.tls) for m in host.received] == [("gw1", True)]


def test_auth_with_a_password_file_and_a_wrong_password(tmp_path: Path, host: ScriptedHost) -> None:
    secret = tmp_path / "relay.secret"
    secret.write_text("wrong\n")
    host.script.login = ("gw1", "right")
    gateway = (f'smarthost = "{host.address}"\ntls = "none"\n'
               f'auth_user = "gw1"\nauth_password_file = "{secret}"')
    detail = deliver(tmp_path, gateway, expect="deferred")
    assert "4.7.8 authentication as gw1 failed: 535" in detail
    secret.write_text("right\n")
    deliver(tmp_path, gateway, expect="delivered")
    assert [m.user for m in host.received] == ["gw1"]


def test_no_password_in_clear_without_tls(tmp_path: Path, host: ScriptedHost, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_PASSWORD", "right")
    host.script.login = ("gw1", "right")
    detail = deliver(tmp_path, f'smarthost = "{host.address}"\nauth_user = "gw1"\n'
                               'auth_password_env = "RELAY_PASSWORD"', expect="deferred")
    assert "will not send the AUTH password in clear" in detail
    assert host.received == []
