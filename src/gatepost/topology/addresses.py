"""Addresses both ways: SMTP address <-> native NETWORK/PO/MAILBOX.

Pure functions over a loaded `Topology`. Knows the address map rules
(postoffice domains, org-wide network domains, postmaster and the null
sender); knows nothing about the store, routing, or SMTP sessions.
"""

from __future__ import annotations

from dataclasses import dataclass

from gatepost.topology.model import Postoffice, Topology

POSTMASTER = "postmaster"


@dataclass(frozen=True, slots=True)
class Native:
    """A mailbox inside the network; `key` ("PO/mailbox") is what the store keeps."""

    postoffice: str
    mailbox: str

    @property
    def key(self) -> str:
        return f"{self.postoffice}/{self.mailbox}"


class AddressError(ValueError):
    """The text is not an address we can use."""


class UnknownMailbox(AddressError):
    """The domain (or postoffice) is ours but the mailbox is not."""


def lookup(topo: Topology, smtp_address: str) -> Native | None:
    """Inbound mapping: our mailbox, None for a foreign address, or UnknownMailbox."""
    local, at, domain = smtp_address.rpartition("@")
    if not at:
        return _bare(topo, smtp_address)
    if not local or not domain:
        raise AddressError(f"malformed address {smtp_address!r}: empty local part or domain")
    domain = domain.lower()
    owner = _domain_owner(topo, domain)
    if owner is not None:
        return _in(owner, local, smtp_address)
    if domain in topo.domains:
        return _anywhere(topo, local, smtp_address)
    return None


def _bare(topo: Topology, text: str) -> Native:
    if text.lower() != POSTMASTER:
        raise AddressError(f"address {text!r} has no domain (only postmaster may omit it)")
    first = next(iter(topo.postoffices.values()), None)
    if first is None or POSTMASTER not in first.mailboxes:
        raise UnknownMailbox("no postmaster mailbox in the first postoffice")
    return Native(first.name, POSTMASTER)


def _domain_owner(topo: Topology, domain: str) -> Postoffice | None:
    for po in topo.postoffices.values():
        if domain in po.domains:
            return po
    return None


def _in(po: Postoffice, local: str, address: str) -> Native:
    mailbox = local.lower()
    if mailbox not in po.mailboxes:
        raise UnknownMailbox(f"no mailbox {local!r} in postoffice {po.name} ({address})")
    return Native(po.name, mailbox)


def _anywhere(topo: Topology, local: str, address: str) -> Native:
    mailbox = local.lower()
    for po in topo.postoffices.values():
        if mailbox in po.mailboxes:
            return Native(po.name, mailbox)
    raise UnknownMailbox(f"no mailbox {local!r} in any postoffice ({address})")


def to_smtp(topo: Topology, n: Native) -> str:
    """Outbound form: mailbox@<postoffice's first domain or the network's first>."""
    po = topo.postoffices.get(n.postoffice)
    if po is None:
        raise AddressError(f"unknown postoffice {n.postoffice!r}")
    domains = po.domains or topo.domains
    if not domains:
        raise AddressError(f"postoffice {po.name} has no domain and the network has none")
    return f"{n.mailbox}@{domains[0]}"


def native_str(topo: Topology, n: Native) -> str:
    """The full native form, e.g. "ACME/HQ/alice"."""
    return f"{topo.name}/{n.postoffice}/{n.mailbox}"


def parse(topo: Topology, text: str) -> Native | str:
    """A user-typed address: NETWORK/PO/MAILBOX, PO/MAILBOX, or SMTP.

    Returns our mailbox as Native, a foreign SMTP address unchanged, or
    raises AddressError (malformed) / UnknownMailbox (ours, but no such box).
    """
    text = text.strip()
    if not text:
        raise AddressError("empty address")
    if "@" in text:
        native = lookup(topo, text)
        return text if native is None else native
    if "/" in text:
        return _parse_native(topo, text)
    if text.lower() == POSTMASTER:
        return _bare(topo, text)
    raise AddressError(
        f"cannot read {text!r}: expected NETWORK/PO/MAILBOX, PO/MAILBOX or an SMTP address"
    )


def _parse_native(topo: Topology, text: str) -> Native:
    parts = text.split("/")
    if len(parts) == 3:
        if parts[0].lower() != topo.name.lower():
            raise AddressError(f"unknown network {parts[0]!r} in {text!r} (this is {topo.name})")
        parts = parts[1:]
    if len(parts) != 2 or not all(parts):
        raise AddressError(f"cannot read {text!r}: expected NETWORK/PO/MAILBOX or PO/MAILBOX")
    po_text, mailbox = parts
    for po in topo.postoffices.values():
        if po.name.lower() == po_text.lower():
            return _in(po, mailbox, text)
    raise UnknownMailbox(f"unknown postoffice {po_text!r} in {text!r}")


def sender_native(topo: Topology, reverse_path: str, postoffice: str) -> Native | None:
    """The local mailbox a reverse path belongs to, or None when it is none of
    ours; "" (null sender) is `postoffice`'s postmaster.

    Mapping the null sender to a postmaster mailbox (never back to <>) keeps
    bounces of bounces from looping.
    """
    if reverse_path in ("", "<>"):
        return Native(postoffice, POSTMASTER)
    try:
        return lookup(topo, reverse_path)
    except AddressError:  # our domain, but no such mailbox: not one of ours either
        return None


def outbound_sender(topo: Topology, n: Native) -> str:
    """The SMTP reverse path for mail from `n`: "" for a postmaster, else its address."""
    if n.mailbox == POSTMASTER:
        return ""
    return to_smtp(topo, n)
