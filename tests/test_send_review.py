"""Send-side defects a review found, each of its reproductions made a test:
clear text injected around STARTTLS, a stale reply on a kept-open session,
leases running out on the other domains of an MX claim, replies of many huge
lines, a clear-text fallback where verification or AUTH rule it out, and a
host that closes a kept-open session while it is idle."""

from __future__ import annotations

import asyncio
import logging
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

import scripted
from gatepost import policy
from gatepost.send import outbound
from gatepost.smtp.client import ClientConnection
from gatepost.smtp.events import ProtocolError
from gatepost.store import Hop
from gatepost.store.base import STATES
from scripted import ALICE, Clock, DnsServer, Harness, Script, ScriptedHost

OUTCOMES = ("delivered", "deferred", "bounced")
SMALL = 10_000  # bytes: what a stored reply, a trace detail, a DSN or a log line may take
RCPT = "r@far.example"  # an MX destination (see `dns_server`)


# ---- helpers ------------------------------------------------------------------


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    server = DnsServer({"far.example": [(10, "mx.far.example")]}, {"mx.far.example": ["127.0.0.1"]})
    yield server
    server.close()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def ca_file(ca: trustme.CA, root: Path) -> Path:
    path = root / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def good(ca: trustme.CA) -> ssl.SSLContext:
    """The host's TLS, working: a certificate from `ca` for both names it goes by."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "mx.far.example").configure_cert(context)
    return context


def broken() -> ssl.SSLContext:
    """A host whose handshake always fails: it speaks only TLS 1.0, which no
    client of today accepts."""
    context = good(trustme.CA())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1
    return context


def smarthost(host: ScriptedHost, extra: str = "") -> str:
    return f'smarthost = "{host.address}"\n{extra}'


def mx(dns_server: DnsServer, host: ScriptedHost, extra: str = "") -> str:
    return (f'smarthost = "mx"\nresolver = "127.0.0.1:{dns_server.port}"\n'
            f"mx_port = {host.port}\n{extra}")


async def outcome(h: Harness, qid: str, address: str, count: int = 1) -> Hop:
    """The `count`th outcome (delivered, deferred, bounced) recorded for `address`."""
    async def check() -> Hop | None:
        hops = [hop for hop in await h.store.hops(qid)
                if hop.address == address and hop.event in OUTCOMES]
        return hops[count - 1] if len(hops) >= count else None
    found: Hop = await h.until(check, f"outcome {count} of {address}", timeout=30)
    return found


async def first_outcomes(h: Harness, qid: str, *addresses: str) -> dict[str, Hop]:
    return {address: await outcome(h, qid, address) for address in addresses}


def session_class(monkeypatch: pytest.MonkeyPatch, cls: type[scripted._Session]) -> None:
    """The scripted hosts' sessions (those opened from now on) run `cls`."""
    monkeypatch.setattr(scripted, "_Session", cls)


def attempts(root: Path, gateway: str, *expected: str,
             between: dict[int, ssl.SSLContext] | None = None,
             host: ScriptedHost | None = None) -> list[str]:
    """Send one message to RCPT and wait for as many attempts as `expected`
    names, the clock skipped past the retry delay between them (never as
    far as policy.PLAIN_FOR); before attempt n, `between[n]` becomes
    `host`'s TLS. Asserts each attempt's outcome (stops at the first one not
    expected); returns their details."""
    clock = Clock()

    async def main() -> list[Hop]:
        async with Harness(root, gateway, "", clock) as h:
            qid = await h.submit(ALICE, [RCPT])
            hops: list[Hop] = []
            for count, event in enumerate(expected, 1):
                if count > 1:
                    clock.advance(policy.retry_delay(count - 1) + 1)
                if between and count in between:
                    assert host is not None
                    host.script.tls = between[count]
                hops.append(await outcome(h, qid, RCPT, count))
                if hops[-1].event != event:
                    break
            return hops

    assert sum(policy.retry_delay(n) + 1 for n in range(1, len(expected))) < policy.PLAIN_FOR
    hops = asyncio.run(main())
    assert [hop.event for hop in hops] == list(expected), [hop.detail for hop in hops]
    return [hop.detail for hop in hops]


