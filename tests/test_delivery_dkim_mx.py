"""DKIM signing checked with dkimpy's verifier, and direct delivery to the
recipient domains' MX hosts found through a local DNS server."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gatepost.send.mx import MxResolver
from gatepost.topology.model import HostPort
from scripted import ALICE, DnsServer, Harness, ScriptedHost


def make_key(tmp_path: Path) -> tuple[Path, bytes]:
    """A private key file and the DNS TXT record that publishes its public half."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "dkim.pem"
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ))
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return path, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def test_outbound_mail_is_dkim_signed_per_from_domain(tmp_path: Path, host: ScriptedHost) -> None:
    key_file, record = make_key(tmp_path)
    gateway = (f'smarthost = "{host.address}"\n\n[[gateways.GW1.dkim]]\n'
               f'domain = "hq.acme.example"\nselector = "s1"\nkey_file = "{key_file}"')

    async def main() -> None:
        async with Harness(tmp_path, gateway) as h:
            signed = await h.submit(ALICE, ["r@example.org"], subject="signed")
            other = await h.submit("someone@example.net", ["r@example.org"], subject="other")
            await h.settled(signed, "delivered", "r@example.org")
            await h.settled(other, "delivered", "r@example.org")
            stored = await h.store.content(signed)
            assert b"DKIM-Signature" not in stored, "the stored message stays unsigned"

    asyncio.run(main())
    by_subject = {m.content.split(b"Subject: ")[1].split(b"\r\n")[0]: m.content for m in host.received}
    lookups: list[bytes] = []

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        lookups.append(name)
        return record if name == b"s1._domainkey.hq.acme.example." else b""

    assert by_subject[b"signed"].startswith(b"DKIM-Signature:")
    assert dkim.verify(by_subject[b"signed"], dnsfunc=dnsfunc)
    assert lookups == [b"s1._domainkey.hq.acme.example."]
    assert b"DKIM-Signature" not in by_subject[b"other"]
    tampered = by_subject[b"signed"].replace(b"hi\r\n", b"ho\r\n")
    assert not dkim.verify(tampered, dnsfunc=dnsfunc)


@pytest.fixture
def dns_server(host: ScriptedHost) -> Iterator[DnsServer]:
    server = DnsServer(
        mx={"one.example": [(10, "mx1.one.example"), (20, "mx2.one.example")],
            "two.example": [(10, "mx.two.example")],
            "null.example": [(0, "")]},
        a={"mx1.one.example": ["127.0.0.2"], "mx2.one.example": ["127.0.0.1"],
           "mx.two.example": ["127.0.0.1"], "plain.example": ["127.0.0.1"]},
    )
    yield server
    server.close()


def test_mx_delivery_groups_recipients_per_domain(
    tmp_path: Path, host: ScriptedHost, dns_server: DnsServer
) -> None:
    """one.example's best MX (127.0.0.2, nothing listening) is skipped for the
    next; plain.example has no MX and takes mail itself (implicit MX); an
    unknown domain bounces; a null MX bounces."""
    gateway = (f'smarthost = "mx"\nresolver = "127.0.0.1:{dns_server.port}"\n'
               f"mx_port = {host.port}")
    recipients = ["a@one.example", "b@one.example", "c@two.example", "d@plain.example",
                  "e@nowhere.example", "f@null.example"]

    async def main() -> None:
        async with Harness(tmp_path, gateway) as h:
            qid = await h.submit(ALICE, recipients)
            await h.settled(qid, "delivered", *recipients[:4])
            events = await h.settled(qid, "bounced", "e@nowhere.example", "f@null.example")
            assert "5.1.2 domain nowhere.example does not exist" in events["e@nowhere.example"].detail
            assert "5.1.10" in events["f@null.example"].detail
            delivered = await h.events(qid)
            assert "mx2.one.example[127.0.0.1]" in delivered["a@one.example"].detail

    asyncio.run(main())
    assert sorted(sorted(m.recipients) for m in host.received) == [
        ["a@one.example", "b@one.example"], ["c@two.example"], ["d@plain.example"]
    ]
    assert ("MX", "plain.example") in dns_server.queries


def resolve(server: DnsServer, domain: str) -> list[tuple[str, str]]:
    resolver = MxResolver(HostPort("127.0.0.1", server.port), port=2525)
    found = asyncio.run(resolver.hosts(domain))
    assert {address.port for address, _ in found} == {2525}
    return [(address.host, name) for address, name in found]


def test_mx_hosts_are_tried_by_preference_ipv4_before_ipv6() -> None:
    server = DnsServer(
        mx={"dual.example": [(20, "backup.dual.example"), (10, "mx.dual.example"), (30, "v6.dual.example")]},
        a={"mx.dual.example": ["192.0.2.1"], "backup.dual.example": ["192.0.2.3"],
           "v4only.example": ["192.0.2.9"]},
        aaaa={"mx.dual.example": ["2001:db8::1"], "backup.dual.example": ["2001:db8::3"],
              "v6.dual.example": ["2001:db8::6"], "implicit.example": ["2001:db8::7"]},
    )
    try:
        assert resolve(server, "dual.example") == [
            ("192.0.2.1", "mx.dual.example"), ("2001:db8::1", "mx.dual.example"),
            ("192.0.2.3", "backup.dual.example"), ("2001:db8::3", "backup.dual.example"),
            ("2001:db8::6", "v6.dual.example"),
        ]
        assert resolve(server, "implicit.example") == [("2001:db8::7", "implicit.example")]
        assert resolve(server, "v4only.example") == [("192.0.2.9", "v4only.example")]
        assert ("AAAA", "v6.dual.example") in server.queries
    finally:
        server.close()


def test_mail_reaches_a_mail_host_that_has_only_an_ipv6_address(tmp_path: Path) -> None:
    """The implicit MX of v6.example has an AAAA record and no A record."""
    v6host = ScriptedHost(bind="::1").start()
    server = DnsServer(mx={}, a={}, aaaa={"v6.example": ["::1"]})
    gateway = f'smarthost = "mx"\nresolver = "127.0.0.1:{server.port}"\nmx_port = {v6host.port}'

    async def main() -> str:
        async with Harness(tmp_path, gateway) as h:
            qid = await h.submit(ALICE, ["r@v6.example"])
            events = await h.settled(qid, "delivered", "r@v6.example")
            return events["r@v6.example"].detail

    try:
        detail = asyncio.run(main())
    finally:
        server.close()
        v6host.close()
    assert "v6.example[::1]" in detail
    assert v6host.recipients() == ["r@v6.example"]
