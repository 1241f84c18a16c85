"""One measured run each: relay, inbound and acceptance latency, for any system.

Every run gets a fresh temp folder, a fresh sink and a fresh instance, and stops
them all afterwards, even on error. A throughput run also counts the CPU time
the system's processes used per message (smtp-source and the sink left out). Finish lines are polled every 20 ms and the
delivered count is kept every 100 ms for the plot. A run that does not finish
within its timeout raises BenchError.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from bench.common import HOST, INBOUND_RCPT, RELAY_RCPT, SENDER, BenchError, free_port
from bench.loadclient import run_load
from bench.procinfo import cpu_seconds, peak_rss_kib
from bench.sink import Sink

SMTP_SOURCE = "/usr/sbin/smtp-source"
POLL, SAMPLE = 0.02, 0.1
SETTLE = 0.5  # after the finish line: more than n delivered means duplicates


class Instance(Protocol):
    port: int

    def setup(self) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> Any: ...
    def delivered_count(self) -> int: ...


Factory = Callable[[Path, int, int], Instance]


def source_command(port: int, n: int, rcpt: str) -> list[str]:
    return [SMTP_SOURCE, "-s", "20", "-l", "8192", "-m", str(n), "-f", SENDER, "-t", rcpt,
            f"{HOST}:{port}"]


@contextmanager
def running(factory: Factory, keep: bool = False) -> Iterator[tuple[Instance, Sink]]:
    """A started sink and a started instance in a fresh temp folder; stops both."""
    root = Path(tempfile.mkdtemp(prefix="gatepost-bench-"))
    sink = Sink(free_port())
    instance = factory(root, free_port(), sink.port)
    try:
        sink.start()
        instance.setup()
        instance.start()
        yield instance, sink
    finally:
        try:
            instance.stop()
        finally:
            sink.stop()
            if not keep:
                shutil.rmtree(root, ignore_errors=True)


def clock(count: Callable[[], int], n: int, timeout: float,
          source: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Wait until count() >= n; returns elapsed seconds, timeline and smtp-source's time."""
    start = time.perf_counter()
    timeline: list[tuple[float, int]] = [(0.0, 0)]
    accepted_at, next_sample = None, SAMPLE
    while (done := count()) < n:
        now = time.perf_counter() - start
        if accepted_at is None and source.poll() is not None:
            accepted_at = now
            if source.returncode != 0:
                raise BenchError(f"smtp-source exited {source.returncode}")
        if now >= next_sample:
            timeline.append((round(now, 3), done))
            next_sample += SAMPLE
        if now > timeout:
            raise BenchError(f"only {done} of {n} delivered after {timeout:.0f}s")
        time.sleep(POLL)
    elapsed = time.perf_counter() - start
    timeline.append((round(elapsed, 3), done))
    source.wait(timeout=30)
    time.sleep(SETTLE)
    return {"seconds": elapsed, "rate": n / elapsed, "timeline": timeline,
            "accept_seconds": accepted_at or elapsed, "excess": count() - n}


def throughput(factory: Factory, kind: str, n: int, timeout: float) -> dict[str, Any]:
    """Relay (kind="relay": counted at the sink) or inbound (counted in the mailboxes)."""
    with running(factory) as (instance, sink):
        rcpt = RELAY_RCPT if kind == "relay" else INBOUND_RCPT
        count = sink.count if kind == "relay" else instance.delivered_count
        before = _cpu(instance)
        with subprocess.Popen(source_command(instance.port, n, rcpt),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as source:
            try:
                result = clock(count, n, timeout, source)
            finally:
                source.kill()
        result["cpu_ms_per_msg"] = {k: round((v - before.get(k, 0.0)) * 1000 / n, 3)
                                    for k, v in _cpu(instance).items()}
        result["rss"] = _rss(instance)
        result["sink_sessions"] = sink.sessions
    result["exit_codes"] = getattr(instance, "exit_codes", None)
    result["log_problems"] = getattr(instance, "log_problems", None)
    if getattr(instance, "db_stats", None):  # the PostgreSQL store: the database's counters
        result["db_stats"] = instance.db_stats  # type: ignore[attr-defined]
    return result


def latency(factory: Factory, rate: float, seconds: float) -> dict[str, Any]:
    """Acceptance latency at `rate` messages/s over 20 connections, relayed to the sink."""
    with running(factory) as (instance, _sink):
        load = run_load(instance.port, RELAY_RCPT, rate, seconds)
        rss = _rss(instance)
    if load.errors or not load.latencies:
        raise BenchError(f"load client failed: {load.errors[:3]}")
    ms = sorted(x * 1000 for x in load.latencies)
    return {"rate": rate, "messages": len(ms), "late": load.late, "rss": rss,
            "p50_ms": statistics.median(ms), "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
            "max_ms": ms[-1]}


def _cpu(instance: Instance) -> dict[str, float]:
    """CPU seconds so far of the system's processes, by part (gatepost, its
    database; Postfix), when the instance says which they are."""
    roots = getattr(instance, "cpu_roots", None)
    return {part: cpu_seconds(pids) for part, pids in roots().items()} if roots else {}


def _rss(instance: Instance) -> list[dict[str, object]]:
    pids = getattr(instance, "pids", None)
    return peak_rss_kib(pids()) if pids else []
