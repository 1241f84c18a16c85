"""Exactly one delivery per attempt, seen from outside: `gatepost run --only ROLE`
processes, kill -9, and wall-clock steps made with libfaketime (issue 10).

- kill -9 of the send side while it sends at `rate = 2`: after a restart every
  message arrives, and the only copies sent twice are those whose final-dot reply
  was in flight at the kill (at most one per session, so at most `max_sessions`).
- a wall-clock step of +10 or -10 minutes while mail flows through a failover pair
  (tests/test_failover.py's topology): every message arrives once, at the primary's
  smart host, and nothing is handed over to the backup gateway; after the step, a
  primary killed for real still hands over to the backup. Leases and heartbeats
  follow the monotonic clock, which libfaketime leaves alone here
  (FAKETIME_DONT_FAKE_MONOTONIC=1); every gatepost process reads its wall-clock
  offset from one file (FAKETIME_TIMESTAMP_FILE, FAKETIME_NO_CACHE=1), which the
  test rewrites in the middle of the stream.
- the slow smart host of `soak.py --modes slow` counts what it should.
"""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from scripted import ScriptedHost
from support import (
    SEND_ONLY,
    Deployment,
    Gatepost,
    faketime_library,
    sunk_subjects,
    toml_text,
    wait_for,
)
from test_failover import batch, primary_seen, stream, topology
from unruly import SOAK_ID, running

OUTSIDE = "someone@example.org"
SENDER = "alice@hq.acme.example"

# ---------------------------------------------------------------------------
# kill -9 of the send side at rate = 2

RATE, MAX_SESSIONS, MESSAGES = 2, 2, 12
KILL_AFTER = 6  # messages the smart host has accepted when the send side is killed
LEASE = "10s"  # [queue] lease: a killed attempt's lease runs out soon after the restart


def rate_limited(tmp_path: Path, host: ScriptedHost) -> Deployment:
    """SEND_ONLY with a slow send rate and few sessions, and a short lease."""
    text = (SEND_ONLY.format(smarthost=host.address)
            + f"rate = {RATE}\nmax_sessions = {MAX_SESSIONS}\n\n[queue]\nlease = \"{LEASE}\"\n")
    config = tmp_path / "rate.toml"
    config.write_text(text)
    return Deployment(config, tomllib.loads(text))


@pytest.fixture
def rate_net(tmp_path: Path, host: ScriptedHost) -> Iterator[Deployment]:
    net = rate_limited(tmp_path, host)
    yield net
    net.close()


def in_send_queue(net: Deployment) -> int:
    return sum(1 for row in net.mailq() if row["queue"] == "send:GW1")


def kill_aside(net: Deployment, role: str) -> Path:
    """kill -9 `role`; its log is kept beside the next run's (which truncates it)."""
    net.kill(role)
    log = net.processes[role].log
    return log.rename(log.with_name(f"{log.stem}-killed{log.suffix}"))


@pytest.mark.timeout(400)
def test_kill_9_of_the_send_side_resends_at_most_the_messages_in_flight(
    rate_net: Deployment, host: ScriptedHost,
) -> None:
    net = rate_net
    subjects = batch("rate-", MESSAGES)
    net.start("router")
    queue_ids = net.many(lambda subject: net.send(SENDER, OUTSIDE, subject), subjects)
    wait_for(lambda: in_send_queue(net) == MESSAGES, 60, f"{MESSAGES} messages for GW1")

    net.start("gateway:GW1")
    wait_for(lambda: len(host.received) >= KILL_AFTER, 60, f"{KILL_AFTER} messages at the host")
    sessions = host.greeted  # every message in flight at the kill has a session of its own
    killed_log = kill_aside(net, "gateway:GW1")
    accepted_at_kill = len(host.received)
    assert accepted_at_kill < MESSAGES, "the kill came too late to tell anything"

    net.start("gateway:GW1")

    def copies() -> Counter[str]:
        return Counter({s: host.copies(s) for s in subjects if host.copies(s)})

    try:
        wait_for(lambda: set(copies()) == set(subjects), 180, f"all {MESSAGES} at the host")
        net.wait_drained(60)
    except AssertionError as error:
        raise AssertionError(f"{error}; copies {dict(copies())}; mailq {net.mailq()}\n"
                             f"killed send side:\n{killed_log.read_text()[-3000:]}\n"
                             f"restarted:\n{net.processes['gateway:GW1'].output()[-3000:]}") from None

    duplicated = {s: n - 1 for s, n in copies().items() if n > 1}
    bound = min(sessions, MAX_SESSIONS)
    print(f"{accepted_at_kill} accepted at the kill, {sessions} sessions before it, "
          f"{sum(duplicated.values())} sent again (bound {bound})")
    assert sum(duplicated.values()) <= bound, (
        f"{sum(duplicated.values())} copies sent again {duplicated}, but at most {bound} "
        f"final-dot replies can have been in flight ({sessions} sessions before the kill, "
        f"max_sessions = {MAX_SESSIONS}; {accepted_at_kill} accepted at the kill)")
    for trace in net.many(net.trace, queue_ids):
        assert trace and trace[-1][1] == "delivered", trace


