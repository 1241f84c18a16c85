"""Diagrams: text and SVG drawings of the four KB deployment models.

Golden files live in tests/golden/<example>.txt and .svg; rewrite them with
GATEPOST_UPDATE_GOLDEN=1 after an intended change, and review the diff.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from gatepost.topology import Topology, load
from gatepost.topology.diagram import svg, text

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))
GOLDEN = ROOT / "tests" / "golden"
NS = {"svg": "http://www.w3.org/2000/svg"}
ARROW = {"both": "<->", "send": "-->", "receive": "<--"}


def ids(path: Path) -> str:
    return path.stem


def compare_golden(name: str, actual: str) -> None:
    golden = GOLDEN / name
    if os.environ.get("GATEPOST_UPDATE_GOLDEN") == "1":
        golden.write_text(actual)
    assert golden.exists(), f"missing {golden}; run with GATEPOST_UPDATE_GOLDEN=1"
    assert actual == golden.read_text()


@pytest.mark.parametrize("example", EXAMPLES, ids=ids)
def test_text_matches_golden(example: Path) -> None:
    compare_golden(f"{example.stem}.txt", text(load(example)))


@pytest.mark.parametrize("example", EXAMPLES, ids=ids)
def test_svg_matches_golden(example: Path) -> None:
    compare_golden(f"{example.stem}.svg", svg(load(example)))


@pytest.mark.parametrize("example", EXAMPLES, ids=ids)
def test_text_shows_every_element(example: Path) -> None:
    topo = load(example)
    drawing = text(topo)
    assert max(len(line) for line in drawing.splitlines()) <= 100
    for name in topo.postoffices:
        assert f"| {name} " in drawing
    for gateway in topo.gateways.values():
        arrow = ARROW[gateway.role]
        assert f"{arrow} {gateway.name} {arrow}" in drawing
        assert f"SMTP {gateway.role}" in drawing
        if gateway.smarthost is not None:
            assert f"| {gateway.smarthost} " in drawing
    assert drawing.count("+------------------+") == 2 * _box_count(topo)


def _box_count(topo: Topology) -> int:
    return len(topo.postoffices) + len(topo.gateways)


def test_single_gateway_drawing_reads_like_the_kb() -> None:
    lines = text(load(ROOT / "examples" / "single-gateway.toml")).splitlines()
    assert lines[0] == "ACME network: 4 postoffices, 1 gateway"
    hq = next(line for line in lines if "| HQ " in line)
    assert hq.startswith("| SALES            |-<->-|-<->-| HQ               |")
    assert hq.endswith("<-> GW1 <->---------| smart host       |")
    assert "External links: HQ<->SALES, HQ<->ENG, HQ<->OPS" in lines


def test_dedicated_gateways_show_direction() -> None:
    drawing = text(load(ROOT / "examples" / "dedicated-send-receive.toml"))
    assert "|--->-| OUTBOUND" in drawing
    assert "|-<---| INBOUND" in drawing
    assert "listen 127.0.0.1:2545" in drawing


def test_long_names_and_domains_stay_within_100_columns() -> None:
    topo = load(ROOT / "examples" / "multiple-gateways.toml")
    long_domain = ".".join(["abcdefghij" * 6] * 3) + ".example"
    pos = {
        name: replace(po, name=name * 4, domains=(long_domain,) + po.domains)
        for name, po in topo.postoffices.items()
    }
    wide = replace(topo, name="N" * 40, postoffices=pos)
    for line in text(wide).splitlines():
        assert len(line) <= 100, line
    ET.fromstring(svg(wide))


def test_drawings_are_deterministic() -> None:
    example = ROOT / "examples" / "multiple-dedicated-pairs.toml"
    assert text(load(example)) == text(load(example))
    assert svg(load(example)) == svg(load(example))


@pytest.mark.parametrize("example", EXAMPLES, ids=ids)
def test_svg_is_a_standalone_document_with_the_same_elements(example: Path) -> None:
    topo = load(example)
    root = ET.fromstring(svg(topo))
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert int(root.attrib["width"]) > 0 and int(root.attrib["height"]) > 0
    gateway_pos = {g.postoffice for g in topo.gateways.values()}
    assert len(root.findall("svg:g[@class='gateway-po']", NS)) == len(gateway_pos)
    downstream = len(topo.postoffices) - len(gateway_pos)
    assert len(root.findall("svg:g[@class='downstream']", NS)) == downstream
    far = root.findall("svg:g[@class='smarthost']", NS) + root.findall("svg:g[@class='listen']", NS)
    assert len(far) == len(topo.gateways)
    texts = {t.text for t in root.iter("{http://www.w3.org/2000/svg}text")}
    assert set(topo.postoffices) | set(topo.gateways) <= texts
    assert root.find("svg:line[@class='bus']", NS) is not None


def test_svg_arrows_follow_the_gateway_role() -> None:
    root = ET.fromstring(svg(load(ROOT / "examples" / "dedicated-send-receive.toml")))
    send = root.findall("svg:line[@class='link send']", NS)
    receive = root.findall("svg:line[@class='link receive']", NS)
    assert len(send) == 2 and len(receive) == 2  # gateway line + bus link each
    assert all("marker-end" in ln.attrib and "marker-start" not in ln.attrib for ln in send)
    assert all("marker-start" in ln.attrib and "marker-end" not in ln.attrib for ln in receive)
