"""Delivery policy: pure functions, no I/O, no clock of their own.

When to retry, when to give up, what a reply means, and what a
non-delivery report says. The send side asks; it decides nothing itself.
"""

from __future__ import annotations

import email.utils
import uuid
from dataclasses import dataclass

from gatepost.topology.model import Delivery

LEASE = 120.0  # how long a claim stays valid without renewal
HEARTBEAT = 1.0  # how often a running gateway says so in the store
HEARTBEAT_TTL = 5.0  # a gateway silent for longer is taken as stopped
BUSY_RETRY = 5.0  # seconds before mail refused with 421 (too busy) is tried again
DEAD_HOST = 60.0  # a smart host that could not be reached is tried last for this long
SHRINK_FOR = 60.0  # after a 421, fewer sessions to that host for this long
DEFAULTS = Delivery()  # retry_min 60 s, retry_max 1 h, warn_after 4 h, lifetime 5 d


def retry_delay(attempts: int, delivery: Delivery = DEFAULTS) -> float:
    """Exponential backoff: retry_min, doubled per earlier attempt, capped at retry_max."""
    return float(min(delivery.retry_max, delivery.retry_min * 2 ** min(attempts, 30)))


def expired(created: float, now: float, delivery: Delivery = DEFAULTS) -> bool:
    """Has the message been queued for its whole lifetime?"""
    return now - created >= delivery.lifetime


def warn_due(created: float, now: float, delivery: Delivery = DEFAULTS) -> bool:
    """Is a deferral at `now` late enough to tell the sender (warn_after 0: never)?"""
    return 0 < delivery.warn_after <= now - created


def already_warned(created: float, deferrals: list[float], delivery: Delivery = DEFAULTS) -> bool:
    """Was the sender told already? A delay warning goes out with the first
    deferral that is due one, in the same transaction, so an earlier
    deferral at a due time (`deferrals`: their times) means it was sent."""
    return any(warn_due(created, at, delivery) for at in deferrals)


def status_of(code: int, text: str) -> str:
    """The enhanced status code in a reply text, or one derived from the code."""
    first = text.split(" ", 1)[0]
    parts = first.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and first[0] in "245":
        return first
    return f"{code // 100}.0.0"


def received_header(by: str, helo: str, peer: str, queue_hint: str, now: float) -> bytes:
    """A Received trace header (RFC 5321 section 4.4), CRLF-terminated."""
    date = email.utils.formatdate(now, localtime=False)
    return (
        f"Received: from {helo} ({peer})\r\n\tby {by} (gatepost) with ESMTP"
        f" id {queue_hint};\r\n\t{date}\r\n"
    ).encode("ascii", "replace")


@dataclass(frozen=True, slots=True)
class Failure:
    """One recipient that could not be delivered (yet), for a DSN."""

    recipient: str
    status: str  # e.g. "5.1.1"; "4.x.x" for a delay
    diagnostic: str  # the remote reply, "smtp; 550 5.1.1 ..."
    remote_mta: str = ""  # "host" or "host:port"; only the host is reported
    action: str = "failed"  # "failed" | "delayed"
    retry_until: float | None = None  # for "delayed": when the queue gives up


@dataclass(frozen=True, slots=True)
class Report:
    """What one DSN is about: who reports, to whom, and the original message."""

    reporting_mta: str
    postmaster: str
    to: str  # the original sender
    arrival: float  # when the original message was queued
    original: bytes


def one_line(text: str) -> str:
    """A reply text safe in one header field: lines joined, controls dropped."""
    joined = " ".join(part.strip() for part in text.splitlines())
    return "".join(c for c in joined if c >= " " and c != "\x7f")


def original_headers(content: bytes) -> bytes:
    end = content.find(b"\r\n\r\n")
    return content if end < 0 else content[: end + 2]


def dsn(report: Report, failures: list[Failure], now: float) -> bytes:
    """An RFC 3464 delivery status notification (RFC 6522 multipart/report with
    a human part, a message/delivery-status part and the original headers)."""
    boundary = f"=_gatepost_{uuid.uuid4().hex}"
    delayed = all(f.action == "delayed" for f in failures)
    subject = "Delayed Mail (still being retried)" if delayed else "Undelivered Mail Returned to Sender"
    head = [
        f"From: Mail Delivery System <{report.postmaster}>",
        f"To: <{report.to}>",
        f"Subject: {subject}",
        f"Date: {email.utils.formatdate(now)}",
        f"Message-ID: <{uuid.uuid4().hex}@{report.reporting_mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
    ]
    parts = [
        _part("text/plain; charset=utf-8", "\r\n".join(_human(report, failures, delayed))),
        _part("message/delivery-status", "\r\n".join(_status(report, failures, now))),
        _part("text/rfc822-headers", original_headers(report.original).decode("utf-8", "replace")),
    ]
    body = "".join(f"--{boundary}\r\n{p}\r\n" for p in parts) + f"--{boundary}--\r\n"
    return ("\r\n".join(head) + "\r\n" + body).encode("utf-8")


def _human(report: Report, failures: list[Failure], delayed: bool) -> list[str]:
    intro = (
        "Your message was delayed; delivery is still being retried for:"
        if delayed
        else "Your message could not be delivered to the following recipients:"
    )
    lines = [f"<{f.recipient}>: {one_line(f.diagnostic)}" for f in failures]
    return [f"This is the mail system at {report.reporting_mta}.", "", intro, "", *lines]


def _status(report: Report, failures: list[Failure], now: float) -> list[str]:
    """The message/delivery-status fields: per message, then one block per recipient."""
    status = [
        f"Reporting-MTA: dns; {report.reporting_mta}",
        f"Arrival-Date: {email.utils.formatdate(report.arrival)}",
    ]
    for f in failures:
        status += ["", f"Final-Recipient: rfc822; {f.recipient}", f"Action: {f.action}"]
        status.append(f"Status: {f.status}")
        if f.remote_mta:
            status.append(f"Remote-MTA: dns; {remote_host(f.remote_mta)}")
        status.append(f"Diagnostic-Code: {one_line(f.diagnostic)}")
        status.append(f"Last-Attempt-Date: {email.utils.formatdate(now)}")
        if f.retry_until is not None:
            status.append(f"Will-Retry-Until: {email.utils.formatdate(f.retry_until)}")
    return status


def remote_host(relay: str) -> str:
    """"mx.example:25" -> "mx.example"; "[::1]:25" -> "::1"."""
    host, sep, port = relay.rpartition(":")
    if not sep or not port.isdigit():
        return relay
    return host[1:-1] if host.startswith("[") else host


def _part(content_type: str, text: str) -> str:
    return f"Content-Type: {content_type}\r\n\r\n{text.rstrip(chr(13) + chr(10))}\r\n"
