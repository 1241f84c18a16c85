"""Capture smart host: a local SMTP sink that writes one .eml file per message.

For trying gatepost without a real upstream relay. Each file starts with
Return-Path and X-Original-To lines holding the envelope. It knows nothing
of the topology or the store.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from pathlib import Path

from gatepost.smtp.events import NEED_DATA, ConnectionClosed, Mail, Message, Rcpt, Reply
from gatepost.smtp.server import ServerConnection

log = logging.getLogger("gatepost.capture")


class Capture:
    def __init__(self, host: str, port: int, directory: Path) -> None:
        self.host = host
        self.port = port
        self.directory = directory
        self.counter = itertools.count(1)
        self.server: asyncio.Server | None = None

    async def start(self) -> asyncio.Server:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.server = await asyncio.start_server(self.serve, self.host, self.port, backlog=512)
        log.info("capture smart host listening on %s:%d, writing to %s",
                 self.host, self.port, self.directory)
        return self.server

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = ServerConnection("capture.invalid")
        sender, recipients = "", list[str]()
        try:
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    writer.write(conn.data_to_send())
                    await writer.drain()
                    conn.receive_data(await reader.read(65536))
                elif isinstance(event, ConnectionClosed):
                    writer.write(conn.data_to_send())
                    return
                elif isinstance(event, Mail):
                    sender, recipients = event.sender, []
                    conn.send(Reply.of(250, "2.1.0 Ok"))
                elif isinstance(event, Rcpt):
                    recipients.append(event.recipient)
                    conn.send(Reply.of(250, "2.1.5 Ok"))
                elif isinstance(event, Message):
                    name = self.write(sender, recipients, event.content)
                    conn.send(Reply.of(250, f"2.0.0 Ok: captured as {name}"))
        except ConnectionError:
            pass
        finally:
            writer.close()

    def write(self, sender: str, recipients: list[str], content: bytes) -> str:
        name = f"{time.time_ns()}-{os.getpid()}-{next(self.counter)}.eml"
        envelope = f"Return-Path: <{sender}>\r\n" + "".join(
            f"X-Original-To: <{r}>\r\n" for r in recipients
        )
        temporary = self.directory / f".{name}.tmp"
        temporary.write_bytes(envelope.encode("utf-8") + content)
        temporary.rename(self.directory / name)
        log.info("captured %s from=<%s> rcpts=%d", name, sender, len(recipients))
        return name
