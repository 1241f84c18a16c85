"""Faults across hosts under a steady stream of mail (tests/multihost.py): a gateway host
killed, a gateway host cut off from the database, the database restarted, the leading
router's host cut off. Each is counted afterwards from what the smart hosts recorded:
no acknowledged token lost, and duplicates within the in-flight bound.

The model is the dedicated send/receive one (examples/dedicated-send-receive.toml) with a
second sending gateway, SEND2 on its own gateway postoffice OUTBOUND2, serving the same
postoffices after SEND (the first under `serves` is the primary). Hosts: `db` (PostgreSQL),
`recv`, `send`, `send2` (each its gateway and a router), `outside` (the SMTP clients and
the smart hosts, which record the sending host of every copy).

The bound on duplicates: a send side commits each message's outcome before its session's
next command, so a fault can make mail go out twice only for a message whose final dot
went and whose outcome was not committed yet: at most one per open session of each
sending gateway the fault hits (`max_sessions`, SESSIONS here). The receive side cannot
add copies (the stream never sends a token twice).

Timings: `[queue] lease = 10s, heartbeat = 1s, failover_after = 3s` (the harness's), so
a send side's fence is 1 s. Times are measured and printed (pytest -s), and go into the
assertion messages; only counts are asserted, and times only as generous liveness bounds.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from multihost import Site, Stream, Tally, wait_until
from support import logged_at

PRIMARY, SECONDARY, RECEIVER = "SEND", "SEND2", "RECV"
P_HOST, S_HOST, R_HOST = "send", "send2", "recv"
SENDER = "peter@alpha.initech.example"  # ALPHA: served by SEND, then SEND2
OUTSIDE = "someone@example.org"
SESSIONS = 4  # max_sessions of each sending gateway: one in-flight message each at most
RATE = 10.0  # messages a second from outside
BURST_RATE = 40.0  # messages a second of a burst around a database restart
SINK_DELAY = 0.2  # seconds the smart hosts take to answer a final dot: mail is in flight
LIVENESS = 60.0  # seconds: a generous bound on any takeover or recovery
SETTLE = 3.0  # seconds after a host is back before its new mail is counted as new
WORKER_FAILED = re.compile(r"worker loop failed|Traceback")
FAILOVER = re.compile(rf"gateway {PRIMARY} is not running: (\d+) recipients go to another gateway")


class FaultSite(Site):
    """The dedicated model with a secondary sending gateway on a host of its own."""

    def __init__(self, directory: Path) -> None:
        super().__init__("dedicated-send-receive", directory, sink_delay=SINK_DELAY)
        add_secondary(self.data)
        # Site names the hosts from the example's gateways before `edit` could add one.
        self.gateway_host = {name: name.lower() for name in self.data["gateways"]}
        self.routers = list(self.gateway_host.values())


def add_secondary(data: dict[str, Any]) -> None:
    offices = data["postoffices"]
    offices["OUTBOUND2"] = {"mailboxes": ["postmaster"], "links": ["INBOUND"]}
    for name in ("ALPHA", "BETA", "GAMMA"):
        offices[name]["links"].append("OUTBOUND2")
    gateways = data["gateways"]
    serves = [*gateways[PRIMARY]["serves"], "OUTBOUND2"]
    gateways[PRIMARY].update(serves=serves, max_sessions=SESSIONS)
    gateways[SECONDARY] = {"postoffice": "OUTBOUND2", "role": "send", "serves": serves,
                           "smarthost": "127.0.0.1:1", "max_sessions": SESSIONS}


# -- helpers ------------------------------------------------------------------------------


def start_led_by(site: Site, leader: str) -> None:
    """Start every host, `leader` first: its router leads failover and purge."""
    site.start(leader)
    wait_until(lambda: site.leader() == leader, LIVENESS, f"the router of {leader} to lead")
    site.start(*(name for name in site.nodes if name not in (leader, "db")))
    time.sleep(SETTLE)  # every router has seen every gateway's heartbeat


def stream_for(site: Site, seconds: float, prefix: str) -> tuple[Stream, float]:
    """A stream of relayed mail from ALPHA to outside for `seconds`; and when it began."""
    began = time.time()
    return site.stream(RECEIVER, SENDER, [OUTSIDE], int(seconds * RATE), RATE, prefix), began


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def first_copy(site: Site, host: str, after: float, timeout: float = LIVENESS) -> float:
    """When the first copy from `host` later than `after` reached a smart host."""
    found: list[float] = []

    def arrived() -> bool:
        found[:] = [row["at"] for row in site.sunk() if row["host"] == host and row["at"] > after]
        return bool(found)

    wait_until(arrived, timeout, f"a copy from {host} after {after:.1f}")
    return min(found)


# A copy whose final dot the killed host sent just before it died is recorded by the
# smart host a moment later: it is in flight (counted among the duplicates), not sent
# by a dead host.
IN_FLIGHT_GRACE = 1.0


def copies(site: Site, host: str, since: float = 0.0, until: float = float("inf")
           ) -> list[dict[str, Any]]:
    return [row for row in site.sunk() if row["host"] == host and since <= row["at"] < until]


def acked_after(stream: Stream, moment: float) -> set[str]:
    return {row["token"] for row in stream.rows() if row["code"] == 250 and row["at"] > moment}


def senders_of(site: Site, tokens: set[str]) -> dict[str, set[str]]:
    """The hosts that sent each of `tokens`."""
    found: dict[str, set[str]] = {}
    for row in site.sunk():
        if row["token"] in tokens:
            found.setdefault(row["token"], set()).add(row["host"])
    return found


def finish(site: Site, stream: Stream, facts: dict[str, Any], also: Stream | None = None
           ) -> Tally:
    """Wait for the stream and an empty queue; count what became of the acked tokens
    (of `also` too)."""
    streams = [stream, *([also] if also else [])]
    for each in streams:
        each.wait(180)
    site.wait_drained(180)
    tally = site.tally(set().union(*(each.acked() for each in streams)))
    codes: dict[int, int] = {}
    for row in [row for each in streams for row in each.rows()]:
        codes[row["code"]] = codes.get(row["code"], 0) + 1
    facts.update(acked=len(tally.acked), replies=codes, lost=len(tally.lost),
                 duplicates=len(tally.duplicates), by_host=dict(tally.delivered_by()),
                 duplicates_by=dict(tally.duplicates_by()), duplicated=tally.duplicates)
    return tally


def failed_over(site: Site, host: str, since: float) -> int:
    """Recipients the router of `host` gave from the primary to another gateway after
    `since` (its log: only the router that leads does this)."""
    return sum(int(found.group(1)) for line in site.nodes[host].output().splitlines()
               if (found := FAILOVER.search(line)) and logged_at(line) >= since)


def report(fault: str, facts: dict[str, Any]) -> str:
    """What was measured, one line, printed (pytest -s) and for assertion messages."""
    text = f"{fault}: " + ", ".join(
        f"{key}={value:.2f}" if isinstance(value, float) else f"{key}={value}"
        for key, value in facts.items())
    print("\n" + text)
    return text


def assert_counts(site: Site, tally: Tally, bound: int, said: str) -> None:
    assert tally.lost == set(), f"{said}\nlost: {sorted(tally.lost)[:20]}\n{site.logs()}"
    extra = sum(len(where) - 1 for where in tally.duplicates.values())
    assert extra <= bound, f"{said}\n{extra} extra copies, beyond {bound}\n{site.logs()}"


def assert_all_running(site: Site, said: str) -> None:
    """Every gatepost process still runs (none needed restarting) and no worker died."""
    for host, node in site.nodes.items():
        if not node.roles:
            continue
        assert node.process is not None and node.process.poll() is None, (
            f"{said}\ngatepost on {host} exited:\n{node.output(whole=True)[-6000:]}")
        failed = [line for line in node.output(whole=True).splitlines()
                  if WORKER_FAILED.search(line)]
        assert not failed, f"{said}\n{host}: {failed[:5]}\n{site.logs()}"


def new_mail(site: Site, stream: Stream, host: str, back: float
             ) -> tuple[int, dict[str, set[str]]]:
    """Of the mail accepted SETTLE seconds after `host` was back (its first copy): how
    much, and which tokens left through another host than `host` (with their senders)."""
    later = acked_after(stream, back + SETTLE)
    senders = senders_of(site, later)
    return len(later), {token: hosts for token, hosts in senders.items() if hosts != {host}}


def timed(action: Callable[[], object]) -> float:
    began = time.monotonic()
    action()
    return time.monotonic() - began


# -- the faults -----------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_a_killed_gateway_host_is_taken_over_and_takes_its_mail_back(tmp_path: Path) -> None:
    """kill -9 of every process on the primary's host: its postoffices' mail leaves through
    the secondary's host; started again, new mail comes back to the primary."""
    with FaultSite(tmp_path) as site:
        start_led_by(site, R_HOST)
        stream, began = stream_for(site, 30, "kill")
        sleep_until(began + 6)
        killed = time.time()
        site.kill(P_HOST)
        dead = time.time() + IN_FLIGHT_GRACE  # what it had sent is read by then
        taken = first_copy(site, S_HOST, killed)
        sleep_until(began + 16)
        restarted = time.time()
        site.start(P_HOST)
        back = time.time()
        returned = first_copy(site, P_HOST, back)
        facts: dict[str, Any] = {
            "takeover_s": taken - killed, "restart_s": back - restarted,
            "back_s": returned - back}
        tally = finish(site, stream, facts)
        count, elsewhere = new_mail(site, stream, P_HOST, returned)
        facts.update(
            secondary_before_kill=len(copies(site, S_HOST, until=killed)),
            primary_while_dead=len(copies(site, P_HOST, dead, restarted)),
            secondary_while_dead=len(copies(site, S_HOST, killed, restarted)),
            failed_over=failed_over(site, R_HOST, killed),
            new_mail=f"{count - len(elsewhere)}/{count} via {P_HOST}")
        said = report("kill -9 of the primary's host", facts)
        assert facts["secondary_before_kill"] == 0, said  # the primary carried the mail
        assert facts["primary_while_dead"] == 0, said
        assert facts["secondary_while_dead"] > 0, said
        assert_counts(site, tally, SESSIONS, said)
        assert count and not elsewhere, f"{said}\n{sorted(elsewhere.items())[:10]}"
        assert_all_running(site, said)


