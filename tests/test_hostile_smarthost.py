"""A smart host that misbehaves at any stage of a session, whatever it sends
or fails to send: each message is delivered exactly once when the host
accepted it and deferred (4.x.x, never bounced) otherwise, the send side's
workers go on, and once the host behaves the mail goes through, once. Also
a refused RSET, a peer that stops reading, the policy functions that turn
session trouble into replies, and `gatepost run` as a real process under its
supervisor against a host that sends garbage after accepting a message."""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import trustme

from gatepost import policy
from gatepost.send import outbound
from gatepost.smtp.events import ProtocolError, Reply
from gatepost.store import Hop, NewMessage, NewRecipient, SqliteDb
from scripted import ALICE, SENT_AFTER, STAGES, TROUBLES, Clock, Harness, ScriptedHost
from support import SEND_ONLY, Gatepost, wait_for

TIMEOUT = 2.0  # every outbound deadline, shortened
RCPT = "r@example.org"
DEFERRAL = re.compile(r"\b4\d\d 4\.\d{1,3}\.\d{1,3} ")  # a 4xx reply with a 4.x.x status
SESSION_STAGES = ("greeting", "EHLO", "STARTTLS", "AUTH")


def meaningful(stage: str, trouble: str) -> bool:
    """A banner is a greeting; a 5xx to MAIL, RCPT or DATA decides its recipients;
    a reply that comes during the content cannot be told from the final one."""
    if trouble == "banner":
        return stage == "greeting"
    if (stage, trouble) == ("content", "extra reply"):
        return False
    return trouble != "refused" or stage in (*SESSION_STAGES, "RSET", "QUIT")


CASES = [(s, t) for s in STAGES for t in TROUBLES if meaningful(s, t)]


def expected(stage: str, trouble: str) -> set[str]:
    """The outcomes a first attempt may have."""
    if stage == "RSET":
        return {"deferred"}  # the 451 to MAIL decided it, whatever RSET got
    if stage == "QUIT" or trouble == "slow" or (stage, trouble) == ("EHLO", "refused"):
        return {"delivered"}  # QUIT's reply is not awaited; a refused EHLO is followed by HELO
    if stage == "dot" and trouble in SENT_AFTER:
        return {"delivered"}  # the reply to the final dot came clean; what follows is too late
    if stage == "STARTTLS" and trouble in SENT_AFTER:
        return {"delivered", "deferred"}  # what comes with the 220 is dropped, later breaks TLS
    return {"deferred"}


