"""Finds the hosts that take mail for a domain: MX records, best first (RFC 5321 5.1).

Does: ask DNS (dnspython, the system's resolver or a configured one) for a
domain's MX records, then each exchange's addresses (A, then AAAA); a
domain without MX records is its own mail host (implicit MX); a null MX
(RFC 7505) or a domain that does not exist is a permanent failure, a DNS
outage a temporary one. Must not know: SMTP sessions, the store, retry policy.
"""

from __future__ import annotations

import asyncio
import random

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from gatepost.topology.model import HostPort

TIMEOUT = 10.0


class NoMailHost(Exception):
    """No host to try: `reply` ("451 4.4.3 ..." or "550 5.1.2 ...") says why."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class MxResolver:
    def __init__(self, server: HostPort | None = None, port: int = 25) -> None:
        self.port = port
        if server is None:
            self.resolver = dns.asyncresolver.Resolver()
        else:
            self.resolver = dns.asyncresolver.Resolver(configure=False)
            self.resolver.nameservers = [server.host]
            self.resolver.port = server.port
        self.resolver.lifetime = TIMEOUT

    async def hosts(self, domain: str) -> list[tuple[HostPort, str]]:
        """(address, host name) to try for `domain`, in order; NoMailHost when none."""
        exchanges = await self.exchanges(domain)
        found: list[tuple[HostPort, str]] = []
        for name in exchanges:
            found += [(HostPort(a, self.port), name) for a in await self.addresses(name)]
        if not found:
            raise NoMailHost(f"451 4.4.3 no address for the mail hosts of {domain}")
        return found

    async def exchanges(self, domain: str) -> list[str]:
        """MX host names, lowest preference first (ties shuffled)."""
        try:
            answer = await self.resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN as exc:
            raise NoMailHost(f"550 5.1.2 domain {domain} does not exist") from exc
        except dns.resolver.NoAnswer:
            return [domain]  # implicit MX
        except dns.exception.DNSException as exc:
            raise NoMailHost(f"451 4.4.3 cannot look up MX of {domain}: {exc}") from exc
        records = sorted(answer, key=lambda r: (r.preference, random.random()))
        names = [r.exchange.to_text(omit_final_dot=True) for r in records]
        if names in ([""], ["."]) or (len(records) == 1 and records[0].exchange.to_text() == "."):
            raise NoMailHost(f"556 5.1.10 domain {domain} accepts no mail (null MX)")
        return names

    async def addresses(self, name: str) -> list[str]:
        """`name`'s IPv4 addresses, then its IPv6 ones, each in the order DNS gave them."""
        ipv4, ipv6 = await asyncio.gather(self.records(name, "A"), self.records(name, "AAAA"))
        return ipv4 + ipv6

    async def records(self, name: str, kind: str) -> list[str]:
        try:
            answer = await self.resolver.resolve(name, kind)
        except dns.exception.DNSException:
            return []
        return [record.address for record in answer]
