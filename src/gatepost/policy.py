"""Delivery policy: pure functions, no I/O, no clock of their own.

When to retry, when to give up, what a reply means, and what a
non-delivery report says. The send side asks; it decides nothing itself.
"""

from __future__ import annotations

import email.utils
import uuid
from dataclasses import dataclass

MIN_RETRY = 60.0  # seconds before the first retry
MAX_RETRY = 3600.0  # backoff never waits longer than this
QUEUE_LIFETIME = 5 * 24 * 3600.0  # bounce what is still undelivered after this
LEASE = 120.0  # how long a claim stays valid without renewal
HEARTBEAT = 1.0  # how often a running gateway says so in the store
HEARTBEAT_TTL = 5.0  # a gateway silent for longer is taken as stopped


@dataclass(frozen=True, slots=True)
class Retry:
    minimum: float = MIN_RETRY
    maximum: float = MAX_RETRY
    lifetime: float = QUEUE_LIFETIME


def retry_delay(attempts: int, retry: Retry = Retry()) -> float:
    """Exponential backoff: minimum, doubled per earlier attempt, capped at maximum."""
    return float(min(retry.maximum, retry.minimum * 2 ** min(attempts, 30)))


def expired(created: float, now: float, retry: Retry = Retry()) -> bool:
    return now - created >= retry.lifetime


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
    """One recipient that could not be delivered, for a DSN."""

    recipient: str
    status: str  # e.g. "5.1.1"
    diagnostic: str  # the remote reply, "smtp; 550 5.1.1 ..."
    remote_mta: str = ""
    action: str = "failed"  # "failed" | "delayed"


def original_headers(content: bytes) -> bytes:
    end = content.find(b"\r\n\r\n")
    return content if end < 0 else content[: end + 2]


def dsn(
    reporting_mta: str,
    postmaster: str,
    to: str,
    failures: list[Failure],
    original: bytes,
    now: float,
) -> bytes:
    """An RFC 3464 delivery status notification (multipart/report), CRLF lines."""
    boundary = f"=_gatepost_{uuid.uuid4().hex}"
    delayed = all(f.action == "delayed" for f in failures)
    subject = "Delayed Mail (still being retried)" if delayed else "Undelivered Mail Returned to Sender"
    head = [
        f"From: Mail Delivery System <{postmaster}>",
        f"To: <{to}>" if to else "To: undisclosed-recipients:;",
        f"Subject: {subject}",
        f"Date: {email.utils.formatdate(now)}",
        f"Message-ID: <{uuid.uuid4().hex}@{reporting_mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
    ]
    lines = [f"{f.recipient}: {f.diagnostic}" for f in failures]
    human = [
        f"This is the mail system at {reporting_mta}.",
        "",
        "Your message was delayed; delivery is still being retried for:"
        if delayed
        else "Your message could not be delivered to the following recipients:",
        "",
        *lines,
    ]
    status = [f"Reporting-MTA: dns; {reporting_mta}", f"Arrival-Date: {email.utils.formatdate(now)}"]
    for f in failures:
        status += ["", f"Final-Recipient: rfc822; {f.recipient}", f"Action: {f.action}"]
        status += [f"Status: {f.status}"]
        if f.remote_mta:
            status.append(f"Remote-MTA: dns; {f.remote_mta}")
        status.append(f"Diagnostic-Code: {f.diagnostic}")
    parts = [
        _part("text/plain; charset=us-ascii", "\r\n".join(human)),
        _part("message/delivery-status", "\r\n".join(status)),
        _part("text/rfc822-headers", original_headers(original).decode("utf-8", "replace")),
    ]
    body = "".join(f"--{boundary}\r\n{p}\r\n" for p in parts) + f"--{boundary}--\r\n"
    return ("\r\n".join(head) + "\r\n" + body).encode("utf-8")


def _part(content_type: str, text: str) -> str:
    return f"Content-Type: {content_type}\r\n\r\n{text.rstrip(chr(13) + chr(10))}\r\n"