@pytest.fixture(autouse=True)
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REPLY_TIMEOUT", "FINAL_TIMEOUT", "SEND_TIMEOUT"):
        monkeypatch.setattr(outbound, name, TIMEOUT)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def gateway_for(stage: str, host: ScriptedHost, ca: trustme.CA, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> str:
    """GW1's settings, and the host's script, that reach `stage`."""
    gateway = f'smarthost = "{host.address}"\nmax_sessions = 1'
    if stage == "STARTTLS":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        host.script.tls = context
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        gateway += f'\ntls = "required"\ntls_ca = "{tmp_path / "ca.pem"}"'
    if stage == "AUTH":
        monkeypatch.setenv("RELAY_PASSWORD", "secret")
        host.script.login = ("gw1", "secret")
        gateway += '\ntls = "none"\nauth_user = "gw1"\nauth_password_env = "RELAY_PASSWORD"'
    if stage == "RSET":
        host.script.mail_reply = "451 4.3.0 try again later"
    if stage == "QUIT":
        gateway += "\nmax_per_session = 1"
    return gateway


async def outcome(h: Harness, queue_id: str) -> Hop:
    """The first outcome of the message's one recipient."""
    async def decided() -> Hop | None:
        hop = (await h.events(queue_id)).get(RCPT)
        return hop if hop and hop.event in ("delivered", "deferred", "bounced") else None
    found: Hop = await h.until(decided, "an outcome", timeout=60)
    return found


async def troubled(h: Harness, host: ScriptedHost) -> None:
    async def done() -> bool:
        return host.troubles > 0
    await h.until(done, "the host to misbehave", timeout=60)


def behave(host: ScriptedHost) -> None:
    host.script.trouble = None
    host.script.mail_reply = "250 2.1.0 ok"


async def delivered(h: Harness, clock: Clock, *queue_ids: str) -> None:
    """Wait until every message is delivered, skipping ahead to each retry."""
    async def done() -> bool:
        latest = [(await h.events(qid)).get(RCPT) for qid in queue_ids]
        if any(hop and hop.event == "deferred" for hop in latest):
            clock.advance(61)
        return all(hop and hop.event == "delivered" for hop in latest)
    await h.until(done, "every message delivered", timeout=60)


@pytest.mark.parametrize(("stage", "trouble"), CASES, ids=[f"{s}-{t}" for s, t in CASES])
def test_a_misbehaving_smart_host_ends_one_session_and_nothing_else(
    tmp_path: Path, host: ScriptedHost, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch,
    stage: str, trouble: str,
) -> None:
    gateway = gateway_for(stage, host, ca, tmp_path, monkeypatch)
    host.script.trouble, host.script.trouble_at = trouble, stage
    clock = Clock()

    async def main() -> None:
        async with Harness(tmp_path, gateway, "", clock) as h:
            qid = await h.submit(ALICE, [RCPT], subject="first")
            first = await outcome(h, qid)
            await troubled(h, host)
            assert first.event in expected(stage, trouble), first.detail
            assert (first.event == "delivered") == (host.copies("first") == 1)
            if first.event == "deferred":
                assert DEFERRAL.search(first.detail), first.detail
            assert h.alive(), "a worker of the send side ended"
            behave(host)
            second = await h.submit(ALICE, [RCPT], subject="second")
            await delivered(h, clock, qid, second)
            assert h.alive()
            assert not await h.mailbox("HQ/alice"), "nothing may bounce"

    asyncio.run(main())
    assert (host.copies("first"), host.copies("second")) == (1, 1)


def test_451_to_mail_then_5xx_to_rset_defers_and_a_new_session_delivers(
    tmp_path: Path, host: ScriptedHost
) -> None:
    """The 451 decides the first message (deferred, not bounced with the RSET's
    554); the session ends; the next message goes on a new session; the retry
    delivers the first."""
    host.script.mail_reply = "451 4.3.0 try again later"
    host.script.trouble, host.script.trouble_at, host.script.trouble_times = "refused", "RSET", 1
    clock = Clock()

    async def main() -> None:
        async with Harness(tmp_path, f'smarthost = "{host.address}"\nmax_sessions = 1', "",
                           clock) as h:
            qid = await h.submit(ALICE, [RCPT], subject="first")
            first = await outcome(h, qid)
            assert first.event == "deferred" and "451 4.3.0 try again later" in first.detail
            host.script.mail_reply = "250 2.1.0 ok"
            other = await h.submit(ALICE, ["s@example.org"], subject="second")
            await h.settled(other, "delivered", "s@example.org")
            clock.advance(61)
            await h.settled(qid, "delivered", RCPT)
            assert h.alive() and not await h.mailbox("HQ/alice")

    asyncio.run(main())
    assert host.troubles == 1 and host.greeted >= 2
    assert (host.copies("first"), host.copies("second")) == (1, 1)


@pytest.mark.parametrize("size", [900_000, 4 << 20], ids=["whole", "streamed"])
def test_a_peer_that_stops_reading_costs_one_timeout(
    tmp_path: Path, host: ScriptedHost, size: int
) -> None:
    """The host reads the first line of the content and then nothing: the
    message is deferred once the write deadline passes, and the worker goes on."""
    host.script.trouble, host.script.trouble_at, host.script.trouble_times = "silent", "content", 1
    clock = Clock()

    async def main() -> None:
        async with Harness(tmp_path, f'smarthost = "{host.address}"\nmax_sessions = 1', "",
                           clock) as h:
            qid = await h.submit(ALICE, [RCPT], subject="large",
                                 body=("x" * 998 + "\r\n") * (size // 1000))
            first = await outcome(h, qid)
            assert first.event == "deferred" and "4.4.2 timed out" in first.detail
            assert h.alive()
            clock.advance(61)
            await h.settled(qid, "delivered", RCPT)

    asyncio.run(main())
    assert host.copies("large") == 1


@pytest.mark.parametrize("error", [RuntimeError("a bug"), ssl.SSLError(1, "decryption failed")],
                         ids=["bug", "ssl"])
def test_any_error_in_a_session_defers_and_the_worker_goes_on(
    tmp_path: Path, host: ScriptedHost, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, error: Exception,
) -> None:
    """An error of our own making is logged with its traceback; the mail waits."""
    transact = outbound.Outbound.transact
    failures = [error]

    async def failing(session: outbound.Outbound, *args: Any) -> list[Reply]:
        if failures:
            raise failures.pop()
        return await transact(session, *args)

    monkeypatch.setattr(outbound.Outbound, "transact", failing)
    clock = Clock()

    async def main() -> None:
        async with Harness(tmp_path, f'smarthost = "{host.address}"\nmax_sessions = 1', "",
                           clock) as h:
            qid = await h.submit(ALICE, [RCPT], subject="first")
            first = await outcome(h, qid)
            assert first.event == "deferred" and DEFERRAL.search(first.detail), first.detail
            assert h.alive()
            await delivered(h, clock, qid)

    asyncio.run(main())
    assert host.copies("first") == 1
    [logged] = [r for r in caplog.records if r.name == "gatepost.send.session"]
    assert str(error) in logged.getMessage()
    assert (logged.exc_info is not None) == isinstance(error, RuntimeError)


@pytest.mark.parametrize(
    ("trouble", "reply"),
    [
        (Reply.of(554, "5.7.1 go away"), "451 4.7.1 554 5.7.1 go away"),
        (Reply.of(550, "no"), "451 4.0.0 550 no"),
        (Reply.of(421, "4.3.2 busy"), "421 4.3.2 busy"),
        ("4.7.4 TLS is required", "451 4.7.4 TLS is required"),
        ("5.3.0 odd", "451 4.3.0 odd"),
        ("no status", "451 4.0.0 no status"),
    ],
)
def test_session_trouble_is_never_permanent(trouble: Reply | str, reply: str) -> None:
    got = policy.session_failed(trouble)
    assert f"{got.code} {got.text}" == reply


@pytest.mark.parametrize(
    ("error", "status"),
    [(TimeoutError(), "4.4.2"), (ConnectionResetError(104, "reset"), "4.4.2"),
     (ssl.SSLError(1, "bad record"), "4.4.2"), (ProtocolError("malformed reply line"), "4.5.0"),
     (KeyError("bug"), "4.3.0")],
)
def test_any_error_that_ends_a_session_defers(error: Exception, status: str) -> None:
    reply = policy.session_failed(policy.error_trouble(error))
    assert reply.code == 451 and reply.text.startswith(status + " ")


# ---- gatepost run, under its supervisor ----------------------------------------

TOPOLOGY = SEND_ONLY + "max_sessions = 1\n\n[delivery]\nretry_min = 1\n"


def test_garbage_after_an_accepted_message_restarts_nothing_and_resends_nothing(
    tmp_path: Path,
) -> None:
    """Two messages wait when `gatepost run` starts; the host accepts the first
    and then sends a malformed line. Each arrives exactly once, and the
    supervisor never had to restart anything."""
    host = ScriptedHost().start()
    host.script.trouble, host.script.trouble_at = "garbage after", "dot"
    host.script.trouble_times = 1
    config = tmp_path / "gatepost.toml"
    config.write_text(TOPOLOGY.format(smarthost=host.address))
    store = SqliteDb(tmp_path / "var" / "acme.db")
    store.enqueue([NewMessage(ALICE, (NewRecipient(RCPT, None),),
                              f"Subject: m{n}\r\n\r\nhi\r\n".encode(), "HQ", "HQ", "test")
                   for n in range(2)], time.time())
    store.close()
    process = Gatepost(config)
    try:
        wait_for(lambda: host.copies("m0") > 0 and host.copies("m1") > 0, 60, "both messages")
        wait_for(lambda: host.open == 0, 30, "the session to end")
    finally:
        process.stop()
        host.close()
    log = process.output()
    assert (host.copies("m0"), host.copies("m1")) == (1, 1), log
    assert host.troubles == 1
    assert "restarting" not in log and "exited with status" not in log, log
    assert "session ended" in log and "garbage" in log, log


def test_a_host_slower_than_the_lease_gets_one_copy(
    tmp_path: Path, host: ScriptedHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The final dot's reply takes four leases: the claim is renewed while the
    host is silent, so no other worker takes the message and sends it again."""
    for name in ("REPLY_TIMEOUT", "FINAL_TIMEOUT"):
        monkeypatch.setattr(outbound, name, 30.0)
    host.script.trouble, host.script.trouble_at, host.script.slow = "slow", "dot", 4.0

    async def main() -> None:
        gateway = f'smarthost = "{host.address}"\nmax_sessions = 4'
        async with Harness(tmp_path, gateway, queue='lease = "1s"') as h:
            qid = await h.submit(ALICE, [RCPT], subject="slow")
            await h.settled(qid, "delivered", RCPT)
            await asyncio.sleep(2.0)  # room for a second worker's copy, were there one
            assert h.alive()

    asyncio.run(main())
    assert host.copies("slow") == 1 and host.greeted == 1
