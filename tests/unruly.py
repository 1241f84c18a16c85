"""An unruly smart host: an SMTP server on loopback that misbehaves on purpose,
for soak runs of gatepost's send side. Standard library only.

    python tests/unruly.py --listen 127.0.0.1:PORT --dir DIR --seed N [--misbehave 0.3]

Each session behaves well (probability 1 - misbehave) or misbehaves once: at one
stage of STAGES (uniform), in one way of KINDS[stage] (uniform). Session n's
choice comes from Random(f"{seed}-{n}"), n counted from 1 in accept order. It
speaks enough ESMTP for gatepost's client: PIPELINING, 8BITMIME, SIZE, SMTPUTF8;
MAIL, RCPT, DATA, RSET, NOOP, QUIT; pipelined commands answered in order.

A message is ACCEPTED once the 250 to its final dot was written and drained; it
is then one file DIR/<name>.eml (written as DIR/.<name>.eml.tmp, then renamed):
`X-Envelope-From: <sender>`, one `X-Envelope-To: <rcpt>` per accepted recipient,
then the content, dot-unstuffed. Trouble before or instead of that 250 records
nothing (the sender must retry); garbage after it still counts as accepted (the
sender must not send it again). Prints `ready` once listening; stops on SIGTERM.

    python tests/unruly.py ... --misbehave 0 --dot-delay 3     (soak mode "slow")

With `--dot-delay SECONDS` every reply to a final dot comes that late, and the
host behaves like a real MTA that queued the message before answering: a message
whose final dot arrived is kept even when its client has gone by the time the
reply is due. A message whose reply was IN FLIGHT when its client left (the
reply not sent yet, or sent with no word from the client after it before the
connection ended) is logged as `in flight when the client left (reply ...): IDS`;
those are the messages a client killed at that moment may send again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

log = logging.getLogger("unruly")

STAGES = ("greeting", "ehlo", "mail", "rcpt", "data", "content", "dot", "rset", "quit")
ENDING = ("malformed", "truncated", "oversized", "code-change", "reset", "silence", "421")
COMMON = (*ENDING, "slow")
KINDS: dict[str, tuple[str, ...]] = {
    "greeting": (*COMMON, "banner", "4xx"),
    "ehlo": (*COMMON, "4xx"),
    "mail": (*COMMON, "4xx"),
    "rcpt": (*COMMON, "4xx"),
    "data": (*COMMON, "4xx"),
    "content": COMMON,  # unsolicited, after the first content line
    "dot": (*COMMON, "4xx", "garbage"),
    "rset": (*COMMON, "5xx"),  # the first MAIL gets a 451 so that the client sends RSET
    "quit": COMMON,
}
SLOW = (1.0, 5.0)  # seconds before a slow reply
SILENCE = (3.0, 20.0)  # seconds of silence before closing
LINGER = 20.0  # at most this long reading (and dropping) input after a bad reply
LINE_LIMIT = 1 << 20
GREETING = b"220 unruly.test ESMTP\r\n"
EHLO = (b"250-unruly.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 104857600\r\n"
        b"250 SMTPUTF8\r\n")
BANNER = b"SSH-2.0-OpenSSH_9.2p1\r\n"
MALFORMED = (b"2.0.0 ok\r\n", b"OK then\r\n", b"25\r\n", b"25O 2.0.0 ok\r\n", b"\xff\xfe\x00\r\n")
GARBAGE = b"this is not SMTP\r\n\x00\xff\xfe binary junk\r\n* OK IMAP4rev1\r\n"
SOAK_ID = re.compile(rb"^X-Soak-Id: (\S+)\r?$", re.MULTILINE)
IN_FLIGHT = "in flight when the client left"  # the log line of each such message


@dataclass(frozen=True, slots=True)
class Plan:
    """One session's misbehaviour: `kind` at `stage`."""

    stage: str
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS.get(self.stage, ()):
            raise ValueError(f"no misbehaviour {self.kind!r} at stage {self.stage!r}")


