"""Where the time goes in gatepost on the PostgreSQL store: `make bench` says how
fast, this says why.

    python bench/pg_profile.py [-n 5000] [--kind relay|inbound] [--no-py-spy] [--out DIR]

Runs on the bench's private cluster (tests/pg.py, as `make bench`) with, added
for this and restarted, pg_stat_statements, track_io_timing and
track_wal_io_timing. For one gatepost (a fresh database, the bench's topology):

1. idle, IDLE seconds: what the database does with no mail (the `due` polls);
2. a measured run of -n messages (smtp-source, as bench/run.py's), with the CPU
   seconds of every process from /proc (gatepost's roles, the PostgreSQL
   backend serving each role, the server's own processes, smtp-source and
   smtp-sink), the statements (pg_stat_statements: calls and server time per
   message), commits, WAL writes and syncs and their time;
3. unless --no-py-spy, a second run under `py-spy record --nonblocking`
   (pip install py-spy): the gatepost processes' on-CPU stacks, summed per
   role and per function (self and inclusive). The profiler costs CPU too:
   that run's rate is shown, not compared.

Writes latest-pg-profile.{md,json} into --out (default bench/results), and
py-spy's raw stacks (for a flame graph) into the temp folder. Figures vary
with the machine's other load, which is recorded at the start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Self

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import INBOUND_RCPT, RELAY_RCPT, free_port
from bench.gatepost_proc import GatepostInstance, PgServer
from bench.procinfo import machine
from bench.runs import clock, source_command
from bench.setup import source_state
from bench.sink import Sink

RESULTS = Path(__file__).resolve().parent / "results"
PY_SPY = Path(sys.executable).parent / "py-spy"
IDLE = 5.0  # seconds of the idle measurement
RATE = 100  # py-spy's samples per second
PROBE_EVERY = 0.01  # seconds between round-trip probes
PROBE_NAME = "(the bench's round-trip probe)"
SCAFFOLD = {  # frames under everything, left out of the inclusive lists
    "Thread._bootstrap", "Thread._bootstrap_inner", "Thread.run", "_worker", "_WorkItem.run",
    "_run_module_as_main", "_run_code", "<module>", "Context.invoke", "Group.invoke",
    "Command.invoke", "Command.main", "Command.__call__", "run_command", "run", "Runner.run",
    "main", "serve", "serve_roles"}
# In py-spy's wall-clock view (--idle): the share of the run's time during which
# some thread of a role was in each of these (the store's calls, and waiting for
# the database's reply); one writer at a time runs write_all and enqueue.
STORE_WAIT = "waiting for a reply"  # Connection.wait inside a store call (not the listener)
BUSY = ("SqlDb.write_all", "_renew", "_apply", "SqlDb.enqueue", "SqlDb.claim", "SqlDb.due",
        "SqlDb.open_content", "SqlDb.heartbeat", STORE_WAIT)
TICK = os.sysconf("SC_CLK_TCK")
PROFILE_SETTINGS = ("shared_preload_libraries = 'pg_stat_statements'", "track_io_timing = on",
                    "track_wal_io_timing = on")  # pg_stat_statements tracks BEGIN, COMMIT too
WAL = ("wal_records", "wal_bytes", "wal_write", "wal_sync", "wal_write_time", "wal_sync_time")
DB = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted",
      "blks_read", "blks_hit")


# -- the cluster ------------------------------------------------------------------


def profiled_cluster() -> PgServer:
    pg = PgServer()
    pg.start()
    cluster = pg.running()
    cluster.psql("postgres", "".join(f"ALTER SYSTEM SET {s};\n" for s in PROFILE_SETTINGS))
    cluster.restart()
    cluster.psql("postgres", "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    return pg


def rows(pg: PgServer, sql: str) -> list[list[str]]:
    return [line.split("|") for line in pg.running().psql("postgres", sql).splitlines() if line]


def reset(pg: PgServer) -> None:
    """Statements and WAL counters from zero (the database's are read as differences)."""
    pg.running().psql("postgres", "SELECT pg_stat_statements_reset(); "
                                  "SELECT pg_stat_reset_shared('wal');")


def since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The database's counters' growth; the WAL's were reset, so as they are."""
    return {k: v - before[k] if k in DB else v for k, v in after.items()}


def counters(pg: PgServer, dbname: str) -> dict[str, float]:
    """The database's and the cluster's WAL counters now (stats of backends that
    are still running may lag by up to a second: read them after a pause)."""
    (db,) = rows(pg, f"SELECT {', '.join(DB)} FROM pg_stat_database WHERE datname = '{dbname}'")
    (wal,) = rows(pg, f"SELECT {', '.join(WAL)} FROM pg_stat_wal")
    return {k: float(v) for k, v in [*zip(DB, db, strict=True), *zip(WAL, wal, strict=True)]}


def statements(pg: PgServer, dbname: str) -> list[dict[str, Any]]:
    """pg_stat_statements of the run's database: calls, server time, rows."""
    found = rows(pg, "SELECT calls, total_exec_time, rows, regexp_replace(query, '\\s+', ' ', 'g') "
                     "FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                     f"WHERE d.datname = '{dbname}' ORDER BY total_exec_time DESC")
    names = statement_names()
    return [{"calls": int(calls), "ms": float(ms), "rows": int(n), "query": query,
             "name": names.get(_key(query), "")} for calls, ms, n, query in
            (r[:3] + ["|".join(r[3:])] for r in found)]


def probed(found: list[dict[str, Any]]) -> int:
    """The bench's own round-trip probes among the statements (each a transaction)."""
    return sum(int(s["calls"]) for s in found if s["name"] == PROBE_NAME)


def statement_names() -> dict[str, str]:
    """postgres.sql's statements by their text as pg_stat_statements shows it."""
    from gatepost.store import queries

    named: dict[str, str] = {}
    for name, sql in queries.load("postgres.sql").items():  # alike but for constants: a/b
        named[_key(sql)] = f"{named[_key(sql)]}/{name}" if _key(sql) in named else name
    return named | {_key("SET LOCAL synchronous_commit = on"): "(durable enqueue)",
                    _key("SELECT 1"): PROBE_NAME}


def _key(sql: str) -> str:
    """A statement without comments, parameters or constants (pg_stat_statements
    shows constants as parameters too), in one line."""
    sql = re.sub(r"--[^\n]*", " ", sql)
    sql = re.sub(r"\s+", " ", sql).strip().lower()
    sql = re.sub(r"(?<!is )(?<!not )\bnull\b", "?", sql)  # a constant, unless IS [NOT] NULL
    return re.sub(r"\$\d+|%\(p\d+\)s|%s|'[^']*'|\b\d+\b", "?", sql)


# -- processes and their CPU ------------------------------------------------------


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def descendants(roots: list[int]) -> list[int]:
    parents: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))):
            parents[stat[0]].append(int(entry.name))
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += parents.get(pid, [])
    return found


