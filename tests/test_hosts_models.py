"""End to end across hosts: the dedicated send/receive model and the several-pairs model,
each gateway on a host of its own (its router beside it), the store PostgreSQL on another,
SMTP clients and the smart hosts outside (tests/multihost.py). Every host starts at
once on an empty database: together they create the schema.

Mail goes both ways for every postoffice: inbound from outside to a mailbox of each
postoffice through every receive gateway; outbound from a mailbox of each postoffice,
submitted with `gatepost send` on a gateway host and relayed over SMTP from outside
through every receive gateway. Each message arrives exactly once, and an outbound copy
comes from the host of the gateway serving its postoffice (worked out here from the
topology file, not with gatepost's routing code), on that gateway's smart host port.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from multihost import Site

OUTSIDE = "someone@example.org"


def mailbox_of(data: dict[str, Any], postoffice: str) -> str:
    po = data["postoffices"][postoffice]
    mailbox = next(m for m in po["mailboxes"] if m != "postmaster")
    return f"{mailbox}@{po['domains'][0]}"


def addressable(data: dict[str, Any]) -> list[str]:
    return [name for name, po in data["postoffices"].items()
            if po.get("domains") and any(m != "postmaster" for m in po["mailboxes"])]


def exit_gateway(data: dict[str, Any], postoffice: str) -> str:
    return next(str(name) for name, gw in data["gateways"].items()
                if gw.get("role", "both") in ("both", "send") and postoffice in gw["serves"])


def role_gateways(data: dict[str, Any], role: str) -> list[str]:
    return [name for name, gw in data["gateways"].items() if gw.get("role", "both") == role]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("model", ["dedicated-send-receive", "multiple-dedicated-pairs"])
def test_model_across_hosts_carries_mail_both_ways_exactly_once(
    tmp_path: Path, model: str
) -> None:
    with Site(model, tmp_path) as site:
        data = site.data
        site.start()
        offices = addressable(data)
        mailboxes = [mailbox_of(data, po) for po in offices]
        receivers = role_gateways(data, "receive")
        gateway_hosts = sorted(site.gateway_host.values())

        # Inbound: through every receive gateway, one message to a mailbox of every postoffice.
        streams = [site.stream(r, OUTSIDE, mailboxes, len(offices), prefix=f"in-{r}")
                   for r in receivers]
        # Outbound, relayed: from a mailbox of every postoffice, through every receive gateway.
        relayed = {f"relay-{r}-{po}-0": po for r in receivers for po in offices}
        streams += [site.stream(r, mailbox_of(data, po), [OUTSIDE], 1, prefix=f"relay-{r}-{po}")
                    for r in receivers for po in offices]
        # ...and a large one (3 MB: staged on the receiving host, read in chunks by the sender).
        relayed |= {f"big-{r}-0": offices[-1] for r in receivers}
        streams += [site.stream(r, mailbox_of(data, offices[-1]), [OUTSIDE], 1, prefix=f"big-{r}",
                                size=3_000_000, timeout=60) for r in receivers]
        # Outbound, submitted: `gatepost send` from every postoffice, on the gateway hosts in turn.
        submitted = {f"out-{po}": po for po in offices}
        for n, po in enumerate(offices):
            site.cli("send", "--from", mailbox_of(data, po), "--to", OUTSIDE,
                     "--subject", f"out-{po}", "--body", "hi",
                     host=gateway_hosts[n % len(gateway_hosts)])
        for stream in streams:
            stream.wait(120)
        acked = set().union(*(stream.acked() for stream in streams))
        inbound = {f"in-{r}-{n}": po for r in receivers for n, po in enumerate(offices)}
        assert acked == inbound.keys() | relayed.keys(), [s.rows() for s in streams]

        site.wait_drained(240)
        tally = site.tally(acked | submitted.keys(), mailboxes)
        assert tally.lost == set(), site.logs()
        assert tally.duplicates == {}, site.logs()

        # Each mailbox holds exactly the message every receive gateway took for it.
        for po, address in zip(offices, mailboxes):
            subjects = sorted(row["subject"] for row in site.mailbox(address))
            assert subjects == sorted(t for t, p in inbound.items() if p == po), address

        # Each outbound message reached the smart host of the gateway that serves its
        # postoffice, from that gateway's host, and nothing else reached a smart host.
        outbound = {**relayed, **submitted}
        sunk = site.sunk()
        assert sorted(row["token"] for row in sunk) == sorted(outbound), sunk
        sent = {row["token"]: row["digest"] for stream in streams for row in stream.rows()}
        assert {row["token"]: row["digest"] for row in sunk if row["token"] in sent} == {
            token: sent[token] for token in relayed}  # bodies arrive as they were sent
        assert sum(row["size"] > 3_000_000 for row in sunk) == len(receivers)
        for row in sunk:
            gateway = exit_gateway(data, outbound[row["token"]])
            assert row["host"] == site.gateway_host[gateway], row
            assert row["port"] == site.sink_ports[gateway], row
            assert row["to"] == [f"<{OUTSIDE}>"], row
        assert set(tally.delivered_by()) == {site.gateway_host[g] for g in site.sink_ports} | {
            "mailbox"}

        # The routers run on several hosts; one of them leads.
        assert len(site.routers) >= 2
        assert site.leader() in site.routers
        # Every host's processes stop cleanly.
        codes = site.stop()
        assert {host: codes[host] for host in gateway_hosts} == dict.fromkeys(gateway_hosts, 0)
