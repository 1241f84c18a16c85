"""End to end over loopback: the single-gateway network run as a user runs it,
fed by swaks, smtplib and smtp-source, handing outbound mail to smtp-sink or
the capture sink, and inspected only through the `gatepost` command."""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
import smtplib
import subprocess
from collections.abc import Callable
from email.message import EmailMessage, Message

import pytest

from conftest import MakeNet, Net
from support import Gatepost, Sink, tool, wait_for

ALICE = "alice@hq.acme.example"
CAROL = "carol@sales.acme.example"
OUTSIDE = "someone@example.org"


def delivered(net: Net, address: str, subject: str, count: int = 1) -> list[dict[str, object]]:
    """The rows of `address`'s mailbox with `subject`, once there are `count` of them."""

    def rows() -> list[dict[str, object]]:
        return [r for r in net.mailbox(address) if r["subject"] == subject]

    wait_for(lambda: len(rows()) >= count, 20, f"{count} x {subject!r} in {address}")
    found = rows()
    assert len(found) == count, found
    return found


def sunk(sink: Sink, subject: str, body: bytes) -> list[Message]:
    """What the smtp-sink smart host received with `subject`, once each such
    dump holds `body` in full (envelope lines become X- headers)."""

    def dumps() -> list[bytes]:
        return [m for m in sink.messages() if f"\nSubject: {subject}\n".encode() in m]

    def complete() -> bool:
        found = dumps()
        return bool(found) and all(body in m.partition(b"\n\n")[2] for m in found)

    wait_for(complete, 20, f"the smart host to receive {subject!r}")
    return [email.message_from_bytes(raw) for raw in dumps()]


def events(net: Net, queue_id: str) -> list[tuple[str, str, str]]:
    """`gatepost trace` rows as (recipient, event, postoffice)."""
    result = net.cli("trace", queue_id)
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()[1:]
    return [tuple(line.split()[2:5]) for line in lines]  # type: ignore[misc]


# 1. The receive side, driven by swaks


def test_swaks_mail_lands_in_the_mailbox(shared_net: Net) -> None:
    net = shared_net
    sent = net.swaks("--from", OUTSIDE, "--to", ALICE, "--header", "Subject: first light")
    assert sent.returncode == 0, sent.stdout
    [row] = delivered(net, ALICE, "first light")
    raw = net.show(ALICE, int(str(row["id"])))
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert (row["from"], row["to"], row["subject"]) == (OUTSIDE, ALICE, "first light")
    assert row["date"] == message["Date"] and email.utils.parsedate_to_datetime(str(row["date"]))
    assert row["size"] == len(raw)
    assert raw.startswith(b"Received: from ")
    assert "by hq.acme.example (gatepost) with ESMTP" in message["Received"]
    assert "This is a test mailing" in message.get_content()


def test_received_header_names_the_queue_id(shared_net: Net) -> None:
    net = shared_net
    assert net.swaks("--to", ALICE, "--header", "Subject: trace id").returncode == 0
    [row] = delivered(net, ALICE, "trace id")
    received = email.message_from_bytes(net.show(ALICE, int(str(row["id"]))))["Received"]
    assert f" id {row['queue_id']};" in " ".join(received.split())


def test_unknown_mailbox_is_refused_with_5_1_1(shared_net: Net) -> None:
    sent = shared_net.swaks("--from", OUTSIDE, "--to", "nobody@hq.acme.example")
    assert sent.returncode != 0
    assert re.search(r"^<\*\* +550 5\.1\.1 ", sent.stdout, re.MULTILINE), sent.stdout


def test_foreign_domain_from_untrusted_client_is_refused_with_5_7_1(
    make_net: MakeNet, sink: Sink, run_net: Callable[[Net], Gatepost]
) -> None:
    net = make_net(sink.port, relay_from='["10.0.0.0/8"]')
    run_net(net)
    sent = net.swaks("--from", ALICE, "--to", OUTSIDE)
    assert sent.returncode != 0
    assert re.search(r"^<\*\* +550 5\.7\.1 ", sent.stdout, re.MULTILINE), sent.stdout


