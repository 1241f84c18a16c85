"""Composes a message submitted from a local mailbox (`gatepost send`).

Pure: builds RFC 5322 content and the store's NewMessage; writes nothing.
"""

from __future__ import annotations

import email.policy
import email.utils
import uuid
from email.message import EmailMessage

from gatepost.store import NewMessage, NewRecipient
from gatepost.topology import Native, Topology, outbound_sender, to_smtp


def compose(
    topo: Topology, sender: Native, recipients: list[Native | str], subject: str, text: str,
    now: float,
) -> NewMessage:
    """A message from `sender`'s mailbox: From carries its postoffice's first domain."""
    from_address = to_smtp(topo, sender)
    to_addresses = [to_smtp(topo, r) if isinstance(r, Native) else r for r in recipients]
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = from_address
    message["To"] = ", ".join(to_addresses)
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate(now)
    message["Message-ID"] = f"<{uuid.uuid4().hex}@{from_address.split('@', 1)[1]}>"
    message.set_content(text)
    return NewMessage(
        sender=outbound_sender(topo, sender),
        recipients=tuple(
            NewRecipient(address, r.key if isinstance(r, Native) else None)
            for address, r in zip(to_addresses, recipients)
        ),
        content=message.as_bytes(),
        location=sender.postoffice,
        origin=sender.postoffice,
        received_by="cli",
    )
