"""Delivery policy: pure functions, no I/O, no clock of their own.

When to retry, when to give up, what a reply means, and what a
non-delivery report says. The send side asks; it decides nothing itself.
"""

from __future__ import annotations

import email.utils
import ipaddress
import quopri
import uuid
from dataclasses import dataclass

from gatepost.smtp.events import ProtocolError, Reply
from gatepost.store.base import Bounced, Deferred, Delivered, Job, Outcome
from gatepost.topology.model import Delivery

PURGE_EVERY = 600.0  # how often the router purges: an orphan spool file goes within 1 h 10 min
BUSY_RETRY = 5.0  # seconds before mail refused with 421 (too busy) is tried again
PLAIN_FOR = 3600.0  # after a failed opportunistic TLS handshake, a host gets clear text this long
DEAD_HOST = 60.0  # a smart host that could not be reached is tried last for this long
SHRINK_FOR = 60.0  # after a 421, fewer sessions to that host for this long
MAX_DIAGNOSTIC = 900  # characters of a reply kept in Diagnostic-Code (lines stay under 998)
DEFAULTS = Delivery()  # retry_min 60 s, retry_max 1 h, warn_after 4 h, lifetime 5 d
TOO_MANY_HOPS = Reply.of(554, "5.4.6 Too many hops")  # a mail loop, at DATA or in the network


def too_many_hops(hops: int, limit: int) -> bool:
    """Must a message stop here (a mail loop)? As Postfix's hopcount_limit: its
    Received and Delivered-To header fields (and copies re-sent inside the
    network, one more each) number `limit` or more."""
    return hops >= limit


def retry_delay(attempts: int, delivery: Delivery = DEFAULTS) -> float:
    """Exponential backoff: retry_min, doubled per earlier attempt, capped at retry_max."""
    return float(min(delivery.retry_max, delivery.retry_min * 2 ** min(attempts, 30)))


def expired(created: float, now: float, delivery: Delivery = DEFAULTS) -> bool:
    """Has the message been queued for its whole lifetime?"""
    return now - created >= delivery.lifetime


def warn_due(created: float, now: float, delivery: Delivery = DEFAULTS) -> bool:
    """Is a deferral at `now` late enough to tell the sender (warn_after 0: never)?"""
    return 0 < delivery.warn_after <= now - created


def status_of(code: int, text: str) -> str:
    """The enhanced status code in a reply text, or one derived from the code."""
    first = text.split(" ", 1)[0]
    parts = first.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and first[0] in "245":
        return first
    return f"{code // 100}.0.0"


def reply_status(reply: str, default: str = "") -> str:
    """The status of a reply as text ("550 5.1.1 No such user" -> "5.1.1"; "451 busy"
    -> "4.0.0"), or `default` when it does not start with a reply code."""
    code, _, text = reply.partition(" ")
    return status_of(int(code), text) if code.isdigit() else default


PROTOCOLS = frozenset({  # the "with" keywords of RFC 3848 and RFC 6531
    "SMTP", "ESMTP", "ESMTPA", "ESMTPS", "ESMTPSA", "LMTP", "LMTPA", "LMTPS", "LMTPSA",
    "UTF8SMTP", "UTF8SMTPA", "UTF8SMTPS", "UTF8SMTPSA",
})


def received_header(
    by: str, helo: str, peer: str, queue_hint: str, now: float, protocol: str = "ESMTP"
) -> bytes:
    """A Received trace header (RFC 5321 section 4.4), CRLF-terminated: the
    client's IP address as an address literal ("[192.0.2.1]", "[IPv6:::1]")
    and `protocol` (RFC 3848: "SMTP", "ESMTP", "ESMTPS", ...) after "with"."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown Received protocol {protocol!r}")
    date = email.utils.formatdate(now, localtime=False)
    return (
        f"Received: from {helo} ({address_literal(peer)})\r\n\tby {by} (gatepost) with {protocol}"
        f" id {queue_hint};\r\n\t{date}\r\n"
    ).encode("ascii", "replace")


def address_literal(peer: str) -> str:
    """"192.0.2.1" -> "[192.0.2.1]", "::1" -> "[IPv6:::1]" (RFC 5321 4.1.3); an
    IPv4-mapped IPv6 address as IPv4, a zone index dropped; not an IP: as is."""
    try:
        address = ipaddress.ip_address(peer.partition("%")[0])
    except ValueError:
        return peer
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is None:
            return f"[IPv6:{address.compressed}]"
        return f"[{address.ipv4_mapped}]"
    return f"[{address}]"


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
    a human part, a message/delivery-status part and the original headers).

    Every part is 7-bit, whatever the smart host offers: the human part is
    UTF-8, quoted-printable when it holds non-ASCII or overlong lines; the
    delivery-status part is ASCII as RFC 3464 requires (a non-ASCII recipient
    is written as RFC 6533's "utf-8" type in its xtext form, other non-ASCII
    becomes "?"); the original headers are copied byte for byte, encoded
    quoted-printable when they are not 7-bit text. Only the report's own To
    can be non-ASCII: an SMTPUTF8 sender's address has no ASCII form."""
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
    human = "\r\n".join(_human(report, failures, delayed)).encode("utf-8")
    status = "\r\n".join(_status(report, failures, now)).encode("ascii", "replace")
    parts = [
        _part("text/plain; charset=utf-8", human),
        _part("message/delivery-status", status),
        _part("text/rfc822-headers", original_headers(report.original)),
    ]
    body = b"".join(b"--%s\r\n%s\r\n" % (boundary.encode(), p) for p in parts)
    return ("\r\n".join(head) + "\r\n").encode("utf-8") + body + f"--{boundary}--\r\n".encode()


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
        status += ["", f"Final-Recipient: {typed_address(f.recipient)}", f"Action: {f.action}"]
        status.append(f"Status: {f.status}")
        if f.remote_mta:
            status.append(f"Remote-MTA: dns; {remote_host(f.remote_mta)}")
        status.append(f"Diagnostic-Code: {one_line(f.diagnostic)[:MAX_DIAGNOSTIC]}")
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


