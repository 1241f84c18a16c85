"""Routes: shortest paths over links, and which gateway carries what."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gatepost.topology import (
    Native,
    NoRoute,
    Topology,
    describe_route,
    load,
    outbound_gateway,
    path,
    sending_gateways,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# A diamond A-B-D / A-C-D plus a tail D-E; two sending gateways serve A.
DIAMOND = """\
[network]
name = "DIA"
domains = ["dia.example"]

[postoffices.{first}]
mailboxes = ["postmaster"]
links = ["A", "D"]

[postoffices.{second}]
mailboxes = ["postmaster"]
links = ["A", "D"]

[postoffices.A]
mailboxes = ["postmaster", "amy"]

[postoffices.D]
mailboxes = ["postmaster"]

[postoffices.E]
mailboxes = ["postmaster", "eve"]
links = ["D"]

[gateways.GWD]
postoffice = "D"
role = "send"
smarthost = "127.0.0.1:9001"
serves = ["A", "B", "C", "D", "E"]

[gateways.GWA]
postoffice = "A"
listen = "127.0.0.1:0"
smarthost = "127.0.0.1:9002"
serves = ["A"]
"""


def diamond(tmp_path: Path, first: str = "B", second: str = "C") -> Topology:
    file = tmp_path / "diamond.toml"
    file.write_text(DIAMOND.format(first=first, second=second))
    return load(file)


@pytest.fixture(scope="module")
def acme() -> Topology:
    return load(EXAMPLES / "single-gateway.toml")


def test_path_includes_both_ends(acme: Topology) -> None:
    assert path(acme, "SALES", "ENG") == ("SALES", "HQ", "ENG")
    assert path(acme, "SALES", "HQ") == ("SALES", "HQ")
    assert path(acme, "OPS", "OPS") == ("OPS",)


def test_path_is_shortest(tmp_path: Path) -> None:
    topo = diamond(tmp_path)
    assert path(topo, "A", "E") == ("A", "B", "D", "E")
    assert path(topo, "E", "A") == ("E", "D", "B", "A")


def test_ties_go_to_the_postoffice_first_in_the_file(tmp_path: Path) -> None:
    topo = diamond(tmp_path, first="C", second="B")
    assert path(topo, "A", "E") == ("A", "C", "D", "E")


def test_no_route(acme: Topology) -> None:
    ops = replace(acme.postoffices["OPS"], links=())
    hq = replace(acme.postoffices["HQ"], links=("SALES", "ENG"))
    topo = replace(acme, postoffices={**acme.postoffices, "OPS": ops, "HQ": hq})
    with pytest.raises(NoRoute, match="from SALES to OPS"):
        path(topo, "SALES", "OPS")
    with pytest.raises(NoRoute, match="unknown postoffice 'MARS'"):
        path(acme, "SALES", "MARS")


def test_sending_gateways_in_file_order(tmp_path: Path) -> None:
    topo = diamond(tmp_path)
    assert [g.name for g in sending_gateways(topo, "A")] == ["GWD", "GWA"]
    assert [g.name for g in sending_gateways(topo, "E")] == ["GWD"]


def test_receive_only_gateways_never_send() -> None:
    topo = load(EXAMPLES / "dedicated-send-receive.toml")
    assert [g.name for g in sending_gateways(topo, "ALPHA")] == ["SEND"]
    pairs = load(EXAMPLES / "multiple-dedicated-pairs.toml")
    assert [g.name for g in sending_gateways(pairs, "PR")] == ["SENDB"]


def test_outbound_gateway_skips_dead_gateways(tmp_path: Path) -> None:
    topo = diamond(tmp_path)
    assert outbound_gateway(topo, "A").name == "GWD"
    assert outbound_gateway(topo, "A", alive=lambda g: g != "GWD").name == "GWA"
    assert outbound_gateway(topo, "A", alive=lambda g: False).name == "GWD"
    assert outbound_gateway(topo, "E", alive=lambda g: g != "GWD").name == "GWD"


def test_outbound_gateway_none_serving(acme: Topology) -> None:
    topo = replace(acme, gateways={})
    with pytest.raises(NoRoute, match="no sending gateway serves postoffice SALES"):
        outbound_gateway(topo, "SALES")


def test_describe_route_to_a_mailbox(acme: Topology) -> None:
    assert describe_route(acme, Native("ENG", "erin"), "SALES") == [
        "from postoffice SALES",
        "  over External link to postoffice HQ",
        "  over External link to postoffice ENG",
        "  deliver to mailbox ENG/erin (erin@eng.acme.example)",
    ]


def test_describe_route_to_the_internet(acme: Topology) -> None:
    assert describe_route(acme, "bob@example.org", "OPS") == [
        "from postoffice OPS",
        "  over External link to postoffice HQ",
        "  out through gateway GW1 (postoffice HQ) to smart host 127.0.0.1:2526",
        "  SMTP recipient bob@example.org",
    ]


def test_describe_route_names_standby_gateways(tmp_path: Path) -> None:
    lines = describe_route(diamond(tmp_path), "x@example.org", "A")
    assert lines == [
        "from postoffice A",
        "  over External link to postoffice B",
        "  over External link to postoffice D",
        "  out through gateway GWD (postoffice D) to smart host 127.0.0.1:9001",
        "  SMTP recipient x@example.org",
        "  if GWD is down: GWA (postoffice A)",
    ]