# ---- 1: clear text injected around STARTTLS ---------------------------------------

INJECTED = b"250-injected\r\n250 PIPELINING\r\n"  # an EHLO reply without SMTPUTF8
NON_ASCII = "jörg@example.org"


def injecting(how: str) -> type[scripted._Session]:
    """A host that offers SMTPUTF8 over TLS, while someone on the path adds
    an EHLO reply without it, in clear text, to its 220 to STARTTLS: in the
    same write, or beyond the client's first read (64 KiB) of a 220 whose
    first line it has already read."""

    class Injecting(scripted._Session):
        async def do_ehlo(self, arg: str) -> None:
            last = "250 SMTPUTF8" if self.tls else "250 STARTTLS"
            await self.reply("250 scripted", "250 PIPELINING", "250 8BITMIME", last)

        async def do_starttls(self, arg: str) -> None:
            assert self.script.tls is not None
            go = b"220 2.0.0 go ahead\r\n"
            if how == "beyond one read":
                self.writer.write(b"220-wait\r\n")
                await self.writer.drain()
                await asyncio.sleep(0.3)  # the client waits for the rest of the reply
                go += b" " * (65536 - len(go))  # the client reads 64 KiB at a time
            self.writer.write(go + INJECTED)
            await self.writer.drain()
            await self.writer.start_tls(self.script.tls)
            self.tls = True

    return Injecting


