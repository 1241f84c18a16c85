"""Test peers for the send side: a scripted smart host and a tiny DNS server,
each on 127.0.0.1 port 0 in a thread of its own, plus an in-process harness
that runs the router and a send side on a temporary SQLite store.

The smart host answers what its `Script` says: a reply per recipient, a
dropped connection at a given command, 421 beyond N connections, slow
replies, STARTTLS (with a trustme certificate) and AUTH PLAIN/LOGIN checked
against one user and password. It can misbehave at any stage of a session
(see TROUBLES and STAGES). It records every message it accepted: one whose
final reply it sent clean, after a DATA phase without other trouble.

A test can also stop the host at a stage: `Script.pause` makes it wait there
before every reply, `ScriptedHost.hold_at` until the test says `go` (to act
while, say, the 354 or the reply to the final dot is held back). The host
counts what it saw: the stages reached, final dots received, sessions closed
after a 354 but before the dot, transactions open at once.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

import dns.flags
import dns.message
import dns.rcode
import dns.rrset

from gatepost.router import Router
from gatepost.send import SendSide
from gatepost.store import Clock as StoreClock
from gatepost.store import Hop, NewMessage, NewRecipient, SqliteStore
from gatepost.topology import load

T = TypeVar("T")

STAGES = ("greeting", "EHLO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA",
          "content", "dot", "RSET", "QUIT")  # "dot": the reply to the final dot
SENT_INSTEAD: dict[str, Callable[[bytes], bytes]] = {  # trouble -> what comes instead of the reply
    "malformed": lambda reply: b"this is not SMTP\r\n",
    "banner": lambda reply: b"SSH-2.0-OpenSSH_9.2\r\n",
    "oversized": lambda reply: reply[:3] + b" " + b"x" * 70_000 + b"\r\n",
    "code change": lambda reply: reply[:3] + b"-first\r\n299 second\r\n",
    "truncated": lambda reply: reply[: len(reply) // 2],  # then the connection is closed
    "refused": lambda reply: b"554 5.3.0 refused\r\n",
}
SENT_AFTER = {  # trouble -> what the host sends after its reply
    "slow": b"",  # the reply comes, Script.slow seconds late
    "garbage after": b"\x00\x1b[31mgarbage\xff\r\n",
    "extra reply": b"250 2.0.0 unasked for\r\n",
}
TROUBLES = (*SENT_INSTEAD, *SENT_AFTER, "reset", "silent")  # reset: RST; silent: never answers
HELD_AT_MOST = 120.0  # seconds a session waits at a stage the host is held at


class Hangup(Exception):
    """The scripted host ends the session."""


@dataclass
class Script:
    rcpt: dict[str, str] = field(default_factory=dict)  # address -> reply ("550 5.1.1 no")
    mail_reply: str = "250 2.1.0 ok"
    data_reply: str = "250 2.0.0 queued"
    drop_at: str | None = None  # close the connection when this verb arrives ("MAIL", "DATA")
    max_connections: int | None = None  # beyond: 421 at the greeting
    delay: float = 0.0  # seconds before every reply
    tls: ssl.SSLContext | None = None  # offer STARTTLS with this server context
    login: tuple[str, str] | None = None  # require AUTH with this user and password
    mechanisms: str = "PLAIN LOGIN"
    trouble: str | None = None  # one of TROUBLES, at stage `trouble_at`
    trouble_at: str = "greeting"  # one of STAGES; at "content": after its first line
    trouble_times: int | None = None  # how many times (None: every time)
    slow: float = 0.3  # seconds a "slow" reply is late
    pause: dict[str, float] = field(default_factory=dict)  # stage -> seconds the host
    # waits there before its reply, every time ("DATA": the 354; "dot": the final reply)
    dot_replies: list[str] = field(default_factory=list)  # replies to the final dots in
    # turn (each used once), then `data_reply`


@dataclass
class Received:
    sender: str
    recipients: list[str]
    content: bytes
    tls: bool
    user: str | None
    port: int


class ScriptedHost:
    """The smart host. `start()` binds (again on the same port after `stop()`)."""

    def __init__(self, script: Script | None = None, bind: str = "127.0.0.1") -> None:
        self.script = script or Script()
        self.bind = bind  # the address to listen on: "::1" for an IPv6 peer
        self.received: list[Received] = []
        self.port = 0
        self.open = 0
        self.peak = 0
        self.refused = 0  # connections answered 421
        self.greeted = 0
        self.troubles = 0  # times the host misbehaved as its script says
        self.reached: Counter[str] = Counter()  # stage -> times a session got there
        # (a command of that stage arrived; "content": a first line; "dot": the final dot)
        self.without_dot = 0  # sessions that ended after a 354, before the final dot
        self.transacting = 0  # sessions now inside a transaction (MAIL taken, not ended)
        self.peak_transacting = 0
        self.history: list[str] = []  # what happened, in order: "MAIL", "354", "dot", "no dot"
        self.gates: dict[str, asyncio.Event] = {}  # stage -> held until `go`
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: asyncio.Server | None = None
        self.sessions: set[asyncio.Task[Any]] = set()

    def call(self, coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    def start(self) -> ScriptedHost:
        self.call(self._start())
        return self

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self.session, self.bind, self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.call(self._stop())

    async def _stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in list(self.sessions):
                task.cancel()  # each closes its connection
            await asyncio.gather(*self.sessions, return_exceptions=True)
            await self.server.wait_closed()
            self.server = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    @property
    def address(self) -> str:
        return f"[{self.bind}]:{self.port}" if ":" in self.bind else f"{self.bind}:{self.port}"

    def recipients(self) -> list[str]:
        return sorted(r for message in self.received for r in message.recipients)

    def copies(self, subject: str) -> int:
        """How many messages with this Subject the host accepted."""
        line = f"Subject: {subject}\r\n".encode()
        return sum(line in message.content for message in self.received)

    @property
    def dots(self) -> int:
        """How many final dots the host received (accepted or not)."""
        return self.reached["dot"]

    def hold_at(self, stage: str) -> None:
        """Sessions that reach `stage` (one the host replies at: any of STAGES but
        "content") wait there, before their reply, until `go(stage)` (at most
        HELD_AT_MOST seconds)."""
        self.call(self._arm(stage))

    async def _arm(self, stage: str) -> None:
        self.gates[stage] = asyncio.Event()

    def go(self, stage: str) -> None:
        """Let the sessions held at `stage` go on; later ones pass it."""
        self.call(self._go(stage))

    async def _go(self, stage: str) -> None:
        gate = self.gates.pop(stage, None)
        if gate is not None:
            gate.set()

    async def wait_reached(self, stage: str, count: int = 1, timeout: float = 60.0) -> None:
        """In the test's loop: wait until sessions got to `stage` `count` times."""
        deadline = time.monotonic() + timeout
        while self.reached[stage] < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"the host never reached {stage} {count} times: {self.history}")
            await asyncio.sleep(0.02)

    def trouble_due(self) -> str | None:
        """The trouble to cause now (counted), if the script holds one still."""
        times = self.script.trouble_times
        if self.script.trouble is None or (times is not None and self.troubles >= times):
            return None
        self.troubles += 1
        return self.script.trouble

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        talk: _Session | None = None
        self.sessions.add(task)
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            limit = self.script.max_connections
            if limit is not None and self.open > limit:
                self.refused += 1
                writer.write(b"421 4.7.0 too many connections\r\n")
                await writer.drain()
                return
            self.greeted += 1
            talk = _Session(self, reader, writer)
            await talk.run()
        except Hangup:
            if talk is not None:
                talk.in_data = False  # the host ended it: not a client closing before its dot
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            if talk is not None:
                talk.end_transaction(closed=True)
            self.open -= 1
            self.sessions.discard(task)
            writer.close()


