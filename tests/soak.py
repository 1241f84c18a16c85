"""Crash soak: kill -9 gatepost processes at random moments under a steady load,
restart them, and count what the clients were promised against what arrived.

    .venv/bin/python tests/soak.py --messages 25000 --kills 20    (what `make soak` runs)

Each message has one recipient (a local mailbox, a mailbox one hop away, or a
foreign address the send side carries to the capture smart host) and a unique
X-Soak-Id. In mode "unruly" the smart host is tests/unruly.py, which misbehaves
in one session of two (at any stage: garbage, resets, silence, a code that
changes mid-reply, 421, 4xx, a 5xx to RSET) and counts only what it accepted with
a 250 it could write; nothing may bounce and nothing acknowledged may be lost. Alongside, "half" sessions sit in the middle of DATA when the kills
land; none of them may ever be delivered. At the end the queue must drain;
`lost` (acknowledged with 250 but never delivered) must be 0, and duplicates
at most the jobs in flight (leased) at the kills. Used by tests/test_crash.py
with a few hundred messages.

    .venv/bin/python tests/soak.py --modes slow --slow-messages 300 --kills 20

In mode "slow" the smart host (tests/unruly.py --dot-delay) answers every final
dot SLOW_DOT seconds late, longer than the store's lease (SLOW_LEASE, the
topology's [queue] lease), and every message goes out to it: an attempt must
hold its lease however long the host takes, or a second attempt would send the
message again. The host keeps a message whose client left while the reply to
its final dot was due (a real MTA queued it before answering), and counts it as
in flight; `in_flight` is that count, summed over the kills: the bound on
duplicates.

    .venv/bin/python tests/soak.py --purge 5 --messages 20000 --kills 10

`--purge SECONDS` shortens the retentions (final jobs, trace rows, orphan spool
files) to SECONDS and purges five times as often; every message then goes out
to the capture sink (a local mailbox keeps its mail by design), and the "half"
sessions are large, so that each kill of the receive side leaves an orphan
spool file behind. The store's size (db + wal + spool folder) is sampled every
second; once purging has started it must stay flat: from the first half of the
run after the warm-up (two retentions) to the second, its median may grow by at
most FLAT of the bytes per message that the warm-up took.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import random
import re
import signal
import smtplib
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

LEASE = 4.0  # seconds; [queue] lease, shortened so a killed worker's jobs return soon
TOPOLOGY = """\
[network]
name = "SOAK"
store = "sqlite:var/soak.db"

[postoffices.HQ]
domains = ["hq.soak.example"]
mailboxes = ["alice", "bob", "postmaster"]

[postoffices.SALES]
domains = ["sales.soak.example"]
mailboxes = ["carol", "postmaster"]
links = ["HQ"]

[gateways.GW1]
postoffice = "HQ"
role = "both"
listen = "127.0.0.1:{listen}"
smarthost = "127.0.0.1:{smarthost}"
serves = ["HQ", "SALES"]
relay_from = ["127.0.0.0/8"]
max_per_session = {per_session}
max_sessions = {sessions}

