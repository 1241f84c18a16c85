"""DKIM signing of outbound mail (RFC 6376), per From domain, with dkimpy.

Does: load the gateway's private keys once, and prepend a DKIM-Signature to
a message whose From domain has a key, just before it is sent (the stored
message stays unsigned). Must not know: SMTP sessions, the store, routing.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import logging

import dkim  # type: ignore[import-untyped]

from gatepost.topology.model import DkimKey

log = logging.getLogger("gatepost.send")

SIGNED_HEADERS = [
    b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to",
    b"mime-version", b"content-type", b"content-transfer-encoding", b"in-reply-to",
    b"references",
]


class Signer:
    def __init__(self, keys: tuple[DkimKey, ...]) -> None:
        """Reads every key file now: a missing key stops the gateway at start,
        not in the middle of delivering."""
        self.keys = {key.domain: (key, key.key_file.read_bytes()) for key in keys}

    def __bool__(self) -> bool:
        return bool(self.keys)

    def sign(self, content: bytes) -> bytes:
        """`content` with a DKIM-Signature first, when its From domain has a key."""
        domain = from_domain(content)
        if domain not in self.keys:
            return content
        key, private = self.keys[domain]
        content = crlf(content)
        try:
            signature = dkim.sign(
                content, key.selector.encode(), key.domain.encode(), private,
                canonicalize=(b"relaxed", b"relaxed"), include_headers=SIGNED_HEADERS,
            )
        except dkim.DKIMException as exc:
            log.warning("DKIM signing for %s failed: %s; sent unsigned", domain, exc)
            return content
        return bytes(signature) + content


def from_domain(content: bytes) -> str:
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(content)
    _, address = email.utils.parseaddr(str(headers.get("From", "")))
    return address.rpartition("@")[2].lower()


def crlf(content: bytes) -> bytes:
    """CRLF line ends throughout, as the message will be sent (and signed)."""
    if content.count(b"\r\n") == content.count(b"\r") == content.count(b"\n"):
        return content
    return content.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
