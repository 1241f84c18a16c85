"""Helpers for end-to-end tests: free ports, topology files, gatepost processes,
and the external tools (swaks, smtp-source, smtp-sink)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3 as _sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing as _closing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# One postoffice and a send-only gateway: for tests of what the send side sends.
# Its [gateways.GW1] table comes last, so a test may append keys to it.
SEND_ONLY = """\
[network]
name = "ACME"
store = "sqlite:var/acme.db"

[postoffices.HQ]
domains = ["hq.acme.example"]
mailboxes = ["alice", "postmaster"]

[gateways.GW1]
postoffice = "HQ"
role = "send"
smarthost = "{smarthost}"
serves = ["HQ"]
"""
TOOLS = {"swaks": "swaks", "smtp-source": "/usr/sbin/smtp-source", "smtp-sink": "/usr/sbin/smtp-sink"}


def tool(name: str) -> str:
    """The path of an external tool; skip without it, but fail under CI=true."""
    found = shutil.which(TOOLS[name]) or shutil.which(name)
    if found:
        return found
    reason = f"{name} is not installed (apt-get install {'swaks' if name == 'swaks' else 'postfix'})"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_port(port: int, timeout: float = 15.0) -> None:
    def listening() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_for(listening, timeout, f"port {port}")


def gatepost(config: Path, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run one gatepost command as a user would, and return what it printed."""
    return subprocess.run(
        [sys.executable, "-m", "gatepost", "-c", str(config), *args],
        input=input, capture_output=True, timeout=60, check=False,
    )


class Gatepost:
    """A `gatepost run` process, started and stopped as a user would."""

    def __init__(self, config: Path, *args: str) -> None:
        self.log = config.parent / f"gatepost-{'-'.join(args) or 'all'}.log".replace(":", "_")
        self.handle = self.log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gatepost", "-c", str(config), "run", *args],
            stdout=self.handle, stderr=subprocess.STDOUT,
        )
        try:
            wait_for(self.ready, 60, f"gatepost {args} to be ready")
        except BaseException:
            self.stop()  # a failing test leaves no process behind
            raise

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"gatepost exited early:\n{self.output()}")
        return b"gatepost: ready" in self.log.read_bytes()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.handle.close()
        return self.process.returncode