[delivery]
retry_min = 1
retry_max = 2
{retentions}
[queue]
lease = "{lease}s"
"""
CAPTURE = """
[capture]
listen = "127.0.0.1:{smarthost}"
dir = "var/captured"
"""
UNRULY = 0.5  # mode "unruly": the share of the smart host's sessions that misbehave
SLOW_LEASE = 2.0  # mode "slow": the lease, seconds...
SLOW_DOT = 3.0  # ...and how late the smart host answers each final dot: later than a lease
SLOW_SESSIONS = 20  # mode "slow": max_sessions (each session carries a message per SLOW_DOT)
SLOW_DRAIN = 900.0  # mode "slow": seconds the queue may take to drain after the load
RETENTIONS = "final_retention = {0}\ntrace_retention = {0}\n"
RECIPIENTS = ("alice@hq.soak.example", "carol@sales.soak.example", "someone@example.org")
OUTSIDE = ("someone@example.org", "other@example.net")  # --purge: nothing stays in a mailbox
FLAT = 0.2  # --purge: growth per message after the warm-up, as a share of the warm-up's
BIG_HALF = 1_600_000  # --purge: a half session's bytes: past SPOOL_ABOVE and the
# core's last Content piece (256 KiB) it leaves behind, so in a spool file
SPLIT = ("router", "gateway:GW1", "capture")
UNRULY_ROLES = ("router", "gateway:GW1")  # the smart host is tests/unruly.py (also "slow")
ALL_IN_ONE = ("router,gateway:GW1,capture",)
TOKEN = re.compile(rb"^X-Soak-Id: (\S+)\r?$", re.MULTILINE)
LAUNCH = """if True:
    import sys
    import gatepost.policy as policy
    import gatepost.store.spool as spool
    import gatepost.store.sqldb as sqldb
    retention = float(sys.argv.pop(1))  # 0: as configured
    if retention:  # the [delivery] retentions are in the topology; these are not settings
        spool.ORPHAN_GRACE = sqldb.ORPHAN_GRACE = retention
        policy.PURGE_EVERY = retention / 5
    from gatepost.cli import main
    sys.argv[0] = "gatepost"
    main()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """One `gatepost run --only ROLES` process, restartable after kill -9."""

    def __init__(self, config: Path, roles: str, retention: float = 0.0) -> None:
        self.config, self.roles, self.retention = config, roles, retention
        self.log = config.parent / f"{roles.replace(':', '_').replace(',', '+')}.log"
        self.handle = self.log.open("ab")
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        mark = self.log.stat().st_size
        self.popen = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, str(self.retention), "-c",
             str(self.config), "run", "--only", self.roles],
            stdout=self.handle, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while b"gatepost: ready" not in self.log.read_bytes()[mark:]:
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.roles} did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.02)

    def kill(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.handle.close()


@dataclass
class Tally:
    sent: list[str] = field(default_factory=list)  # tokens whose DATA was sent
    acked: set[str] = field(default_factory=set)  # tokens answered 250
    half: list[str] = field(default_factory=list)  # tokens left in the middle of DATA
    in_flight_at_kills: int = 0
    kills: list[str] = field(default_factory=list)
    host_marks: list[int] = field(default_factory=list)  # "slow": the host's in-flight count at each kill
    lock: threading.Lock = field(default_factory=threading.Lock)


def message(token: str, recipient: str) -> bytes:
    return (f"From: load@client.example\r\nTo: {recipient}\r\nSubject: soak {token}\r\n"
            f"X-Soak-Id: {token}\r\n\r\n" + f"line {token}\r\n" * 20).encode()


def connect(port: int) -> smtplib.SMTP:
    """A session, waiting while the receive side is down (kill -9, restart)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return smtplib.SMTP("127.0.0.1", port, "client.example", timeout=30)
        except (OSError, smtplib.SMTPException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def load(port: int, tokens: list[str], tally: Tally, recipients: tuple[str, ...]) -> None:
    """Send each token's message once; a session broken after the message was
    sent just loses its ack (the client does not send it again)."""
    smtp: smtplib.SMTP | None = None
    for token in tokens:
        recipient = recipients[int(token.rsplit("-", 1)[1]) % len(recipients)]
        try:
            smtp = smtp or connect(port)
            smtp.ehlo_or_helo_if_needed()
            with tally.lock:
                tally.sent.append(token)
            smtp.sendmail("load@client.example", [recipient], message(token, recipient))
            with tally.lock:
                tally.acked.add(token)
        except (OSError, smtplib.SMTPException):
            smtp = None
            time.sleep(0.05)


def half_sessions(port: int, tally: Tally, stop: threading.Event, size: int = 200) -> None:
    """Keep a session in the middle of DATA, `size` bytes into its message; a
    new one whenever it is cut."""
    count = 0
    while not stop.is_set():
        count += 1
        token = f"half-{count}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                commands = (f"EHLO half.example\r\nMAIL FROM:<half@client.example>\r\n"
                            f"RCPT TO:<{RECIPIENTS[count % 3]}>\r\nDATA\r\n")
                for line in commands.split("\r\n")[:-1]:
                    sock.sendall(line.encode() + b"\r\n")
                    read_reply(sock)
                filler = b"x" * 78 + b"\r\n"
                text = message(token, RECIPIENTS[count % 3]) + filler * (size // len(filler))
                sock.sendall(text[:size])
                with tally.lock:
                    tally.half.append(token)
                while not stop.is_set() and sock.recv(100):
                    pass
        except OSError:
            time.sleep(0.05)


def read_reply(sock: socket.socket) -> bytes:
    data = b""
    while not re.search(rb"(^|\r\n)\d{3} [^\r\n]*\r\n$", data):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def query(db: Path, sql: str) -> list[tuple[object, ...]]:
    for _ in range(50):
        try:
            with sqlite3.connect(db, timeout=30) as conn:
                return conn.execute(sql).fetchall()
        except sqlite3.OperationalError:
            time.sleep(0.1)
    raise RuntimeError(f"store unreadable: {sql}")


def leased(db: Path) -> int:
    return int(str(query(db, "SELECT count(*) FROM jobs WHERE state = 'active'")[0][0]))


def delivered(root: Path) -> Counter[str]:
    """Every delivered copy by token: mailbox entries and captured files."""
    found: Counter[str] = Counter()
    rows = query(root / "var" / "soak.db",
                 "SELECT m.content FROM mailbox b JOIN messages m ON m.id = b.message_id")
    contents = [bytes(row[0]) for row in rows]  # type: ignore[call-overload]
    for sink in ("captured", "unruly"):
        contents += [p.read_bytes() for p in (root / "var" / sink).glob("*.eml")]
    for content in contents:
        for token in TOKEN.findall(content):
            found[token.decode()] += 1
    return found


def drain(db: Path, timeout: float) -> int:
    """Wait until no job is waiting; returns how many still wait at the timeout."""
    deadline = time.monotonic() + timeout
    open_jobs = -1
    while time.monotonic() < deadline:
        rows = query(db, "SELECT count(*) FROM jobs WHERE state NOT IN ('delivered', 'bounced')")
        open_jobs = int(str(rows[0][0]))
        if open_jobs == 0:
            return 0
        time.sleep(0.2)
    return open_jobs


def store_bytes(db: Path) -> int:
    """The store's size on disk: the database, its WAL and its spool folder."""
    spool = db.with_name(db.name + ".spool")
    paths = [db, db.with_name(db.name + "-wal"), *(spool.iterdir() if spool.is_dir() else ())]
    total = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


class Sizes(threading.Thread):
    """Samples (seconds since the load began, messages sent, store bytes) each second."""

    def __init__(self, db: Path, tally: Tally) -> None:
        super().__init__(daemon=True)
        self.db, self.tally = db, tally
        self.samples: list[tuple[float, int, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.done.wait(1.0):
            self.samples.append((time.monotonic() - started, len(self.tally.sent),
                                 store_bytes(self.db)))


@dataclass
class Growth:
    """The store's size once purging has started, against the warm-up before it.
    After the warm-up the samples are split in halves, each summed up by its
    medians: a spike (a WAL checkpoint held back, the spool files of the large
    half sessions) is not growth."""

    warm_sent: int
    warm_bytes: int
    early: tuple[int, int]  # (messages sent, bytes): medians of the first half after it
    late: tuple[int, int]  # the same for the second half

    @property
    def share(self) -> float:
        """Bytes per message after the warm-up, as a share of the warm-up's."""
        per_message = max(self.warm_bytes / max(self.warm_sent, 1), 1.0)
        grown = max(self.late[1] - self.early[1], 0)
        return grown / max(self.late[0] - self.early[0], 1) / per_message

    @property
    def long_enough(self) -> bool:
        return self.late[0] - self.early[0] >= self.warm_sent / 2

    def __str__(self) -> str:
        mib = 1 << 20
        return (f"{self.warm_bytes / mib:.1f} MiB after the warm-up ({self.warm_sent} messages), "
                f"then {self.early[1] / mib:.1f} MiB and {self.late[1] / mib:.1f} MiB (medians) "
                f"{self.late[0] - self.early[0]} messages apart: {self.share:.0%} of the warm-up's "
                f"bytes per message (flat: {FLAT:.0%} or less"
                f"{'' if self.long_enough else '; too short a run to tell'})")


def growth(samples: list[tuple[float, int, int]], warm_up: float) -> Growth:
    warm = [s for s in samples if s[0] <= warm_up] or [(0.0, 0, 0)]
    later = [s for s in samples if s[0] > warm_up] or [warm[-1]]
    half = len(later) // 2
    return Growth(warm[-1][1], warm[-1][2], medians(later[:half] or later), medians(later[half:]))


def medians(samples: list[tuple[float, int, int]]) -> tuple[int, int]:
    return (int(statistics.median(s[1] for s in samples)),
            int(statistics.median(s[2] for s in samples)))


def trajectory(samples: list[tuple[float, int, int]], points: int = 10) -> str:
    """A few of the samples: seconds, messages sent, store MiB."""
    step = max(len(samples) // points, 1)
    return ", ".join(f"{s:.0f} s {sent} {size / (1 << 20):.1f}" for s, sent, size in samples[::step])


def logged_bounces(root: Path) -> int:
    """Bounces the processes logged: purging may have removed their jobs."""
    lines = (line for log in root.glob("*.log") for line in log.read_text(errors="replace")
             .splitlines())
    return sum(1 for line in lines if "bounced to=<" in line or "status=bounced" in line)


@dataclass
class Result:
    mode: str
    sent: int
    acked: int
    delivered: int
    duplicated: int
    lost: int
    half: int
    half_delivered: int
    kills: int
    in_flight: int
    waiting: int
    bounced: int
    per_kill: list[int] = field(default_factory=list)  # "slow": in flight at each kill (host's count)
    unexplained: int = 0  # "slow": extra copies of messages that were not in flight at a kill
    growth: Growth | None = None  # --purge only
    sizes: list[tuple[float, int, int]] = field(default_factory=list)  # --purge: Sizes.samples

    @property
    def ok(self) -> bool:
        flat = self.growth is None or (self.growth.long_enough and self.growth.share <= FLAT)
        return (self.lost == 0 and self.half_delivered == 0 and self.waiting == 0
                and self.bounced == 0 and self.duplicated <= self.in_flight
                and self.unexplained == 0 and flat)


def unruly_host(root: Path, port: int, seed: int | None, misbehave: float = UNRULY,
                dot_delay: float = 0.0) -> subprocess.Popen[bytes]:
    """tests/unruly.py as the smart host: a share of its sessions misbehave (mode
    "unruly"), or every final dot is answered `dot_delay` seconds late ("slow")."""
    log = (root / "unruly.log").open("ab")
    host = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("unruly.py")), "--listen",
         f"127.0.0.1:{port}", "--dir", str(root / "var" / "unruly"), "--seed", str(seed or 0),
         "--misbehave", str(misbehave), "--dot-delay", str(dot_delay)],
        stdout=subprocess.PIPE, stderr=log)
    assert host.stdout is not None
    if host.stdout.readline().strip() != b"ready":
        raise RuntimeError(f"the unruly smart host did not start: {root / 'unruly.log'}")
    return host


IN_FLIGHT = re.compile(r"^unruly: in flight when the client left \(reply [^)]*\): (.*)$",
                       re.MULTILINE)  # tests/unruly.py's line for each such message


def host_in_flight(root: Path) -> Counter[str]:
    """Tokens the slow smart host saw in flight when their client left, so far
    (a token twice when it was in flight at two kills)."""
    log = root / "unruly.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return Counter(token for ids in IN_FLIGHT.findall(text) for token in ids.split())


def wait_until_sent_out(root: Path, count: float, timeout: float) -> None:
    """Wait until the slow host has accepted `count` messages (or `timeout` passed)."""
    deadline = time.monotonic() + timeout
    while (len(list((root / "var" / "unruly").glob("*.eml"))) < count
           and time.monotonic() < deadline):
        time.sleep(0.05)


def smart_host(root: Path, mode: str, port: int, seed: int | None) -> subprocess.Popen[bytes] | None:
    if mode == "unruly":
        return unruly_host(root, port, seed)
    if mode == "slow":
        return unruly_host(root, port, seed, misbehave=0.0, dot_delay=SLOW_DOT)
    return None  # the capture sink, a gatepost role


def soak(root: Path, mode: str, messages: int, kills: int, clients: int = 6,
         seed: int | None = None, retention: float = 0.0) -> Result:
    """One run: `mode` is "split" (router, gateway, capture processes), "all" (one
    process), "unruly" (router and gateway processes; a smart host that
    misbehaves in one session of two) or "slow" (router and gateway processes; a
    smart host that answers each final dot later than a lease); `retention` > 0
    purges with that retention and samples the store's size."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    listen, smarthost = free_port(), free_port()
    config = root / "soak.toml"
    slow = mode == "slow"
    per_session = 5 if mode == "unruly" else 100  # unruly: more sessions, more trouble
    config.write_text(TOPOLOGY.format(listen=listen, smarthost=smarthost, per_session=per_session,
                                      sessions=SLOW_SESSIONS if slow else 8,
                                      lease=SLOW_LEASE if slow else LEASE,
                                      retentions=RETENTIONS.format(retention) if retention else "")
                      + ("" if mode in ("unruly", "slow") else CAPTURE.format(smarthost=smarthost)))
    db = root / "var" / "soak.db"
    roles = {"split": SPLIT, "all": ALL_IN_ONE, "unruly": UNRULY_ROLES, "slow": UNRULY_ROLES}[mode]
    processes = [Process(config, role, retention) for role in roles]
    host = smart_host(root, mode, smarthost, seed)
    for process in processes:
        process.start()
    tally, stop = Tally(), threading.Event()
    sizes = Sizes(db, tally)
    tokens = [f"{mode}-{n}" for n in range(messages)]
    recipients = OUTSIDE if retention or slow else RECIPIENTS  # slow: all to the slow host
    loaders = [threading.Thread(target=load, args=(listen, tokens[i::clients], tally, recipients))
               for i in range(clients)]
    halves = [threading.Thread(target=half_sessions,
                               args=(listen, tally, stop, BIG_HALF if retention else 200))
              for _ in range(2)]
    try:
        for thread in [*loaders, *halves, *([sizes] if retention else [])]:
            thread.start()
        kill_at = sorted(rng.uniform(0.1, 0.9) * messages for _ in range(kills))
        victims = rng.sample(processes, len(processes))  # each process at least once
        victims += [rng.choice(processes) for _ in range(kills - len(victims))]
        for target, victim in zip(kill_at, victims, strict=False):
            if slow:  # the load is in long before the slow host has it: kill while it is sent
                wait_until_sent_out(root, target, SLOW_DRAIN)
            while len(tally.sent) < target and any(t.is_alive() for t in loaders):
                time.sleep(0.01)
            if slow:
                tally.host_marks.append(host_in_flight(root).total())
            victim.kill()
            tally.in_flight_at_kills += leased(db) + clients  # leased jobs + one DATA per client
            tally.kills.append(victim.roles)
            time.sleep(rng.uniform(0, 0.5))
            victim.start()
        for thread in loaders:
            thread.join()
        sizes.done.set()
        stop.set()
        for thread in halves:
            thread.join()
        waiting = drain(db, SLOW_DRAIN if slow else (180 if host else 60) + 2 * LEASE)
    finally:
        for process in processes:
            process.stop()
        if host is not None:
            host.terminate()
            host.wait(30)
    copies = delivered(root)
    in_flight = host_in_flight(root)
    if slow:  # the bound counted where it happens: at the smart host
        marks = [*tally.host_marks, in_flight.total()]
        tally.in_flight_at_kills = marks[-1]
        per_kill = [later - earlier for earlier, later in itertools.pairwise(marks)]
    else:
        per_kill = []
    acked = tally.acked
    bounced = int(str(query(db, "SELECT count(*) FROM jobs WHERE state = 'bounced'")[0][0]))
    return Result(
        mode=mode,
        sent=len(tally.sent),
        acked=len(acked),
        delivered=sum(1 for t in tokens if copies[t]),
        duplicated=sum(copies[t] - 1 for t in tokens if copies[t] > 1),
        lost=sum(1 for t in acked if not copies[t]),
        half=len(tally.half),
        half_delivered=sum(1 for t in tally.half if copies[t]),
        kills=len(tally.kills),
        in_flight=tally.in_flight_at_kills,
        per_kill=per_kill,
        unexplained=sum(max(copies[t] - 1 - in_flight[t], 0) for t in tokens) if slow else 0,
        waiting=waiting,
        bounced=max(bounced, logged_bounces(root)),
        growth=growth(sizes.samples, 2 * retention) if retention else None,
        sizes=sizes.samples,
    )


COLUMNS = ("mode", "sent", "acked", "delivered", "duplicated", "lost", "half", "half_delivered",
           "kills", "in_flight", "waiting", "bounced")


def table(results: list[Result]) -> str:
    rows = [COLUMNS] + [tuple(str(getattr(r, c)) for c in COLUMNS) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True))
                     for row in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=25000, help="per mode")
    parser.add_argument("--unruly-messages", type=int, default=3000,
                        help="in mode unruly (slower: a session in two misbehaves)")
    parser.add_argument("--slow-messages", type=int, default=300,
                        help=f"in mode slow (each message waits {SLOW_DOT:g} s for its reply)")
    parser.add_argument("--kills", type=int, default=20, help="kill -9 per mode")
    parser.add_argument("--modes", default="split,all,unruly,slow")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/gatepost-soak"))
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--purge", type=float, default=0.0, metavar="SECONDS",
                        help="retention of final jobs, trace rows and orphan spool files; "
                             "samples the store's size, which must stay flat (default: off)")
    args = parser.parse_args()
    started = time.monotonic()
    counts = {"unruly": args.unruly_messages, "slow": args.slow_messages}
    results = [soak(args.dir / mode, mode, counts.get(mode, args.messages), args.kills,
                    seed=args.seed, retention=args.purge)
               for mode in args.modes.split(",")]
    print(table(results))
    for result in results:
        if result.mode == "slow":
            print(f"slow: final dot answered after {SLOW_DOT:g} s, lease {SLOW_LEASE:g} s; "
                  f"in flight at the smart host at each kill: {result.per_kill}; duplicates "
                  f"of messages not in flight at a kill: {result.unexplained} (must be 0)")
    for result in results:
        if result.growth is not None:
            print(f"{result.mode}: store size {result.growth}\n  (seconds, messages sent, MiB) "
                  f"{trajectory(result.sizes)}")
    print(f"({time.monotonic() - started:.0f} s; in_flight = jobs leased at the kills plus one "
          "DATA per client: the bound on duplicates; in mode slow, the messages whose "
          "final-dot reply was in flight when the smart host lost their client)")
    failed = [r.mode for r in results if not r.ok]
    print("FAILED: " + ", ".join(failed) if failed else "OK: nothing acknowledged was lost")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
