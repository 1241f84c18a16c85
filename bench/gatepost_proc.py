"""gatepost under test: writes its topology file, starts and stops its processes.

The command line lives in `command()` alone. By default one `gatepost run` hosts
every role; `roles` (e.g. ["router", "gateway:GW1"]) starts one process per entry
with `--only`. Counts delivered mailbox rows by reading the SQLite store read-only.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from functools import partial
from pathlib import Path

from bench.common import HOST, INBOUND_DOMAIN, INBOUND_USER, BenchError, wait_port, wait_until

MAIN = Path(__file__).resolve().parent.parent
PYTHON = MAIN / ".venv" / "bin" / "python"
PROBLEM = re.compile(r"error|traceback|exception|deferred|bounced|warning", re.IGNORECASE)

TOPOLOGY = """\
[network]
name = "BENCH"
store = "sqlite:{store}"

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


def python() -> str:
    return str(PYTHON) if PYTHON.exists() else sys.executable


class GatepostInstance:
    """gatepost with its store in `root`, receiving on `port`, relaying to `sink_port`."""

    def __init__(self, root: Path, port: int, sink_port: int, roles: list[str] | None = None):
        self.root, self.port, self.sink_port = root, port, sink_port
        self.roles = roles or []
        self.config = root / "bench.toml"
        self.store = root / "bench.db"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.exit_codes: list[int] = []
        self.log_problems: dict[str, object] = {}

    def topology(self) -> str:
        return TOPOLOGY.format(store=self.store, domain=INBOUND_DOMAIN, user=INBOUND_USER,
                               host=HOST, port=self.port, sink_port=self.sink_port)

    def commands(self) -> list[list[str]]:
        """The one place that says how gatepost is started."""
        base = [python(), "-m", "gatepost", "-c", str(self.config), "run"]
        if not self.roles:
            return [base]
        return [[*base, "--only", role] for role in self.roles]

    def setup(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self.topology())

    def start(self) -> None:
        for index, command in enumerate(self.commands()):
            log = self.root / f"gatepost-{index}.log"
            self.logs.append(log)
            with log.open("wb") as err:
                self.procs.append(subprocess.Popen(command, stderr=err, stdout=err, cwd=MAIN))
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
        return codes

    def _problems(self, keep: int = 5) -> dict[str, object]:
        """How many log lines mention an error, deferral or bounce, and the first few."""
        lines = [line for log in self.logs if log.exists()
                 for line in log.read_text(errors="replace").splitlines()
                 if PROBLEM.search(line)]
        return {"count": len(lines), "first": lines[:keep]}

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def delivered_count(self) -> int:
        """Rows in the mailbox table (the inbound finish line); 0 before the store exists."""
        if not self.store.exists():
            return 0
        uri = f"file:{self.store}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=5)) as conn:
            return int(conn.execute("SELECT count(*) FROM mailbox").fetchone()[0])

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
