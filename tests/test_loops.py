"""Mail loops end (issue 9, item 3).

The receive side counts the Received and Delivered-To fields of a message's
header section as Postfix does (hopcount_limit, 50 by default) and answers
554 5.4.6 at the end of DATA at or above the limit; the count is stored with
the message, and the router bounces a recipient whose message reached the
limit inside the network; `check` refuses a smart host that is a listen
address of the topology; and a smart host that hands every message back makes
at most hop-limit copies before the sender gets a 5.4.6 bounce.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.utils
import re
import smtplib
import socketserver
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from email.message import Message
from pathlib import Path

import pytest

from conftest import MakeNet, Net
from gatepost.receive.side import HopCount
from gatepost.router import Router, plan
from gatepost.store import (
    ROUTER,
    Bounced,
    Job,
    NewMessage,
    NewRecipient,
    SqliteDb,
    SqliteStore,
)
from gatepost.topology import load
from gatepost.topology.model import Limits
from support import Gatepost, free_port, gatepost, old_store, wait_for

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "single-gateway.toml"
ALICE = "alice@hq.acme.example"
CAROL = "carol@sales.acme.example"
OUTSIDE = "someone@example.org"
HOP_FIELD = re.compile(rb"^(?:received|delivered-to)[ \t]*:", re.IGNORECASE | re.MULTILINE)


def header(received: int = 0, delivered_to: int = 0, subject: str = "hops") -> bytes:
    """A header section: `received` folded Received fields, then `delivered_to`
    Delivered-To fields, then From, To and Subject, and the empty line."""
    date = "Mon, 01 Jan 2024 00:00:00 +0000"
    lines = [f"Received: from relay{i}.example.org\r\n\tby relay{i + 1}.example.org;\r\n\t{date}"
             for i in range(received)]
    lines += [f"Delivered-To: list{i}@example.org" for i in range(delivered_to)]
    lines += [f"From: <{OUTSIDE}>", f"To: <{ALICE}>", f"Subject: {subject}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def stored_hops(net: Net) -> dict[str, tuple[str, int]]:
    """Every stored message: queue id -> (received_by, hops), read from the store file."""
    with closing(sqlite3.connect(net.config.parent / "var" / "acme.db")) as conn:
        rows = conn.execute("SELECT id, received_by, hop_count FROM messages ORDER BY created, id")
        return {row[0]: (row[1], row[2]) for row in rows}


def stored_count(net: Net) -> int:
    with closing(sqlite3.connect(net.config.parent / "var" / "acme.db")) as conn:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])


def send_data(net: Net, content: bytes) -> tuple[int, bytes]:
    """One message from outside to alice over SMTP; the reply to its content."""
    with smtplib.SMTP("127.0.0.1", net.port, timeout=30) as client:
        client.ehlo("client.example.org")
        client.mail(OUTSIDE)
        assert client.rcpt(ALICE)[0] == 250
        return client.data(content)


def accepted(net: Net, content: bytes, hops: int) -> None:
    """`content` gets 250, is stored with `hops` hops, and reaches alice's mailbox."""
    code, text = send_data(net, content)
    assert code == 250, text
    found = re.search(rb"queued as ([0-9A-Z]+)", text)
    assert found, text
    queue_id = found.group(1).decode()
    assert stored_hops(net)[queue_id] == ("gateway:GW1", hops)
    wait_for(lambda: any(r["queue_id"] == queue_id for r in net.mailbox(ALICE)), 60,
             f"{queue_id} in alice's mailbox")


def report_status(raw: bytes) -> Message:
    """The per-recipient fields of a delivery status notification."""
    report = email.message_from_bytes(raw)
    assert report.get_content_type() == "multipart/report"
    [status] = [p for p in report.walk() if p.get_content_type() == "message/delivery-status"]
    groups = status.get_payload()
    assert isinstance(groups, list) and len(groups) == 2, groups
    recipient = groups[1]
    assert isinstance(recipient, Message)
    return recipient


# 1. Counting in the header section, however the content arrives


def count(*pieces: bytes) -> int:
    hops = HopCount()
    for piece in pieces:
        hops.add(piece)
    return hops.count


