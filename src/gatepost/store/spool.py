"""Spool files: the content of large messages, one file per message, in a
folder beside the store (`<db>.spool/`), named after the queue id.

Does: write a file once (exclusive create, fsync'ed on finish), fsync the
folder, list files, remove them. A file counts only once a committed message
row names it: a file without one (a crash before the commit) is never read,
and `orphans` finds it for removal. Must not know: SQL, SMTP, the clock.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("gatepost.store")
ORPHAN_GRACE = 3600.0  # seconds a spool file no message names may still await its commit


def folder_of(database: Path) -> Path:
    return database.with_name(database.name + ".spool")


class SpoolWriter:
    """One spool file being written; `finish` makes it durable, `discard`
    removes it (the message was refused or the session ended)."""

    def __init__(self, path: Path) -> None:
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
            sync_folder(path.parent.parent)  # the new folder's own entry, durable too
        self.path = path
        self.size = 0
        self._file: BinaryIO | None = path.open("xb")

    def write(self, data: bytes | bytearray) -> None:
        assert self._file is not None, "write after finish or discard"
        self._file.write(data)
        self.size += len(data)

    def finish(self) -> Path:
        """Flush and fsync the file (not its folder: the store does that once
        per commit); returns its path."""
        assert self._file is not None, "finish after finish or discard"
        file, self._file = self._file, None
        with file:
            file.flush()
            os.fsync(file.fileno())
        return self.path

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)


def sync_folder(folder: Path) -> None:
    """fsync the folder, so the names of files created in it survive a crash."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def orphans(folder: Path, named: Callable[[str], bool], older_than: float) -> Iterator[Path]:
    """Files in `folder` last written before `older_than` (a younger one may still
    await its commit in another process) that no message names (`named` says)."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        try:
            old = path.stat().st_mtime < older_than
        except FileNotFoundError:  # removed meanwhile: its message was purged
            continue
        if old and not named(path.name):
            yield path


def remove(folder: Path, names: list[str]) -> None:
    """Remove files whose rows are committed gone. Never raises: the commit
    stands, and a file left behind is an orphan that the purge removes."""
    for name in names:
        try:
            (folder / name).unlink(missing_ok=True)
        except OSError as error:
            log.warning("could not remove spool file %s (the purge will): %s", name, error)


HEAD = 64 * 1024  # enough of a message for its header


def read_head(content: BinaryIO | None, limit: int = HEAD) -> bytes:
    """The start of a message (its header), and close it; b"" for None.
    A large message is never read whole for this."""
    if content is None:
        return b""
    with content:
        return content.read(limit)