def backend_roles(pg: PgServer, dbname: str, gatepost: dict[int, str]) -> dict[int, str]:
    """Each backend of the run's database, named by the gatepost role it serves
    (its client's port, found with `ss`), else "other"."""
    port_of = {int(port): int(pid) for pid, port in rows(
        pg, f"SELECT pid, client_port FROM pg_stat_activity WHERE datname = '{dbname}' "
            "AND client_port IS NOT NULL")}
    owner_of_port: dict[int, int] = {}
    ss = shutil.which("ss") or "/usr/bin/ss"
    out = subprocess.run([ss, "-tnpH", "state", "established"], capture_output=True, text=True,
                         check=False, timeout=30).stdout
    for line in out.splitlines():
        found = re.search(r"\S+:(\d+)\s+\S+:(\d+)\s+users:\(\(\"[^\"]*\",pid=(\d+)", line)
        if found and int(found[2]) == pg.running().port:
            owner_of_port[int(found[1])] = int(found[3])
    return {backend: f"postgres backend for {gatepost.get(owner_of_port.get(port, 0), 'other')}"
            for port, backend in port_of.items()}


def labels(instance: GatepostInstance, pg: PgServer, sink: Sink,
           source: subprocess.Popen[bytes] | None) -> dict[int, str]:
    """Every process that takes part, by what it is."""
    named: dict[int, str] = {}
    for pid in descendants(instance.pids()):
        command = _cmdline(pid)
        role = command.split("--only ", 1)[1].split()[0] if "--only " in command else None
        named[pid] = f"gatepost {role}" if role else "gatepost supervisor"
    gatepost_roles = {pid: name.removeprefix("gatepost ") for pid, name in named.items()}
    postmaster = int((pg.running().data / "postmaster.pid").read_text().split()[0])
    for pid in descendants([postmaster]):
        command = _cmdline(pid)
        words = command.removeprefix("postgres: ").split() or ["?"]
        named[pid] = f"postgres {words[0]}" if pid != postmaster else "postgres postmaster"
    for pid, name in backend_roles(pg, instance.dbname or "", gatepost_roles).items():
        named[pid] = name
    if sink._proc is not None:
        named[sink._proc.pid] = "smtp-sink"
    if source is not None:
        named[source.pid] = "smtp-source"
    return named


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu(pids: dict[int, str]) -> dict[int, float]:
    return {pid: stat[1] for pid in pids if (stat := _stat(pid))}