@pytest.mark.timeout(300)
def test_a_gateway_host_cut_off_from_the_database_sends_nothing_taken_over(
    tmp_path: Path,
) -> None:
    """The primary's host loses its route to the database (not to the smart host) for
    a while: the secondary takes its mail over, the cut-off host sends nothing after
    that, nothing is lost, and after the heal it carries new mail again by itself."""
    with FaultSite(tmp_path) as site:
        start_led_by(site, R_HOST)
        stream, began = stream_for(site, 32, "cut")
        primary = site.host(P_HOST)
        sleep_until(began + 6)
        cut = time.time()
        site.net.cut(primary, site.db)
        taken = first_copy(site, S_HOST, cut)
        sleep_until(began + 18)
        healed = time.time()
        site.net.heal(primary, site.db)
        returned = first_copy(site, P_HOST, healed)
        facts: dict[str, Any] = {"takeover_s": taken - cut, "back_after_heal_s": returned - healed}
        tally = finish(site, stream, facts)
        while_cut = copies(site, P_HOST, cut, healed)
        after_takeover = [row for row in while_cut if row["at"] >= taken]
        both = {t: w for t, w in tally.duplicates.items() if {P_HOST, S_HOST} <= set(w)}
        count, elsewhere = new_mail(site, stream, P_HOST, returned)
        facts.update(
            cut_host_copies_while_cut=len(while_cut),
            cut_host_last_copy_s=max((row["at"] - cut for row in while_cut), default=None),
            cut_host_after_takeover=len(after_takeover), sent_by_both=len(both),
            secondary_before_cut=len(copies(site, S_HOST, until=cut)),
            failed_over=failed_over(site, R_HOST, cut),
            new_mail=f"{count - len(elsewhere)}/{count} via {P_HOST}")
        said = report("the primary's host cut off from the database", facts)
        assert facts["secondary_before_cut"] == 0, said
        assert after_takeover == [], f"{said}\n{after_takeover}\n{site.logs()}"
        assert_counts(site, tally, SESSIONS, said)
        assert count and not elsewhere, f"{said}\n{sorted(elsewhere.items())[:10]}"
        assert_all_running(site, said)