def test_foreign_domain_from_trusted_client_is_relayed(shared_net: Net, shared_sink: Sink) -> None:
    sent = shared_net.swaks("--from", ALICE, "--to", OUTSIDE, "--header", "Subject: relay me")
    assert sent.returncode == 0, sent.stdout
    [message] = sunk(shared_sink, "relay me", b"This is a test mailing\n")
    assert message["X-Rcpt-Args"] == f"<{OUTSIDE}>"


# 2. `gatepost send`, the router and the send side


def test_send_from_sales_reaches_the_smart_host(shared_net: Net, shared_sink: Sink) -> None:
    shared_net.send(CAROL, OUTSIDE, subject="from sales")
    [message] = sunk(shared_sink, "from sales", b"hi\n")
    assert message["X-Mail-Args"].split()[0] == f"<{CAROL}>"
    assert message["X-Rcpt-Args"] == f"<{OUTSIDE}>"
    assert message["From"] == CAROL


def test_send_from_sales_reaches_the_capture_sink(captured_net: Net) -> None:
    captured_net.send(CAROL, OUTSIDE, subject="captured")
    wait_for(lambda: any(captured_net.captured.glob("*.eml")), 20, "a captured .eml file")
    [path] = captured_net.captured.glob("*.eml")
    message = email.message_from_bytes(path.read_bytes())
    assert (message["Return-Path"], message["X-Original-To"]) == (f"<{CAROL}>", f"<{OUTSIDE}>")
    assert (message["From"], message["Subject"]) == (CAROL, "captured")


@pytest.mark.parametrize(
    ("sender", "recipient", "start", "end"),
    [(CAROL, ALICE, "SALES", "HQ"), (ALICE, CAROL, "HQ", "SALES")],
)
def test_mail_between_postoffices_moves_through_the_router(
    shared_net: Net, sender: str, recipient: str, start: str, end: str
) -> None:
    subject = f"{start} to {end}"
    queue_id = shared_net.send(sender, recipient, subject=subject)
    [row] = delivered(shared_net, recipient, subject)
    assert row["queue_id"] == queue_id
    [received, moved, done] = events(shared_net, queue_id)
    assert (received, moved) == ((recipient, "received", start), (recipient, "moved", end))
    assert done[:2] == (recipient, "delivered")


def test_trace_shows_delivery_in_the_mailbox_postoffice(shared_net: Net) -> None:
    queue_id = shared_net.send(CAROL, ALICE, subject="where delivered")
    delivered(shared_net, ALICE, "where delivered")
    assert events(shared_net, queue_id)[-1] == (ALICE, "delivered", "HQ")


# 3. Python's smtplib against the receive side


def smtp_message(subject: str, to: str = ALICE) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = OUTSIDE, to, subject
    message.set_content("hello")
    return message


def test_several_messages_over_one_connection(shared_net: Net) -> None:
    with smtplib.SMTP("127.0.0.1", shared_net.port, timeout=20) as client:
        for _ in range(3):
            client.send_message(smtp_message("one connection"))
    delivered(shared_net, ALICE, "one connection", 3)


def test_one_message_to_three_postoffices(shared_net: Net) -> None:
    recipients = [ALICE, CAROL, "erin@eng.acme.example"]
    with smtplib.SMTP("127.0.0.1", shared_net.port, timeout=20) as client:
        refused = client.send_message(smtp_message("to all"), to_addrs=recipients)
    assert refused == {}
    for address in recipients:
        delivered(shared_net, address, "to all")


@pytest.mark.parametrize("address", ["alice@acme.example", "ALICE@HQ.ACME.EXAMPLE"])
def test_org_wide_domain_and_any_case_reach_hq_alice(shared_net: Net, address: str) -> None:
    with smtplib.SMTP("127.0.0.1", shared_net.port, timeout=20) as client:
        client.send_message(smtp_message(f"to {address}", address), to_addrs=[address])
    delivered(shared_net, "ACME/HQ/alice", f"to {address}")


def test_null_sender_is_accepted(shared_net: Net) -> None:
    with smtplib.SMTP("127.0.0.1", shared_net.port, timeout=20) as client:
        client.send_message(smtp_message("from nobody"), from_addr="", to_addrs=[ALICE])
    delivered(shared_net, ALICE, "from nobody")


