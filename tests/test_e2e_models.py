"""End to end, the four deployment models of examples/ as a user would run them:
one `gatepost run --only gateway:NAME` process per gateway and one `--only router`,
each sending gateway handing its mail to an smtp-sink of its own, and everything
checked through the `gatepost` command and the sinks' files.

Which gateway a message should take is worked out here from the topology file
itself (the first sending gateway, in file order, whose `serves` lists the
origin postoffice), not with gatepost's own routing code.
"""

from __future__ import annotations

import email.policy
import smtplib
from collections import deque
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from support import (
    EXAMPLES,
    Deployment,
    free_port,
    hostport,
    listening_ports,
    rewrite_example,
    sunk_subjects,
    toml_text,
    wait_for,
)

MODELS = ["single-gateway", "multiple-gateways", "dedicated-send-receive", "multiple-dedicated-pairs"]
OUTSIDE = "someone@example.org"
Deploy = Callable[..., Deployment]


@pytest.fixture
def deploy(tmp_path: Path) -> Iterator[Deploy]:
    """Rewrites an example into tmp_path (optionally edited) and closes what ran."""
    made: list[Deployment] = []

    def make(model: str, edit: Callable[[dict[str, Any]], None] | None = None) -> Deployment:
        config, data = rewrite_example(EXAMPLES / f"{model}.toml", tmp_path)
        if edit is not None:
            edit(data)
            config.write_text(toml_text(data))
        made.append(Deployment(config, data))
        return made[-1]

    yield make
    for deployment in made:
        deployment.close()


# -- what the topology file says, read independently of gatepost ----------------


def mailbox_of(data: dict[str, Any], postoffice: str) -> str:
    """An SMTP address of a (non-postmaster) mailbox of `postoffice`."""
    po = data["postoffices"][postoffice]
    mailbox = next(m for m in po["mailboxes"] if m != "postmaster")
    return f"{mailbox}@{po['domains'][0]}"


def addressable(data: dict[str, Any]) -> list[str]:
    """Postoffices with an SMTP domain and a mailbox besides postmaster."""
    return [
        name for name, po in data["postoffices"].items()
        if po.get("domains") and any(m != "postmaster" for m in po["mailboxes"])
    ]


def exit_gateway(data: dict[str, Any], postoffice: str) -> str:
    return next(
        name for name, gw in data["gateways"].items()
        if gw.get("role", "both") in ("both", "send") and postoffice in gw["serves"]
    )


def hops_between(data: dict[str, Any], src: str, dst: str) -> int:
    """Fewest External links from `src` to `dst` (links are symmetric)."""
    neighbours: dict[str, set[str]] = {name: set() for name in data["postoffices"]}
    for name, po in data["postoffices"].items():
        for other in po.get("links", []):
            neighbours[name].add(other)
            neighbours[other].add(name)
    distance, queue = {src: 0}, deque([src])
    while queue:
        here = queue.popleft()
        for other in neighbours[here] - distance.keys():
            distance[other] = distance[here] + 1
            queue.append(other)
    return distance[dst]


def moved_through(trace: list[tuple[str, str, str, str]]) -> list[str]:
    """The postoffices a trace's "moved" rows went through, a repeat of the same
    postoffice (the hand-over to a queue there) counted once."""
    moved = [where for _, event, where, _ in trace if event == "moved"]
    return [po for n, po in enumerate(moved) if n == 0 or moved[n - 1] != po]


def smtp_submit(port: int, sender: str, messages: list[tuple[str, str]]) -> list[str]:
    """(recipient, subject) pairs over one SMTP session to a receive side;
    returns the queue ids from the 250 replies."""
    queue_ids = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example.org")
        for recipient, subject in messages:
            message = EmailMessage()
            message["From"], message["To"], message["Subject"] = sender, recipient, subject
            message.set_content("hello")
            assert client.mail(sender)[0] == 250
            assert client.rcpt(recipient)[0] == 250
            code, reply = client.data(message.as_bytes(policy=email.policy.SMTP))
            assert code == 250, reply
            queue_ids.append(reply.decode().rsplit(" ", 1)[1])
    return queue_ids


