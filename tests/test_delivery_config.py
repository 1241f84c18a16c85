"""The send-side keys and [delivery] in the topology file, and the pure
pieces of delivery: backoff, host order, session gate, pacing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gatepost import policy
from gatepost.send.relays import Gate, Pace, Relays
from gatepost.topology import check
from gatepost.topology.model import Delivery, HostPort
from gatepost.topology.options import parse_duration
from scripted import TOPOLOGY


def errors(tmp_path: Path, gateway: str, delivery: str = "") -> list[str]:
    config = tmp_path / "t.toml"
    config.write_text(TOPOLOGY.format(gateway=gateway, delivery=delivery))
    _, found, _ = check(config)
    return [str(p) for p in found]


def loaded(tmp_path: Path, gateway: str, delivery: str = ""):  # type: ignore[no-untyped-def]
    config = tmp_path / "t.toml"
    config.write_text(TOPOLOGY.format(gateway=gateway, delivery=delivery))
    topo, found, _ = check(config)
    assert topo is not None, found
    return topo


@pytest.mark.parametrize(("text", "seconds"), [
    (90, 90.0), (1.5, 1.5), ("90s", 90.0), ("30m", 1800.0), ("4h", 14400.0),
    ("5d", 432000.0), ("1h30m", 5400.0), ("120", 120.0),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["4 hours", "h", "", "-5", True, [1]])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_delivery_defaults_and_values(tmp_path: Path) -> None:
    assert loaded(tmp_path, 'smarthost = "127.0.0.1:25"').delivery == Delivery(60, 3600, 4 * 3600, 5 * 86400)
    topo = loaded(tmp_path, 'smarthost = "127.0.0.1:25"',
                  'retry_min = "30s"\nretry_max = "2h"\nwarn_after = "1h"\nlifetime = "2d"')
    assert topo.delivery == Delivery(30, 7200, 3600, 2 * 86400)


def test_delivery_errors_name_the_key(tmp_path: Path) -> None:
    found = errors(tmp_path, 'smarthost = "127.0.0.1:25"',
                   'retry_min = "soon"\nlifetime = 0\nbogus = 1')
    assert any(e.startswith("delivery.retry_min: bad duration 'soon'") for e in found)
    assert "delivery.lifetime: must be more than 0" in found
    assert any(e.startswith("delivery.bogus: unknown key") for e in found)
    found = errors(tmp_path, 'smarthost = "127.0.0.1:25"', 'retry_min = "2h"\nretry_max = "1h"')
    assert found == ["delivery.retry_max: must be at least retry_min"]


def test_the_queue_table_sets_lease_and_heartbeats_and_names_bad_keys(tmp_path: Path) -> None:
    gateway = 'smarthost = "127.0.0.1:25"'
    topo = loaded(tmp_path, gateway, '[queue]\nlease = "2s"\nheartbeat = 0.5\nfailover_after = "3s"')
    assert (topo.queue.lease, topo.queue.heartbeat, topo.queue.failover_after) == (2.0, 0.5, 3.0)
    assert loaded(tmp_path, gateway).queue.lease == 120.0
    found = errors(tmp_path, gateway, '[queue]\nlease = 0\nheartbeat = "soon"\nbeat = 1')
    assert "queue.lease: must be more than 0" in found
    assert any(e.startswith("queue.heartbeat: bad duration 'soon'") for e in found)
    assert any(e.startswith("queue.beat: unknown key") for e in found)
    found = errors(tmp_path, gateway, '[queue]\nheartbeat = "10s"')
    assert found == ["queue.failover_after: must be longer than queue.heartbeat"]


def test_send_options_are_read(tmp_path: Path) -> None:
    gw = loaded(tmp_path, (
        'smarthosts = ["a.example:25", "b.example:2525"]\nsmarthost_policy = "spread"\n'
        'tls = "required"\ntls_ca = "ca.pem"\nmax_sessions = 3\nmax_per_session = 10\n'
        'rate = 5\nauth_user = "gw"\nauth_password_env = "GW_PASS"'
    )).gateways["GW1"]
    assert gw.smarthosts == (HostPort("a.example", 25), HostPort("b.example", 2525))
    assert gw.smarthost == HostPort("a.example", 25)
    assert (gw.smarthost_policy, gw.tls, gw.max_sessions, gw.max_per_session, gw.rate) == (
        "spread", "required", 3, 10, 5.0)
    assert gw.tls_ca == tmp_path / "ca.pem"
    assert (gw.auth_user, gw.auth_password_env) == ("gw", "GW_PASS")


def test_mx_mode(tmp_path: Path) -> None:
    gw = loaded(tmp_path, 'smarthost = "mx"\nresolver = "127.0.0.1:5353"\nmx_port = 2525').gateways["GW1"]
    assert gw.mx and gw.smarthosts == () and gw.smarthost is None
    assert (gw.resolver, gw.mx_port) == (HostPort("127.0.0.1", 5353), 2525)


@pytest.mark.parametrize(("gateway", "expected"), [
    ("", "gateways.GW1.smarthost: a send gateway needs a smarthost"),
    ('smarthost = "a:25"\nsmarthosts = ["b:25"]', "gateways.GW1.smarthosts: give either"),
    ('smarthost = "a:25"\npassword = "hunter2"', "gateways.GW1.password: never write a password"),
    ('smarthost = "a:25"\nauth_user = "u"', "gateways.GW1.auth_user: needs auth_password_env"),
    ('smarthost = "a:25"\ntls = "maybe"', "gateways.GW1.tls: 'maybe' must be one of"),
    ('smarthost = "a:25"\nmax_sessions = 0', "gateways.GW1.max_sessions: must be a whole number"),
    ('smarthost = "a:25"\nrate = -1', "gateways.GW1.rate: must be a number"),
    ('smarthosts = ["a:25", "nope"]', "gateways.GW1.smarthosts[1]: bad host:port"),
    ('smarthost = "a:25"\n\n[[gateways.GW1.dkim]]\ndomain = "x.example"',
     "gateways.GW1.dkim[0].selector: missing"),
])
def test_send_option_errors_name_the_key(tmp_path: Path, gateway: str, expected: str) -> None:
    found = errors(tmp_path, gateway)
    assert any(e.startswith(expected) for e in found), found


def test_password_error_does_not_echo_the_password(tmp_path: Path) -> None:
    found = errors(tmp_path, 'smarthost = "a:25"\npassword = "hunter2"')
    assert found and not any("hunter2" in e for e in found)


def test_backoff_doubles_up_to_the_maximum() -> None:
    delivery = Delivery(retry_min=60, retry_max=600)
    assert [policy.retry_delay(n, delivery) for n in range(6)] == [60, 120, 240, 480, 600, 600]


def test_warning_is_due_after_warn_after() -> None:
    delivery = Delivery(warn_after=100, lifetime=1000)
    assert not policy.warn_due(0, 99, delivery) and policy.warn_due(0, 100, delivery)
    assert not policy.warn_due(0, 500, Delivery(warn_after=0))


def test_relays_put_a_dead_host_last_for_a_while() -> None:
    a, b = HostPort("a", 25), HostPort("b", 25)
    relays = Relays(dead_for=60)
    relays.dead(a, 100)
    assert relays.order([a, b], 130) == [b, a]
    assert relays.order([a, b], 161) == [a, b]
    spread = Relays(spread=True)
    assert {spread.order([a, b], 0)[0] for _ in range(2)} == {a, b}


def test_gate_halves_after_421_and_recovers() -> None:
    now = [0.0]
    gate = Gate(4, lambda: now[0], shrink_for=60)
    assert [gate.try_enter() for _ in range(5)] == [True] * 4 + [False]
    gate.shrink()
    assert gate.capacity() == 2
    gate.leave()
    gate.leave()
    assert not gate.try_enter()
    now[0] = 61
    assert gate.capacity() == 4 and gate.try_enter()


def test_pace_spaces_transactions(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    pace = Pace(4.0, lambda: 10.0)

    async def main() -> None:
        for _ in range(3):
            await pace.wait()

    asyncio.run(main())
    assert slept == [0.25, 0.5]
