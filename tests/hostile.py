"""Helpers for the hostile-input tests: a real receive side (ReceiveSide on a
loopback port 0, the async store on a SQLite file) running on its own event loop
thread, and a blocking SMTP client that sends exact bytes and reads replies."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import sqlite3
import ssl
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from gatepost.receive import ReceiveSide
from gatepost.receive.guard import Deadlines
from gatepost.store import Store, open_store
from gatepost.topology import HostPort, Topology, load

T = TypeVar("T")
TOPOLOGY = """\
[network]
name = "ACME"
domains = ["acme.example"]
store = "sqlite:acme.db"

[postoffices.HQ]
domains = ["hq.acme.example"]
mailboxes = ["alice", "bob", "postmaster"]

[gateways.GW1]
postoffice = "HQ"
role = "both"
listen = "127.0.0.1:2525"
smarthost = "127.0.0.1:2526"
serves = ["HQ"]
relay_from = ["127.0.0.0/8"]
"""
ALICE = "alice@hq.acme.example"
OUTSIDE = "someone@example.org"


def topology(tmp: Path, **gateway: Any) -> Topology:
    """The one-postoffice topology, its store under `tmp`, gateway fields replaced."""
    path = tmp / "gatepost.toml"
    path.write_text(TOPOLOGY)
    topo = load(path)
    gw = dataclasses.replace(topo.gateways["GW1"], listen=HostPort("127.0.0.1", 0), **gateway)
    return dataclasses.replace(topo, gateways={"GW1": gw})


class Receiver:
    """ReceiveSide serving on 127.0.0.1:port from a background event loop."""

    def __init__(
        self,
        topo: Topology,
        deadlines: Deadlines | None = None,
        store_factory: Callable[[], Store] | None = None,
    ) -> None:
        self.topo = topo
        self.db = Path(topo.store.removeprefix("sqlite:"))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        factory = store_factory or (lambda: open_store(topo.store))
        self.store = self.call(self._made(factory))
        self.side = ReceiveSide(topo, topo.gateways["GW1"], self.store, deadlines=deadlines)
        self.call(self.side.start())
        self.port = int(self.side.address.rpartition(":")[2])

    @staticmethod
    async def _made(factory: Callable[[], Store]) -> Store:
        """The store, made on the receiver's event loop."""
        return factory()

    @staticmethod
    async def _cancel_sessions() -> None:
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    def stored(self) -> list[bytes]:
        """The content of every message in the store, oldest first."""
        if not self.db.exists():
            return []
        with sqlite3.connect(self.db) as db:
            rows = db.execute("SELECT content FROM messages ORDER BY created, id").fetchall()
        return [bytes(row[0]) for row in rows]

    def connect(self, timeout: float = 20.0) -> Client:
        return Client(socket.create_connection(("127.0.0.1", self.port), timeout=timeout))

    def stop(self) -> None:
        self.call(self.side.stop())
        self.call(self._cancel_sessions())
        self.call(self.store.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Client:
    """A blocking SMTP client that sends exactly the bytes it is given."""

    def __init__(self, sock: socket.socket | ssl.SSLSocket) -> None:
        self.sock = sock
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> str:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; unread: {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line.decode()

    def reply(self) -> str:
        """One whole reply: its last line (multi-line replies are read through)."""
        while True:
            line = self.line()
            if line[3:4] != "-":
                return line

    def replies(self, count: int) -> list[str]:
        return [self.reply() for _ in range(count)]

    def command(self, text: str) -> str:
        self.send(text.encode() + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        """Whether the server closed the connection (after any unread replies)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def hello(self) -> list[str]:
        """Greeting and EHLO; returns the EHLO reply's lines."""
        assert self.reply().startswith("220 ")
        return self.ehlo()

    def ehlo(self) -> list[str]:
        self.send(b"EHLO client.example\r\n")
        lines = [self.line()]
        while lines[-1][3:4] == "-":
            lines.append(self.line())
        return lines

    def close(self) -> None:
        self.sock.close()


def served_next(receiver: Receiver) -> None:
    """The server still serves: a fresh client gets a message stored."""
    before = len(receiver.stored())
    client = receiver.connect()
    client.hello()
    assert client.command(f"MAIL FROM:<{OUTSIDE}>").startswith("250 ")
    assert client.command(f"RCPT TO:<{ALICE}>").startswith("250 ")
    assert client.command("DATA").startswith("354 ")
    assert client.command("Subject: next\r\n\r\nstill serving\r\n.").startswith("250 2.0.0 Ok")
    client.command("QUIT")
    client.close()
    assert len(receiver.stored()) == before + 1