def test_only_the_header_section_is_counted_in_any_split_at_line_ends() -> None:
    body = b"Received: from a body line\r\nDelivered-To: not a field here\r\n" * 3
    content = header(received=3, delivered_to=2) + body
    lines = content.splitlines(keepends=True)
    assert count(content) == 5
    assert count(*lines) == 5
    for cut in range(len(lines) + 1):
        assert count(b"".join(lines[:cut]), b"".join(lines[cut:])) == 5, cut


@pytest.mark.parametrize(
    ("fields", "hops"),
    [
        (b"received: a\r\nRECEIVED : b\r\nReceived\t: c\r\ndelivered-TO: d\r\n", 4),
        (b"X-Received: a\r\nReceived-SPF: b\r\nX-Delivered-To: c\r\nReceivedX: d\r\n", 0),
        (b"Received: a\r\n Received: a continuation\r\n\tDelivered-To: too\r\n", 1),
        (b"Received: a\r\nnot a field: the header section ends here\r\nReceived: b\r\n", 1),
        (b"\r\nReceived: the body\r\n", 0),
    ],
)
def test_field_names_as_postfix_counts_them(fields: bytes, hops: int) -> None:
    assert count(fields + b"\r\nbody\r\n") == hops


# 2. The receive side, over SMTP, with the default limit of 50


@pytest.mark.parametrize(
    ("received", "delivered_to"), [(50, 0), (0, 50), (25, 25), (60, 3)]
)
def test_fifty_hops_are_refused_at_the_end_of_data_with_5_4_6(
    shared_net: Net, received: int, delivered_to: int
) -> None:
    before = stored_count(shared_net)
    code, text = send_data(shared_net, header(received, delivered_to) + b"hello\r\n")
    assert (code, text) == (554, b"5.4.6 Too many hops")
    assert stored_count(shared_net) == before  # nothing stored


@pytest.mark.parametrize(("received", "delivered_to"), [(49, 0), (24, 25), (0, 0)])
def test_fewer_hops_are_accepted_and_the_count_is_stored(
    shared_net: Net, received: int, delivered_to: int
) -> None:
    accepted(shared_net, header(received, delivered_to) + b"hello\r\n", received + delivered_to)


def test_header_like_lines_in_the_body_do_not_count(shared_net: Net) -> None:
    body = b"Received: from a quoted message\r\nDelivered-To: quoted too\r\n" * 40
    accepted(shared_net, header(49, subject="quoted") + body, 49)


FILLER = b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"f" * 90) for i in range(4000))  # ~430 KB


def test_hops_after_a_header_larger_than_a_content_piece_count(shared_net: Net) -> None:
    """The 256 KiB filler makes the core hand the content over in pieces: the
    Received fields after it arrive in another piece than those before it."""
    first, second = header(25), header(25)
    content = first.removesuffix(b"\r\n") + FILLER + second + b"hello\r\n"
    assert send_data(shared_net, content) == (554, b"5.4.6 Too many hops")


def test_a_spooled_message_body_is_not_counted(shared_net: Net) -> None:
    body = b"Received: from a line of a large body, spooled to a file\r\n" * 40000  # ~2.4 MB
    accepted(shared_net, header(49, subject="large") + body, 49)


# 3. The router: a message that reached the limit inside the network bounces


def job(hops: int, mailbox: str | None = None) -> Job:
    return Job("Q1", 0, CAROL, OUTSIDE, mailbox, "SALES", "SALES", ROUTER, 0, 0.0, None, 10,
               hop_count=hops)


def test_router_plan_bounces_at_the_limit_with_5_4_6() -> None:
    topo = dataclasses.replace(load(EXAMPLE), limits=Limits(hopcount_limit=10))
    for mailbox in (None, "HQ/alice"):
        [step] = plan(topo, job(10, mailbox), lambda gateway: True)
        assert isinstance(step, Bounced) and step.reply.startswith("554 5.4.6 Too many hops")
        assert "(10, limit 10)" in step.reply
        assert not any(isinstance(s, Bounced) for s in plan(topo, job(9, mailbox), lambda g: True))