# ---------------------------------------------------------------------------
# A wall-clock step of ±10 minutes under libfaketime

# Each gatepost process starts through this: libfaketime 0.9.10 (Debian 12) breaks
# clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) when FAKETIME_DONT_FAKE_MONOTONIC
# is set (wolfcw/libfaketime#426), and Python 3.11's time.sleep uses just that: it
# fails with EINVAL. So time.sleep waits in select() instead; nothing else changes.
LAUNCH = """if True:
    import select, sys, time
    def sleep(seconds):
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        select.select([], [], [], seconds)
    time.sleep = sleep
    from gatepost.cli import main
    sys.argv[0] = "gatepost"
    main()
"""
PROBE = """if True:
    import sys, time
    for _ in sys.stdin:
        print(time.time(), time.monotonic(), flush=True)
"""
FAILOVER_AFTER = 5.0  # [queue] failover_after's default: a send side silent this long has stopped


def set_offset(stamp: Path, offset: str) -> None:
    """Every faked process's wall clock moves to real time + `offset` ("+600s")."""
    temporary = stamp.with_suffix(".new")
    temporary.write_text(offset + "\n")
    os.replace(temporary, stamp)  # never half written when a process reads it


def faked_env(stamp: Path) -> dict[str, str]:
    return {**os.environ, "LD_PRELOAD": faketime_library(), "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_NO_CACHE": "1", "FAKETIME_TIMESTAMP_FILE": str(stamp)}


def clocks(probe: subprocess.Popen[str]) -> tuple[float, float, float]:
    """(the probe's time.time, its time.monotonic, our real time.time)."""
    assert probe.stdin is not None and probe.stdout is not None
    probe.stdin.write("\n")
    probe.stdin.flush()
    wall, monotonic = map(float, probe.stdout.readline().split())
    return wall, monotonic, time.time()


@pytest.fixture
def stamp(tmp_path: Path) -> Iterator[Path]:
    """The offset file, "+0"; first checked with a probe process: when the file
    says +600s its wall clock jumps 10 minutes and its monotonic clock does not
    (else a test under faketime proves nothing)."""
    path = tmp_path / "faketime-offset"
    set_offset(path, "+0")
    with subprocess.Popen([sys.executable, "-c", PROBE], env=faked_env(path), text=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as probe:
        wall0, mono0, real0 = clocks(probe)
        set_offset(path, "+600s")
        wall1, mono1, real1 = clocks(probe)
        assert probe.stdin is not None
        probe.stdin.close()
    assert abs(wall0 - real0) < 5, f"the probe's clock is off at +0: {wall0 - real0:.1f} s"
    assert abs(wall1 - real1 - 600) < 5, f"the wall clock did not step: {wall1 - real1:.1f} s"
    assert abs((mono1 - mono0) - (real1 - real0)) < 5, "the monotonic clock stepped too"
    set_offset(path, "+0")
    yield path


class Faked(Gatepost):
    """`gatepost run --only ROLE` under libfaketime (see LAUNCH), ready as Gatepost is."""

    def __init__(self, config: Path, role: str, stamp: Path) -> None:
        self.log = config.parent / f"faked-{role.replace(':', '_')}.log"
        self.handle = self.log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, "-c", str(config), "run", "--only", role],
            env=faked_env(stamp), stdout=self.handle, stderr=subprocess.STDOUT,
        )
        try:
            wait_for(self.ready, 60, f"gatepost {role} (faked) to be ready")
        except BaseException:
            self.stop()
            raise


def start_faked(net: Deployment, stamp: Path, *roles: str) -> None:
    with ThreadPoolExecutor(len(roles)) as pool:
        futures = {role: pool.submit(Faked, net.config, role, stamp) for role in roles}
    failures = []
    for role, future in futures.items():
        try:
            net.processes[role] = future.result()  # the fixture stops what started
        except BaseException as error:  # noqa: BLE001 - raised below, once all are known
            failures.append(error)
    if failures:
        raise failures[0]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Deployment]:
    """tests/test_failover.py's network: BRANCH served by GW_A, then GW_B."""
    data = topology()
    config = tmp_path / "failover.toml"
    config.write_text(toml_text(data))
    net = Deployment(config, data)
    yield net
    net.close()


def in_flight_at(net: Deployment, queue: str) -> bool:
    return any(row["state"] == "active" for row in net.mailq() if row["queue"] == queue)


