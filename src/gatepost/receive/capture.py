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
from typing import BinaryIO

from gatepost.smtp.events import NEED_DATA, ConnectionClosed, Content, Mail, Message, Rcpt, Reply
from gatepost.smtp.server import ServerConnection
from gatepost.smtp.table import State

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
        file: BinaryIO | None = None  # a large message being written
        try:
            while True:
                event = conn.next_event()
                if file is not None and conn.state is not State.DATA and not isinstance(event, Message):
                    self.drop(file)  # refused by the core
                    file = None
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
                elif isinstance(event, Content):
                    file = file or self.open_file(sender, recipients)
                    file.write(event.data)
                elif isinstance(event, Message):
                    file = file or self.open_file(sender, recipients)
                    file.write(event.content)
                    name, file = self.finish(file, sender, len(recipients)), None
                    conn.send(Reply.of(250, f"2.0.0 Ok: captured as {name}"))
        except ConnectionError:
            pass
        finally:
            if file is not None:
                self.drop(file)
            writer.close()

    def open_file(self, sender: str, recipients: list[str]) -> BinaryIO:
        """A temporary file holding the envelope, for the content to follow."""
        name = f"{time.time_ns()}-{os.getpid()}-{next(self.counter)}.eml"
        envelope = f"Return-Path: <{sender}>\r\n" + "".join(
            f"X-Original-To: <{r}>\r\n" for r in recipients
        )
        file = (self.directory / f".{name}.tmp").open("wb")
        file.write(envelope.encode("utf-8"))
        return file

    def finish(self, file: BinaryIO, sender: str, recipients: int) -> str:
        file.close()
        temporary = Path(file.name)
        name = temporary.name[1 : -len(".tmp")]
        temporary.rename(self.directory / name)
        log.info("captured %s from=<%s> rcpts=%d", name, sender, recipients)
        return name

    def drop(self, file: BinaryIO) -> None:
        file.close()
        Path(file.name).unlink(missing_ok=True)
