"""`gatepost run` without --only: one process per role, like Postfix's master.

Starts `gatepost run --only ROLE` for every role (the router, each side of
each gateway, the capture sink) and watches them all from one loop that never
blocks on any of them: it reads the announcements of those starting, and
restarts a process that dies after a pause that doubles with each failure in
a row (1 s up to 60 s; a role that stayed up 5 minutes starts from 1 s again).
On SIGTERM or SIGINT it stops them all at once, also while one is starting or
waiting to be restarted. Each child is sent SIGTERM once; one that ends by
SIGTERM or SIGINT after the stop began has stopped cleanly (the signal may have
reached the whole process group: systemd, Ctrl-C, `kill -TERM -- -PID`).
The processes share nothing but the store. This module knows processes and
pipes, nothing about mail.
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

READY_TIMEOUT = 60.0  # a child not ready by then is stopped and counts as a failure
FIRST_DELAY = 1.0  # seconds before the first restart of a role...
MAX_DELAY = 60.0  # ...doubling with each failure in a row, up to this
HEALTHY = 300.0  # a role up this long is well: its next failure is its first again
STOP_TIMEOUT = 30.0
TICK = 0.2  # the loop looks at every child at least this often
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
CLEAN_STOP = (0, -signal.SIGTERM, -signal.SIGINT)  # exit statuses after a stop began


def ignore_stop_signals() -> None:
    """From here to the exit a stop signal is ignored, never fatal: the stop is
    under way, and at exit Python puts back the default (fatal) action of its
    own handlers. Used by the supervisor and by a role's process."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def restart_delay(failures: int) -> float:
    """Seconds before starting again a role that failed `failures` times in a row."""
    return min(MAX_DELAY, FIRST_DELAY * 2.0 ** min(max(failures - 1, 0), 30))


@dataclass
class Child:
    """One process of a role, from its start to its exit."""

    role: str
    process: subprocess.Popen[bytes]
    pipe: int | None  # read end of the pipe it announces itself on, until it did
    started: float  # monotonic
    heard: bytes = b""
    lines: list[str] = field(default_factory=list)
    ready_at: float | None = None
    signalled: bool = False

    def hear(self, now: float) -> None:
        """Read what the child announced (listening lines, then "ready")."""
        assert self.pipe is not None
        chunk = os.read(self.pipe, 4096)
        self.heard += chunk
        if self.heard.endswith(b"ready\n"):
            self.lines = self.heard.decode().splitlines()[:-1]
            self.ready_at = now
            self.close_pipe()
        elif not chunk:
            self.close_pipe()  # it exits without announcing: the loop reaps it

    def close_pipe(self) -> None:
        if self.pipe is not None:
            os.close(self.pipe)
            self.pipe = None

    def terminate(self) -> None:
        """Ask the child to stop, once: a second SIGTERM helps nothing."""
        if not self.signalled and self.process.poll() is None:
            self.signalled = True
            self.process.send_signal(signal.SIGTERM)


def hurry(child: Child, now: float) -> None:
    """Stop a child that is not ready in time; kill it if SIGTERM did not."""
    late = now - child.started - READY_TIMEOUT
    if late > STOP_TIMEOUT:
        child.process.kill()
    elif late > 0 and not child.signalled:
        log.error("role %s is not ready after %.0f s; stopping it", child.role, READY_TIMEOUT)
        child.terminate()


def ignore_interrupt() -> None:
    """In a child, before exec: Ctrl-C reaches the whole process group, and the
    supervisor alone answers it (with one SIGTERM to each child)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def spawn(config: Path, role: str, verbose: bool) -> Child:
    read_end, write_end = os.pipe()
    command = [sys.executable, "-m", "gatepost", "-c", str(config), "run",
               "--only", role, "--ready-fd", str(write_end), *(["-v"] if verbose else [])]
    try:
        # preexec_fn is unsafe only with threads, and the supervisor runs none
        process = subprocess.Popen(command, pass_fds=(write_end,),
                                   preexec_fn=ignore_interrupt)  # noqa: PLW1509
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    return Child(role, process, read_end, time.monotonic())


@dataclass
class Slot:
    """A role's place: its process, or when to start one again."""

    role: str
    child: Child | None = None
    failures: int = 0  # in a row
    restart_at: float = 0.0  # monotonic; while child is None


