"""gatepost under test: writes its topology file, starts and stops its processes.

The command line lives in `command()` alone. By default one `gatepost run` hosts
every role; `roles` (e.g. ["router", "gateway:GW1"]) starts one process per entry
with `--only`. The store is SQLite (a file in the run's folder, its delivered
mailbox rows counted read-only) or PostgreSQL: a fresh database per run on the
bench's one private cluster (`PgServer`: tests/pg.py's Cluster, its default
settings, fsync and synchronous_commit on), PGPASSWORD passed to gatepost's
processes, the rows counted with psycopg on one connection kept for the run, and
the database's counters of the run (commits, WAL syncs) kept before it is dropped.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import HOST, INBOUND_DOMAIN, INBOUND_USER, BenchError, wait_port, wait_until

MAIN = Path(__file__).resolve().parent.parent
PYTHON = MAIN / ".venv" / "bin" / "python"
PROBLEM = re.compile(r"error|traceback|exception|deferred|bounced|warning", re.IGNORECASE)

TOPOLOGY = """\
[network]
name = "BENCH"
store = "{store}"

[postoffices.HQ]
domains = ["{domain}"]
mailboxes = ["{user}", "postmaster"]

[gateways.GW1]
postoffice = "HQ"
role = "both"
listen = "{host}:{port}"
smarthost = "{host}:{sink_port}"
serves = ["HQ"]
relay_from = ["127.0.0.0/8"]
"""


STORES = ("sqlite", "postgresql")
PG_PLACEHOLDER = "postgresql://gatepost@127.0.0.1:PGPORT/gatepost_XXXX"  # for the report
# The cluster's settings the report shows (SHOW name): durability and memory.
PG_SETTINGS = ("server_version", "fsync", "synchronous_commit", "full_page_writes",
               "wal_sync_method", "wal_level", "commit_delay", "shared_buffers",
               "max_connections")
# Cluster-wide WAL counters (PostgreSQL 14+), read before and after each run.
WAL_COUNTERS = ("wal_records", "wal_bytes", "wal_write", "wal_sync", "wal_buffers_full")
DB_COUNTERS = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted",
               "tup_returned", "tup_fetched")


def python() -> str:
    return str(PYTHON) if PYTHON.exists() else sys.executable


class PgServer:
    """The bench's one private PostgreSQL cluster (tests/pg.py's Cluster, started
    by `start`, removed by `stop`); every gatepost-postgresql run gets a database
    of its own on it."""

    def __init__(self) -> None:
        self.cluster: Any = None

    @staticmethod
    def missing() -> str | None:
        """Why no cluster can start here, or None."""
        return _pg().missing()  # type: ignore[no-any-return]

    def start(self) -> None:
        if self.cluster is None:
            self.cluster = _pg().Cluster.start()

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None

    def running(self) -> Any:
        if self.cluster is None:
            raise BenchError("the bench's PostgreSQL cluster is not started")
        return self.cluster

    def settings(self) -> dict[str, str]:
        cluster = self.running()
        sql = "".join(f"SELECT '{name}', current_setting('{name}');\n" for name in PG_SETTINGS)
        return dict(line.split("|", 1) for line in cluster.psql("postgres", sql).splitlines()
                    if "|" in line)

    def wal(self) -> dict[str, float]:
        cluster = self.running()
        row = cluster.psql("postgres", f"SELECT {', '.join(WAL_COUNTERS)} FROM pg_stat_wal")
        return dict(zip(WAL_COUNTERS, (float(v) for v in row.strip().split("|")), strict=True))

    def database(self, dbname: str) -> dict[str, float]:
        cluster = self.running()
        row = cluster.psql("postgres", f"SELECT {', '.join(DB_COUNTERS)} FROM pg_stat_database "
                                       f"WHERE datname = '{dbname}'")
        return dict(zip(DB_COUNTERS, (float(v) for v in row.strip().split("|")), strict=True))


def _pg() -> Any:
    """tests/pg.py (the private clusters of the tests), imported on first use."""
    if str(MAIN) not in sys.path:
        sys.path.insert(0, str(MAIN))
    from tests import pg

    return pg


class GatepostInstance:
    """gatepost with its store in `root` (SQLite) or in a fresh database of `pg`'s
    cluster (PostgreSQL), receiving on `port`, relaying to `sink_port`."""

    def __init__(self, root: Path, port: int, sink_port: int, roles: list[str] | None = None,
                 store: str = "sqlite", pg: PgServer | None = None):
        if store not in STORES:
            raise ValueError(f"unknown store {store!r}; expected one of {STORES}")
        if store == "postgresql" and pg is None:
            raise ValueError("a PostgreSQL store needs the bench's PgServer")
        self.root, self.port, self.sink_port = root, port, sink_port
        self.roles = roles or []
        self.kind, self.pg = store, pg
        self.config = root / "bench.toml"
        self.store = root / "bench.db"
        self.dbname: str | None = None  # PostgreSQL: this run's database, once made
        self._counter: Any = None  # PostgreSQL: the connection delivered_count uses
        self.counts = 0  # PostgreSQL: delivered_count's queries (they are commits too)
        self._before: dict[str, dict[str, float]] = {}
        self.db_stats: dict[str, Any] | None = None
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.exit_codes: list[int] = []
        self.log_problems: dict[str, object] = {}

    def store_url(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite:{self.store}"
        if self.pg is None or self.pg.cluster is None or self.dbname is None:
            return PG_PLACEHOLDER
        return str(self.pg.cluster.url(self.dbname))

    def topology(self) -> str:
        return TOPOLOGY.format(store=self.store_url(), domain=INBOUND_DOMAIN, user=INBOUND_USER,
                               host=HOST, port=self.port, sink_port=self.sink_port)

    def env(self) -> dict[str, str]:
        """gatepost's environment: ours, and PGPASSWORD for a PostgreSQL store."""
        if self.kind != "postgresql":
            return dict(os.environ)
        return {**os.environ, **self.pg.running().env()}  # type: ignore[union-attr]

    def commands(self) -> list[list[str]]:
        """The one place that says how gatepost is started."""
        base = [python(), "-m", "gatepost", "-c", str(self.config), "run"]
        if not self.roles:
            return [base]
        return [[*base, "--only", role] for role in self.roles]

    def setup(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.kind == "postgresql":
            assert self.pg is not None
            self.dbname = self.pg.running().create_database()
            self._create_schema()
        self.config.write_text(self.topology())

    def _create_schema(self) -> None:
        """Create the store's tables before gatepost starts, so that each run measures
        mail, not the creation of a schema. (Before f519150 this was needed too: role
        processes starting together on an empty database could both create it, as
        to_regclass answered from a cache, and `gatepost run` gave up.)"""
        from gatepost.store.postgres_db import PgDb

        PgDb(self.store_url(), self.root / "staging", None, True,
             self.pg.running().password).close()  # type: ignore[union-attr]

    def start(self) -> None:
        if self.kind == "postgresql":
            assert self.pg is not None and self.dbname is not None
            self._before = {"wal": self.pg.wal(), "db": self.pg.database(self.dbname)}
        env = self.env()
        for index, command in enumerate(self.commands()):
            log = self.root / f"gatepost-{index}.log"
            self.logs.append(log)
            with log.open("wb") as err:
                self.procs.append(subprocess.Popen(command, stderr=err, stdout=err, cwd=MAIN,
                                                   env=env))
        for log, proc in zip(self.logs, self.procs):
            wait_until(partial(_ready, log, proc), 30, f"'gatepost: ready' in {log}", 0.1)
        wait_port(self.port, 10, "gatepost receive side")

    def stop(self) -> list[int]:
        """SIGTERM every process; returns their exit codes."""
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=30))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait(timeout=10))
        self.exit_codes = codes
        self.log_problems = self._problems()
        if self.kind == "postgresql":
            self._end_database()
        return codes

    def _end_database(self) -> None:
        """Keep the run's counters (the database's, and the cluster's WAL: nothing
        else writes to the cluster meanwhile), then drop the database."""
        if self._counter is not None:
            self._counter.close()
            self._counter = None
        if self.pg is None or self.dbname is None or self.pg.cluster is None:
            return
        try:
            if self._before:
                db, wal = self.pg.database(self.dbname), self.pg.wal()
                stats = {k: v - self._before["db"][k] for k, v in db.items()}
                stats["xact_commit"] -= self.counts  # delivered_count's own queries
                stats |= {k: v - self._before["wal"][k] for k, v in wal.items()}
                self.db_stats = {k: int(v) for k, v in stats.items()} | {
                    "counting_queries": self.counts}
        finally:
            self.pg.cluster.drop_database(self.dbname)
            self.dbname = None

    def _problems(self, keep: int = 5) -> dict[str, object]:
        """How many log lines mention an error, deferral or bounce, and the first few."""
        lines = [line for log in self.logs if log.exists()
                 for line in log.read_text(errors="replace").splitlines()
                 if PROBLEM.search(line)]
        return {"count": len(lines), "first": lines[:keep]}

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def cpu_roots(self) -> dict[str, list[int]]:
        """Whose CPU a run counts: gatepost's processes, and for PostgreSQL the
        cluster's (its backends, WAL writer...: only this run uses it meanwhile)."""
        roots = {"gatepost": self.pids()}
        if self.kind == "postgresql" and self.pg is not None and self.pg.cluster is not None:
            pid_file = self.pg.cluster.data / "postmaster.pid"
            roots["postgresql"] = [int(pid_file.read_text().split()[0])]
        return roots

    def delivered_count(self) -> int:
        """Rows in the mailbox table (the inbound finish line); 0 before the store exists."""
        if self.kind == "postgresql":
            return self._pg_count()
        if not self.store.exists():
            return 0
        uri = f"file:{self.store}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=5)) as conn:
            return int(conn.execute("SELECT count(*) FROM mailbox").fetchone()[0])

    def _pg_count(self) -> int:
        import psycopg

        if self._counter is None:
            self._counter = psycopg.connect(self.store_url(), autocommit=True,
                                            password=self.pg.running().password)  # type: ignore[union-attr]
        self.counts += 1
        row = self._counter.execute("SELECT count(*) FROM mailbox").fetchone()
        return int(row[0]) if row else 0

    def log_tail(self, lines: int = 20) -> str:
        text = "".join(log.read_text(errors="replace") for log in self.logs if log.exists())
        return "\n".join(text.splitlines()[-lines:])

    def version(self) -> str:
        out = subprocess.run([python(), "-c", "import gatepost; print(gatepost.__version__)"],
                             check=False, capture_output=True, text=True, timeout=30, cwd=MAIN)
        return out.stdout.strip() or "unknown"


def _ready(log: Path, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise BenchError(f"gatepost exited with {proc.returncode}\n{log.read_text()[-3000:]}")
    return b"gatepost: ready" in log.read_bytes()