# 4. Smart host failures


def test_soft_reject_leaves_the_recipient_deferred(
    make_net: MakeNet, start_sink: Callable[..., Sink], run_net: Callable[[Net], Gatepost]
) -> None:
    net = make_net(start_sink("-r", "RCPT").port)
    run_net(net)
    queue_id = net.send(CAROL, OUTSIDE)
    wait_for(lambda: any(r["state"] == "deferred" for r in net.mailq()), 20, "a deferred recipient")
    [row] = net.mailq()
    assert (row["id"], row["recipient"], row["state"]) == (queue_id, OUTSIDE, "deferred")
    assert row["attempts"] >= 1 and row["last_reply"] == "450 4.3.0 Error: command failed"


def dsn_status(report: bytes) -> Message:
    """The per-recipient part of a multipart/report delivery status notification."""
    message = email.message_from_bytes(report)
    assert message.get_content_type() == "multipart/report"
    [status] = [p for p in message.walk() if p.get_content_type() == "message/delivery-status"]
    groups = status.get_payload()
    assert isinstance(groups, list) and len(groups) == 2, groups
    recipient = groups[1]
    assert isinstance(recipient, Message)
    return recipient


def test_hard_reject_bounces_with_a_report_to_the_sender(
    make_net: MakeNet, start_sink: Callable[..., Sink], run_net: Callable[[Net], Gatepost]
) -> None:
    net = make_net(start_sink("-f", "RCPT").port)
    run_net(net)
    queue_id = net.send(CAROL, OUTSIDE)
    [row] = delivered(net, CAROL, "Undelivered Mail Returned to Sender")
    status = dsn_status(net.show(CAROL, int(str(row["id"]))))
    assert ("bounced", "HQ") in [e[1:] for e in events(net, queue_id)]
    assert status["Final-Recipient"] == f"rfc822; {OUTSIDE}"
    assert status["Action"] == "failed"
    assert status["Status"] == "5.3.0"
    assert status["Diagnostic-Code"] == "smtp; 500 5.3.0 Error: command failed"
    assert net.mailq() == []


def test_bounce_of_mail_from_null_sender_makes_no_report(
    make_net: MakeNet, start_sink: Callable[..., Sink], run_net: Callable[[Net], Gatepost]
) -> None:
    net = make_net(start_sink("-f", "RCPT").port)
    process = run_net(net)
    silent = net.send("postmaster@sales.acme.example", OUTSIDE)  # postmaster sends as <>
    wait_for(lambda: ("bounced", "HQ") in [e[1:] for e in events(net, silent)], 20, "the bounce")
    control = net.send(CAROL, OUTSIDE)  # its report is routed after any report about `silent`
    [report] = delivered(net, CAROL, "Undelivered Mail Returned to Sender")
    wait_for(lambda: f"{report['queue_id']}: " in process.output(), 10, "the report's log line")
    logged = set(re.findall(r"\b([0-9A-Z]{16}): ", process.output()))
    assert logged == {silent, control, report["queue_id"]}
    assert net.mailbox("postmaster@sales.acme.example") == []
    assert net.mailbox("postmaster@hq.acme.example") == []


# 5. Stopping


def test_sigterm_stops_run_with_status_0(make_net: MakeNet, sink: Sink) -> None:
    net = make_net(sink.port)
    process = Gatepost(net.config)
    assert net.swaks("--to", ALICE).returncode == 0
    assert process.stop() == 0
    assert "Traceback" not in process.output()


# 6. Throughput (correctness only; timings belong to `make bench`)


def test_smtp_source_500_messages_all_arrive(net: Net) -> None:
    source = subprocess.run(
        [tool("smtp-source"), "-s", "20", "-l", "8192", "-m", "500", "-f", "x@example.org",
         "-t", ALICE, f"127.0.0.1:{net.port}"],
        check=False, capture_output=True, timeout=60,
    )
    assert source.returncode == 0, source.stderr.decode()
    wait_for(lambda: len(net.mailbox(ALICE)) >= 500, 45, "500 messages in alice's mailbox")
    assert len(net.mailbox(ALICE)) == 500
