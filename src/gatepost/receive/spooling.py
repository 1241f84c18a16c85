"""The content of one large message as the receive side gets it, piece by piece.

Does: hold the Received header and the pieces in memory up to SPOOL_ABOVE
bytes, then move them to a spool file of the store (the store says where) and
append the rest there; `finish` fsyncs the file off the event loop, so the
message can be enqueued as durable. A refused message's pieces are dropped
with `discard`. A write error (a full disk) is kept and raised by `finish`,
so the message is refused with 4xx, never half stored.
Must not know: SMTP, SQL, or what the store does with the file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from gatepost.store import Intake, SpoolWriter

SPOOL_ABOVE = 1 << 20  # bytes kept in memory before the content goes to a file


class Body:
    def __init__(self, store: Intake, queue_id: str, trace: bytes) -> None:
        self.store = store
        self.queue_id = queue_id
        self.size = len(trace)
        self._memory = bytearray(trace)
        self._file: SpoolWriter | None = None
        self._error: OSError | None = None

    async def add(self, data: bytes) -> None:
        self.size += len(data)
        if self._error is not None:
            return
        try:
            if self._file is not None:
                self._file.write(data)
                return
            self._memory += data
            if len(self._memory) > SPOOL_ABOVE:
                self._file = SpoolWriter(await self.store.spool_path(self.queue_id))
                self._file.write(self._memory)
                self._memory = bytearray()
        except OSError as error:
            self._error = error
            self.discard()

    async def finish(self) -> tuple[bytes, Path | None]:
        """The content in memory, or b"" and the spool file, fsync'ed."""
        if self._error is not None:
            raise self._error
        if self._file is None:
            return bytes(self._memory), None
        return b"", await asyncio.to_thread(self._file.finish)

    def discard(self) -> None:
        """Drop what was received (the message was refused, or the session ended)."""
        self._memory = bytearray()
        if self._file is not None:
            self._file.discard()
            self._file = None
