"""Helpers for end-to-end tests: free ports, topology files, gatepost processes,
and the external tools (swaks, smtp-source, smtp-sink)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
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
        input=input, capture_output=True, timeout=60,
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
        wait_for(self.ready, 30, f"gatepost {args} to be ready")

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
        wait_port(port)

    def messages(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.directory.iterdir()) if p.is_file()]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
