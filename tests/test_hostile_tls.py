"""Receive-side STARTTLS (RFC 3207) with certificates made by trustme: offered
only with a certificate, commands pipelined behind STARTTLS are discarded, the
session restarts from before EHLO, and a broken handshake hurts nobody else."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from gatepost.receive.guard import Deadlines
from hostile import ALICE, OUTSIDE, Client, Receiver, served_next, topology

READY = "220 2.0.0 Ready to start TLS"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def receiver(tmp_path: Path, ca: trustme.CA) -> Iterator[Receiver]:
    cert = ca.issue_cert("hq.acme.example", "127.0.0.1")
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(chain))
    cert.private_key_pem.write_to_path(str(key))
    server = Receiver(topology(tmp_path, tls_cert=chain, tls_key=key))
    yield server
    server.stop()


def upgrade(client: Client, ca: trustme.CA) -> Client:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    assert client.buffer == b""
    return Client(context.wrap_socket(client.sock, server_hostname="hq.acme.example"))


def test_starttls_is_offered_only_with_a_certificate(receiver: Receiver, tmp_path: Path) -> None:
    client = receiver.connect()
    assert client.hello()[-1] == "250 STARTTLS"
    (tmp_path / "plain").mkdir()
    plain = Receiver(topology(tmp_path / "plain"))
    try:
        other = plain.connect()
        assert "STARTTLS" not in " ".join(other.hello())
        assert other.command("STARTTLS") == "502 5.5.1 Error: command not implemented"
    finally:
        plain.stop()


def test_commands_pipelined_behind_starttls_are_discarded(
    receiver: Receiver, ca: trustme.CA
) -> None:
    client = receiver.connect()
    client.hello()
    client.send(b"STARTTLS\r\nEHLO evil.example\r\nMAIL FROM:<evil@example.org>\r\n")
    assert client.reply() == READY
    secure = upgrade(client, ca)
    assert secure.command(f"RCPT TO:<{ALICE}>") == "503 5.5.1 Error: need MAIL command"
    assert secure.command(f"MAIL FROM:<{OUTSIDE}>") == "503 5.5.1 Error: send HELO/EHLO first"
    assert "STARTTLS" not in " ".join(secure.ehlo())
    assert secure.command("STARTTLS") == "554 5.5.1 Error: TLS already active"
    assert secure.command(f"MAIL FROM:<{OUTSIDE}>") == "250 2.1.0 Ok"
    assert secure.command(f"RCPT TO:<{ALICE}>") == "250 2.1.5 Ok"
    assert secure.command("DATA").startswith("354 ")
    assert secure.command("Subject: tls\r\n\r\nsecret\r\n.").startswith("250 2.0.0 Ok: queued")
    [stored] = receiver.stored()
    assert b"secret" in stored and b"evil" not in stored


def test_starttls_out_of_order_is_refused(receiver: Receiver) -> None:
    client = receiver.connect()
    assert client.reply().startswith("220 ")
    assert client.command("STARTTLS") == "503 5.5.1 Error: send HELO/EHLO first"
    client.ehlo()
    assert client.command("STARTTLS now") == "501 5.5.4 Syntax: STARTTLS"
    assert client.command(f"MAIL FROM:<{OUTSIDE}>") == "250 2.1.0 Ok"
    assert client.command("STARTTLS") == "503 5.5.1 Error: MAIL transaction in progress"


def test_clear_text_instead_of_a_handshake_ends_only_that_session(
    tmp_path: Path, ca: trustme.CA
) -> None:
    """Clear text sent after the 220 is dropped (it may arrive before the upgrade)
    or fails the handshake; either way the session ends by the handshake deadline."""
    cert = ca.issue_cert("hq.acme.example")
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(chain))
    cert.private_key_pem.write_to_path(str(key))
    receiver = Receiver(topology(tmp_path, tls_cert=chain, tls_key=key), Deadlines(command=1.0))
    try:
        client = receiver.connect()
        client.hello()
        assert client.command("STARTTLS") == READY
        client.send(b"EHLO still-clear.example\r\nMAIL FROM:<a@example.org>\r\n")
        assert client.closed()
        served_next(receiver)
    finally:
        receiver.stop()
