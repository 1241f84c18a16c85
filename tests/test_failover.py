"""Failover between two sending gateways serving one postoffice group.

BRANCH is served by GW_A first (the primary) and GW_B second. Mail is streamed
in through a receive-only gateway (RECV, relaying for 127.0.0.0/8) from a
BRANCH mailbox, so it leaves by GW_A while GW_A runs. Each of GW_A and GW_B has
its own smtp-sink smart host, so the sink a message reached names the gateway.
Every role runs in its own `gatepost run --only ROLE` process.
"""

from __future__ import annotations

import email.policy
import smtplib
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from support import Deployment, free_port, hostport, sunk_subjects, toml_text, wait_for

SENDER = "ann@branch.fail.example"
OUTSIDE = "someone@example.org"


def topology() -> dict[str, Any]:
    group = ["BRANCH", "PA", "PB", "IN"]
    return {
        "network": {"name": "FAIL", "store": "sqlite:var/store.db"},
        "postoffices": {
            "BRANCH": {"domains": ["branch.fail.example"], "mailboxes": ["postmaster", "ann"],
                       "links": ["PA", "PB", "IN"]},
            "PA": {"mailboxes": ["postmaster"]},
            "PB": {"mailboxes": ["postmaster"]},
            "IN": {"mailboxes": ["postmaster"]},
        },
        "gateways": {
            "GW_A": {"postoffice": "PA", "role": "send", "serves": group,
                     "smarthost": f"127.0.0.1:{free_port()}"},
            "GW_B": {"postoffice": "PB", "role": "send", "serves": group,
                     "smarthost": f"127.0.0.1:{free_port()}"},
            "RECV": {"postoffice": "IN", "role": "receive", "listen": f"127.0.0.1:{free_port()}",
                     "relay_from": ["127.0.0.0/8"]},
        },
    }


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Deployment]:
    data = topology()
    config = tmp_path / "failover.toml"
    config.write_text(toml_text(data))
    deployment = Deployment(config, data)
    yield deployment
    deployment.close()


def stream(net: Deployment, subjects: list[str], pause: float = 0.005) -> list[str]:
    """Relay one message per subject through RECV, one session, a steady pace;
    returns the queue ids from the 250 replies."""
    port = hostport(net.gateways["RECV"]["listen"])
    queue_ids = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example.org")
        for subject in subjects:
            message = EmailMessage()
            message["From"], message["To"], message["Subject"] = SENDER, OUTSIDE, subject
            message.set_content("stream")
            assert client.mail(SENDER)[0] == 250
            assert client.rcpt(OUTSIDE)[0] == 250
            code, reply = client.data(message.as_bytes(policy=email.policy.SMTP))
            assert code == 250, reply
            queue_ids.append(reply.decode().rsplit(" ", 1)[1])
            time.sleep(pause)
    return queue_ids


