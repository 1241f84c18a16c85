"""Finds the hosts that take mail for a domain: MX records, best first (RFC 5321 5.1).

Does: ask DNS (dnspython, the system's resolver or a configured one) for a
domain's MX records, then each exchange's addresses (A, then AAAA); a
domain without MX records is its own mail host (implicit MX); a null MX
(RFC 7505), a domain that does not exist, a DNS outage or exchanges without
addresses raise NoMailHost saying which (what that means for the mail is
`policy.no_mail_host`'s to say). Must not know: SMTP sessions, the store,
retry policy.
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
    """No host to try for `domain`: `why` is "no such domain", "null MX",
    "no address" or "lookup failed"; `detail` what DNS said, if anything."""

    def __init__(self, why: str, domain: str, detail: str = "") -> None:
        super().__init__(f"{domain}: {why}" + (f": {detail}" if detail else ""))
        self.why, self.domain, self.detail = why, domain, detail


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
            raise NoMailHost("no address", domain)
        return found

    async def exchanges(self, domain: str) -> list[str]:
        """MX host names, lowest preference first (ties shuffled)."""
        try:
            answer = await self.resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN as exc:
            raise NoMailHost("no such domain", domain) from exc
        except dns.resolver.NoAnswer:
            return [domain]  # implicit MX
        except dns.exception.DNSException as exc:
            raise NoMailHost("lookup failed", domain, str(exc)) from exc
        records = sorted(answer, key=lambda r: (r.preference, random.random()))
        names = [r.exchange.to_text(omit_final_dot=True) for r in records]
        if names in ([""], ["."]) or (len(records) == 1 and records[0].exchange.to_text() == "."):
            raise NoMailHost("null MX", domain)
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