class Sink:
    """Postfix's smtp-sink, dumping every message to its own file."""

    def __init__(self, directory: Path, port: int, *options: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o777)
        self.directory = directory
        self.port = port
        command = [tool("smtp-sink"), "-d", f"{directory}/%Y%m%d%H%M%S.", *options]
        if os.geteuid() == 0:
            command += ["-u", "nobody"]
        self.process = subprocess.Popen(
            [*command, f"127.0.0.1:{port}", "256"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(port)
        except BaseException:
            self.stop()
            raise

    def messages(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.directory.iterdir()) if p.is_file()]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


# ---------------------------------------------------------------------------
# Deployment models run as separate processes (test_e2e_models, test_failover).
# Added below the helpers above; nothing above is changed.

import json as _json
import tempfile as _tempfile
import tomllib as _tomllib
from concurrent.futures import ThreadPoolExecutor as _Pool
from typing import Any as _Any

EXAMPLES = ROOT / "examples"


def toml_text(data: dict[str, _Any], prefix: str = "") -> str:
    """A TOML document for plain topology data (strings, numbers, lists, tables)."""
    plain = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines = [f"[{prefix}]"] if prefix and plain else []
    for key, value in plain.items():
        text = str(value).lower() if isinstance(value, bool) else _json.dumps(value)
        lines.append(f"{key} = {text}")
    out = "\n".join(lines) + ("\n\n" if lines else "")
    for key, table in tables.items():
        out += toml_text(table, f"{prefix}.{key}" if prefix else key)
    return out


def rewrite_example(source: Path, directory: Path) -> tuple[Path, dict[str, _Any]]:
    """An example topology rewritten for a test: the store under `directory`,
    every listen address on a free loopback port, each sending gateway's smart
    host on a port of its own (one sink per sending gateway), no [capture]."""
    data = _tomllib.loads(source.read_text())
    data.pop("capture", None)
    data["network"]["store"] = "sqlite:var/store.db"
    for gateway in data["gateways"].values():
        if "listen" in gateway:
            gateway["listen"] = f"127.0.0.1:{free_port()}"
        if "smarthost" in gateway:
            gateway["smarthost"] = f"127.0.0.1:{free_port()}"
    config = directory / source.name
    config.write_text(toml_text(data))
    return config, data


def hostport(text: str) -> int:
    return int(text.rpartition(":")[2])


def listening_ports(pid: int) -> set[int]:
    """TCP ports process `pid` listens on, from /proc (no tool needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


class Deployment:
    """A rewritten topology run as separate `gatepost run --only ROLE` processes,
    one smtp-sink per sending gateway, inspected through the `gatepost` command."""

    def __init__(self, config: Path, data: dict[str, _Any]) -> None:
        self.config = config
        self.data = data
        self.sink_root = Path(_tempfile.mkdtemp(prefix="gatepost-sinks-"))
        self.sink_root.chmod(0o755)
        self.sinks: dict[str, Sink] = {}
        self.processes: dict[str, Gatepost] = {}

    # -- starting and stopping ------------------------------------------------

    @property
    def gateways(self) -> dict[str, dict[str, _Any]]:
        gateways: dict[str, dict[str, _Any]] = self.data["gateways"]
        return gateways

    def senders(self) -> list[str]:
        return [n for n, g in self.gateways.items() if g.get("role", "both") in ("both", "send")]

    def receivers(self) -> list[str]:
        return [n for n, g in self.gateways.items() if g.get("role", "both") in ("both", "receive")]

    def start_sink(self, gateway: str, *options: str) -> Sink:
        port = hostport(self.gateways[gateway]["smarthost"])
        directory = self.sink_root / f"{gateway}-{len(list(self.sink_root.iterdir()))}"
        self.sinks[gateway] = Sink(directory, port, *options)
        return self.sinks[gateway]

    def start(self, *roles: str) -> None:
        """Start one process per role, concurrently; returns once all are ready.
        When one fails to start, the others are stopped before the error is raised."""
        with _Pool(len(roles)) as pool:
            futures = {role: pool.submit(Gatepost, self.config, "--only", role) for role in roles}
        failures = []
        for role, future in futures.items():
            try:
                self.processes[role] = future.result()
            except BaseException as error:  # noqa: BLE001 - re-raised below
                failures.append(error)
        if failures:
            self.close()
            raise failures[0]

    def start_all(self) -> None:
        for gateway in self.senders():
            self.start_sink(gateway)
        self.start(*(f"gateway:{name}" for name in self.gateways), "router")

    def kill(self, role: str) -> None:
        """kill -9: a crash, no clean-up, the heartbeat goes stale."""
        process = self.processes[role]
        process.process.send_signal(signal.SIGKILL)
        process.process.wait(10)
        process.handle.close()

    def close(self) -> None:
        for process in self.processes.values():
            process.stop()
        for sink in self.sinks.values():
            if sink.process.poll() is None:
                sink.stop()
        shutil.rmtree(self.sink_root, ignore_errors=True)

    # -- the gatepost command -------------------------------------------------

    def cli(self, *args: str) -> str:
        result = gatepost(self.config, *args)
        assert result.returncode == 0, f"gatepost {' '.join(args)}: {result.stderr.decode()}"
        return result.stdout.decode()

    def mailq(self) -> list[dict[str, _Any]]:
        rows: list[dict[str, _Any]] = _json.loads(self.cli("mailq", "--json"))
        return rows

    def mailbox(self, address: str) -> list[dict[str, _Any]]:
        rows: list[dict[str, _Any]] = _json.loads(self.cli("mailbox", address, "--json"))
        return rows

    def send(self, sender: str, recipient: str, subject: str) -> str:
        return self.cli("send", "--from", sender, "--to", recipient, "--subject", subject,
                        "--body", "hi").strip()

    def trace(self, queue_id: str) -> list[tuple[str, str, str, str]]:
        """`gatepost trace` rows as (recipient, event, postoffice, detail)."""
        rows = []
        for line in self.cli("trace", queue_id).splitlines()[1:]:
            _date, _time, recipient, event, postoffice, *detail = line.split()
            rows.append((recipient, event, postoffice, " ".join(detail)))
        return rows

    def many(self, function: Callable[..., _Any], *argument_lists: list[_Any]) -> list[_Any]:
        """`function` over arguments, several gatepost commands at once."""
        with _Pool(4) as pool:
            return list(pool.map(function, *argument_lists))

    def wait_drained(self, timeout: float = 60.0) -> None:
        last: list[list[dict[str, _Any]]] = [[]]

        def drained() -> bool:
            last[0] = self.mailq()
            return last[0] == []

        try:
            wait_for(drained, timeout, "an empty mail queue")
        except AssertionError as error:
            waiting = {(r["queue"], r["state"]) for r in last[0]}
            raise AssertionError(f"{error}; still queued ({len(last[0])}): {sorted(waiting)}") from None


def sunk_subjects(sink: Sink) -> list[str]:
    """Subjects of the messages an smtp-sink received (one dump file each)."""
    subjects = []
    for raw in sink.messages():
        for line in raw.splitlines():
            if line.lower().startswith(b"subject:"):
                subjects.append(line.split(b":", 1)[1].strip().decode())
                break
    return subjects


# ---------------------------------------------------------------------------
# `gatepost run` as a process group of its own (test_supervisor). Appended.

import datetime as _datetime
import re as _re
from typing import Self as _Self

_LOG_TIME = _re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def logged_at(line: str) -> float:
    """The time a gatepost log line was written, in seconds (its %(asctime)s)."""
    found = _LOG_TIME.match(line)
    assert found, f"not a log line: {line!r}"
    stamp = _datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


def role_pid(parent: int, role: str) -> int | None:
    """The pid of the `gatepost run --only ROLE` child of process `parent`, from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        only = command.index(b"--only") + 1 if b"--only" in command else len(command)
        if f"\nPPid:\t{parent}\n" in status and command[only:only + 1] == [role.encode()]:
            return int(entry.name)
    return None


class GroupRun:
    """`gatepost run` (the supervisor and its children) in a session and process
    group of its own, as systemd starts a service: signals go to the whole group.
    Leaving the `with` block kills whatever of the group is left."""

    def __init__(self, config: Path) -> None:
        self.log = config.parent / "gatepost-group.log"
        self.handle = self.log.open("ab")
        self.mark = self.log.stat().st_size
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gatepost", "-c", str(config), "run"],
            stdout=self.handle, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            wait_for(self.ready, 60, "gatepost run to be ready")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def output(self) -> str:
        """What this run wrote to its log (earlier runs of the same config excluded)."""
        return self.log.read_bytes()[self.mark:].decode(errors="replace")

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"gatepost run exited early:\n{self.output()}")
        return "gatepost: ready" in self.output()

    def signal_group(self, signum: int) -> None:
        os.killpg(self.process.pid, signum)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def alive(self) -> bool:
        """Is any process of the group left (the supervisor reaped or not)?"""
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def close(self) -> None:
        if self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self.handle.close()


def old_store(path: Path, version: int) -> Path:
    """A store file as schema `version` left it (for migration tests)."""
    from gatepost.store import schema

    with _closing(_sqlite3.connect(path, isolation_level=None)) as conn:
        for statements in schema.MIGRATIONS[:version]:
            for statement in statements:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {version}")
    return path


FAKETIME_LIBS = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
                 "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
                 "/usr/lib/faketime/libfaketime.so.1")


def faketime_library() -> str:
    """libfaketime's path: the test is skipped without it, but fails under CI=true."""
    found = next((path for path in FAKETIME_LIBS if Path(path).exists()), None)
    if found:
        return found
    reason = "libfaketime is not installed (apt-get install faketime)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)