class _Session:
    def __init__(self, host: ScriptedHost, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.host, self.script = host, host.script
        self.reader, self.writer = reader, writer
        self.tls = False
        self.user: str | None = None
        self.sender: str | None = None
        self.recipients: list[str] = []
        self.misbehaved = False  # during DATA: the message that follows is not recorded
        self.transacting = False  # MAIL was taken and the transaction has not ended
        self.in_data = False  # the 354 went out and the final dot has not come

    async def reply(self, *lines: str) -> None:
        if self.script.delay:
            await asyncio.sleep(self.script.delay)
        self.writer.write(wire(lines))
        await self.writer.drain()

    async def at(self, stage: str, counted: bool = False) -> None:
        """A session got to `stage`: counted (unless it was already); it waits
        there while the host is held at that stage, and for the script's pause."""
        if not counted:
            self.host.reached[stage] += 1
        gate = self.host.gates.get(stage)
        if gate is not None:
            await asyncio.wait_for(gate.wait(), HELD_AT_MOST)
        if self.script.pause.get(stage):
            await asyncio.sleep(self.script.pause[stage])

    def begin_transaction(self) -> None:
        if not self.transacting:
            self.transacting = True
            self.host.transacting += 1
            self.host.peak_transacting = max(self.host.peak_transacting, self.host.transacting)

    def end_transaction(self, closed: bool = False) -> None:
        """The transaction ended (its final reply, RSET, a new MAIL, or the session's end)."""
        if self.in_data and closed:
            self.host.without_dot += 1
            self.host.history.append("no dot")
        self.in_data = False
        if self.transacting:
            self.transacting = False
            self.host.transacting -= 1

    def trouble(self, stage: str) -> str | None:
        """The trouble to cause at `stage`, if any."""
        trouble = self.host.trouble_due() if self.script.trouble_at == stage else None
        if stage in ("DATA", "content") and trouble not in (None, "slow"):
            self.misbehaved = True
        return trouble

    async def answer(self, stage: str, *lines: str) -> bool:
        """Reply with `lines` at `stage`, or misbehave as the script says there."""
        await self.at(stage)
        return await self.answer_with(self.trouble(stage), *lines)

    async def answer_with(self, trouble: str | None, *lines: str) -> bool:
        """True when the reply went out clean (perhaps late, perhaps followed by more)."""
        if trouble is None:
            await self.reply(*lines)
            return True
        if trouble == "slow":
            await asyncio.sleep(self.script.slow)
        await self.misbehave(trouble, wire(lines))
        return trouble in SENT_AFTER

    async def misbehave(self, trouble: str, reply: bytes) -> None:
        if trouble == "silent":
            await asyncio.Event().wait()  # until the host stops
        if trouble == "reset":
            sock = self.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.writer.transport.abort()
            raise Hangup("reset")
        instead = SENT_INSTEAD.get(trouble)
        self.writer.write(instead(reply) if instead else reply + SENT_AFTER[trouble])
        await self.writer.drain()
        if trouble == "truncated":
            raise Hangup("truncated")

    async def line(self) -> str:
        data = await self.reader.readline()
        if not data:
            raise ConnectionError("closed")
        return data.decode("utf-8", "replace").rstrip("\r\n")

    async def run(self) -> None:
        await self.answer("greeting", "220 scripted ESMTP")
        while True:
            line = await self.line()
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb == self.script.drop_at:
                return
            if verb == "QUIT":
                await self.answer("QUIT", "221 2.0.0 bye")
                return
            handler = getattr(self, f"do_{verb.lower()}", None)
            if handler is None:
                await self.reply("502 5.5.1 unknown command")
            else:
                await handler(arg)

    async def do_ehlo(self, arg: str) -> None:
        lines = ["250 scripted", "250 PIPELINING", "250 8BITMIME", "250 SIZE 10000000"]
        if self.script.tls is not None and not self.tls:
            lines.append("250 STARTTLS")
        if self.script.login is not None:
            lines.append(f"250 AUTH {self.script.mechanisms}")
        await self.answer("EHLO", *lines)

    async def do_helo(self, arg: str) -> None:
        await self.reply("250 scripted")

    async def do_starttls(self, arg: str) -> None:
        assert self.script.tls is not None
        if await self.answer("STARTTLS", "220 2.0.0 go ahead"):
            await self.writer.start_tls(self.script.tls)
            self.tls = True

    async def do_auth(self, arg: str) -> None:
        mechanism, _, initial = arg.partition(" ")
        if mechanism.upper() == "PLAIN":
            _, user, password = decode(initial).split("\0")
        else:
            await self.reply("334 VXNlcm5hbWU6")
            user = decode(await self.line())
            await self.reply("334 UGFzc3dvcmQ6")
            password = decode(await self.line())
        if (user, password) == self.script.login:
            self.user = user
            await self.answer("AUTH", "235 2.7.0 authenticated")
        else:
            await self.reply("535 5.7.8 bad credentials")

    async def do_mail(self, arg: str) -> None:
        if self.script.login is not None and self.user is None:
            await self.reply("530 5.7.0 authentication required")
            return
        sender = arg.split(":", 1)[1].split(">")[0].lstrip(" <")
        self.sender = sender if self.script.mail_reply.startswith("2") else None
        self.recipients = []
        self.end_transaction()
        self.host.history.append("MAIL")
        if self.sender is not None:
            self.begin_transaction()
        await self.answer("MAIL", self.script.mail_reply)

    async def do_rcpt(self, arg: str) -> None:
        address = arg.split(":", 1)[1].split(">")[0].lstrip(" <")
        answer = self.script.rcpt.get(address, "250 2.1.5 ok")
        if answer.startswith("2"):
            self.recipients.append(address)
        await self.answer("RCPT", answer)

    async def do_data(self, arg: str) -> None:
        if self.sender is None or not self.recipients:
            await self.reply("554 5.5.1 no valid recipients")
            return
        if not await self.answer("DATA", "354 go on"):
            return
        self.in_data = True
        self.host.history.append("354")
        content = await self.content()
        self.in_data = False
        self.host.reached["dot"] += 1
        self.host.history.append("dot")
        trouble = self.trouble("dot")
        final = self.script.dot_replies.pop(0) if self.script.dot_replies else self.script.data_reply
        accepted = final.startswith("2") and not self.misbehaved
        if accepted and trouble in (None, *SENT_AFTER):
            port = self.writer.get_extra_info("sockname")[1]
            self.host.received.append(
                Received(self.sender, self.recipients, content, self.tls, self.user, port)
            )
        self.sender, self.recipients = None, []
        await self.at("dot", counted=True)  # the copy is the host's once the dot came; its reply may wait
        await self.answer_with(trouble, final)
        self.end_transaction()

    async def content(self) -> bytes:
        """The message, unstuffed; the "content" trouble comes after its first line."""
        lines: list[bytes] = []
        while (data := await self.reader.readline()) != b".\r\n":
            if not data:
                raise ConnectionError("closed in DATA")
            lines.append(data[1:] if data.startswith(b".") else data)
            if len(lines) == 1:
                self.host.reached["content"] += 1
            if len(lines) == 1 and (trouble := self.trouble("content")) is not None:
                await self.answer_with(trouble)
                if trouble != "slow":  # whatever came instead of content ends it
                    raise Hangup("trouble during content")
        return b"".join(lines)

    async def do_rset(self, arg: str) -> None:
        self.sender, self.recipients = None, []
        self.end_transaction()
        await self.answer("RSET", "250 2.0.0 ok")

    async def do_noop(self, arg: str) -> None:
        await self.reply("250 2.0.0 ok")


def decode(text: str) -> str:
    return base64.b64decode(text).decode("utf-8")


def wire(lines: Sequence[str]) -> bytes:
    """Reply lines ("250 first", "250 last") as sent: b"250-first\r\n250 last\r\n"."""
    ends = ["-"] * (len(lines) - 1) + [" "]
    return b"".join(f"{line[:3]}{end}{line[4:]}\r\n".encode() for line, end in zip(lines, ends))


class DnsServer:
    """Answers MX, A and AAAA queries over UDP on 127.0.0.1: `mx` maps a domain
    to its exchange names, `a` and `aaaa` a name to its IPv4 and IPv6
    addresses; a name in none of them is NXDOMAIN, a known name without
    records of the asked type an empty answer."""

    def __init__(self, mx: dict[str, list[tuple[int, str]]], a: dict[str, list[str]],
                 aaaa: dict[str, list[str]] | None = None) -> None:
        self.mx, self.a, self.aaaa = mx, a, aaaa or {}
        self.queries: list[tuple[str, str]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                wire, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            self.sock.sendto(self.answer(dns.message.from_wire(wire)).to_wire(), peer)

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        kind = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((kind, name))
        if name not in self.mx and name not in self.a and name not in self.aaaa:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif kind == "MX" and name in self.mx:
            records = [f"{pref} {host}." for pref, host in self.mx[name]]
            response.answer.append(dns.rrset.from_text(name + ".", 60, "IN", "MX", *records))
        elif kind == "A" and name in self.a:
            response.answer.append(dns.rrset.from_text(name + ".", 60, "IN", "A", *self.a[name]))
        elif kind == "AAAA" and name in self.aaaa:
            response.answer.append(dns.rrset.from_text(name + ".", 60, "IN", "AAAA", *self.aaaa[name]))
        return response

    def close(self) -> None:
        self.sock.close()


# ---- the in-process harness ---------------------------------------------------

TOPOLOGY = """\
[network]
name = "ACME"
store = "sqlite:var/acme.db"

[postoffices.HQ]
domains = ["hq.acme.example"]
mailboxes = ["alice", "bob", "postmaster"]

[gateways.GW1]
postoffice = "HQ"
role = "send"
serves = ["HQ"]
{gateway}

[delivery]
{delivery}
"""

ALICE = "alice@hq.acme.example"


class Clock:
    """The real time plus what the test skipped ahead (never behind the real
    clock, which the router keeps using)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class Harness:
    """The router and GW1's send side, running on a store under `root`."""

    def __init__(self, root: Path, gateway: str, delivery: str = "",
                 clock: Callable[[], float] = time.time, queue: str = "") -> None:
        """`queue`: the body of the topology's [queue] table (none when empty)."""
        self.config = root / "gatepost.toml"
        queue_table = f"\n[queue]\n{queue}\n" if queue else ""
        self.config.write_text(TOPOLOGY.format(gateway=gateway, delivery=delivery) + queue_table)
        self.topo = load(self.config)
        self.clock = clock
        self.path = path = Path(self.topo.store.removeprefix("sqlite:"))  # the SQLite file
        path.parent.mkdir(parents=True, exist_ok=True)
        self.store = SqliteStore(path, StoreClock(wall=clock))
        self.stop = asyncio.Event()
        self.send = SendSide(self.topo, self.topo.gateways["GW1"], self.store, clock=clock)
        self.router = Router(self.topo, self.store, wake_send=lambda g: self.send.wake())
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Self:
        self.tasks = [asyncio.ensure_future(self.router.run(self.stop)),
                      asyncio.ensure_future(self.send.run(self.stop))]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), 20)
        await self.store.aclose()

    def alive(self) -> bool:
        """Do the router and the send side still run (a worker that ends ends it)?"""
        return all(not task.done() for task in self.tasks)

    async def submit(self, sender: str, recipients: Iterable[str], subject: str = "hello",
                     body: str = "hi\r\n") -> str:
        content = (
            f"From: <{sender}>\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@hq.acme.example>\r\n\r\n{body}"
        ).encode()
        rcpts = tuple(NewRecipient(r, _mailbox(r)) for r in recipients)
        message = NewMessage(sender, rcpts, content, "HQ", "HQ", "cli")
        queue_id = await self.store.enqueue(message)
        self.router.wake()
        return queue_id

    async def events(self, queue_id: str) -> dict[str, Hop]:
        """The latest hop of each recipient of a message."""
        latest: dict[str, Hop] = {}
        for hop in await self.store.hops(queue_id):
            latest[hop.address] = hop
        return latest

    async def until(self, condition: Callable[[], Awaitable[Any]], what: str, timeout: float = 20) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await condition()
            if value:
                return value
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    async def settled(self, queue_id: str, state: str, *addresses: str) -> dict[str, Hop]:
        """Wait until every address of the message has `state` as its latest event."""
        async def check() -> dict[str, Hop] | None:
            events = await self.events(queue_id)
            done = all(a in events and events[a].event == state for a in addresses)
            return events if done else None
        found: dict[str, Hop] = await self.until(check, f"{addresses} {state}")
        return found

    async def mailbox(self, mailbox: str) -> list[bytes]:
        entries = await self.store.mailbox(mailbox)
        contents = [await self.store.mailbox_content(mailbox, e.entry_id) for e in entries]
        return [c for c in contents if c is not None]


def _mailbox(address: str) -> str | None:
    local, _, domain = address.partition("@")
    return f"HQ/{local}" if domain == "hq.acme.example" else None