@pytest.mark.timeout(300)
def test_a_database_restart_mid_stream_loses_nothing_and_everyone_recovers(
    tmp_path: Path,
) -> None:
    """pg_ctl restart -m fast while mail streams in: the receive side answers 4xx while the
    database is away, never 250 for mail it did not commit, and every process recovers
    by itself."""
    with FaultSite(tmp_path) as site:
        start_led_by(site, R_HOST)
        stream, began = stream_for(site, 30, "restart")
        sleep_until(began + 8)
        # A burst beside the stream, so that plenty of mail arrives while the database is away.
        burst = site.stream(RECEIVER, SENDER, [OUTSIDE], int(BURST_RATE * 2), BURST_RATE, "burst")
        time.sleep(0.5)
        restarting = time.time()
        restart_s = timed(lambda: site.cluster.restart(mode="fast"))
        restarted = time.time()
        recovered = first_copy(site, P_HOST, restarted)
        facts: dict[str, Any] = {"restart_s": restart_s,
                                 "first_copy_after_s": recovered - restarted}
        tally = finish(site, stream, facts, also=burst)
        rows = stream.rows() + burst.rows()
        refused = [row for row in rows if row["code"] != 250]
        not_4xx = [row for row in refused if not 400 <= row["code"] < 500]
        count, elsewhere = new_mail(site, stream, P_HOST, recovered)
        facts.update(
            refused=len(refused),
            refused_but_delivered=len({row["token"] for row in refused} & tally.copies.keys()),
            refused_from_s=min(
                (row["at"] - restarting for row in refused), default=None),
            refused_until_s=max((row["at"] - restarted for row in refused), default=None),
            accepted_after_restart=len(acked_after(stream, restarted)),
            new_mail=f"{count - len(elsewhere)}/{count} via {P_HOST}")
        said = report("database restart", facts)
        assert not_4xx == [], f"{said}\nneither 250 nor 4xx: {not_4xx[:10]}"
        assert refused, f"{said}: no 4xx while the database was away"
        assert facts["accepted_after_restart"], said
        # Each sending gateway may have been seen stopped while it reconnected.
        assert_counts(site, tally, 2 * SESSIONS, said)
        assert count and not elsewhere, f"{said}\n{sorted(elsewhere.items())[:10]}"
        assert_all_running(site, said)


