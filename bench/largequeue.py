"""`make bench-queue` (run.py --large-queue N): does a large queue slow fresh mail?

gatepost alone. Rounds alternate a relay run on an empty store with one on a
store holding N deferred messages for the gateway (not due for years; filled
once by `bench.fill`, copied into each run's folder). Reports the median rates
and their ratio (full / empty), and the wall-clock time of `gatepost mailq`
and `gatepost mailq --json --limit 100` as processes on the full store (median
of 5, gatepost not running). Writes bench/results/latest-queue.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import BenchError
from bench.fill import fill
from bench.gatepost_proc import MAIN, GatepostInstance, python
from bench.procinfo import machine
from bench.runs import Factory, throughput

MAILQ_RUNS = 5
MAILQ_COMMANDS = {"mailq": ["mailq"], "mailq --json --limit 100": ["mailq", "--json", "--limit", "100"]}


class PrefilledGatepost(GatepostInstance):
    """gatepost whose store starts as a copy of `template`."""

    def __init__(self, root: Path, port: int, sink_port: int, template: Path) -> None:
        super().__init__(root, port, sink_port)
        self.template = template

    def setup(self) -> None:
        super().setup()
        shutil.copyfile(self.template, self.store)


def prefilled(template: Path) -> Factory:
    def make(root: Path, port: int, sink_port: int) -> PrefilledGatepost:
        return PrefilledGatepost(root, port, sink_port, template)

    return make


def relay_rounds(args: argparse.Namespace, template: Path) -> dict[str, list[dict[str, Any]]]:
    from bench.run import attempt  # the same recording of a failure as the main benchmark

    systems: dict[str, Factory] = {"empty": GatepostInstance, "full": prefilled(template)}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
    for index in range(args.rounds):
        print(f"round {index + 1}/{args.rounds}", file=sys.stderr, flush=True)
        for name, factory in systems.items():
            runs[name].append(attempt(f"relay, {name} store", throughput, factory, "relay",
                                      args.messages, args.timeout))
    return runs


def time_mailq(template: Path, root: Path) -> dict[str, Any]:
    """Wall-clock seconds of each mailq command, MAILQ_RUNS times, on a copy of the store."""
    instance = PrefilledGatepost(root, 10025, 10026, template)  # nothing is started
    instance.setup()
    out: dict[str, Any] = {}
    for label, args in MAILQ_COMMANDS.items():
        seconds = []
        for _ in range(MAILQ_RUNS):
            command = [python(), "-m", "gatepost", "-c", str(instance.config), *args]
            began = time.perf_counter()
            done = subprocess.run(command, capture_output=True, cwd=MAIN, timeout=120, check=False)
            seconds.append(time.perf_counter() - began)
            if done.returncode != 0:
                raise BenchError(f"{label} exited {done.returncode}: {done.stderr.decode()[-500:]}")
        out[label] = {"seconds": [round(s, 3) for s in seconds],
                      "median": round(statistics.median(seconds), 3),
                      "stdout_head": done.stdout.decode()[:300], "stderr": done.stderr.decode()}
    return out


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    rates = {name: [r["rate"] for r in rs if "rate" in r] for name, rs in runs.items()}
    medians = {name: statistics.median(r) if r else None for name, r in rates.items()}
    empty, full = medians["empty"], medians["full"]
    return {"rates": {n: [round(x, 1) for x in r] for n, r in rates.items()},
            "median": medians, "ratio": round(full / empty, 3) if empty and full else None,
            "failed": {n: sum(1 for r in rs if "rate" not in r) for n, rs in runs.items()}}


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def markdown(results: dict[str, Any]) -> str:
    cfg, s, m = results["config"], results["summary"], results["machine"]
    lines = [
        "# gatepost large-queue benchmark", "",
        (f"Run {results['started']}: {cfg['rounds']} round(s) of {cfg['messages']} relay messages "
        f"of 8 KB, gatepost only, an empty store and one holding {cfg['large_queue']:,} deferred "
        "messages (next attempt in ten years) alternating; rates are medians over rounds."), "",
        "| store | relay msg/s (median) | rates per round |", "|---|---|---|",
        f"| empty | {fmt(s['median']['empty'])} | {s['rates']['empty']} |",
        f"| {cfg['large_queue']:,} deferred | {fmt(s['median']['full'])} | {s['rates']['full']} |",
        f"| ratio full/empty | {s['ratio']} | |", "",
        f"`gatepost mailq` on the full store (wall clock of the process, {MAILQ_RUNS} runs):", "",
        "| command | median s | runs s |", "|---|---|---|",
        *[f"| `gatepost -c bench.toml {label}` | {t['median']} | {t['seconds']} |"
          for label, t in results["mailq"].items()], "",
        "## Errors", *(results["errors"] or ["none"]), "",
        "## Set-up",
        (f"- store filled in {results['fill_seconds']:.0f} s by `python -m bench.fill FILE N`; "
        f"file {results['store_mib']:.0f} MiB"),
        f"- {m['nproc']} CPUs, {m['cpu']}, {m['ram_gib']} GiB RAM, Python {m['python']}",
        (f"- load average (1/5/15 min) at start {' '.join(m['loadavg'])}, at end "
        f"{results['loadavg_end']} (the machine is shared: other work skews every figure)"),
        f"- command: `{results['command']}`", "",
    ]
    return "\n".join(lines)


def errors(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    found = []
    for name, rs in runs.items():
        for index, run in enumerate(rs):
            if "error" in run:
                found.append(f"- {name} #{index + 1}: {run['error'][:300]}")
            if run.get("excess") or any(run.get("exit_codes") or []):
                found.append(f"- {name} #{index + 1}: excess {run.get('excess')}, "
                             f"exit codes {run.get('exit_codes')}")
    return found


def main(args: argparse.Namespace) -> int:
    started, setup = time.strftime("%Y-%m-%d %H:%M:%S %z"), machine()
    root = Path(tempfile.mkdtemp(prefix="gatepost-queue-"))
    try:
        template = root / "template.db"
        print(f"filling a store with {args.large_queue} deferred messages", file=sys.stderr)
        fill_seconds = fill(template, args.large_queue)
        runs = relay_rounds(args, template)
        mailq = time_mailq(template, root / "mailq")
        store_mib = template.stat().st_size / 2**20
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results = {"started": started, "config": vars(args) | {"out": str(args.out)},
               "machine": setup, "loadavg_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
               "command": "python bench/run.py " + " ".join(sys.argv[1:]),
               "fill_seconds": fill_seconds, "store_mib": store_mib, "runs": runs,
               "summary": summarize(runs), "mailq": mailq, "errors": errors(runs)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest-queue.json").write_text(json.dumps(results, indent=1, default=str))
    (args.out / "latest-queue.md").write_text(markdown(results))
    print(markdown(results))
    return 0 if not results["errors"] else 1
