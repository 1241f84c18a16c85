"""A private PostgreSQL cluster for tests, benchmarks and soak runs: Debian's
server binaries (/usr/lib/postgresql/*/bin) run a fresh cluster in a folder
of its own on a free port, as the `postgres` user when we are root (the
server refuses to run as root), and never touch the system's clusters.

    from pg import Cluster
    with Cluster.start() as cluster:           # or cluster = Cluster.start(); ... cluster.stop()
        name = cluster.create_database()
        url = cluster.url(name)                # postgresql://gatepost@127.0.0.1:PORT/NAME
        env = {**os.environ, **cluster.env()}  # PGPASSWORD for a child process

TCP connections need the password (scram-sha-256); the unix socket in the
cluster's folder trusts everyone, so the admin helpers (`psql`, databases,
restart) work even when the server runs inside a network namespace.
Pytest fixtures: `pg_cluster` (one cluster per session) and `pg_url` (a fresh
database per test, PGPASSWORD set for the code under test). It needs no
Python driver: the admin helpers run the `psql` binary."""

from __future__ import annotations

import atexit
import itertools
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import pytest

try:
    from support import free_port
except ImportError:  # imported as tests.pg, with the repository root on sys.path
    from tests.support import free_port

PG_ROOT = Path("/usr/lib/postgresql")
OWNER = "postgres"  # the OS user the server runs as when we are root
SERVER_BINARIES = ("initdb", "pg_ctl", "postgres", "psql")
START_ATTEMPTS = 5  # a free port can be taken before the server binds it
_numbers = itertools.count(1)


def find_bin(name: str) -> Path | None:
    """The newest /usr/lib/postgresql/VERSION/bin/NAME, or None."""
    found = [p for p in PG_ROOT.glob(f"*/bin/{name}") if os.access(p, os.X_OK)]
    return max(found, key=lambda p: _version(p.parent.parent.name), default=None)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


def missing() -> str | None:
    """Why a cluster cannot start here, or None when it can."""
    absent = [name for name in SERVER_BINARIES if find_bin(name) is None]
    if absent:
        return (f"PostgreSQL server binaries are not installed ({', '.join(absent)} not in"
                f" {PG_ROOT}/*/bin); run scripts/install-tools or apt-get install postgresql")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(OWNER)
        except KeyError:
            return f"there is no '{OWNER}' user to run the server as (apt-get install postgresql)"
    return None


def _binary(name: str) -> str:
    path = find_bin(name)
    if path is None:
        raise RuntimeError(missing() or f"{name} is not installed")
    return str(path)


def _quote(name: str) -> str:
    """An SQL identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def _env() -> dict[str, str]:
    """Our environment without PG* variables (they would redirect psql), in the C locale."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    return env


def _client_host(listen: str) -> str:
    """The address a client uses for a listen_addresses value."""
    first = listen.split(",")[0].strip()
    if first in ("*", "0.0.0.0", ""):
        return "127.0.0.1"
    return "::1" if first == "::" else first