def logs(net: Deployment) -> str:
    return "\n".join(f"--- {role}:\n{process.output()[-2500:]}"
                     for role, process in net.processes.items())


def sunk(net: Deployment, gateway: str) -> Counter[str]:
    """Copies per Subject at `gateway`'s smart host, the probes left out."""
    return Counter(s for s in sunk_subjects(net.sinks[gateway]) if not s.startswith("probe"))


def landed(net: Deployment, subjects: list[str], timeout: float) -> None:
    """Wait until each subject reached a smart host, either one."""
    def everywhere() -> set[str]:
        return set(sunk(net, "GW_A")) | set(sunk(net, "GW_B"))

    try:
        wait_for(lambda: set(subjects) <= everywhere(), timeout, f"{len(subjects)} messages")
    except AssertionError as error:
        missing = sorted(set(subjects) - everywhere())
        raise AssertionError(f"{error}: missing {missing}; queued {net.mailq()}\n{logs(net)}") from None


@pytest.mark.timeout(600)
@pytest.mark.parametrize("offset", ["+600s", "-600s"])
def test_a_wall_clock_step_mid_stream_causes_no_duplicate_and_no_failover(
    pair: Deployment, stamp: Path, offset: str,
) -> None:
    net = pair
    net.start_sink("GW_A", "-w", "1")  # a second before each 354: mail is always in flight
    net.start_sink("GW_B")
    start_faked(net, stamp, "gateway:GW_A", "gateway:GW_B", "gateway:RECV", "router")
    primary_seen(net)

    before, after, late = batch("before-", 12), batch("after-", 12), batch("late-", 6)
    queue_ids = stream(net, before)
    wait_for(lambda: in_flight_at(net, "send:GW_A"), 30, "mail being sent by GW_A")
    set_offset(stamp, offset)
    queue_ids += stream(net, after)
    landed(net, before + after, 180)
    time.sleep(2 * FAILOVER_AFTER)  # long enough for a failover to show, were it to come
    queue_ids += stream(net, late)
    landed(net, late, 120)
    net.wait_drained(120)

    at_primary, at_backup = sunk(net, "GW_A"), sunk(net, "GW_B")
    assert {s: n for s, n in at_primary.items() if n != 1} == {}, "sent more than once"
    assert at_backup == Counter(), "mail failed over to GW_B"
    assert sorted(at_primary) == sorted(before + after + late)
    traces = net.many(net.trace, queue_ids)
    handed_over = {qid: t for qid, t in zip(queue_ids, traces, strict=True)
                   if any(event == "requeue" for _, event, _, _ in t)}
    assert handed_over == {}, f"requeued from GW_A: {json.dumps(handed_over)[:2000]}"

    # The step did not just switch failover off: a primary that stops still hands over.
    net.kill("gateway:GW_A")
    orphans = batch("orphan-", 6)
    stream(net, orphans)
    landed(net, orphans, 120)
    net.wait_drained(120)
    assert sunk(net, "GW_B") == Counter(orphans), "after the kill, GW_B sends each once"
    assert sunk(net, "GW_A") == at_primary


# ---------------------------------------------------------------------------
# The slow smart host of `soak.py --modes slow` (tests/unruly.py --dot-delay)


def test_the_slow_host_keeps_and_counts_a_message_whose_client_left_before_the_reply(
    tmp_path: Path,
) -> None:
    content = b"From: load@client.example\r\nX-Soak-Id: slow-1\r\n\r\nbody\r\n"
    with running(tmp_path, dot_delay=1.0) as host:
        smtp = smtplib.SMTP("127.0.0.1", host.port, "client.example", timeout=30)
        smtp.ehlo()
        assert smtp.mail(SENDER)[0] == 250 and smtp.rcpt(OUTSIDE)[0] == 250
        assert smtp.docmd("DATA")[0] == 354
        smtp.send(content + b".\r\n")
        smtp.close()  # like a client killed while it waits for the reply
        wait_for(lambda: host.finished == 1, 10, "the session to end")
        assert [soak_ids(p.read_bytes()) for p in host.accepted] == ["slow-1"]
        assert [soak_ids(c) for c in host.in_flight] == ["slow-1"]
        with smtplib.SMTP("127.0.0.1", host.port, "client.example", timeout=30) as patient:
            patient.sendmail(SENDER, [OUTSIDE], content.replace(b"slow-1", b"slow-2"))
        wait_for(lambda: host.finished == 2, 10, "the second session to end")
        assert len(host.accepted) == 2 and len(host.in_flight) == 1  # QUIT came after the 250


def soak_ids(content: bytes) -> str:
    return b" ".join(SOAK_ID.findall(content)).decode()