def typed_address(address: str) -> str:
    """"rfc822; addr" for an ASCII address, else RFC 6533's "utf-8; " with
    utf-8-addr-xtext: each non-ASCII, "+", "=", "\\" or control as "\\x{HEX}"."""
    if address.isascii():
        return f"rfc822; {address}"
    quoted = "".join(c if "!" <= c <= "~" and c not in "+=\\" else f"\\x{{{ord(c):X}}}" for c in address)
    return f"utf-8; {quoted}"


def _part(content_type: str, content: bytes) -> bytes:
    """One body part: as is when `content` is 7-bit text, else quoted-printable."""
    content = content.rstrip(b"\r\n") + b"\r\n"
    head = b"Content-Type: " + content_type.encode("ascii") + b"\r\n"
    if _seven_bit(content):
        return head + b"\r\n" + content
    return head + b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + quopri.encodestring(content)


def _seven_bit(content: bytes) -> bool:
    """RFC 2045 7bit data: ASCII without NUL, CR and LF only as CRLF, lines of 998 at most."""
    lines = content.split(b"\r\n")
    return (content.isascii() and b"\0" not in content
            and not any(b"\r" in line or b"\n" in line or len(line) > 998 for line in lines))


def outcome(job: Job, reply: Reply, relay: str, now: float, delivery: Delivery) -> Outcome:
    """What one reply means for one recipient (its text cut to MAX_DIAGNOSTIC)."""
    text = f"{reply.code} {one_line(reply.text)}"[:MAX_DIAGNOSTIC]
    if reply.is_positive:
        return Delivered(job, relay, text)
    if reply.is_permanent or expired(job.created, now, delivery):
        return Bounced(job, text, relay)
    if host_busy(reply):  # the host is busy, not the recipient: try again soon
        return Deferred(job, now + BUSY_RETRY, text, relay)
    return Deferred(job, now + retry_delay(job.attempts, delivery), text, relay)


def session_failed(trouble: Reply | str) -> Reply:
    """What trouble with a session means for the recipients it had not decided:
    a 4.x.x reply, never a bounce. Only the replies to a transaction decide its
    recipients; a 5xx to the greeting, EHLO, STARTTLS, AUTH or RSET is the
    host's trouble (as Postfix's smtp_skip_5xx_greeting) and becomes 451, its
    status of class 4. `trouble` is the host's reply, or an account of what went
    wrong that starts with its status ("4.7.4 TLS is required but ...")."""
    if isinstance(trouble, Reply):
        if trouble.is_transient:
            return trouble
        status, account = status_of(trouble.code, trouble.text), f"{trouble.code} {trouble.text}"
    else:
        status = status_of(451, trouble)
        account = trouble.removeprefix(status).lstrip()
    return Reply.of(451, f"4{status[1:]} {account}")


def error_trouble(error: BaseException) -> str:
    """An account of an error that ended a session, for `session_failed`."""
    if isinstance(error, TimeoutError):
        return "4.4.2 timed out: the host did not answer, or did not read, in time"
    if isinstance(error, ProtocolError):
        return f"4.5.0 protocol error: {error}"
    if isinstance(error, OSError):
        return f"4.4.2 connection failed: {error or type(error).__name__}"
    return f"4.3.0 internal error: {type(error).__name__}: {error}"


def host_busy(reply: Reply) -> bool:
    """Does the host want fewer sessions for a while (421: busy, or closing)?"""
    return reply.code == 421


NEEDS_SMTPUTF8 = Reply.of(553, "5.6.7 non-ASCII address, and the server does not offer SMTPUTF8")

NO_MAIL_HOST = {  # why a domain has no host to try -> the reply it means
    "no such domain": "550 5.1.2 domain {domain} does not exist",
    "null MX": "556 5.1.10 domain {domain} accepts no mail (null MX)",
    "no address": "451 4.4.3 no address for the mail hosts of {domain}",
    "lookup failed": "451 4.4.3 cannot look up MX of {domain}",
}


def no_mail_host(why: str, domain: str, detail: str = "") -> Reply:
    """A domain without a host to try: `why` is a key of NO_MAIL_HOST."""
    text = NO_MAIL_HOST[why].format(domain=domain) + (f": {detail}" if detail else "")
    return Reply.of(int(text[:3]), text[4:])


def failure(o: Outcome, action: str, delivery: Delivery) -> Failure:
    """One recipient's part of a DSN: failed (a bounce) or delayed (a warning)."""
    reply, relay = (o.reply, o.relay) if isinstance(o, Bounced | Deferred) else ("", "")
    status = reply_status(reply, "5.0.0")
    if action == "delayed":
        status = "4" + status[1:] if status[0] == "4" else "4.0.0"
        until = o.job.created + delivery.lifetime
        return Failure(o.job.address, status, f"smtp; {reply}", relay, action, until)
    if status[0] != "5":  # given up on a temporary failure: delivery time expired
        status = "5.4.7"
    return Failure(o.job.address, status, f"smtp; {reply}", relay)