@pytest.mark.timeout(300)
def test_the_leaders_host_cut_off_another_leads_and_fails_over(tmp_path: Path) -> None:
    """The host whose router leads (here the primary's, so that failing over its mail
    needs the new leader) is cut off from every other host: another router leads within
    failover_after and a few heartbeats, and the primary's mail leaves through the
    secondary; after the rejoin the primary carries new mail again."""
    with FaultSite(tmp_path) as site:
        start_led_by(site, P_HOST)
        stream, began = stream_for(site, 32, "leader")
        primary = site.host(P_HOST)
        sleep_until(began + 6)
        cut = time.time()
        site.net.isolate(primary)
        leaders: list[str | None] = []

        def another_leads() -> bool:
            leaders.append(site.leader())
            return leaders[-1] not in (None, P_HOST)

        wait_until(another_leads, LIVENESS, "another router to lead")  # the liveness bound
        led = time.time()
        taken = first_copy(site, S_HOST, cut)
        sleep_until(began + 18)
        rejoined = time.time()
        site.net.rejoin(primary)
        returned = first_copy(site, P_HOST, rejoined)
        facts: dict[str, Any] = {
            "new_leader": leaders[-1], "leader_takeover_s": led - cut,
            "mail_takeover_s": taken - cut, "back_after_rejoin_s": returned - rejoined}
        tally = finish(site, stream, facts)
        count, elsewhere = new_mail(site, stream, P_HOST, returned)
        facts.update(
            leader_after_rejoin=site.leader(),
            secondary_before_cut=len(copies(site, S_HOST, until=cut)),
            secondary_while_cut=len(copies(site, S_HOST, cut, rejoined)),
            primary_while_cut=len(copies(site, P_HOST, cut, rejoined)),
            new_leader_failed_over=failed_over(site, str(leaders[-1]), cut),
            new_mail=f"{count - len(elsewhere)}/{count} via {P_HOST}")
        said = report("the leader's host cut off", facts)
        assert facts["secondary_before_cut"] == 0, said
        assert facts["secondary_while_cut"] > 0, said
        # The primary's mail that waited for it when it was cut off (it leads no more)
        # went to the secondary through the new leader.
        assert facts["new_leader_failed_over"] > 0, f"{said}\n{site.logs()}"
        assert_counts(site, tally, SESSIONS, said)
        assert count and not elsewhere, f"{said}\n{sorted(elsewhere.items())[:10]}"
        assert_all_running(site, said)