def pause(slot: Slot, now: float) -> float:
    """Count one more failure of `slot`'s role and set when it starts again."""
    slot.failures += 1
    delay = restart_delay(slot.failures)
    slot.restart_at = now + delay
    return delay


class StartFailed(Exception):
    """A role failed before `run` announced readiness: the whole run fails."""


class Supervisor:
    def __init__(self, config: Path, roles: list[str], verbose: bool = False) -> None:
        self.config = config
        self.verbose = verbose
        self.slots = {role: Slot(role) for role in roles}
        self.stopping = False
        self.announced = False

    def run(self, announce: Callable[[list[str]], None]) -> int:
        """Start every role, keep them running until SIGTERM or SIGINT; the exit status."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, self.stop)
        try:
            for slot in self.slots.values():
                self.start(slot)
            while not self.stopping:
                self.watch(announce)
        except (StartFailed, OSError) as error:
            log.error("%s", error)
            return self.shutdown() or 1
        return self.shutdown()

    def stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def start(self, slot: Slot) -> None:
        slot.child = spawn(self.config, slot.role, self.verbose)

    def restart(self, slot: Slot, now: float) -> None:
        """Start a role again; a fork that fails (no memory, no processes left)
        is one more failure of the role, tried again after its pause."""
        try:
            self.start(slot)
        except OSError as error:
            delay = pause(slot, now)
            log.error("role %s could not be started (%s); trying again in %g s",
                      slot.role, error, delay)

    def watch(self, announce: Callable[[list[str]], None]) -> None:
        """One turn of the loop: hear the starting children (waiting at most a
        TICK), reap the dead, start those whose pause is over, announce once."""
        self.hear(TICK)
        now = time.monotonic()
        for slot in self.slots.values():
            if slot.child is not None:
                self.check(slot, slot.child, now)
            elif slot.restart_at <= now and not self.stopping:
                log.info("starting role %s again (failure %d in a row)", slot.role, slot.failures)
                self.restart(slot, now)
        if not self.announced and all(s.child and s.child.ready_at for s in self.slots.values()):
            self.announced = True
            announce([line for s in self.slots.values() if s.child for line in s.child.lines])

    def hear(self, timeout: float) -> None:
        """Read the announcements that arrive within `timeout` seconds."""
        starting = {s.child.pipe: s.child for s in self.slots.values()
                    if s.child is not None and s.child.pipe is not None}
        if not starting:
            time.sleep(timeout)
            return
        readable, _, _ = select.select(list(starting), [], [], timeout)
        for pipe in readable:
            starting[pipe].hear(time.monotonic())

    def check(self, slot: Slot, child: Child, now: float) -> None:
        """Reap a child that exited, or stop one that is not ready in time."""
        code = child.process.poll()
        if code is None and child.ready_at is None:
            hurry(child, now)
        if code is None or self.stopping:
            return
        child.close_pipe()
        slot.child = None
        if not self.announced:
            raise StartFailed(f"role {slot.role} did not start (exit status {code})")
        self.schedule(slot, child, code, now)

    def schedule(self, slot: Slot, child: Child, code: int, now: float) -> None:
        """Count the failure of `child` and set when its role starts again."""
        if child.ready_at is not None and now - child.ready_at >= HEALTHY:
            slot.failures = 0
        delay = pause(slot, now)
        log.error("role %s exited with status %s; restarting it in %g s", slot.role, code, delay)

    def shutdown(self) -> int:
        """SIGTERM every child once, wait, kill what is left; 0 when each stopped
        cleanly (a role waiting to be restarted has no process to stop)."""
        ignore_stop_signals()  # pressed again: the stop is under way already
        children = [slot.child for slot in self.slots.values() if slot.child is not None]
        for child in children:
            child.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        codes = [self.reap(child, deadline) for child in children]
        return 0 if all(code in CLEAN_STOP for code in codes) else 1

    def reap(self, child: Child, deadline: float) -> int:
        child.close_pipe()
        try:
            code = child.process.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            log.error("role %s did not stop in %.0f s; killing it", child.role, STOP_TIMEOUT)
            child.process.kill()
            code = child.process.wait()
        if code not in CLEAN_STOP:
            log.error("role %s stopped with status %s", child.role, code)
        return code
