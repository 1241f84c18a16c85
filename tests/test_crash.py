"""Crash safety, the fast version of `make soak`: kill -9 each gatepost process
once (router, gateway, capture smart host) under a load of a few hundred
messages, with sessions caught in the middle of DATA, restarting each time."""

from __future__ import annotations

from pathlib import Path

from soak import soak


def test_kill_9_loses_nothing_acknowledged_and_delivers_nothing_half_received(
    tmp_path: Path,
) -> None:
    result = soak(tmp_path, "split", messages=240, kills=3, clients=4, seed=6)
    assert result.kills == 3
    assert result.acked > 0 and result.half > 0
    assert result.waiting == 0 and result.bounced == 0, result
    assert result.lost == 0, result
    assert result.half_delivered == 0, result
    assert result.duplicated <= result.in_flight, result
    assert result.delivered >= result.acked
