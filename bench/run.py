"""`make bench`: gatepost against a private Postfix, alternating, several rounds.

gatepost runs on each store of `--stores` (default SQLite and PostgreSQL; the
PostgreSQL runs use one private cluster of tests/pg.py, default settings, a
fresh database per run). Measures relay and inbound throughput (median of
rounds, ratio of each gatepost store to Postfix), acceptance latency at half of
each system's median relay rate, and gatepost's peak RSS; writes
bench/results/latest.{md,json,png}. `--quick` is a smoke check.
bench/pg_profile.py tells where the time goes on PostgreSQL.
`--large-queue N` measures instead relay with N deferred messages queued against
an empty store, and mailq's time (bench/largequeue.py; latest-queue.{md,json}).
Run as `python bench/run.py` or `python -m bench.run` from the repository root.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import largequeue, report
from bench.common import BenchError, short
from bench.gatepost_proc import STORES, PgServer
from bench.large import measure as large_measure
from bench.procinfo import machine
from bench.runs import Factory, latency, throughput
from bench.setup import chosen, describe, factories

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--messages", type=int, default=5000, help="relay messages")
    parser.add_argument("--inbound", type=int, default=None, help="inbound messages (default -n)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--systems", default="gatepost,postfix",
                        help="gatepost (on every store of --stores), gatepost-STORE, postfix")
    parser.add_argument("--stores", default=",".join(STORES),
                        help="gatepost's stores: sqlite, postgresql or both (default)")
    parser.add_argument("--gatepost-roles", default="",
                        help="e.g. 'router;gateway:GW1': one gatepost process per role group")
    parser.add_argument("--quick", action="store_true", help="n=300, 1 round, 3 s of latency")
    parser.add_argument("--large-queue", type=int, nargs="?", const=1_000_000, default=None,
                        metavar="N", help="gatepost relay with N (default 1000000) deferred "
                        "messages queued vs an empty store, and mailq's time")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.rounds, args.latency_seconds = 300, 1, 3.0
    args.inbound = args.inbound or args.messages
    args.store_list = [s.strip() for s in args.stores.split(",") if s.strip()]
    unknown = set(args.store_list) - set(STORES)
    if unknown or not args.store_list:
        parser.error(f"--stores: expected some of {', '.join(STORES)}, got {args.stores!r}")
    return args


def attempt(label: str, job: Any, *params: Any) -> dict[str, Any]:
    """Run one measurement; a failure is recorded (and printed), not fatal."""
    began = time.monotonic()
    try:
        result: dict[str, Any] = job(*params)
    except (BenchError, OSError) as error:
        result = {"error": str(error)}
    shown = short(result["error"]) if "error" in result else f"{result['rate']:.0f} msg/s"
    print(f"  {label}: {shown} ({time.monotonic() - began:.1f}s)", file=sys.stderr, flush=True)
    return result


def large_message(store: str, pg: PgServer) -> dict[str, Any]:
    result = large_measure(store=store, pg=pg)
    result["rate"] = 1 / result["delivered_seconds"]  # for attempt()'s progress line
    return result


def rounds(args: argparse.Namespace, systems: dict[str, Factory]) -> dict[str, Any]:
    runs: dict[str, Any] = {name: {"relay": [], "inbound": []} for name in systems}
    for index in range(args.rounds):
        print(f"round {index + 1}/{args.rounds}", file=sys.stderr, flush=True)
        for name, factory in systems.items():
            runs[name]["relay"].append(
                attempt(f"{name} relay", throughput, factory, "relay", args.messages, args.timeout))
            runs[name]["inbound"].append(
                attempt(f"{name} inbound", throughput, factory, "inbound", args.inbound,
                        args.timeout))
    halves = {name: statistics.median(rates) / 2 for name in systems
              if (rates := [r["rate"] for r in runs[name]["relay"] if "rate" in r])}
    for name, factory in systems.items():
        if name in halves:
            runs[name]["latency"] = attempt(f"{name} latency at {halves[name]:.0f}/s", latency,
                                            factory, halves[name], args.latency_seconds)
    if len(halves) > 1:  # and all at one rate: half of the slowest system's maximum
        common = min(halves.values())
        for name, factory in systems.items():
            runs[name]["latency_same_rate"] = attempt(
                f"{name} latency at {common:.0f}/s", latency, factory, common,
                args.latency_seconds)
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.large_queue is not None:
        return largequeue.main(args)
    roles = [r for r in args.gatepost_roles.split(";") if r]
    pg = PgServer()
    every = factories(roles, args.store_list, pg)
    names = chosen(args.systems, args.store_list)
    unknown = [name for name in names if name not in every]
    if unknown:
        print(f"unknown systems {unknown}; known: {', '.join(every)}", file=sys.stderr)
        return 2
    systems = {name: every[name] for name in names}
    stores = tuple(s for s in args.store_list if f"gatepost-{s}" in systems)
    if "postgresql" in stores:
        if reason := PgServer.missing():
            print(f"gatepost-postgresql: {reason} (or --stores sqlite)", file=sys.stderr)
            return 2
        pg.start()
    try:
        started = time.strftime("%Y-%m-%d %H:%M:%S %z")
        setup = describe(args, roles, pg, stores or ("sqlite",))
        runs = rounds(args, systems)
        for store in stores if not args.quick else ():
            runs[f"gatepost-{store}"]["large"] = attempt(f"gatepost-{store} 50 MB message",
                                                         large_message, store, pg)
    finally:
        pg.stop()
    results: dict[str, Any] = {
        "started": started,
        "command": shlex.join(["bench/run.py", *(sys.argv[1:] if argv is None else argv)]),
        "loadavg_end": machine()["loadavg"], "config": vars(args) | {"out": str(args.out)},
        "setup": setup, "runs": runs}
    results["summary"] = report.summarize(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=1, default=str))
    report.plot(runs, args.out / "latest.png")
    (args.out / "latest.md").write_text(report.markdown(results))
    print(report.headline_table(results["summary"]))
    print()
    print(report.summary_table(results["summary"]))
    print(f"wrote {args.out}/latest.md, latest.json, latest.png", file=sys.stderr)
    return 0 if report.all_ok(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