@pytest.mark.parametrize("how", ["with the 220", "beyond one read"])
def test_clear_text_injected_around_starttls_is_never_taken_as_the_hosts_words(
    tmp_path: Path, host: ScriptedHost, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    session_class(monkeypatch, injecting(how))
    host.script.tls = good(ca)
    gateway = smarthost(host, f'tls_ca = "{ca_file(ca, tmp_path)}"')

    async def main() -> Hop:
        async with Harness(tmp_path, gateway, "", Clock()) as h:
            qid = await h.submit(ALICE, [NON_ASCII], subject="injected")
            return await outcome(h, qid, NON_ASCII)

    hop = asyncio.run(main())
    assert "5.6.7" not in hop.detail
    if hop.event == "deferred":  # the session was refused
        assert " 4." in hop.detail
        assert host.received == []
    else:  # the injected bytes were dropped: the host's own EHLO reply counted
        assert hop.event == "delivered", hop.detail
        assert [(m.recipients, m.tls) for m in host.received] == [([NON_ASCII], True)]


# ---- 2: a stale reply on a kept-open session ------------------------------------------


def test_a_stale_reply_on_a_kept_open_session_does_not_decide_the_next_message(
    tmp_path: Path, host: ScriptedHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    late: list[bool] = []

    class LateLine(scripted._Session):
        async def do_data(self, arg: str) -> None:
            await super().do_data(arg)
            if not late:  # once: 100 ms after the 250 to the first message's dot
                late.append(True)
                await asyncio.sleep(0.1)
                self.writer.write(b"550 5.7.1 unsolicited\r\n")
                await self.writer.drain()

    session_class(monkeypatch, LateLine)
    rcpts = ["a@example.org", "b@example.org"]

    async def main() -> tuple[dict[str, Hop], int]:
        async with Harness(tmp_path, smarthost(host, "max_sessions = 1"), "", Clock()) as h:
            first = await h.submit(ALICE, ["z@example.org"], subject="first")
            await h.settled(first, "delivered", "z@example.org")
            await asyncio.sleep(0.5)  # well within KEEP_OPEN: the session stays open
            second = await h.submit(ALICE, rcpts, subject="second")
            hops = await first_outcomes(h, second, *rcpts)
            await asyncio.sleep(1)  # time for a second copy, if one were coming
            return hops, len(await h.mailbox("HQ/alice"))

    hops, reports = asyncio.run(main())
    assert late == [True]
    assert {a: hop.event for a, hop in hops.items()} == dict.fromkeys(rcpts, "delivered"), hops
    assert reports == 0
    assert host.copies("first") == 1 and host.copies("second") == 1
    assert host.greeted == 2  # the second message went on a new session


# ---- 3: MX delivery, one claim, two domains, the first one slow --------------------------


def test_a_slow_mx_host_does_not_let_the_lease_on_another_domain_run_out(
    tmp_path: Path, host: ScriptedHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    lease = 3.0
    monkeypatch.setattr(outbound, "REPLY_TIMEOUT", 6.0)  # d1's silent greeting: twice a lease
    silent = ScriptedHost(Script(trouble="silent", trouble_at="greeting"), bind="127.0.0.2")
    silent.port = host.port  # MX of d1, on 127.0.0.2; `host` is d2's, on 127.0.0.1
    silent.start()
    dns = DnsServer({"d1.example": [(10, "mx.d1.example")], "d2.example": [(10, "mx.d2.example")]},
                    {"mx.d1.example": ["127.0.0.2"], "mx.d2.example": ["127.0.0.1"]})
    gateway = (f'smarthost = "mx"\nresolver = "127.0.0.1:{dns.port}"\n'
               f'mx_port = {host.port}\ntls = "none"')
    d1, d2 = "u@d1.example", "u@d2.example"

    async def main() -> tuple[dict[str, Hop], list[Hop]]:
        async with Harness(tmp_path, gateway, "", Clock(), queue=f"lease = {lease}") as h:
            qid = await h.submit(ALICE, [d1, d2], subject="twice")
            hops = await first_outcomes(h, qid, d1, d2)
            await asyncio.sleep(lease + 2)  # time for a second copy, if one were coming
            return hops, await h.store.hops(qid)

    try:
        hops, trace = asyncio.run(main())
    finally:
        silent.close()
        dns.close()
    assert hops[d1].event == "deferred" and hops[d2].event == "delivered", hops
    assert [hop.event for hop in trace if hop.address == d2 and hop.event in OUTCOMES] == ["delivered"]
    assert host.copies("twice") == 1


# ---- 4: a reply of many huge lines -----------------------------------------------------


def test_the_client_refuses_a_reply_too_large_in_all() -> None:
    """Lines each within the per-line limit, fewer than the per-reply line
    limit, yet megabytes in all: refused long before."""
    conn = ClientConnection()
    line = b"220-" + b"x" * 60_000 + b"\r\n"
    fed = 0
    with pytest.raises(ProtocolError):
        while fed < 1_000_000:
            conn.receive_data(line)
            fed += len(line)
            conn.next_event()


def test_a_reply_of_many_huge_lines_is_refused_and_nothing_huge_is_kept(
    tmp_path: Path, host: ScriptedHost, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lines, width = 999, 10_000  # ~10 MB a reply: within 64 KiB a line and 1000 lines a reply

    class Huge(scripted._Session):
        async def do_rcpt(self, arg: str) -> None:
            address = arg.split(":", 1)[1].split(">")[0].lstrip(" <")
            code = b"450 4.2.0" if address.startswith("temp") else b"550 5.1.1"
            body = code[:3] + b"-" + b"x" * width + b"\r\n"
            self.writer.write(body * (lines - 1) + code + b" last\r\n")
            await self.writer.drain()

    session_class(monkeypatch, Huge)
    caplog.set_level(logging.INFO, logger="gatepost")
    clock = Clock()
    temp, perm = "temp@example.org", "perm@example.org"

    async def main() -> tuple[list[Hop], list[str], list[bytes], list[Hop]]:
        async with Harness(tmp_path, smarthost(host, "max_sessions = 1"), "", clock) as h:
            qid = await h.submit(ALICE, [temp, perm], subject="big")
            first = await first_outcomes(h, qid, temp, perm)
            clock.advance(policy.retry_delay(1) + 1)
            second = await outcome(h, qid, temp, 2)  # the retry too
            await asyncio.sleep(0.5)
            jobs = await h.store.queue(STATES)
            return ([first[temp], first[perm], second], [job.last_reply for job in jobs],
                    await h.mailbox("HQ/alice"), await h.store.hops(qid))

    outcomes, replies, reports, trace = asyncio.run(main())
    first_temp, first_perm, second_temp = outcomes
    assert first_temp.event == "deferred" and second_temp.event == "deferred"
    assert first_perm.event in ("deferred", "bounced")
    assert replies and all(len(reply) < SMALL for reply in replies), [len(r) for r in replies]
    assert all(len(hop.detail) < SMALL for hop in trace), [len(hop.detail) for hop in trace]
    assert all(len(report) < SMALL for report in reports), [len(r) for r in reports]
    logged = [len(record.getMessage()) for record in caplog.records]
    assert all(size < SMALL for size in logged), logged


# ---- 5 and 6: no clear-text fallback unless opportunistic, unverified, without AUTH ----------


@pytest.mark.parametrize(("destination", "extra", "fallback"), [
    ("smart host", "", False),  # verified by default
    ("MX", "tls_verify = true", False),
    ("MX", 'tls = "required"', False),
    ("smart host", "tls_verify = false", True),
    ("MX", "", True),  # unverified by default
])
def test_a_broken_handshake_falls_back_to_clear_text_only_when_unverified(
    tmp_path: Path, host: ScriptedHost, dns_server: DnsServer,
    destination: str, extra: str, fallback: bool,
) -> None:
    host.script.tls = broken()
    if destination == "MX":
        gateway = mx(dns_server, host, extra)
    else:
        gateway = smarthost(host, extra)
    if fallback:  # the one case left: the next attempt goes in clear text
        first = attempts(tmp_path, gateway, "deferred", "delivered")[0]
        assert "TLS" in first
        assert [m.tls for m in host.received] == [False]
    else:
        details = attempts(tmp_path, gateway, "deferred", "deferred", "deferred")
        assert all("TLS" in detail for detail in details), details
        assert host.received == []


@pytest.mark.parametrize("destination", ["smart host", "MX"])
def test_with_auth_a_broken_handshake_never_falls_back(
    tmp_path: Path, host: ScriptedHost, dns_server: DnsServer, ca: trustme.CA,
    monkeypatch: pytest.MonkeyPatch, destination: str,
) -> None:
    monkeypatch.setenv("GW1_PASSWORD", "secret")
    host.script.tls, host.script.login = broken(), ("gw1", "secret")
    auth = 'auth_user = "gw1"\nauth_password_env = "GW1_PASSWORD"'
    if destination == "MX":  # unverified: only auth_user rules the fallback out
        gateway = mx(dns_server, host, auth)
    else:
        gateway = smarthost(host, f'tls_ca = "{ca_file(ca, tmp_path)}"\n{auth}')
    first, second, _ = attempts(
        tmp_path, gateway, "deferred", "deferred", "delivered",
        between={3: good(ca)}, host=host,  # the host's TLS works again before attempt 3
    )
    assert "TLS" in first
    assert "TLS" in second and "in clear" not in second  # STARTTLS was tried again
    assert [(m.tls, m.user) for m in host.received] == [(True, "gw1")]


# ---- 7: a host that closes a kept-open session while it is idle -----------------------


def test_a_kept_open_session_the_host_closed_is_not_used_again(
    tmp_path: Path, host: ScriptedHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    class CloseAfter(scripted._Session):
        async def do_data(self, arg: str) -> None:
            await super().do_data(arg)
            self.writer.write_eof()  # FIN right after its 250; no 421
            raise scripted.Hangup("closed after one message")

    session_class(monkeypatch, CloseAfter)

    async def main() -> Hop:
        async with Harness(tmp_path, smarthost(host, "max_sessions = 1"), "", Clock()) as h:
            a = await h.submit(ALICE, ["r@example.org"], subject="a")
            await h.settled(a, "delivered", "r@example.org")
            await asyncio.sleep(0.3)  # within KEEP_OPEN: the client keeps its side open
            b = await h.submit(ALICE, ["r@example.org"], subject="b")
            hop = await outcome(h, b, "r@example.org")
            await asyncio.sleep(0.5)
            return hop

    hop = asyncio.run(main())
    assert hop.event == "delivered", hop.detail
    assert host.copies("a") == 1 and host.copies("b") == 1
    assert host.greeted == 2
