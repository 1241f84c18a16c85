"""The smart host for the relay runs: Postfix's smtp-sink with its running counters.

`smtp-sink -c` rewrites a status line ("sess=N quit=N mesg=N") on stdout each time a
message's final dot arrives; a reader thread keeps the latest `mesg` value, so
counting is exact and costs nothing per poll. `sessions` shows connection reuse.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading

from bench.common import HOST, wait_port

SMTP_SINK = "/usr/sbin/smtp-sink"
_COUNTERS = re.compile(rb"sess=(\d+).*?mesg=(\d+)")


class Sink:
    """smtp-sink on 127.0.0.1:port; `count()` is the number of messages it has received."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.command = [SMTP_SINK, "-c", "-u", "postfix", f"{HOST}:{port}", "1024"]
        self._count = 0
        self.sessions = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_port(self.port, 10, "smtp-sink")

    def count(self) -> int:
        return self._count

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        self._proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        tail = b""
        while chunk := os.read(fd, 65536):
            tail = (tail + chunk)[-256:]
            complete, _, tail = tail.rpartition(b"\r")  # each status line ends with CR
            counters = _COUNTERS.findall(complete)
            if counters:
                sessions, messages = counters[-1]
                self.sessions = int(sessions)
                self._count = max(self._count, int(messages))