# -- the tests -------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_model_carries_mail_both_ways_through_the_expected_gateways(
    deploy: Deploy, model: str
) -> None:
    net = deploy(model)
    data = net.data
    net.start_all()
    offices = addressable(data)

    # Processes keep to their roles: only receiving gateways listen, each on its port.
    for role, process in net.processes.items():
        name = role.removeprefix("gateway:")
        gateway = data["gateways"].get(name, {})
        expected = {hostport(gateway["listen"])} if name in net.receivers() else set()
        assert listening_ports(process.process.pid) == expected, role

    # Inbound: every receiving gateway takes mail for a mailbox in every postoffice;
    # relayed mail from an outside sender leaves by the gateway serving the receiver's postoffice.
    for receiver in net.receivers():
        port = hostport(data["gateways"][receiver]["listen"])
        inbound = [(mailbox_of(data, po), f"in {receiver} {po}") for po in offices]
        smtp_submit(port, OUTSIDE, [*inbound, (OUTSIDE, f"relay {receiver}")])

    # Outbound: `gatepost send` from a mailbox of every postoffice.
    senders = [mailbox_of(data, po) for po in offices]
    out_ids = net.many(net.send, senders, [OUTSIDE] * len(offices), [f"out {po}" for po in offices])

    net.wait_drained(60)

    # Every inbound message is in its mailbox, and its trace names the gateway that took it.
    listings = net.many(net.mailbox, [mailbox_of(data, po) for po in offices])
    for po, rows in zip(offices, listings):
        assert sorted(r["subject"] for r in rows) == sorted(f"in {g} {po}" for g in net.receivers())
    # Every outbound message left through the expected gateway's smart host, and only there.
    expected: dict[str, list[str]] = {g: [] for g in net.senders()}
    for po in offices:
        expected[exit_gateway(data, po)].append(f"out {po}")
    for receiver in net.receivers():
        expected[exit_gateway(data, data["gateways"][receiver]["postoffice"])].append(
            f"relay {receiver}")
    for gateway, subjects in expected.items():
        sink = net.sinks[gateway]
        wait_for(lambda sink=sink, subjects=subjects: len(sunk_subjects(sink)) >= len(subjects), 30, f"{gateway}'s smart host")
        assert sorted(sunk_subjects(sink)) == sorted(subjects), gateway

    # ...and `gatepost trace` shows the send queue it waited in and the relay it took.
    for po, queue_id, trace in zip(offices, out_ids, net.many(net.trace, out_ids)):
        gateway = exit_gateway(data, po)
        gateway_po = data["gateways"][gateway]["postoffice"]
        smarthost = data["gateways"][gateway]["smarthost"]
        events = [event for _, event, _, _ in trace]
        assert trace[0][1:3] == ("received", po), trace
        assert events[1:-1] == ["moved"] * (len(events) - 2), trace
        path = moved_through(trace)
        assert path[-1] == gateway_po and len(path) == max(1, hops_between(data, po, gateway_po)), trace
        assert trace[-2][3].endswith(f"to queue send:{gateway}"), trace
        assert trace[-1][1:3] == ("delivered", gateway_po), trace
        assert trace[-1][3].startswith(f"relay={smarthost} 250"), trace

    # The trace of each inbound message names the gateway that took it and the
    # postoffice of the mailbox it was delivered to.
    inbound_rows = [row for rows in listings for row in rows]
    traces = net.many(net.trace, [row["queue_id"] for row in inbound_rows])
    for row, trace in zip(inbound_rows, traces):
        receiver, po = row["subject"].split()[1:]
        gateway_po = data["gateways"][receiver]["postoffice"]
        assert trace[0][1:] == ("received", gateway_po, f"gateway:{receiver}"), trace
        assert trace[-1][1:3] == ("delivered", po), trace

    assert net.mailq() == []


