"""The `gatepost` command as a user types it: exit statuses and what it prints."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import MakeNet, Net
from gatepost.store import NewMessage, NewRecipient, SqliteDb
from support import ROOT, gatepost

EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))
SINGLE = ROOT / "examples" / "single-gateway.toml"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """`gatepost ARGS` with the arguments exactly in the order given."""
    return subprocess.run(
        [sys.executable, "-m", "gatepost", *args],
        check=False, capture_output=True, text=True, timeout=60,
    )


def test_there_are_examples_to_check() -> None:
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_check_accepts_every_example(example: Path) -> None:
    result = gatepost(example, "check")
    assert result.returncode == 0, result.stderr.decode()
    assert b"error" not in result.stderr


def test_check_names_the_key_of_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(SINGLE.read_text().replace('"HQ", "SALES", "ENG"', '"HQ", "SALE", "ENG"'))
    result = gatepost(bad, "check")
    assert result.returncode == 2
    first = result.stderr.decode().splitlines()[0]
    assert re.fullmatch(r"error: gateways\.GW1\.serves\[1\]: unknown postoffice [\"']SALE[\"']", first)


@pytest.mark.parametrize("order", ["before", "after"])
def test_config_option_before_or_after_the_command(order: str) -> None:
    args = ["-c", str(SINGLE), "check"] if order == "before" else ["check", "-c", str(SINGLE)]
    result = run(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{SINGLE}: ok: network ACME, 4 postoffices, 1 gateways")


def test_route_to_a_local_mailbox_names_the_postoffices() -> None:
    result = run("-c", str(SINGLE), "route", "alice@hq.acme.example", "--from", "carol@sales.acme.example")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "from postoffice SALES",
        "  over External link to postoffice HQ",
        "  deliver to mailbox HQ/alice (alice@hq.acme.example)",
    ]


def test_route_to_a_foreign_address_names_the_gateway() -> None:
    result = run("-c", str(SINGLE), "route", "someone@example.org", "--from", "erin@eng.acme.example")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "from postoffice ENG",
        "  over External link to postoffice HQ",
        "  out through gateway GW1 (postoffice HQ) to smart host 127.0.0.1:2526",
        "  SMTP recipient someone@example.org",
    ]


def test_diagram_svg_is_xml() -> None:
    result = gatepost(SINGLE, "diagram", "--format", "svg")
    assert result.returncode == 0, result.stderr.decode()
    assert ET.fromstring(result.stdout).tag == "{http://www.w3.org/2000/svg}svg"


def test_mailq_json_on_an_empty_queue(make_net: MakeNet) -> None:
    result = gatepost(make_net().config, "mailq", "--json")
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout) == []


def test_send_from_an_outside_address_is_refused(make_net: MakeNet) -> None:
    net = make_net()
    result = net.cli("send", "--from", "someone@example.org", "--to", "alice@hq.acme.example",
                     "--body", "hi")
    assert result.returncode != 0
    assert "someone@example.org is not a mailbox of ACME" in result.stderr.decode()
    assert json.loads(net.cli("mailq", "--json").stdout) == []


def test_run_only_an_unknown_role_names_the_known_roles(make_net: MakeNet) -> None:
    result = make_net().cli("run", "--only", "nonsense")
    assert result.returncode != 0
    assert "unknown role nonsense; this topology has: router, gateway:GW1" in result.stderr.decode()


def test_run_with_its_listen_address_taken_names_the_key(make_net: MakeNet) -> None:
    net = make_net()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", net.port))
        taken.listen()
        result = net.cli("run")
    assert result.returncode != 0
    assert f"error: gateways.GW1.listen 127.0.0.1:{net.port}: cannot listen" in (
        result.stderr.decode()
    )


# -- mailq pages ---------------------------------------------------------------------


def queue_mail(net: Net, *recipients: str) -> list[str]:
    """One message per recipient, straight into the topology's store, one second apart."""
    store = SqliteDb(net.config.parent / "var" / "acme.db")
    try:
        return [store.enqueue([NewMessage("a@b.example", (NewRecipient(rcpt, None),), b"x",
                                          "HQ", "HQ", "cli")], now=1000.0 + n)[0]
                for n, rcpt in enumerate(recipients)]
    finally:
        store.close()


def json_pages(net: Net, *options: str) -> list[list[str]]:
    """Follow `mailq --json` from page to page by the cursor each prints on stderr."""
    pages, after = [], []
    while True:
        result = net.cli("mailq", "--json", *options, *after)
        assert result.returncode == 0, result.stderr.decode()
        pages.append([row["id"] for row in json.loads(result.stdout)])
        found = re.search(r"next page: (--after \S+)", result.stderr.decode())
        if found is None:
            return pages
        after = found.group(1).split(" ")
        assert len(pages) < 10, pages


def test_mailq_json_pages_list_every_message_once_oldest_first(make_net: MakeNet) -> None:
    net = make_net()
    ids = queue_mail(net, *[f"r{n}@ext.example" for n in range(5)])
    assert json_pages(net, "--limit", "2") == [ids[0:2], ids[2:4], ids[4:5]]


def test_mailq_table_shows_a_page_the_counts_and_the_next_page(make_net: MakeNet) -> None:
    net = make_net()
    ids = queue_mail(net, *[f"r{n}@ext.example" for n in range(3)])
    out = net.cli("mailq", "--limit", "2").stdout.decode()
    assert [line.split()[0] for line in out.splitlines()[1:3]] == ids[:2]
    assert "-- recipients: incoming 3, active 0, deferred 0, hold 0" in out
    cursor = re.search(r"next page: mailq --after (\S+)", out)
    assert cursor is not None, out
    last = net.cli("mailq", "--limit", "2", "--after", cursor.group(1)).stdout.decode()
    assert ids[2] in last and ids[0] not in last and "next page" not in last


def test_mailq_filtered_pages_skip_what_does_not_match(make_net: MakeNet) -> None:
    net = make_net()
    ids = queue_mail(net, "a@one.example", "b@two.example", "c@one.example", "d@two.example",
                     "e@one.example")
    pages = json_pages(net, "--limit", "2", "--domain", "one.example")
    assert [i for page in pages for i in page] == [ids[0], ids[2], ids[4]]
    assert all(len(page) <= 2 for page in pages)


def test_mailq_refuses_a_cursor_it_did_not_print(make_net: MakeNet) -> None:
    result = make_net().cli("mailq", "--after", "yesterday")
    assert result.returncode == 2
    assert "'yesterday' is not a cursor mailq printed" in result.stderr.decode()
