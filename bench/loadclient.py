"""A paced SMTP load client that measures acceptance latency (final dot -> 250).

Message i is due at start + i/rate; 20 connections (by default) take the next due
message, send MAIL, RCPT and DATA, write the body with its final dot, and time the
reply. A message sent later than due still counts; `late` says how many were.
Every read has a timeout, and the whole run is bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

from bench.common import HOST, SENDER, BenchError

READ_TIMEOUT = 30.0


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds, final dot -> 250
    late: int = 0  # messages that started more than 10 ms after they were due
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0


def make_body(size: int) -> bytes:
    """About `size` bytes of headers and 78-byte lines, with no line needing dot-stuffing."""
    head = f"From: <{SENDER}>\r\nSubject: bench\r\n\r\n".encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def _reply(reader: asyncio.StreamReader) -> bytes:
    """Read one (possibly multi-line) SMTP reply; return its last line."""
    while True:
        line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
        if not line:
            raise BenchError("server closed the connection")
        if line[3:4] != b"-":
            return line


async def _command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   line: bytes, expect: bytes) -> None:
    writer.write(line)
    reply = await _reply(reader)
    if not reply.startswith(expect):
        raise BenchError(f"{line.strip()!r} -> {reply.strip()!r}")


async def _send_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    rcpt: str, body: bytes) -> float:
    await _command(reader, writer, f"MAIL FROM:<{SENDER}>\r\n".encode(), b"250")
    await _command(reader, writer, f"RCPT TO:<{rcpt}>\r\n".encode(), b"250")
    await _command(reader, writer, b"DATA\r\n", b"354")
    writer.write(body + b".\r\n")
    await writer.drain()
    dot = time.perf_counter()
    reply = await _reply(reader)
    if not reply.startswith(b"250"):
        raise BenchError(f"end of data -> {reply.strip()!r}")
    return time.perf_counter() - dot


async def _worker(port: int, rcpt: str, body: bytes, due: itertools.count[int],
                  total: int, start: float, rate: float, result: LoadResult) -> None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), READ_TIMEOUT)
    try:
        await _reply(reader)
        await _command(reader, writer, b"EHLO bench.client\r\n", b"250")
        while (index := next(due)) < total:
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.01:
                result.late += 1
            result.latencies.append(await _send_one(reader, writer, rcpt, body))
        writer.write(b"QUIT\r\n")
        await _reply(reader)
    finally:
        writer.close()


async def _run(port: int, rcpt: str, rate: float, total: int, connections: int,
               size: int) -> LoadResult:
    result, body, due = LoadResult(), make_body(size), itertools.count()
    start = time.perf_counter() + 0.2
    workers = [_worker(port, rcpt, body, due, total, start, rate, result)
               for _ in range(connections)]
    outcomes = await asyncio.gather(*workers, return_exceptions=True)
    result.errors = [repr(o) for o in outcomes if isinstance(o, BaseException)]
    result.elapsed = time.perf_counter() - start
    return result


def run_load(port: int, rcpt: str, rate: float, seconds: float, connections: int = 20,
             size: int = 8192) -> LoadResult:
    """Offer `rate` messages/s for `seconds` to 127.0.0.1:port; bounded by 3x + 60 s."""
    total = max(1, int(rate * seconds))
    coro = _run(port, rcpt, rate, total, connections, size)
    return asyncio.run(asyncio.wait_for(coro, seconds * 3 + 60))
