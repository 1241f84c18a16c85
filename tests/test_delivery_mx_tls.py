"""TLS toward MX hosts is as forgiving as Postfix's default ("may"): a
certificate no CA vouches for still encrypts, and a host whose handshake
fails gets the mail in clear text on a later attempt. Verification stays
the default toward configured smart hosts and is a choice for MX hosts;
required or verified TLS never falls back, nor does a gateway that logs in."""

from __future__ import annotations

import asyncio
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from gatepost.store import Hop
from gatepost.topology import load
from scripted import ALICE, TOPOLOGY, Clock, DnsServer, Harness, ScriptedHost

RCPT = "r@far.example"


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    server = DnsServer({"far.example": [(10, "mx.far.example")]}, {"mx.far.example": ["127.0.0.1"]})
    yield server
    server.close()


def untrusted() -> ssl.SSLContext:
    """A certificate from a CA that nobody trusts, for the name of the MX host."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("mx.far.example").configure_cert(context)
    return context


def broken() -> ssl.SSLContext:
    """A host whose handshake always fails: it speaks only TLS 1.0, which no
    client of today accepts (nor, with OpenSSL's defaults, the host itself)."""
    context = untrusted()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1
    return context


def mx(dns_server: DnsServer, host: ScriptedHost, extra: str = "") -> str:
    return (f'smarthost = "mx"\nresolver = "127.0.0.1:{dns_server.port}"\n'
            f"mx_port = {host.port}\n{extra}")


def attempts(tmp_path: Path, gateway: str, *outcomes: str) -> list[str]:
    """Send one message; the outcome of each attempt, the clock skipped past
    the retry delay between them: each must be the one `outcomes` names.
    Returns each attempt's hop detail."""
    clock = Clock()

    async def main() -> list[str]:
        async with Harness(tmp_path, gateway, "", clock) as h:
            qid = await h.submit(ALICE, [RCPT])
            for count in range(1, len(outcomes) + 1):
                if count > 1:
                    clock.advance(61)
                done = await h.until(lambda n=count: tried(h, qid, n), f"attempt {count}")
            return [f"{hop.event} {hop.detail}" for hop in done]

    details = asyncio.run(main())
    assert [d.split()[0] for d in details] == list(outcomes)
    return [d.partition(" ")[2] for d in details]


async def tried(h: Harness, qid: str, count: int) -> list[Hop] | None:
    """The outcomes of the attempts so far, once there are `count` of them."""
    hops = [hop for hop in await h.store.hops(qid) if hop.event in ("deferred", "delivered")]
    return hops if len(hops) >= count else None


def test_an_mx_host_with_an_untrusted_certificate_gets_the_mail_encrypted(
    tmp_path: Path, host: ScriptedHost, dns_server: DnsServer
) -> None:
    host.script.tls = untrusted()
    attempts(tmp_path, mx(dns_server, host), "delivered")
    assert [m.tls for m in host.received] == [True]


def test_verification_toward_mx_hosts_is_a_choice(
    tmp_path: Path, host: ScriptedHost, dns_server: DnsServer
) -> None:
    host.script.tls = untrusted()
    [detail] = attempts(tmp_path, mx(dns_server, host, "tls_verify = true"), "deferred")
    assert "4.7.5 TLS with mx.far.example failed" in detail and "CERTIFICATE_VERIFY_FAILED" in detail
    assert host.received == []


def test_smart_hosts_are_verified_unless_told_otherwise(tmp_path: Path) -> None:
    config = tmp_path / "t.toml"
    gateways = {'smarthost = "127.0.0.1:2"': True, 'smarthost = "mx"': False,
                'smarthost = "mx"\ntls_verify = true': True,
                'smarthost = "127.0.0.1:2"\ntls_verify = false': False}
    for gateway, verify in gateways.items():
        config.write_text(TOPOLOGY.format(gateway=gateway, delivery=""))
        assert load(config).gateways["GW1"].tls_verify is verify, gateway


def test_a_failed_handshake_defers_and_the_retry_goes_in_clear(
    tmp_path: Path, host: ScriptedHost, dns_server: DnsServer
) -> None:
    host.script.tls = broken()
    first, second = attempts(tmp_path, mx(dns_server, host), "deferred", "delivered")
    assert "4.7.5 TLS with mx.far.example failed" in first
    assert second.startswith("relay=mx.far.example[127.0.0.1]")
    assert [m.tls for m in host.received] == [False]


def test_required_tls_never_falls_back_to_clear_text(
    tmp_path: Path, host: ScriptedHost, dns_server: DnsServer
) -> None:
    host.script.tls = broken()
    details = attempts(tmp_path, mx(dns_server, host, 'tls = "required"'), "deferred", "deferred")
    assert all("4.7.5 TLS with" in detail for detail in details)
    assert host.received == []


def test_no_fallback_when_a_password_would_need_tls(
    tmp_path: Path, host: ScriptedHost, dns_server: DnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GW1_PASSWORD", "secret")
    host.script.tls, host.script.login = broken(), ("gw1", "secret")
    gateway = mx(dns_server, host, 'auth_user = "gw1"\nauth_password_env = "GW1_PASSWORD"')
    details = attempts(tmp_path, gateway, "deferred", "deferred")
    assert all("4.7.5 TLS with mx.far.example failed" in detail for detail in details)
    assert host.received == []