def test_router_bounces_a_stored_message_over_the_limit_to_its_sender(tmp_path: Path) -> None:
    topo = load(EXAMPLE)  # hopcount_limit 50
    path = tmp_path / "store.db"
    with closing(SqliteDb(path)) as store:
        looping = NewMessage(CAROL, (NewRecipient(OUTSIDE, None),), b"Subject: round\r\n\r\nx\r\n",
                             "SALES", "SALES", "alias", hop_count=51)
        [queue_id] = store.enqueue([looping], now=1.0)

    async def route() -> None:
        async_store = SqliteStore(path)
        try:
            router = Router(topo, async_store)
            assert await router.step() == 1  # the looping recipient: bounced
            assert await router.step() == 1  # the report: into carol's mailbox
        finally:
            await async_store.aclose()

    asyncio.run(route())
    with closing(SqliteDb(path)) as store:
        assert [h.event for h in store.hops(queue_id)] == ["received", "bounced"]
        [entry] = store.mailbox("SALES/carol")
        content = store.mailbox_content("SALES/carol", entry.entry_id)
    assert content is not None
    status = report_status(content)
    assert (status["Action"], status["Status"]) == ("failed", "5.4.6")
    assert status["Final-Recipient"] == f"rfc822; {OUTSIDE}"
    assert "554 5.4.6 Too many hops (51, limit 50)" in str(status["Diagnostic-Code"])


# 4. The store keeps the count, also in a file made before it had one


def test_the_store_keeps_the_hop_count_of_each_message(tmp_path: Path) -> None:
    with closing(SqliteDb(tmp_path / "store.db")) as store:
        mail = [NewMessage(CAROL, (NewRecipient(OUTSIDE, None),), b"x", "HQ", "HQ", "test", hop_count=n)
                for n in (0, 7)]
        ids = store.enqueue(mail, now=1.0)
        jobs = store.claim(ROUTER, "w", 10, 60.0, now=2.0)
    assert {j.message_id: j.hop_count for j in jobs} == dict(zip(ids, [0, 7]))


def test_a_version_3_store_gets_hop_counts_of_zero(tmp_path: Path) -> None:
    path = old_store(tmp_path / "old.db", 3)
    with closing(SqliteDb(path)) as store:
        assert store.version() >= 4
        store.enqueue([NewMessage(CAROL, (NewRecipient(OUTSIDE, None),), b"x", "HQ", "HQ", "t")],
                      now=1.0)
        [claimed] = store.claim(ROUTER, "w", 10, 60.0, now=2.0)
    assert claimed.hop_count == 0


# 5. `gatepost check` refuses gateways that are each other's smart host


def test_check_refuses_gateways_that_are_each_others_smart_host(tmp_path: Path) -> None:
    gw1, gw2 = free_port(), free_port()
    text = EXAMPLE.read_text().replace('serves = ["HQ", "SALES", "ENG", "OPS"]', 'serves = ["HQ"]')
    text = text.replace("127.0.0.1:2525", f"127.0.0.1:{gw1}")
    text = text.replace('smarthost = "127.0.0.1:2526"', f'smarthost = "127.0.0.1:{gw2}"')
    text += (f'\n[gateways.GW2]\npostoffice = "SALES"\nlisten = "0.0.0.0:{gw2}"\n'
             f'smarthost = "localhost:{gw1}"\nserves = ["SALES", "ENG", "OPS"]\n')
    config = tmp_path / "loop.toml"
    config.write_text(text)
    result = gatepost(config, "check")
    output = (result.stdout + result.stderr).decode()
    assert result.returncode != 0, output
    assert re.search(rf"gateways\.GW1\.smarthost: 127\.0\.0\.1:{gw2} is the listen address of "
                     r"gateways\.GW2: a mail loop", output), output
    assert re.search(rf"gateways\.GW2\.smarthost: localhost:{gw1} is the listen address of "
                     r"gateways\.GW1: a mail loop", output), output


# 6. A smart host that hands every message back