class Cluster:
    """One running PostgreSQL cluster in a temporary folder; `stop` removes it."""

    user = "gatepost"
    password = "gatepost-test"

    def __init__(self, folder: Path, listen: str, port: int, netns: str | None) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.log = folder / "postgresql.log"
        self.listen = listen
        self.host = _client_host(listen)
        self.port = port
        self.netns = netns
        self.stopped = False

    # -- starting and stopping --------------------------------------------

    @classmethod
    def start(cls, listen: str = "127.0.0.1", port: int | None = None,
              netns: str | None = None) -> Cluster:
        """initdb and start a cluster listening on `listen` (an address, a comma
        list, or "*") and `port` (a free one when None). With `netns`, the server
        runs in that existing network namespace (`ip netns exec`; root only)."""
        reason = missing()
        if reason:
            raise RuntimeError(reason)
        folder = Path(tempfile.mkdtemp(prefix="gatepost-pg-"))
        folder.chmod(0o755)
        cluster = cls(folder, listen, port or 0, netns)
        atexit.register(cluster.stop)  # a script or session that dies early leaves nothing
        try:
            cluster._own(folder)
            cluster._initdb()
            cluster._first_start(fixed_port=port)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _initdb(self) -> None:
        pwfile = self.folder / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self._own(pwfile)
        try:
            self._run_as_owner([
                _binary("initdb"), "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256", "--auth-local=trust", "--encoding=UTF8",
                "--locale=C", "--no-sync", "--no-instructions",
            ], timeout=120, what="initdb")
        finally:
            pwfile.unlink(missing_ok=True)
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude = 'gatepost.conf'  # tests/pg.py\n")
        self._write(self.data / "pg_hba.conf", (
            "local all all trust\n"
            "host all all 0.0.0.0/0 scram-sha-256\n"
            "host all all ::/0 scram-sha-256\n"))

    def _configure(self) -> None:
        self._write(self.data / "gatepost.conf", f"""\
listen_addresses = '{self.listen}'
port = {self.port}
unix_socket_directories = '{self.folder}'
fsync = on
synchronous_commit = on
full_page_writes = on
shared_buffers = 128MB
max_connections = 300
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
""")

    def _first_start(self, fixed_port: int | None) -> None:
        for attempt in range(1, START_ATTEMPTS + 1):
            self.port = fixed_port or free_port()
            self._configure()
            try:
                self._pg_ctl("start", "-l", str(self.log))
                return
            except RuntimeError:
                if fixed_port or attempt == START_ATTEMPTS or "could not bind" not in self.log_tail():
                    raise

    def restart(self, mode: str = "fast") -> None:
        """pg_ctl restart -m MODE: connections end, committed data stays."""
        self._pg_ctl("restart", "-m", mode, "-l", str(self.log))

    def stop(self) -> None:
        """Stop the server at once (-m immediate) and remove its folder. Idempotent."""
        if self.stopped:
            return
        self.stopped = True
        atexit.unregister(self.stop)
        pid = self._postmaster_pid()
        if pid is not None:
            try:
                self._run_as_owner([_binary("pg_ctl"), "stop", "-D", str(self.data),
                                    "-m", "immediate", "-w", "-t", "30"], timeout=60, what="stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass  # killed below
            _kill(pid, self.data)
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- using it -------------------------------------------------------------

    def url(self, dbname: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{self.user}@{host}:{self.port}/{dbname}"

    def env(self) -> dict[str, str]:
        """What a child process needs besides the URL to connect over TCP."""
        return {"PGPASSWORD": self.password}

    def psql(self, dbname: str, sql: str, timeout: float = 60) -> str:
        """Run SQL (statements one after another, stopping at the first error)
        through the unix socket; returns the rows, unaligned with '|' between
        columns and no headers. Raises RuntimeError with psql's stderr on failure."""
        command = [_binary("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                   "-h", str(self.folder), "-p", str(self.port), "-U", self.user,
                   "-d", dbname, "-f", "-"]
        env = {**_env(), "PGCLIENTENCODING": "UTF8"}
        result = subprocess.run(command, input=sql, capture_output=True, encoding="utf-8",
                                errors="replace", env=env, timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"psql -d {dbname} failed ({result.returncode}):\n"
                               f"{result.stderr.strip()}\nSQL: {sql.strip()[:500]}")
        return result.stdout

    def create_database(self) -> str:
        """A new empty database with a unique name; returns the name."""
        name = f"gatepost_{os.getpid()}_{next(_numbers)}_{secrets.token_hex(3)}"
        self.psql("postgres", f"CREATE DATABASE {_quote(name)}")
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, ending the sessions still connected to it."""
        self.psql("postgres", f"DROP DATABASE IF EXISTS {_quote(name)} WITH (FORCE)")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- running commands as the server's user ----------------------------

    def _own(self, path: Path) -> None:
        if os.geteuid() == 0:
            owner = pwd.getpwnam(OWNER)
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def _write(self, path: Path, text: str) -> None:
        path.write_text(text)
        path.chmod(0o600)
        self._own(path)

    def _pg_ctl(self, action: str, *options: str) -> None:
        command = [_binary("pg_ctl"), action, "-D", str(self.data), "-w", "-t", "60", *options]
        self._run_as_owner(command, timeout=90, what=f"pg_ctl {action}", netns=self.netns)

    def _run_as_owner(self, command: list[str], timeout: float, what: str,
                      netns: str | None = None) -> None:
        if os.geteuid() == 0:
            command = ["runuser", "-u", OWNER, "--", *command]
        if netns:
            command = ["ip", "netns", "exec", netns, *command]
        result = subprocess.run(command, cwd=self.folder, env=_env(), capture_output=True,
                                text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{what} failed ({result.returncode}): {result.stderr.strip()}"
                               f"\n{result.stdout.strip()}\n--- {self.log}:\n{self.log_tail()}")

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None


def _kill(pid: int, data: Path, grace: float = 10) -> None:
    """SIGKILL a postmaster (of `data`) that outlived `pg_ctl stop`; its children
    then exit by themselves."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _serving(pid, data):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _serving(pid: int, data: Path) -> bool:
    """Is `pid` a live postgres server for the data folder `data`?"""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return "\nState:\tZ" not in status and str(data).encode() in command


# ---------------------------------------------------------------------------
# Pytest fixtures: `from pg import pg_cluster, pg_url` in conftest.py or a test module.


_session: list[Cluster] = []  # the one cluster every registration of `pg_cluster` shares


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One cluster for the whole test run, stopped and removed at its end.
    Without the server binaries: skipped, but a failure under CI=true.
    Registered twice (conftest.py and a test module), both get the same cluster."""
    reason = missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    if not _session or _session[0].stopped:
        _session[:] = [Cluster.start()]
    cluster = _session[0]
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The URL of a fresh empty database, dropped after the test; PGPASSWORD is
    set in the environment, so the code under test and its children can connect."""
    name = pg_cluster.create_database()
    monkeypatch.setenv("PGPASSWORD", pg_cluster.password)
    yield pg_cluster.url(name)
    pg_cluster.drop_database(name)
