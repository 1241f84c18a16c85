"""Fixtures for the end-to-end tests: a topology like examples/single-gateway.toml
on free loopback ports with its store under tmp_path, a running `gatepost run`,
and smart hosts (Postfix's smtp-sink, or gatepost's own capture sink)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pg import pg_cluster, pg_url  # noqa: F401  (fixtures: a private PostgreSQL)
from scripted import ScriptedHost
from support import Gatepost, Sink, free_port, gatepost, tool

TOPOLOGY = """\
[network]
name = "ACME"
domains = ["acme.example"]
store = "sqlite:var/acme.db"

[postoffices.HQ]
domains = ["hq.acme.example"]
mailboxes = ["alice", "bob", "postmaster"]

[postoffices.SALES]
domains = ["sales.acme.example"]
mailboxes = ["carol", "dave", "postmaster"]
links = ["HQ"]

[postoffices.ENG]
domains = ["eng.acme.example"]
mailboxes = ["erin", "frank", "postmaster"]
links = ["HQ"]

[postoffices.OPS]
domains = ["ops.acme.example"]
mailboxes = ["grace", "heidi", "postmaster"]
links = ["HQ"]

[gateways.GW1]
postoffice = "HQ"
role = "both"
listen = "127.0.0.1:{listen}"
smarthost = "127.0.0.1:{smarthost}"
serves = ["HQ", "SALES", "ENG", "OPS"]
relay_from = {relay_from}
"""

CAPTURE = """
[capture]
listen = "127.0.0.1:{smarthost}"
dir = "var/captured"
"""


@dataclass
class Net:
    """One topology file on disk and what the tests ask of it."""

    config: Path
    port: int  # the gateway's receive side
    smarthost: int

    @property
    def captured(self) -> Path:
        return self.config.parent / "var" / "captured"

    def cli(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return gatepost(self.config, *args, input=input)

    def json(self, *args: str) -> Any:
        result = self.cli(*args, "--json")
        assert result.returncode == 0, result.stderr.decode()
        return json.loads(result.stdout)

    def mailbox(self, address: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.json("mailbox", address)
        return rows

    def show(self, address: str, entry_id: int) -> bytes:
        result = self.cli("mailbox", address, "--show", str(entry_id))
        assert result.returncode == 0, result.stderr.decode()
        return result.stdout

    def mailq(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.json("mailq")
        return rows

    def send(self, sender: str, *recipients: str, subject: str = "hello") -> str:
        to = [arg for r in recipients for arg in ("--to", r)]
        result = self.cli("send", "--from", sender, *to, "--subject", subject, "--body", "hi")
        assert result.returncode == 0, result.stderr.decode()
        return result.stdout.decode().strip()

    def swaks(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [tool("swaks"), "--server", f"127.0.0.1:{self.port}", "--timeout", "20", *args],
            check=False, capture_output=True, text=True, timeout=60,
        )


MakeNet = Callable[..., Net]


def write_net(directory: Path, smarthost: int | None, relay_from: str = '["127.0.0.0/8"]') -> Net:
    """A topology in `directory`; `smarthost` is a port, or None for the [capture] sink."""
    port, listen = smarthost or free_port(), free_port()
    text = TOPOLOGY.format(listen=listen, smarthost=port, relay_from=relay_from)
    if smarthost is None:
        text += CAPTURE.format(smarthost=port)
    config = directory / "gatepost.toml"
    config.write_text(text)
    return Net(config, listen, port)


@pytest.fixture
def make_net(tmp_path: Path) -> MakeNet:
    """Writes a topology under tmp_path (see `write_net`); does not start it."""

    def make(smarthost: int | None = None, relay_from: str = '["127.0.0.0/8"]') -> Net:
        return write_net(tmp_path, smarthost, relay_from)

    return make


@pytest.fixture(scope="session")
def sink_root() -> Iterator[Path]:
    """A folder smtp-sink can write to after dropping to `nobody` (pytest's
    tmp_path sits under a 0700 folder of the user running the tests)."""
    root = Path(tempfile.mkdtemp(prefix="gatepost-sink-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def new_sink(root: Path, *options: str) -> Sink:
    return Sink(Path(tempfile.mkdtemp(dir=root)), free_port(), *options)


@pytest.fixture
def start_sink(sink_root: Path) -> Iterator[Callable[..., Sink]]:
    """Starts smtp-sink on a free port with extra options (e.g. "-r", "RCPT")."""
    sinks: list[Sink] = []

    def start(*options: str) -> Sink:
        sinks.append(new_sink(sink_root, *options))
        return sinks[-1]

    yield start
    for sink in sinks:
        sink.stop()


@pytest.fixture
def run_net() -> Iterator[Callable[[Net], Gatepost]]:
    """Starts `gatepost run` on a topology; stopped after the test."""
    processes: list[Gatepost] = []

    def run(net: Net, *args: str) -> Gatepost:
        processes.append(Gatepost(net.config, *args))
        return processes[-1]

    yield run
    for process in processes:
        process.stop()


@pytest.fixture
def sink(start_sink: Callable[..., Sink]) -> Sink:
    return start_sink()


@pytest.fixture
def net(make_net: MakeNet, sink: Sink, run_net: Callable[[Net], Gatepost]) -> Net:
    """The single-gateway network running, its smart host an smtp-sink of its own."""
    network = make_net(sink.port)
    run_net(network)
    return network


@pytest.fixture(scope="module")
def shared_sink(sink_root: Path) -> Iterator[Sink]:
    sink = new_sink(sink_root)
    yield sink
    sink.stop()


@pytest.fixture(scope="module")
def shared_net(tmp_path_factory: pytest.TempPathFactory, shared_sink: Sink) -> Iterator[Net]:
    """One running network for the tests of a module that tell their mail
    apart by subject; its smart host is `shared_sink`."""
    network = write_net(tmp_path_factory.mktemp("shared"), shared_sink.port)
    process = Gatepost(network.config)
    yield network
    process.stop()


@pytest.fixture
def captured_net(make_net: MakeNet, run_net: Callable[[Net], Gatepost]) -> Net:
    """The single-gateway network running with gatepost's capture smart host."""
    network = make_net(None)
    run_net(network)
    return network


@pytest.fixture
def host() -> Iterator[ScriptedHost]:
    """A scripted smart host on a free loopback port (tests/scripted.py)."""
    smarthost = ScriptedHost().start()
    yield smarthost
    smarthost.close()
