"""The send side against a scripted smart host: outcomes per recipient,
retries, bounces and delay warnings as RFC 3464 reports, the <> rule,
several smart hosts, session limits and a smart host that goes away."""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripted import ALICE, Clock, Harness, ScriptedHost


@pytest.fixture
def second() -> Iterator[ScriptedHost]:
    smarthost = ScriptedHost().start()
    yield smarthost
    smarthost.close()


def parse(raw: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def reports(message: email.message.EmailMessage) -> tuple[dict[str, str], list[dict[str, str]]]:
    """(per-message fields, per-recipient fields) of a DSN's delivery-status part."""
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"
    ]
    blocks = parts[1].get_payload()
    assert isinstance(blocks, list)
    fields = [{k: str(v) for k, v in block.items()} for block in blocks]
    return fields[0], fields[1:]


def test_each_recipient_gets_the_outcome_its_reply_means(tmp_path: Path, host: ScriptedHost) -> None:
    host.script.rcpt = {"gone@example.org": "550 5.1.1 no such user", "busy@example.org": "450 4.2.0 try later"}

    async def main() -> None:
        async with Harness(tmp_path, f'smarthost = "{host.address}"') as h:
            qid = await h.submit(ALICE, ["ok@example.org", "gone@example.org", "busy@example.org"])
            await h.settled(qid, "delivered", "ok@example.org")
            events = await h.settled(qid, "bounced", "gone@example.org")
            await h.settled(qid, "deferred", "busy@example.org")
            assert events["gone@example.org"].detail.endswith("550 5.1.1 no such user")
            [bounce] = await h.until(lambda: h.mailbox("HQ/alice"), "the bounce")
            message = parse(bounce)
            assert message["From"].addresses[0].username == "postmaster"
            assert message["To"].addresses[0].addr_spec == ALICE
            per_message, [recipient] = reports(message)
            assert per_message["Reporting-MTA"] == "dns; hq.acme.example"
            assert "Arrival-Date" in per_message
            assert recipient["Final-Recipient"] == "rfc822; gone@example.org"
            assert recipient["Action"] == "failed"
            assert recipient["Status"] == "5.1.1"
            assert recipient["Remote-MTA"] == "dns; 127.0.0.1"
            assert recipient["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
            headers = list(message.iter_parts())[2].get_content()
            assert "Subject: hello" in headers and "From: <alice@hq.acme.example>" in headers

    asyncio.run(main())
    assert host.recipients() == ["ok@example.org"]


def test_bounce_envelope_is_null_and_a_bounce_is_never_bounced(tmp_path: Path, host: ScriptedHost) -> None:
    """A bounce for an outside sender goes out from <> through the gateway;
    when that bounce is refused in turn, nothing more is generated."""
    host.script.rcpt = {"gone@example.org": "550 5.1.1 no such user",
                        "outside@example.net": "550 5.1.1 no such user either"}

    async def main() -> None:
        async with Harness(tmp_path, f'smarthost = "{host.address}"') as h:
            first = await h.submit("outside@example.net", ["gone@example.org"])
            await h.settled(first, "bounced", "gone@example.org")
            bounce = await h.submit("", ["gone@example.org"], subject="a report")
            await h.settled(bounce, "bounced", "gone@example.org")
            await h.until(lambda: _count_null_bounced(h), "the DSN to be refused too")
            # a DSN is written in the same transaction as the bounce it reports
            everything = await h.store.queue(states=["incoming", "active", "deferred",
                                                     "delivered", "bounced"])
            null_sender = sorted(e.address for e in everything if e.sender == "")
            assert null_sender == ["gone@example.org", "outside@example.net"]

    asyncio.run(main())


async def _count_null_bounced(h: Harness) -> bool:
    entries = await h.store.queue(states=["bounced"])
    return any(e.sender == "" and e.address == "outside@example.net" for e in entries)


def test_temporary_failures_back_off_warn_once_and_bounce_at_lifetime(tmp_path: Path, host: ScriptedHost) -> None:
    host.script.rcpt = {"slow@example.org": "451 4.3.0 try again later"}
    clock = Clock()
    delivery = 'retry_min = "1m"\nretry_max = "10m"\nwarn_after = "1h"\nlifetime = "3h"'

    async def main() -> None:
        async with Harness(tmp_path, f'smarthost = "{host.address}"', delivery, clock) as h:
            qid = await h.submit(ALICE, ["slow@example.org"])
            first = await h.settled(qid, "deferred", "slow@example.org")
            retry_at = await _next_attempt(h)
            assert retry_at - first["slow@example.org"].at == pytest.approx(60, abs=0.01)
            for _ in range(8):  # past warn_after, retried each time it is due
                clock.advance(20 * 60)
                await h.until(lambda: _attempts_above(h, qid), "a retry")
            assert len(await h.mailbox("HQ/alice")) == 1
            clock.advance(3 * 3600)
            await h.settled(qid, "bounced", "slow@example.org")
            mail = [parse(m) for m in await h.until(lambda: _two(h), "the bounce")]
            warning, bounce = sorted(mail, key=lambda m: "Delayed" not in str(m["Subject"]))
            _, [delayed] = reports(warning)
            assert delayed["Action"] == "delayed" and delayed["Status"] == "4.3.0"
            assert "Will-Retry-Until" in delayed
            _, [failed] = reports(bounce)
            assert failed["Action"] == "failed" and failed["Status"] == "5.4.7"
            assert failed["Diagnostic-Code"] == "smtp; 451 4.3.0 try again later"

    asyncio.run(main())


async def _next_attempt(h: Harness) -> float:
    [entry] = await h.store.queue(states=["deferred"])
    assert entry.next_attempt is not None
    return entry.next_attempt


_seen: dict[str, int] = {}


async def _attempts_above(h: Harness, qid: str) -> bool:
    entries = [e for e in await h.store.queue(states=["deferred"]) if e.message_id == qid]
    if entries and entries[0].attempts > _seen.get(qid, 0):
        _seen[qid] = entries[0].attempts
        return True
    return False


async def _two(h: Harness) -> list[bytes] | None:
    mail = await h.mailbox("HQ/alice")
    return mail if len(mail) == 2 else None


def test_failover_skips_a_host_that_is_down(tmp_path: Path, host: ScriptedHost, second: ScriptedHost) -> None:
    host.stop()
    gateway = f'smarthosts = ["{host.address}", "{second.address}"]'

    async def main() -> None:
        async with Harness(tmp_path, gateway) as h:
            for n in range(3):
                qid = await h.submit(ALICE, [f"r{n}@example.org"])
                await h.settled(qid, "delivered", f"r{n}@example.org")

    asyncio.run(main())
    assert second.recipients() == ["r0@example.org", "r1@example.org", "r2@example.org"]


def test_spread_uses_every_smart_host(tmp_path: Path, host: ScriptedHost, second: ScriptedHost) -> None:
    gateway = (f'smarthosts = ["{host.address}", "{second.address}"]\n'
               'smarthost_policy = "spread"\nmax_per_session = 1')

    async def main() -> None:
        async with Harness(tmp_path, gateway) as h:
            ids = [await h.submit(ALICE, [f"r{n}@example.org"]) for n in range(8)]
            for n, qid in enumerate(ids):
                await h.settled(qid, "delivered", f"r{n}@example.org")

    asyncio.run(main())
    assert host.received and second.received
    assert len(host.received) + len(second.received) == 8


def test_a_dropped_connection_defers_and_the_retry_delivers(tmp_path: Path, host: ScriptedHost) -> None:
    host.script.drop_at = "DATA"
    clock = Clock()

    async def main() -> None:
        async with Harness(tmp_path, f'smarthost = "{host.address}"', "", clock) as h:
            qid = await h.submit(ALICE, ["r@example.org"])
            events = await h.settled(qid, "deferred", "r@example.org")
            assert "4.4.2" in events["r@example.org"].detail
            host.script.drop_at = None
            clock.advance(61)
            await h.settled(qid, "delivered", "r@example.org")

    asyncio.run(main())
    assert host.recipients() == ["r@example.org"]


def test_421_too_many_connections_shrinks_sessions_and_loses_nothing(tmp_path: Path, host: ScriptedHost) -> None:
    host.script.max_connections = 2
    host.script.delay = 0.02
    gateway = f'smarthost = "{host.address}"\nmax_sessions = 6\nmax_per_session = 2'

    async def main() -> None:
        async with Harness(tmp_path, gateway) as h:
            ids = [await h.submit(ALICE, [f"r{n}@example.org"]) for n in range(40)]
            for n, qid in enumerate(ids):
                await h.settled(qid, "delivered", f"r{n}@example.org")
            assert not await h.mailbox("HQ/alice"), "nothing may bounce"
            assert h.send.gates[h.topo.gateways["GW1"].smarthosts[0]].allowed <= 3

    asyncio.run(main())
    assert host.refused > 0
    assert len(host.recipients()) == 40


def test_max_per_session_renews_the_session(tmp_path: Path, host: ScriptedHost) -> None:
    gateway = f'smarthost = "{host.address}"\nmax_sessions = 1\nmax_per_session = 2'

    async def main() -> None:
        async with Harness(tmp_path, gateway) as h:
            ids = [await h.submit(ALICE, [f"r{n}@example.org"]) for n in range(6)]
            for n, qid in enumerate(ids):
                await h.settled(qid, "delivered", f"r{n}@example.org")

    asyncio.run(main())
    assert host.peak == 1
    assert host.greeted >= 3


def test_smart_host_outage_under_a_steady_stream_loses_nothing(tmp_path: Path, host: ScriptedHost) -> None:
    """The smart host stops while mail keeps coming; every message is stored
    (the submitter never sees an error) and all of it arrives once it is back."""
    delivery = 'retry_min = 0.1\nretry_max = 0.3'

    async def main() -> None:
        async with Harness(tmp_path, f'smarthost = "{host.address}"', delivery) as h:
            ids: list[str] = []
            for n in range(60):
                ids.append(await h.submit(ALICE, [f"r{n}@example.org"]))
                if n == 15:
                    await asyncio.to_thread(host.stop)
                if n == 40:
                    await h.until(lambda: _some_deferred(h), "a deferral while the host is down")
                    await asyncio.to_thread(host.start)
                await asyncio.sleep(0.01)
            for n, qid in enumerate(ids):
                await h.settled(qid, "delivered", f"r{n}@example.org")
            assert not await h.mailbox("HQ/alice")

    asyncio.run(main())
    assert host.recipients() == sorted(f"r{n}@example.org" for n in range(60))


async def _some_deferred(h: Harness) -> bool:
    return bool(await h.store.queue(states=["deferred"]))


def test_delivery_log_has_one_json_line_per_recipient(
    tmp_path: Path, host: ScriptedHost, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("GATEPOST_LOG_FORMAT", "json")
    host.script.rcpt = {"gone@example.org": "550 5.1.1 no such user"}
    caplog.set_level(logging.INFO, logger="gatepost.send")

    async def main() -> str:
        async with Harness(tmp_path, f'smarthost = "{host.address}"') as h:
            qid = await h.submit(ALICE, ["ok@example.org", "gone@example.org"])
            await h.settled(qid, "delivered", "ok@example.org")
            await h.settled(qid, "bounced", "gone@example.org")
            return qid

    qid = asyncio.run(main())
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gatepost.send"]
    mine = sorted((line for line in lines if line["queue_id"] == qid), key=lambda x: x["to"])
    assert [(m["to"], m["status"], m["dsn"]) for m in mine] == [
        ("gone@example.org", "bounced", "5.1.1"), ("ok@example.org", "sent", "2.0.0")
    ]
    assert mine[0]["relay"] == host.address and mine[0]["reply"] == "550 5.1.1 no such user"
    assert isinstance(mine[0]["delay"], float)