def choose(rng: random.Random, misbehave: float) -> Plan | None:
    """None (behave) with probability 1 - misbehave, else a uniform stage and kind."""
    if rng.random() >= misbehave:
        return None
    stage = rng.choice(STAGES)
    return Plan(stage, rng.choice(KINDS[stage]))


class Said(Enum):
    NORMAL = "normal"  # the normal reply went out
    REFUSED = "refused"  # a 4xx or 5xx went out instead; the session goes on
    ENDED = "ended"  # the session is over


def address(argument: str) -> str:
    found = re.search(r"<([^>]*)>", argument)
    return found.group(1) if found else argument.split(":", 1)[-1].split(" ")[0]


class Session:
    """One SMTP session, misbehaving as `plan` says (at most once)."""

    def __init__(self, host: UnrulyHost, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, plan: Plan | None, rng: random.Random) -> None:
        self.host, self.reader, self.writer = host, reader, writer
        self.plan, self.rng = plan, rng
        self.sender: str | None = None
        self.recipients: list[str] = []
        self.provoked = False  # the 451 to MAIL that makes the client send RSET
        self.answered: bytes | None = None  # the last message answered 250, until the client speaks

    async def run(self) -> None:
        if await self.answer("greeting", GREETING) is Said.ENDED:
            return
        try:
            while line := await self.reader.readline():
                self.answered = None  # the client spoke after the reply: it had read it
                verb, _, argument = line.decode("utf-8", "surrogateescape").strip().partition(" ")
                if not await self.command(verb.upper(), argument):
                    return
        except ConnectionError:  # a client killed with our reply unread resets the connection
            pass
        if self.answered is not None:  # the client left without a word after a 250 to a dot
            self.host.left_in_flight(self.answered, "sent")

    async def command(self, verb: str, argument: str) -> bool:
        """Answer one command; False when the session is over."""
        if verb in ("EHLO", "HELO"):
            said = await self.answer("ehlo", EHLO if verb == "EHLO" else b"250 unruly.test\r\n")
        elif verb == "MAIL":
            said = await self.mail(argument)
        elif verb == "RCPT":
            said = await self.rcpt(argument)
        elif verb == "DATA":
            return await self.data()
        elif verb == "RSET":
            said = await self.answer("rset", b"250 2.0.0 reset\r\n")
            self.sender, self.recipients = None, []
        elif verb == "QUIT":
            await self.answer("quit", b"221 2.0.0 bye\r\n")
            return False
        else:
            said = await self.send(b"250 2.0.0 ok\r\n" if verb == "NOOP" else b"502 5.5.2 what?\r\n")
        return said is not Said.ENDED

    async def mail(self, argument: str) -> Said:
        if self.plan is not None and self.plan.stage == "rset" and not self.provoked:
            self.provoked = True
            return await self.send(b"451 4.3.0 not now (a bad RSET follows)\r\n")
        said = await self.answer("mail", b"250 2.1.0 sender ok\r\n")
        if said is Said.NORMAL:
            self.sender, self.recipients = address(argument), []
        return said

    async def rcpt(self, argument: str) -> Said:
        if self.sender is None:
            return await self.send(b"503 5.5.1 MAIL first\r\n")
        said = await self.answer("rcpt", b"250 2.1.5 recipient ok\r\n")
        if said is Said.NORMAL:
            self.recipients.append(address(argument))
        return said

    async def data(self) -> bool:
        if not self.recipients:
            return await self.send(b"503 5.5.1 no valid recipients\r\n") is not Said.ENDED
        said = await self.answer("data", b"354 end with <CRLF>.<CRLF>\r\n")
        if said is Said.NORMAL:
            return await self.content()
        return said is not Said.ENDED

    async def content(self) -> bool:
        """Read the content to the final dot, unstuffing; then answer it."""
        lines: list[bytes] = []
        while (line := await self.reader.readline()) not in (b".\r\n", b".\n"):
            if not line.endswith(b"\n"):
                return False  # EOF in the middle of the content
            if not lines and await self.answer("content", None) is Said.ENDED:
                return False
            lines.append(line[1:] if line.startswith(b".") else line)
        return await self.finish(b"".join(lines))

    async def finish(self, content: bytes) -> bool:
        temporary = self.host.write_temporary(self.sender or "", self.recipients, content)
        if self.host.dot_delay:
            await asyncio.sleep(self.host.dot_delay)
            if self.reader.at_eof() or self.reader.exception() is not None:  # gone (EOF or
                # reset) while its reply was due: the message stays queued
                self.host.keep(temporary)
                self.host.left_in_flight(content, "not sent")
                return False
        try:
            said = await self.answer("dot", b"250 2.0.0 accepted\r\n",
                                     lambda: self.host.keep(temporary))
        finally:
            temporary.unlink(missing_ok=True)  # gone already when kept
        self.sender, self.recipients = None, []
        self.answered = content if said is Said.NORMAL else None
        return said is not Said.ENDED

    def due(self, stage: str) -> str | None:
        """The misbehaviour planned for `stage`, once."""
        if self.plan is None or self.plan.stage != stage:
            return None
        kind, self.plan = self.plan.kind, None
        log.info("session misbehaves at %s: %s", stage, kind)
        return kind

    async def answer(self, stage: str, normal: bytes | None,
                     accepted: Callable[[], None] | None = None) -> Said:
        """Send `normal` (None: nothing), or misbehave instead when due at `stage`."""
        kind = self.due(stage)
        if kind in ("4xx", "5xx"):
            code = b"451 4.3.0" if kind == "4xx" else b"554 5.5.1"
            return await self.send(code + f" {stage}: refused\r\n".encode())
        if kind is not None and kind not in ("slow", "garbage"):
            await self.misbehave(kind, stage, normal or b"250 2.0.0 ok\r\n")
            return Said.ENDED
        if kind == "slow":
            await asyncio.sleep(self.rng.uniform(*SLOW))
        if normal is not None:
            await self.send(normal)
        if accepted is not None:
            accepted()
        if kind == "garbage":
            await self.send(GARBAGE)
            await self.linger()
            return Said.ENDED
        return Said.NORMAL

    async def misbehave(self, kind: str, stage: str, normal: bytes) -> None:
        """One of ENDING (or the banner); the session ends after it."""
        code = int(normal[:3])
        if kind == "reset":
            sock = self.writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.writer.transport.abort()
        elif kind == "silence":
            await asyncio.sleep(self.rng.uniform(*SILENCE))
        elif kind == "421":
            await self.send(f"421 4.3.2 {stage}: closing\r\n".encode())
        elif kind == "truncated":
            await self.send(normal[: len(normal) // 2])
        else:
            await self.send(self.bad_reply(kind, code))
            await self.linger()

    def bad_reply(self, kind: str, code: int) -> bytes:
        if kind == "oversized":
            return f"{code} ".encode() + b"x" * (70 * 1024) + b"\r\n"
        if kind == "code-change":
            return f"{code}-first line\r\n{554 if code < 400 else 250} second line\r\n".encode()
        return BANNER if kind == "banner" else self.rng.choice(MALFORMED)

    async def send(self, data: bytes) -> Said:
        self.writer.write(data)
        await self.writer.drain()
        return Said.NORMAL if data[:1] in (b"2", b"3") else Said.REFUSED

    async def linger(self) -> None:
        """Drop what the client still sends, until it closes or LINGER passes."""
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(LINGER):
                while await self.reader.read(65536):
                    pass


class UnrulyHost:
    """The server; `start()` on port 0 in tests. `accepted` lists the files kept."""

    def __init__(self, directory: Path, seed: int = 0, misbehave: float = 0.3,
                 plan: Plan | None = None, dot_delay: float = 0.0) -> None:
        self.directory, self.seed, self.misbehave = directory, seed, misbehave
        self.plan = plan  # when set, every session follows it (tests)
        self.dot_delay = dot_delay  # seconds before every reply to a final dot
        self.accepted: list[Path] = []
        self.in_flight: list[bytes] = []  # content of messages in flight when their client left
        self.finished = 0  # sessions ended
        self.port = 0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.sessions = itertools.count(1)
        self.names = itertools.count(1)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.server = await asyncio.start_server(self.serve, host, port, limit=LINE_LIMIT)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = next(self.sessions)
        rng = random.Random(f"{self.seed}-{number}")
        plan = self.plan or choose(rng, self.misbehave)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await Session(self, reader, writer, plan, rng).run()
        except (ConnectionError, ValueError):  # ValueError: a line over LINE_LIMIT
            pass
        except asyncio.CancelledError:  # stop(): end quietly (3.11 logs cancelled sessions)
            pass
        finally:
            writer.close()
            self.tasks.discard(task)
            self.finished += 1

    def write_temporary(self, sender: str, recipients: list[str], content: bytes) -> Path:
        name = f"{time.time_ns()}-{os.getpid()}-{next(self.names)}.eml"
        envelope = f"X-Envelope-From: <{sender}>\r\n"
        envelope += "".join(f"X-Envelope-To: <{r}>\r\n" for r in recipients)
        temporary = self.directory / f".{name}.tmp"
        temporary.write_bytes(envelope.encode("utf-8", "surrogateescape") + content)
        return temporary

    def keep(self, temporary: Path) -> None:
        kept = temporary.rename(self.directory / temporary.name[1 : -len(".tmp")])
        self.accepted.append(kept)

    def left_in_flight(self, content: bytes, reply: str) -> None:
        """The client of `content` left while the reply to its final dot was in flight."""
        self.in_flight.append(content)
        ids = b" ".join(SOAK_ID.findall(content)).decode(errors="replace") or "(no X-Soak-Id)"
        log.info("%s (reply %s): %s", IN_FLIGHT, reply, ids)


def accepted_ids(directory: Path) -> Counter[str]:
    """How many accepted copies of each X-Soak-Id the directory holds."""
    found: Counter[str] = Counter()
    for path in directory.glob("*.eml"):
        found.update(token.decode() for token in SOAK_ID.findall(path.read_bytes()))
    return found


@contextlib.contextmanager
def running(directory: Path, seed: int = 0, misbehave: float = 0.0,
            plan: Plan | None = None, dot_delay: float = 0.0) -> Iterator[UnrulyHost]:
    """An UnrulyHost on 127.0.0.1 port 0, served by a thread of its own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    host = UnrulyHost(directory, seed, misbehave, plan, dot_delay)
    try:
        asyncio.run_coroutine_threadsafe(host.start(), loop).result(10)
        yield host
    finally:
        asyncio.run_coroutine_threadsafe(host.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def serve_until_stopped(host: str, port: int, server: UnrulyHost) -> None:
    await server.start(host, port)
    log.info("listening on %s:%d, misbehaving in %.0f%% of sessions",
             host, server.port, 100 * server.misbehave)
    print("ready", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop()
    log.info("stopped: %d messages accepted, %d of them %s", len(server.accepted),
             len(server.in_flight), IN_FLIGHT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT (PORT 0: any)")
    parser.add_argument("--dir", type=Path, required=True, help="where accepted mail goes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--misbehave", type=float, default=0.3, help="share of sessions")
    parser.add_argument("--dot-delay", type=float, default=0.0, metavar="SECONDS",
                        help="answer every final dot this late (default: at once)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    logging.basicConfig(level=logging.INFO, format="unruly: %(message)s", stream=sys.stderr)
    server = UnrulyHost(args.dir, args.seed, args.misbehave, dot_delay=args.dot_delay)
    asyncio.run(serve_until_stopped(host.strip("[]"), int(port), server))
    return 0


if __name__ == "__main__":
    sys.exit(main())