def cpu_by_label(named: dict[int, str], before: dict[int, float],
                 after: dict[int, float]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for pid, seconds in after.items():
        out[named[pid]] += seconds - before.get(pid, 0.0)
    return dict(sorted(out.items(), key=lambda item: -item[1]))


# -- round trips --------------------------------------------------------------------


class Probe:
    """`SELECT 1` over TCP every PROBE_EVERY seconds on a thread of its own: the
    round trip a store call pays per statement, as the machine's load makes it."""

    def __init__(self, url: str, password: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True, password=password)
        self.conn.execute("SELECT 1")  # connected, and the statement known
        self.times: list[float] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopping.wait(PROBE_EVERY):
            began = time.perf_counter()
            self.conn.execute("SELECT 1").fetchone()
            self.times.append((time.perf_counter() - began) * 1000)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.conn.close()

    def summary(self) -> dict[str, float]:
        ms = sorted(self.times) or [0.0]
        return {"n": len(self.times), "p50_ms": ms[len(ms) // 2],
                "p90_ms": ms[int(len(ms) * 0.9)], "p99_ms": ms[int(len(ms) * 0.99)]}


# -- one run ------------------------------------------------------------------------


def run(pg: PgServer, kind: str, n: int, spy_to: Path | None, timeout: float,
        idle: bool = False) -> dict[str, Any]:
    """One run; with `spy_to`, under py-spy (`idle`: waiting threads sampled too)."""
    root = Path(tempfile.mkdtemp(prefix="gatepost-pgprof-"))
    sink = Sink(free_port())
    instance = GatepostInstance(root, free_port(), sink.port, None, "postgresql", pg)
    result: dict[str, Any] = {"kind": kind, "messages": n}
    try:
        sink.start()
        instance.setup()
        instance.start()
        dbname = instance.dbname or ""
        time.sleep(1.0)
        reset(pg)
        first = counters(pg, dbname)
        password = pg.running().password
        with Probe(instance.store_url(), password) as idle_probe:
            time.sleep(IDLE)
        result["rtt_idle"] = idle_probe.summary()
        time.sleep(1.2)  # backends report their counters at most once a second
        idle_counters = since(first, counters(pg, dbname))
        idle_statements = statements(pg, dbname)
        idle_counters["xact_commit"] -= probed(idle_statements)
        result["idle"] = {"seconds": IDLE, "counters": idle_counters,
                          "statements": [s for s in idle_statements if s["name"] != PROBE_NAME][:8]}
        named = labels(instance, pg, sink, None)
        spy = None
        if spy_to is not None:
            spy = subprocess.Popen([str(PY_SPY), "record", "--pid", str(instance.pids()[0]),
                                    "--subprocesses", "--nonblocking", "--nolineno", "--rate",
                                    str(RATE), "--format", "raw", "--output", str(spy_to),
                                    *(["--idle"] if idle else [])],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(2.0)  # py-spy attaches to every process
        reset(pg)
        first = counters(pg, dbname)
        rcpt = RELAY_RCPT if kind == "relay" else INBOUND_RCPT
        count = sink.count if kind == "relay" else instance.delivered_count
        before, children = cpu(named), _children_cpu()
        with Probe(instance.store_url(), password) as probe, subprocess.Popen(
                source_command(instance.port, n, rcpt), stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE) as source:
            started = time.perf_counter()
            try:
                timing = clock(count, n, timeout, source)
            finally:
                source.kill()
        result["rtt"] = probe.summary()
        after = cpu(named)
        named[source.pid] = "smtp-source"  # reaped by now: its CPU is our children's
        after[source.pid] = _children_cpu() - children
        result["seconds"], result["rate"] = timing["seconds"], timing["rate"]
        result["wall"] = time.perf_counter() - started
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        time.sleep(1.2)  # backends report their counters at most once a second
        result["counters"] = since(first, counters(pg, dbname))
        result["statements"] = statements(pg, dbname)
        result["cpu"] = cpu_by_label(named, before, after)
        result["counting_queries"] = instance.counts + probed(result["statements"])
    finally:
        try:
            instance.stop()
        finally:
            sink.stop()
            shutil.rmtree(root, ignore_errors=True)
    result["exit_codes"] = instance.exit_codes
    result["log_problems"] = instance.log_problems
    return result


# -- py-spy's stacks ----------------------------------------------------------------


def stacks(path: Path, top: int = 12) -> dict[str, Any]:
    """Samples per gatepost role, and per role the functions with the most
    samples on top of the stack (self) and anywhere in it (inclusive, once per
    stack)."""
    roles: Counter[str] = Counter()
    own: dict[str, Counter[str]] = defaultdict(Counter)
    anywhere: dict[str, Counter[str]] = defaultdict(Counter)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        processes = [f for f in frames if f.startswith("process ")]
        command = processes[-1] if processes else ""
        role = command.split("--only ", 1)[1].split()[0] if "--only " in command else "supervisor"
        calls = [f for f in frames if not f.startswith(("process ", "thread "))]
        n = int(count)
        roles[role] += n
        if calls:
            own[role][calls[-1].split(" (", 1)[0]] += n
        names = {c.split(" (", 1)[0] for c in calls}
        for call in names - SCAFFOLD:
            anywhere[role][call] += n
        if {"ThreadedStore._run", "Connection.wait"} <= names:
            anywhere[role][STORE_WAIT] += n
    return {"samples": dict(roles.most_common()),
            "self": {r: own[r].most_common(top) for r in roles},
            "inclusive": {r: anywhere[r].most_common(top) for r in roles},
            "busy": {r: {f: anywhere[r][f] for f in BUSY} for r in roles}}


# -- the report ---------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    main, m = results["run"], results["machine"]
    n = int(main["messages"])
    c, idle = main["counters"], main["idle"]

    def per(key: str) -> float:
        return float(c[key]) / n

    commits = c["xact_commit"] - main["counting_queries"]
    lines = [
        "# gatepost on PostgreSQL: where the time goes", "",
        f"Run {results['started']}: `{results['command']}`; gatepost code: {results['source']}.",
        (f"One {main['kind']} run of {n} messages of 8 KB at {main['rate']:.0f} msg/s "
        f"({main['seconds']:.1f} s). Load average (1/5/15 min) at the start "
        f"{' '.join(m['loadavg'])}, at the end {' '.join(results['loadavg_end'])}, on "
        f"{m['nproc']} CPUs. The cluster: tests/pg.py's defaults (fsync on, synchronous_commit "
        "on) plus pg_stat_statements and I/O timing."), "",
        "## CPU seconds per 1000 messages, by process", "",
        "| process | CPU s / 1000 msg | share |", "|---|---|---|",
    ]
    total = sum(main["cpu"].values())
    lines += [f"| {name} | {sec * 1000 / n:.2f} | {sec / total:.0%} |"
              for name, sec in main["cpu"].items() if sec > 0]
    lines += [(f"| all | {total * 1000 / n:.2f} | CPU busy {total / main['seconds']:.2f} of "
              f"{m['nproc']} cores during the run |"), ""]
    lines += [
        "## The database per message", "",
        (f"- transactions: {commits / n:.2f} (each autocommit read is one; the bench's own "
        f"{main['counting_queries']} counting and probing queries taken out), rollbacks "
        f"{per('xact_rollback'):.3f}"),
        (f"- WAL: {per('wal_records'):.1f} records, {per('wal_bytes'):.0f} bytes, "
        f"{per('wal_write'):.2f} writes, {per('wal_sync'):.2f} syncs (fdatasync); "
        f"sync time {c['wal_sync_time'] / n:.3f} ms per message, "
        f"{c['wal_sync_time'] / max(c['wal_sync'], 1):.2f} ms per sync, "
        f"{c['wal_sync_time'] / 1000 / main['seconds']:.0%} of the run's wall time"),
        (f"- rows: {per('tup_inserted'):.2f} inserted, {per('tup_updated'):.2f} updated, "
        f"{per('tup_deleted'):.2f} deleted"),
        (f"- round trip (`SELECT 1` from another connection every {PROBE_EVERY * 1000:.0f} "
         f"ms): during the run p50 {main['rtt']['p50_ms']:.2f} ms, p90 "
         f"{main['rtt']['p90_ms']:.2f} ms, p99 {main['rtt']['p99_ms']:.2f} ms; idle p50 "
         f"{main['rtt_idle']['p50_ms']:.2f} ms, p90 {main['rtt_idle']['p90_ms']:.2f} ms"),
        (f"- idle, for {idle['seconds']:.0f} s before the run: "
        f"{idle['counters']['xact_commit'] / idle['seconds']:.0f} transactions per second "
        "(the workers' `due` polls and what they read)"), "",
        "## Statements per message (pg_stat_statements, by server time)", "",
        "Calls of an executemany count once per row (psycopg pipelines them: fewer round trips).",
        "", "| statement | calls / msg | server ms / msg | ms / call | rows / call |",
        "|---|---|---|---|---|",
    ]
    for s in main["statements"][:24]:
        label = s["name"] or s["query"][:60].replace("|", "\\|")
        lines.append(f"| {label} | {s['calls'] / n:.3f} | {s['ms'] / n:.3f} "
                     f"| {s['ms'] / max(s['calls'], 1):.3f} | {s['rows'] / max(s['calls'], 1):.1f} |")
    gatepost = [s for s in main["statements"] if s["name"] != PROBE_NAME]
    calls = sum(s["calls"] for s in gatepost)
    server = sum(s["ms"] for s in gatepost)
    lines += ["", (f"All of gatepost's statements: {calls / n:.1f} calls and {server / n:.2f} ms of "
              "server time per message."), "",
              "Idle, per second: " + "; ".join(
                  f"{s['name'] or s['query'][:40]} {s['calls'] / idle['seconds']:.0f}"
                  for s in idle["statements"][:6]), ""]
    spy = results.get("py_spy", {})
    if "wall" in spy:
        wall = spy["wall"]
        ticks = wall["seconds"] * RATE
        lines += ["## Who waits for whom (py-spy --idle, a third run)", "",
                  (f"That run: {wall['rate']:.0f} msg/s under the profiler. Share of the run's "
                  "wall time during which a thread of the role was in the call (summed over "
                  "threads: above 100% means calls side by side). write_all (renewals and "
                  "outcomes) and enqueue have one writer at a time per process; "
                  f"{STORE_WAIT!r} is psycopg waiting for the database in a store call "
                  "(Connection.wait on the store's threads, not the LISTEN thread)."), "",
                  "| role | " + " | ".join(BUSY) + " |", "|---|" + "---|" * len(BUSY)]
        for role, busy in wall["stacks"]["busy"].items():
            if role != "supervisor":
                lines.append(f"| {role} | " + " | ".join(
                    f"{busy[f] / ticks:.0%}" for f in BUSY) + " |")
        lines.append("")
    if "cpu" in spy:
        cpu_view = spy["cpu"]
        lines += ["## gatepost's on-CPU stacks (py-spy, a second run)", "",
                  f"That run: {cpu_view['rate']:.0f} msg/s under the profiler. Samples per role "
                  f"({RATE} per second of CPU): " + ", ".join(
                      f"{r} {k}" for r, k in cpu_view["stacks"]["samples"].items()), ""]
        for role, top in cpu_view["stacks"]["inclusive"].items():
            total_role = cpu_view["stacks"]["samples"][role]
            if total_role < 20:
                continue
            lines += [f"### {role}", "", "| inclusive | share | self | share |",
                      "|---|---|---|---|"]
            own = cpu_view["stacks"]["self"][role]
            for index, (f, k) in enumerate(top):
                mine = f"| {own[index][0]} | {own[index][1] / total_role:.0%} |" \
                    if index < len(own) else "| | |"
                lines.append(f"| {f} | {k / total_role:.0%} " + mine)
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--messages", type=int, default=5000)
    parser.add_argument("--kind", choices=("relay", "inbound"), default="relay")
    parser.add_argument("--no-py-spy", action="store_true")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if reason := PgServer.missing():
        print(reason, file=sys.stderr)
        return 2
    use_spy = not args.no_py_spy
    if use_spy and not PY_SPY.exists():
        print(f"no {PY_SPY}: `{sys.executable} -m pip install py-spy`, or --no-py-spy",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                               "command": " ".join(["bench/pg_profile.py", *(argv or sys.argv[1:])]),
                               "machine": machine(), "source": source_state()}
    pg = profiled_cluster()
    try:
        print(f"{args.kind} run of {args.messages}", file=sys.stderr, flush=True)
        results["run"] = run(pg, args.kind, args.messages, None, args.timeout)
        print(f"  {results['run']['rate']:.0f} msg/s", file=sys.stderr, flush=True)
        for view, idle in (("cpu", False), ("wall", True)) if use_spy else ():
            raw = Path(tempfile.gettempdir()) / f"gatepost-pg-profile-py-spy-{view}.txt"
            print(f"the same under py-spy ({view})", file=sys.stderr, flush=True)
            spied = run(pg, args.kind, args.messages, raw, args.timeout, idle)
            results.setdefault("py_spy", {})[view] = {
                "rate": spied["rate"], "seconds": spied["seconds"], "raw": str(raw),
                "stacks": stacks(raw)}
            print(f"  {spied['rate']:.0f} msg/s", file=sys.stderr, flush=True)
    finally:
        pg.stop()
    results["loadavg_end"] = machine()["loadavg"]
    (args.out / "latest-pg-profile.json").write_text(json.dumps(results, indent=1, default=str))
    (args.out / "latest-pg-profile.md").write_text(markdown(results))
    print(f"wrote {args.out}/latest-pg-profile.md, .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
