"""The large-message figure: one 50 MB message through a running gatepost (to a
mailbox and relayed to the sink), with each gatepost process's peak memory
(VmHWM) growth over its resident size before the message, and the time it took.
"""

from __future__ import annotations

import smtplib
import time
from pathlib import Path
from typing import Any

from bench.common import HOST, INBOUND_RCPT, RELAY_RCPT, SENDER, wait_until
from bench.gatepost_proc import GatepostInstance, PgServer
from bench.procinfo import peak_rss_kib
from bench.runs import running

SIZE = 50 * 1024 * 1024
LIMITS = "\n[limits]\nmax_message_size = 60000000\n"


class LargeInstance(GatepostInstance):
    """gatepost with a message size limit above 50 MB."""

    def topology(self) -> str:
        return super().topology() + LIMITS


def message() -> bytes:
    line = b"x" * 76 + b"\r\n"
    header = f"From: <{SENDER}>\r\nSubject: large\r\n\r\n".encode()
    return header + line * (SIZE // len(line))


def resident_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def measure(timeout: float = 120.0, store: str = "sqlite",
            pg: PgServer | None = None) -> dict[str, Any]:
    """Send the message once to a mailbox and a relay recipient; report growth."""
    def factory(root: Path, port: int, sink_port: int) -> LargeInstance:
        return LargeInstance(root, port, sink_port, None, store, pg)

    with running(factory) as (instance, sink):
        assert isinstance(instance, LargeInstance)
        roots = instance.pids()
        before = {p["pid"]: resident_kib(int(str(p["pid"]))) for p in peak_rss_kib(roots)}
        data, start = message(), time.perf_counter()
        with smtplib.SMTP(HOST, instance.port, timeout=timeout) as client:
            client.sendmail(SENDER, [INBOUND_RCPT, RELAY_RCPT], data)
        accepted = time.perf_counter() - start
        wait_until(lambda: instance.delivered_count() >= 1 and sink.count() >= 1, timeout,
                   "the large message in the mailbox and at the sink", 0.05)
        seconds = time.perf_counter() - start
        peaks = peak_rss_kib(roots)
    growth = [{"name": p["name"], "growth_mib": round(
        (int(str(p["vm_hwm_kib"])) - before.get(p["pid"], 0)) / 1024, 1)} for p in peaks]
    return {"store": store, "size_mib": SIZE // 2**20, "accepted_seconds": round(accepted, 2),
            "delivered_seconds": round(seconds, 2), "processes": growth}


def markdown(result: dict[str, Any], store: str = "sqlite") -> list[str]:
    title = f"## Large message, {store} store"
    if "error" in result:
        return [title, f"failed: {result['error']}", ""]
    rows = [f"| {p['name']} | {p['growth_mib']} |" for p in result["processes"]]
    return [
        title,
        (
            f"One {result['size_mib']} MiB message to a mailbox and relayed to the sink: "
            f"accepted in {result['accepted_seconds']} s, delivered both ways in "
            f"{result['delivered_seconds']} s. Peak RSS growth per gatepost process "
            "(VmHWM at the end minus VmRSS before the message; the bound is 64 MB):"
        ),
        "",
        "| process | growth MiB |", "|---|---|", *rows, ""]
