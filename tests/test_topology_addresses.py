"""Addresses both ways: SMTP <-> native, postmaster and the null sender."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gatepost.topology import (
    AddressError,
    Native,
    Topology,
    UnknownMailbox,
    load,
    lookup,
    native_str,
    outbound_sender,
    parse,
    sender_native,
    to_smtp,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

NO_DOMAINS = """\
[network]
name = "TINY"

[postoffices.MAIN]
domains = ["main.example"]
mailboxes = ["ann", "bo"]

[postoffices.SIDE]
mailboxes = ["ann", "postmaster"]
links = ["MAIN"]

[gateways.GW]
postoffice = "MAIN"
listen = "127.0.0.1:0"
smarthost = "127.0.0.1:9"
serves = ["MAIN", "SIDE"]
"""


@pytest.fixture(scope="module")
def acme() -> Topology:
    return load(EXAMPLES / "single-gateway.toml")


@pytest.fixture()
def tiny(tmp_path: Path) -> Topology:
    path = tmp_path / "tiny.toml"
    path.write_text(NO_DOMAINS)
    return load(path)


def test_native_key() -> None:
    assert Native("HQ", "alice").key == "HQ/alice"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("alice@hq.acme.example", Native("HQ", "alice")),
        ("ALICE@HQ.Acme.EXAMPLE", Native("HQ", "alice")),
        ("carol@sales.acme.example", Native("SALES", "carol")),
        ("carol@acme.example", Native("SALES", "carol")),
        ("Heidi@ACME.example", Native("OPS", "heidi")),
        ("postmaster@acme.example", Native("HQ", "postmaster")),
        ("postmaster@eng.acme.example", Native("ENG", "postmaster")),
        ("postmaster", Native("HQ", "postmaster")),
        ("PostMaster", Native("HQ", "postmaster")),
        ("alice@example.com", None),
        ("alice@sub.hq.acme.example", None),
        ("alice@[127.0.0.1]", None),
    ],
)
def test_lookup(acme: Topology, address: str, expected: Native | None) -> None:
    assert lookup(acme, address) == expected


@pytest.mark.parametrize("address", ["carol@hq.acme.example", "zed@acme.example"])
def test_lookup_unknown_mailbox_in_our_domain(acme: Topology, address: str) -> None:
    with pytest.raises(UnknownMailbox, match="zed|carol"):
        lookup(acme, address)


@pytest.mark.parametrize("address", ["alice", "@hq.acme.example", "alice@"])
def test_lookup_malformed(acme: Topology, address: str) -> None:
    with pytest.raises(AddressError) as caught:
        lookup(acme, address)
    assert not isinstance(caught.value, UnknownMailbox)


def test_bare_postmaster_needs_one_in_first_postoffice(tiny: Topology) -> None:
    with pytest.raises(UnknownMailbox):
        lookup(tiny, "postmaster")


def test_lookup_splits_at_last_at(tiny: Topology) -> None:
    assert lookup(tiny, "ann@main.example@example.org") is None
    with pytest.raises(UnknownMailbox, match="'ann@x'"):
        lookup(tiny, "ann@x@main.example")


def test_first_postoffice_listing_a_domain_wins(tiny: Topology) -> None:
    side = replace(tiny.postoffices["SIDE"], domains=("main.example",))
    topo = replace(tiny, postoffices={**tiny.postoffices, "SIDE": side})
    assert lookup(topo, "ann@main.example") == Native("MAIN", "ann")
    with pytest.raises(UnknownMailbox):
        lookup(topo, "postmaster@main.example")


def test_to_smtp_uses_first_domain_then_network(acme: Topology, tiny: Topology) -> None:
    assert to_smtp(acme, Native("SALES", "carol")) == "carol@sales.acme.example"
    assert to_smtp(tiny, Native("MAIN", "ann")) == "ann@main.example"
    with pytest.raises(AddressError, match="no domain"):
        to_smtp(tiny, Native("SIDE", "ann"))
    with pytest.raises(AddressError, match="unknown postoffice"):
        to_smtp(acme, Native("MARS", "x"))


def test_to_smtp_falls_back_to_network_domain() -> None:
    topo = load(EXAMPLES / "dedicated-send-receive.toml")
    assert to_smtp(topo, Native("INBOUND", "postmaster")) == "postmaster@initech.example"


def test_native_str(acme: Topology) -> None:
    assert native_str(acme, Native("HQ", "alice")) == "ACME/HQ/alice"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ACME/HQ/alice", Native("HQ", "alice")),
        ("acme/hq/ALICE", Native("HQ", "alice")),
        ("sales/carol", Native("SALES", "carol")),
        ("  SALES/carol ", Native("SALES", "carol")),
        ("carol@acme.example", Native("SALES", "carol")),
        ("postmaster", Native("HQ", "postmaster")),
        ("Someone@Example.COM", "Someone@Example.COM"),
    ],
)
def test_parse(acme: Topology, text: str, expected: Native | str) -> None:
    assert parse(acme, text) == expected


@pytest.mark.parametrize("text", ["HQ/zed", "MARS/alice", "ACME/MARS/alice", "zed@hq.acme.example"])
def test_parse_unknown(acme: Topology, text: str) -> None:
    with pytest.raises(UnknownMailbox):
        parse(acme, text)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("alice", "expected NETWORK/PO/MAILBOX"),
        ("OTHER/HQ/alice", "unknown network"),
        ("ACME/HQ/alice/x", "expected NETWORK/PO/MAILBOX"),
        ("HQ/", "expected"),
        ("@acme.example", "malformed"),
    ],
)
def test_parse_malformed(acme: Topology, text: str, fragment: str) -> None:
    with pytest.raises(AddressError, match=fragment) as caught:
        parse(acme, text)
    assert not isinstance(caught.value, UnknownMailbox)


def test_parse_and_to_smtp_round_trip(acme: Topology) -> None:
    for po in acme.postoffices.values():
        for mailbox in po.mailboxes:
            native = Native(po.name, mailbox)
            assert parse(acme, to_smtp(acme, native)) == native
            assert parse(acme, native_str(acme, native)) == native


def test_null_sender_maps_to_the_postoffice_postmaster(acme: Topology) -> None:
    assert sender_native(acme, "", "SALES") == Native("SALES", "postmaster")
    assert sender_native(acme, "<>", "ENG") == Native("ENG", "postmaster")
    assert sender_native(acme, "dave@sales.acme.example", "HQ") == Native("SALES", "dave")
    assert sender_native(acme, "x@example.org", "HQ") is None


def test_outbound_sender_of_postmaster_is_null(acme: Topology) -> None:
    assert outbound_sender(acme, Native("ENG", "postmaster")) == ""
    assert outbound_sender(acme, Native("ENG", "erin")) == "erin@eng.acme.example"
    bounce_sender = sender_native(acme, outbound_sender(acme, Native("OPS", "postmaster")), "OPS")
    assert bounce_sender == Native("OPS", "postmaster")