class Looper(socketserver.ThreadingTCPServer):
    """A smart host that hands every message straight back to the gateway's
    receive side (adding its own Received field, as every MTA does) and answers
    with the reply it got there; it keeps each copy it was given."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, gateway: int) -> None:
        super().__init__(("127.0.0.1", port), LoopSession)
        self.gateway = gateway
        self.copies: list[bytes] = []
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def relay(self, sender: str, recipients: list[str], content: bytes) -> str:
        with self.lock:
            self.copies.append(content)
        trace = f"Received: from gateway\r\n\tby looper.example.org; {email.utils.formatdate()}\r\n"
        try:
            with smtplib.SMTP("127.0.0.1", self.gateway, timeout=30) as client:
                client.sendmail(sender, recipients, trace.encode() + content)
        except smtplib.SMTPResponseException as error:
            return f"{error.smtp_code} {error.smtp_error.decode()}"
        except (smtplib.SMTPException, OSError) as error:
            return f"451 4.4.1 could not hand it back: {error}"
        return "250 2.0.0 Ok: handed back"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class LoopSession(socketserver.StreamRequestHandler):
    server: Looper

    def handle(self) -> None:
        self.reply("220 looper.example.org ESMTP")
        sender, recipients = "", []
        for line in self.rfile:
            verb = line[:4].upper()
            if verb == b"DATA":
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                self.reply(self.server.relay(sender, recipients, self.content()))
                continue
            if verb == b"QUIT":
                self.reply("221 2.0.0 Bye")
                return
            if verb == b"MAIL":
                sender, recipients = path(line), []
            elif verb == b"RCPT":
                recipients.append(path(line))
            self.reply("250 looper.example.org" if verb in (b"EHLO", b"HELO") else "250 2.0.0 Ok")

    def content(self) -> bytes:
        lines = []
        for line in self.rfile:
            if line == b".\r\n":
                break
            lines.append(line[1:] if line.startswith(b".") else line)
        return b"".join(lines)

    def reply(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")


def path(command: bytes) -> str:
    return command.partition(b"<")[2].partition(b">")[0].decode()


@pytest.fixture
def looper() -> Iterator[Callable[[int, int], Looper]]:
    started: list[Looper] = []

    def start(port: int, gateway: int) -> Looper:
        started.append(Looper(port, gateway))
        return started[-1]

    yield start
    for server in started:
        server.stop()


LIMIT = 10


def test_a_smart_host_that_hands_mail_back_loops_until_the_hop_limit(
    make_net: MakeNet, run_net: Callable[[Net], Gatepost], looper: Callable[[int, int], Looper]
) -> None:
    net = make_net(free_port())
    with net.config.open("a") as config:
        config.write(f"\n[limits]\nhopcount_limit = {LIMIT}\n")
    host = looper(net.smarthost, net.port)
    run_net(net)
    queue_id = net.send(CAROL, OUTSIDE, subject="round and round")

    def bounced() -> list[dict[str, object]]:
        return [r for r in net.mailbox(CAROL) if r["subject"] == "Undelivered Mail Returned to Sender"]

    wait_for(lambda: bool(bounced()), 120, "the loop's bounce in carol's mailbox")
    wait_for(lambda: net.mailq() == [], 60, "an empty mail queue")
    [report] = bounced()
    status = report_status(net.show(CAROL, int(str(report["id"]))))
    assert (status["Action"], status["Status"]) == ("failed", "5.4.6")
    assert status["Final-Recipient"] == f"rfc822; {OUTSIDE}"
    assert "554 5.4.6 Too many hops" in str(status["Diagnostic-Code"])

    # Each pass adds two Received fields (the looper's and the gateway's): the
    # looper got copies with 0, 2, ... fields, and the gateway refused the one
    # that came back with 11, so at most LIMIT copies were made.
    copies = [len(HOP_FIELD.findall(c.partition(b"\r\n\r\n")[0] + b"\r\n")) for c in host.copies]
    assert len(copies) <= LIMIT
    assert copies == [0, 2, 4, 6, 8, 10]
    assert all(b"Subject: round and round" in c for c in host.copies)
    stored = stored_hops(net)
    assert len(stored) <= LIMIT + 1  # the copies and the one report
    assert stored[queue_id] == ("cli", 0)
    gateway = [hops for by, hops in stored.values() if by == "gateway:GW1"]
    assert gateway == [1, 3, 5, 7, 9]
    assert [by for by, _ in stored.values()].count("bounce") == 1
