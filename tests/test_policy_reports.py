"""What `policy` writes into mail: the Received trace header (RFC 5321 4.4)
and delivery status notifications that stay 7-bit safe when the reply text,
the recipient or the original headers are not ASCII."""

from __future__ import annotations

import email
import email.message
import email.policy

import pytest

from gatepost import policy

NOW = 1_700_000_000.0
ORIGINAL = (
    "From: <alice@hq.acme.example>\r\nTo: <r@example.org>\r\n"
    "Subject: Grüße aus Zürich\r\nMessage-ID: <x@hq.acme.example>\r\n\r\nbody\r\n"
).encode()
REPORT = policy.Report("hq.acme.example", "postmaster@hq.acme.example", "alice@hq.acme.example", NOW - 60,
                       ORIGINAL)


@pytest.mark.parametrize(("peer", "literal"), [
    ("192.0.2.1", "[192.0.2.1]"),
    ("::1", "[IPv6:::1]"),
    ("2001:DB8:0:0::1", "[IPv6:2001:db8::1]"),
    ("fe80::1%eth0", "[IPv6:fe80::1]"),
    ("::ffff:192.0.2.7", "[192.0.2.7]"),
    ("unknown", "unknown"),
])
def test_received_names_the_client_by_an_address_literal(peer: str, literal: str) -> None:
    header = policy.received_header("hq.acme.example", "client.example", peer, "Q1", NOW)
    assert header.startswith(f"Received: from client.example ({literal})\r\n".encode())


@pytest.mark.parametrize("protocol", ["SMTP", "ESMTP", "ESMTPS"])
def test_received_says_which_protocol_carried_the_message(protocol: str) -> None:
    header = policy.received_header("hq.acme.example", "c", "192.0.2.1", "Q1", NOW, protocol)
    parsed = email.message_from_bytes(header + b"\r\n", policy=email.policy.default)
    assert f"by hq.acme.example (gatepost) with {protocol} id Q1;" in " ".join(str(parsed["Received"]).split())


def test_received_defaults_to_esmtp_and_refuses_an_unknown_protocol() -> None:
    assert b" with ESMTP id Q1;" in policy.received_header("b", "h", "192.0.2.1", "Q1", NOW)
    with pytest.raises(ValueError, match="HTTP"):
        policy.received_header("b", "h", "192.0.2.1", "Q1", NOW, "HTTP")


def parts(report: bytes) -> list[email.message.MIMEPart]:
    message = email.message_from_bytes(report, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    assert message.get_content_type() == "multipart/report" and not message.defects
    return list(message.iter_parts())


def recipient_fields(status: email.message.MIMEPart) -> email.message.Message:
    """The one recipient block of a message/delivery-status part."""
    blocks = status.get_payload()
    assert isinstance(blocks, list) and len(blocks) == 2
    block = blocks[1]
    assert isinstance(block, email.message.Message)
    return block


def test_a_report_with_non_ascii_text_is_7bit_and_decodes_back() -> None:
    failure = policy.Failure("jürgen@example.org", "5.1.1", "smtp; 550 5.1.1 Benutzer unbekannt – ñ",
                             remote_mta="mx.example.org:25")
    report = policy.dsn(REPORT, [failure], NOW)
    assert report.isascii()
    assert max(len(line) for line in report.split(b"\r\n")) <= 998
    human, status, headers = parts(report)
    assert human["Content-Transfer-Encoding"] == "quoted-printable"
    assert "<jürgen@example.org>: smtp; 550 5.1.1 Benutzer unbekannt – ñ" in human.get_content()
    assert status["Content-Transfer-Encoding"] is None  # RFC 3464: 7bit, never encoded
    recipient = recipient_fields(status)
    assert recipient["Final-Recipient"] == "utf-8; j\\x{FC}rgen@example.org"
    assert recipient["Diagnostic-Code"] == "smtp; 550 5.1.1 Benutzer unbekannt ? ?"
    assert headers["Content-Transfer-Encoding"] == "quoted-printable"
    assert headers.get_payload(decode=True) == ORIGINAL[: ORIGINAL.index(b"\r\n\r\n") + 2]


def test_an_ascii_report_is_left_unencoded() -> None:
    original = b"Subject: plain\r\n\r\nbody\r\n"
    failure = policy.Failure("a+b=c@example.org", "5.1.1", "smtp; 550 5.1.1 no such user")
    report = policy.dsn(policy.Report("hq", "pm@hq", "s@hq", NOW, original), [failure], NOW)
    human, status, headers = parts(report)
    assert b"Content-Transfer-Encoding" not in report
    assert "<a+b=c@example.org>: smtp; 550 5.1.1 no such user" in human.get_content()
    assert recipient_fields(status)["Final-Recipient"] == "rfc822; a+b=c@example.org"
    assert headers.get_payload(decode=True) == b"Subject: plain\r\n"


def test_a_long_reply_keeps_the_status_lines_short() -> None:
    failure = policy.Failure("r@example.org", "5.0.0", "smtp; 550 " + "x" * 3000)
    report = policy.dsn(REPORT, [failure], NOW)
    assert max(len(line) for line in report.split(b"\r\n")) <= 998
    human, status, _ = parts(report)
    assert "x" * 3000 in human.get_content()
    assert recipient_fields(status)["Diagnostic-Code"] == ("smtp; 550 " + "x" * 3000)[: policy.MAX_DIAGNOSTIC]


def test_xtext_escapes_the_specials_of_a_utf8_address() -> None:
    assert policy.typed_address("ü+\\=@例.jp") == "utf-8; \\x{FC}\\x{2B}\\x{5C}\\x{3D}@\\x{4F8B}.jp"
