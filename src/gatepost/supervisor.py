"""`gatepost run` without --only: one process per role, like Postfix's master.

Starts `gatepost run --only ROLE` for every role (the router, each side of
each gateway, the capture sink), waits until each says it is ready, restarts
a process that dies, and on SIGTERM or Ctrl-C stops them all cleanly. The
processes share nothing but the store. This module knows processes and pipes,
nothing about mail.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("gatepost.supervisor")

READY_TIMEOUT = 60.0
RESTART_DELAY = 1.0  # seconds before a process that died is started again
STOP_TIMEOUT = 30.0


@dataclass
class Child:
    role: str
    process: subprocess.Popen[bytes]
    ready: int  # read end of the pipe the child announces itself on
    lines: list[str] = field(default_factory=list)


def spawn(config: Path, role: str, verbose: bool) -> Child:
    read_end, write_end = os.pipe()
    command = [sys.executable, "-m", "gatepost", "-c", str(config), "run",
               "--only", role, "--ready-fd", str(write_end), *(["-v"] if verbose else [])]
    process = subprocess.Popen(command, pass_fds=(write_end,))
    os.close(write_end)
    return Child(role, process, read_end)


def await_ready(child: Child, deadline: float) -> None:
    """Read the child's announcement (listening lines, then "ready")."""
    buffer = b""
    while not buffer.endswith(b"ready\n"):
        timeout = deadline - time.monotonic()
        readable, _, _ = select.select([child.ready], [], [], max(timeout, 0))
        chunk = os.read(child.ready, 4096) if readable else b""
        if not chunk:
            try:
                code = child.process.wait(5)
            except subprocess.TimeoutExpired:
                code = None
            raise RuntimeError(f"role {child.role} did not start (exit status {code})")
        buffer += chunk
    os.close(child.ready)
    child.lines = buffer.decode().splitlines()[:-1]


class Supervisor:
    def __init__(self, config: Path, roles: list[str], verbose: bool = False) -> None:
        self.config = config
        self.roles = roles
        self.verbose = verbose
        self.children: dict[str, Child] = {}
        self.stopping = False

    def start(self, role: str) -> Child:
        child = spawn(self.config, role, self.verbose)
        self.children[role] = child
        await_ready(child, time.monotonic() + READY_TIMEOUT)
        return child

    def run(self, announce: Callable[[list[str]], None]) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        try:
            lines = [line for role in self.roles for line in self.start(role).lines]
        except RuntimeError as error:
            log.error("%s", error)
            return self.shutdown() or 1
        announce(lines)
        while not self.stopping:
            self.restart_dead()
            time.sleep(0.2)
        return self.shutdown()

    def stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def restart_dead(self) -> None:
        for role, child in list(self.children.items()):
            code = child.process.poll()
            if code is not None and not self.stopping:
                log.error("role %s exited with status %s; restarting it", role, code)
                time.sleep(RESTART_DELAY)
                try:
                    self.start(role)
                except RuntimeError as error:
                    log.error("%s", error)

    def shutdown(self) -> int:
        """SIGTERM every child, wait, kill what is left; 0 when all stopped cleanly."""
        for child in self.children.values():
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        codes = []
        for child in self.children.values():
            try:
                codes.append(child.process.wait(max(deadline - time.monotonic(), 0)))
            except subprocess.TimeoutExpired:
                child.process.kill()
                codes.append(child.process.wait())
        return 0 if all(code == 0 for code in codes) else 1