def batch(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{n:03d}" for n in range(count)]


def arrived(net: Deployment, gateway: str, subjects: list[str], timeout: float = 60) -> None:
    sink = net.sinks[gateway]
    wanted = set(subjects)
    try:
        wait_for(lambda: wanted <= set(sunk_subjects(sink)), timeout,
                 f"{len(wanted)} messages at {gateway}'s smart host")
    except AssertionError as error:
        missing = sorted(wanted - set(sunk_subjects(sink)))
        elsewhere = {name: sorted(set(missing) & set(sunk_subjects(other)))
                     for name, other in net.sinks.items() if other is not sink}
        held = sorted({(r["queue"], r["state"], r["attempts"]) for r in net.mailq()})
        raise AssertionError(f"{error}: {len(missing)} missing, e.g. {missing[:3]}; at other sinks: "
                             f"{elsewhere}; queued (queue, state, attempts): {held}") from None


def waiting_in(net: Deployment, queue: str) -> list[dict[str, Any]]:
    return [row for row in net.mailq() if row["queue"] == queue]


def start(net: Deployment) -> None:
    net.start_sink("GW_A")
    net.start_sink("GW_B")
    net.start("gateway:GW_A", "gateway:GW_B", "gateway:RECV", "router")


def primary_seen(net: Deployment) -> None:
    """Probe until a message leaves through GW_A: the router has seen GW_A's
    heartbeat (it refreshes what runs once a second, and a gateway says
    "ready" before its first heartbeat, so a probe may still go to GW_B)."""
    probes: list[str] = []

    def probe_through_a() -> bool:
        probes.append(f"probe-{len(probes):03d}")
        stream(net, probes[-1:])
        everywhere = lambda: sunk_subjects(net.sinks["GW_A"]) + sunk_subjects(net.sinks["GW_B"])
        wait_for(lambda: probes[-1] in everywhere(), 30, f"{probes[-1]} at a smart host")
        return probes[-1] in sunk_subjects(net.sinks["GW_A"])

    wait_for(probe_through_a, 30, "a probe through GW_A")
    net.wait_drained(30)


def back_through_primary(net: Deployment) -> None:
    """Restart GW_A's smart host and GW_A: new mail leaves through GW_A only."""
    net.start_sink("GW_A")
    net.start("gateway:GW_A")
    primary_seen(net)
    before_b = set(sunk_subjects(net.sinks["GW_B"]))
    later = batch("after-restart-", 20)
    stream(net, later)
    arrived(net, "GW_A", later)
    net.wait_drained(30)
    assert set(sunk_subjects(net.sinks["GW_B"])) == before_b


@pytest.mark.parametrize("how", ["kill -9", "SIGTERM"])
def test_mail_waiting_for_a_stopped_primary_leaves_through_the_second_gateway(
    net: Deployment, how: str
) -> None:
    start(net)
    primary_seen(net)
    # The primary carries the group's mail while it runs.
    before_b = sorted(sunk_subjects(net.sinks["GW_B"]))  # probes only
    first = batch("first-", 60)
    stream(net, first)
    arrived(net, "GW_A", first)

    # Its smart host goes away: mail piles up, deferred, in send:GW_A.
    old_sink_a = net.sinks["GW_A"]
    old_sink_a.stop()
    stuck = batch("stuck-", 40)
    stuck_ids = stream(net, stuck)
    wait_for(lambda: len([r for r in waiting_in(net, "send:GW_A") if r["state"] == "deferred"]) == 40,
             30, "40 deferred recipients in send:GW_A")

    # The primary stops (a crash, or a clean stop) while the stream goes on.
    if how == "kill -9":
        net.kill("gateway:GW_A")
    else:
        assert net.processes["gateway:GW_A"].stop() == 0
    after = batch("after-", 100)
    stream(net, after)

    # Everything that was waiting for GW_A, and everything since, leaves through GW_B.
    arrived(net, "GW_B", stuck + after)
    net.wait_drained(60)
    assert sorted(sunk_subjects(net.sinks["GW_B"])) == sorted(before_b + stuck + after)
    assert sorted(s for s in sunk_subjects(old_sink_a) if not s.startswith("probe")) == sorted(first)

    # The trace shows the hand-over: queued for GW_A, requeued, sent by GW_B.
    relay_b = net.gateways["GW_B"]["smarthost"]
    for trace in net.many(net.trace, stuck_ids[:: len(stuck_ids) // 4]):
        events = [(event, where, detail) for _, event, where, detail in trace]
        queues = [detail.rpartition(" ")[2] for event, _, detail in events if event == "moved"]
        assert "send:GW_A" in queues and queues[-1] == "send:GW_B", trace
        assert ("requeue", "PA", "from send:GW_A") in events, trace
        assert events[-1][:2] == ("delivered", "PB") and events[-1][2].startswith(f"relay={relay_b} 250"), trace

    back_through_primary(net)


def test_mail_in_flight_at_a_crashed_primary_leaves_through_the_second_gateway(
    net: Deployment,
) -> None:
    """GW_A's smart host takes 2 s to answer DATA, so GW_A always holds claimed
    (active) mail when it is killed; that mail must still leave, through GW_B."""
    net.start_sink("GW_A", "-w", "2")
    net.start_sink("GW_B")
    net.start("gateway:GW_A", "gateway:GW_B", "gateway:RECV", "router")
    primary_seen(net)
    subjects = batch("flight-", 30)
    stream(net, subjects)
    wait_for(lambda: any(r["state"] == "active" for r in waiting_in(net, "send:GW_A")), 30,
             "mail being sent by GW_A")
    net.kill("gateway:GW_A")
    sent_by_a = set(sunk_subjects(net.sinks["GW_A"]))
    assert len(sent_by_a) < len(subjects)
    # Taking over should need about HEARTBEAT_TTL (5 s), not the 120 s claim lease.
    arrived(net, "GW_B", sorted(set(subjects) - sent_by_a), timeout=30)
    net.wait_drained(30)