@pytest.mark.parametrize("model", MODELS)
def test_route_names_the_path_and_the_gateway(deploy: Deploy, model: str) -> None:
    net = deploy(model)
    data = net.data
    offices = addressable(data)
    entry = data["gateways"][net.receivers()[0]]["postoffice"]
    local = net.many(lambda po: net.cli("route", mailbox_of(data, po)), offices)
    foreign = net.many(
        lambda po: net.cli("route", OUTSIDE, "--from", mailbox_of(data, po)), offices)
    for po, text in zip(offices, local):
        lines = text.splitlines()
        mailbox = mailbox_of(data, po)
        assert lines[0] == f"from postoffice {entry}", text
        assert lines[-1] == f"  deliver to mailbox {po}/{mailbox.split('@')[0]} ({mailbox})", text
        assert len(lines) == 2 + hops_between(data, entry, po), text
    for po, text in zip(offices, foreign):
        gateway = exit_gateway(data, po)
        gw = data["gateways"][gateway]
        lines = text.splitlines()
        assert lines[0] == f"from postoffice {po}", text
        exit_line = (f"  out through gateway {gateway} (postoffice {gw['postoffice']}) "
                     f"to smart host {gw['smarthost']}")
        assert exit_line in lines, text
        assert lines.index(exit_line) == 1 + hops_between(data, po, gw["postoffice"]), text


@pytest.mark.parametrize("model", ["dedicated-send-receive", "multiple-dedicated-pairs"])
def test_dedicated_gateways_keep_to_their_roles(deploy: Deploy, model: str) -> None:
    """A send-only gateway opens no listener even when its table has a listen key;
    a receive-only gateway's relayed mail goes over the router to the send gateway."""
    spare: dict[str, int] = {}

    def edit(data: dict[str, Any]) -> None:
        for name, gw in data["gateways"].items():
            if gw["role"] == "send":
                spare[name] = free_port()
                gw["listen"] = f"127.0.0.1:{spare[name]}"

    net = deploy(model, edit)
    data = net.data
    assert ": ok: " in net.cli("check")  # only a warning: the key is ignored
    net.start_all()
    for name in spare:
        process = net.processes[f"gateway:{name}"]
        # Exact, unlike connecting to the port: a free port number may meanwhile be
        # some other socket's (an ephemeral client port can even connect to itself).
        assert listening_ports(process.process.pid) == set(), name
        assert "receive side" not in process.output(), process.output()

    # Relay from a local sender, through every receive-only gateway, to the outside.
    relayed: list[tuple[str, str, str]] = []  # (receiver, origin postoffice, queue id)
    for receiver in net.receivers():
        port = hostport(data["gateways"][receiver]["listen"])
        for po in addressable(data):
            [queue_id] = smtp_submit(port, mailbox_of(data, po), [(OUTSIDE, f"relay {receiver} {po}")])
            relayed.append((receiver, po, queue_id))
    net.wait_drained(60)
    expected: dict[str, list[str]] = {g: [] for g in net.senders()}
    for receiver, po, _ in relayed:
        expected[exit_gateway(data, po)].append(f"relay {receiver} {po}")
    for gateway, subjects in expected.items():
        sink = net.sinks[gateway]
        wait_for(lambda sink=sink, subjects=subjects: len(sunk_subjects(sink)) >= len(subjects), 30, f"{gateway}'s smart host")
        assert sorted(sunk_subjects(sink)) == sorted(subjects), gateway

    # The trace shows the router's moves from the receive gateway's postoffice to the
    # send gateway's, then the send queue, then the relay.
    traces = net.many(net.trace, [queue_id for *_, queue_id in relayed])
    for (receiver, po, _), trace in zip(relayed, traces):
        gateway = exit_gateway(data, po)
        entry, gateway_po = data["gateways"][receiver]["postoffice"], data["gateways"][gateway]["postoffice"]
        events = [event for _, event, _, _ in trace]
        assert trace[0][1:3] == ("received", entry), trace
        assert events[1:-1] == ["moved"] * (len(events) - 2), trace
        path = moved_through(trace)
        assert path[-1] == gateway_po and len(path) == hops_between(data, entry, gateway_po), trace
        assert trace[-2][3].endswith(f"to queue send:{gateway}"), trace
        assert trace[-1][1:3] == ("delivered", gateway_po), trace
        assert trace[-1][3].startswith(f"relay={data['gateways'][gateway]['smarthost']} 250"), trace
