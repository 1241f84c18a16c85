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

from gatepost.smtp.events import Reply
from gatepost.smtp.server import ServerConnection

from .driver import ServerSession

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
        session = CaptureSession(self)
        try:
            await session.converse(reader, writer)
        except ConnectionError:
            pass
        finally:
            session.drop_body()
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


class CaptureSession(ServerSession):
    """One connection to the capture sink: every recipient is taken."""

    def __init__(self, capture: Capture) -> None:
        self.conn = ServerConnection("capture.invalid")
        self.capture = capture
        self.sender, self.recipients = "", list[str]()
        self.file: BinaryIO | None = None  # the message being written

    def mail(self, sender: str) -> Reply:
        self.sender, self.recipients = sender, []
        return Reply.of(250, "2.1.0 Ok")

    def recipient(self, address: str) -> Reply:
        self.recipients.append(address)
        return Reply.of(250, "2.1.5 Ok")

    async def collect(self, data: bytes) -> None:
        self.file = self.file or self.capture.open_file(self.sender, self.recipients)
        self.file.write(data)

    async def accept(self, last: bytes) -> Reply:
        await self.collect(last)
        assert self.file is not None
        name = self.capture.finish(self.file, self.sender, len(self.recipients))
        self.file = None
        return Reply.of(250, f"2.0.0 Ok: captured as {name}")

    def drop_body(self) -> None:
        if self.file is not None:
            self.capture.drop(self.file)
            self.file = None
