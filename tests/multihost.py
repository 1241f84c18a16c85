"""A deployment model of examples/ across hosts (tests/hosts.py) that share nothing but
a PostgreSQL store on a host of its own (tests/pg.py): for end-to-end and fault tests.

    with Site("dedicated-send-receive", tmp_path) as site:
        site.start()                                   # `gatepost run --only ...` per host
        stream = site.stream("RECV", "peter@alpha.initech.example", ["x@example.org"], 50)
        stream.wait()
        site.wait_drained()
        tally = site.tally(stream.acked())
        assert not tally.lost and not tally.duplicates

Hosts: `db` (the cluster; `site.cli` runs gatepost commands there: it always reaches the
database), one per gateway named after it in lower case (`send`, `recv`) running it and,
unless `routers` says otherwise, the router, and `outside`: SMTP clients and a recording
smart host with a port per sending gateway. Each gatepost host has its own folder DIR/HOST
(gatepost.toml, gatepost.log, var/) and environment (PGPASSWORD, GATEPOST_HOST=HOST).
Faults: `site.kill(host)`, `site.start(host)`, `site.net.cut/heal/isolate/rejoin`,
`site.cluster.restart()`. Run as a script, this module is the smart host or a stream.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import hashlib
import json
import os
import signal
import smtplib
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parent.parent
LISTEN_PORT = 2525  # every receive side on its own host's address
SINK_PORT = 2600  # the smart host of the Nth sending gateway: outside:2600+N
QUEUE = {"lease": "10s", "heartbeat": "1s", "failover_after": "3s"}
DELIVERY = {"retry_min": "1s", "retry_max": "5s"}
TOKEN = "X-Gatepost-Token"


def require() -> None:
    """Skip without namespaces or PostgreSQL; fail under CI=true."""
    import pytest

    from hosts import require_hosts
    from pg import missing

    require_hosts()
    if reason := missing():
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)(reason)


def jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a JSON-lines file that may still be written."""
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


class Node:
    """One host's `gatepost run --only ROLES` process, its folder and its log."""

    def __init__(self, host: Any, folder: Path, roles: list[str], env: dict[str, str]) -> None:
        self.host, self.name, self.roles, self.env = host, host.name, roles, env
        self.config, self.log = folder / "gatepost.toml", folder / "gatepost.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.mark = 0  # where the current run's output starts in the log

    def launch(self) -> None:
        """Start the roles (see `ready`)."""
        self.mark = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as handle:
            self.process = self.host.popen(
                [sys.executable, "-m", "gatepost", "-c", self.config, "run",
                 "--only", ",".join(self.roles)],
                stdout=handle, stderr=subprocess.STDOUT, env=self.env)

    def ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"gatepost on {self.name} exited early:\n{self.output()}")
        return "gatepost: ready" in self.output()

    def output(self, whole: bool = False) -> str:
        """The current run's log (`whole`: every run's)."""
        data = self.log.read_bytes() if self.log.exists() else b""
        return data[0 if whole else self.mark:].decode(errors="replace")

    def kill(self) -> None:
        """kill -9 every process of the host (a crash: no clean-up, leases stay)."""
        for pid in self.host.pids():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(30)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (a clean stop), SIGKILL after `timeout`; the exit status."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return None if self.process is None else self.process.returncode

    def cli(self, *args: str, timeout: float = 90) -> str:
        """A gatepost command on this host; its output (it must succeed)."""
        done = self.host.run([sys.executable, "-m", "gatepost", "-c", self.config, *args],
                             env=self.env, capture_output=True, timeout=timeout)
        assert done.returncode == 0, f"gatepost {' '.join(args)} on {self.name}: {done.stderr}"
        return str(done.stdout.decode())


@dataclass
class Tally:
    """What became of acknowledged tokens: `copies` lists, per token, where each copy
    arrived (the sending host's name, or "mailbox" for a mailbox), oldest first."""

    acked: set[str]
    copies: dict[str, list[str]] = field(default_factory=dict)

    @property
    def lost(self) -> set[str]:
        return self.acked - self.copies.keys()

    @property
    def duplicates(self) -> dict[str, list[str]]:
        return {token: where for token, where in self.copies.items() if len(where) > 1}

    def delivered_by(self) -> Counter[str]:
        """Copies per place (sending host or "mailbox")."""
        return Counter(place for where in self.copies.values() for place in where)

    def duplicates_by(self) -> Counter[str]:
        """Extra copies (after a token's first) per place that delivered them."""
        return Counter(place for where in self.duplicates.values() for place in where[1:])


@dataclass
class Stream:
    """A mail stream running in the outside host (see `stream_main`)."""

    process: subprocess.Popen[bytes]
    results: Path

    def wait(self, timeout: float = 600) -> None:
        self.process.wait(timeout)
        assert self.process.returncode == 0, self.results.read_text()

    def rows(self) -> list[dict[str, Any]]:
        return jsonl(self.results)

    def acked(self) -> set[str]:
        """Tokens answered 250 at the end of DATA."""
        return {row["token"] for row in self.rows() if row["code"] == 250}


class Site:
    """The hosts, the cluster, the topology files and the processes of one model."""

    def __init__(self, model: str, directory: Path, routers: Sequence[str] | None = None,
                 edit: Callable[[dict[str, Any]], None] | None = None,
                 init_store: bool = False, sink_delay: float = 0.0) -> None:
        """`routers`: the hosts running the router (default: every gateway host); `edit`
        changes the topology data before it is written; `init_store`: `gatepost store
        init` before any host starts; `sink_delay`: seconds the smart hosts wait before
        answering a final dot."""
        self.directory, self.edit, self.init_store = directory, edit, init_store
        self.sink_delay = sink_delay
        self.data: dict[str, Any] = tomllib.loads((ROOT / f"examples/{model}.toml").read_text())
        self.data.pop("capture", None)
        self.gateway_host = {name: name.lower() for name in self.data["gateways"]}
        self.routers = list(self.gateway_host.values()) if routers is None else list(routers)
        self.nodes: dict[str, Node] = {}
        self._stack = ExitStack()

    def __enter__(self) -> Self:
        require()
        with ExitStack() as failing:
            failing.callback(self.close)
            self._build()
            failing.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        from hosts import Network
        from pg import Cluster

        self.net = self._stack.enter_context(Network("gpm"))
        self.db = self.net.host("db")
        self.cluster = Cluster.start(listen=self.db.address, netns=self.db.netns)
        self._stack.callback(self.cluster.stop)
        self.database = self.cluster.create_database()
        for name in self.gateway_host.values():
            self.net.host(name)
        self.outside = self.net.host("outside")
        self._configure()
        self.by_address = {h.address: h.name for h in self.net.hosts.values()}
        self._stack.callback(self.stop)
        if self.init_store:  # else the hosts, starting together, create the schema
            self.cli("store", "init")
        self._start_sink()

    def _configure(self) -> None:
        """The topology (one copy per host), every address on the hosts' own."""
        data = self.data
        data["network"]["store"] = self.cluster.url(self.database)
        data["queue"] = {**QUEUE, **data.get("queue", {})}
        data["delivery"] = {**DELIVERY, **data.get("delivery", {})}
        self.sink_ports: dict[str, int] = {}
        for name, gateway in data["gateways"].items():
            host = self.net.hosts[self.gateway_host[name]]
            if "listen" in gateway:
                gateway["listen"] = f"{host.address}:{LISTEN_PORT}"
                gateway["relay_from"] = [f"{self.outside.address}/32"]
            if "smarthost" in gateway:
                self.sink_ports[name] = SINK_PORT + len(self.sink_ports)
                gateway["smarthost"] = f"{self.outside.address}:{self.sink_ports[name]}"
        if self.edit is not None:
            self.edit(data)
        from support import toml_text

        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        for host in [self.db, *(self.net.hosts[n] for n in self.gateway_host.values())]:
            folder = self.directory / host.name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "gatepost.toml").write_text(toml_text(data))
            roles = [f"gateway:{g}" for g, h in self.gateway_host.items() if h == host.name]
            roles += ["router"] if host.name in self.routers else []
            self.nodes[host.name] = Node(host, folder, roles, {
                **env, **self.cluster.env(), "GATEPOST_HOST": host.name})

    def _start_sink(self) -> None:
        folder = self.directory / "outside"
        folder.mkdir(parents=True, exist_ok=True)
        self.sink_log, ready = folder / "sink.jsonl", folder / "sink.ready"
        self.sink = self._outside("sink", folder / "sink.err", self.outside.address,
                                  str(self.sink_delay), self.sink_log, ready,
                                  *map(str, self.sink_ports.values()))
        wait_until(lambda: ready.exists() or self.sink.poll() is not None, 30, "the sink")
        assert self.sink.poll() is None, (folder / "sink.err").read_text()

    def _outside(self, script: str, errors: Path, *args: str | Path) -> subprocess.Popen[bytes]:
        with errors.open("ab") as handle:
            return self.outside.popen([sys.executable, __file__, script, *args],
                                      stdout=subprocess.DEVNULL, stderr=handle)

    def start(self, *hosts: str, timeout: float = 120) -> None:
        """Start (again) the gatepost process of these hosts (default: every one) at
        once; returns once each printed `gatepost: ready`."""
        chosen = [self.nodes[n] for n in hosts or self.nodes if self.nodes[n].roles]
        for node in chosen:
            node.launch()
        for node in chosen:
            wait_until(node.ready, timeout, f"gatepost on {node.name} to be ready")

    def kill(self, host: str) -> None:
        """kill -9 every process of `host` (a crash)."""
        self.nodes[host].kill()

    def stop(self) -> dict[str, int | None]:
        """Stop every gatepost process (SIGTERM, then SIGKILL) and the sink; the exit
        statuses by host (None: never started)."""
        with ThreadPoolExecutor(max(1, len(self.nodes))) as pool:
            codes = dict(zip(self.nodes, pool.map(Node.stop, self.nodes.values())))
        if getattr(self, "sink", None) is not None and self.sink.poll() is None:
            self.sink.kill()
            self.sink.wait(10)
        return codes

    def close(self) -> None:
        self._stack.close()

    def host(self, name: str) -> Any:
        """The Host (tests/hosts.py) `name`, e.g. for `site.net.cut(site.host("send"), site.db)`."""
        return self.net.hosts[name]

    def cli(self, *args: str, host: str = "db") -> str:
        """A gatepost command on `host` (default db); its output (it must succeed)."""
        return self.nodes[host].cli(*args)

    def mailq(self, host: str = "db") -> list[dict[str, Any]]:
        return list(json.loads(self.cli("mailq", "--json", "--limit", "10000", host=host)))

    def mailbox(self, address: str, host: str = "db") -> list[dict[str, Any]]:
        return list(json.loads(self.cli("mailbox", address, "--json", host=host)))

    def wait_drained(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while queued := self.mailq():
            assert time.monotonic() < deadline, f"queued after {timeout}s: {queued[:20]}\n" + (
                self.logs())
            time.sleep(0.5)

    def sunk(self) -> list[dict[str, Any]]:
        """What the smart hosts received, oldest first: one dict per message with
        `port`, `peer` (address), `host` (the sending host's name), `from`, `to`,
        `message_id`, `token` (the X-Gatepost-Token header, else the subject), `at`."""
        rows = jsonl(self.sink_log)
        for row in rows:
            row["host"] = self.by_address.get(row["peer"], row["peer"])
        return rows

    def tally(self, acked: set[str], mailboxes: Sequence[str] = ()) -> Tally:
        """Where each token arrived: the smart hosts, and the given mailboxes (their
        messages' subjects are their tokens)."""
        result = Tally(set(acked))
        for row in self.sunk():
            result.copies.setdefault(row["token"], []).append(row["host"])
        for address in mailboxes:
            for row in self.mailbox(address):
                result.copies.setdefault(row["subject"], []).append("mailbox")
        return result

    def leader(self) -> str | None:
        """The host whose router leads failover and purge now (from the store)."""
        owner = self.cluster.psql(self.database, "SELECT owner FROM leaders WHERE duty = "
                                  "'router' AND until > extract(epoch FROM clock_timestamp())")
        return owner.strip().rpartition("@")[2].rpartition(":")[0] or None

    def logs(self) -> str:
        return "\n".join(f"--- {n}:\n{node.output(whole=True)[-6000:]}"
                         for n, node in self.nodes.items() if node.roles)

    def stream(self, gateway: str, sender: str, recipients: Sequence[str], count: int,
               rate: float = 20.0, prefix: str = "t", timeout: float = 10.0,
               size: int = 0) -> Stream:
        """Send `count` messages (bodies of about `size` bytes) from the outside host into
        receive gateway `gateway`, `rate` a second, each with a unique token (TOKEN header
        and Subject PREFIX-N) to the recipients in turn; reconnects after any failure
        (SMTP `timeout` seconds). Runs in the background."""
        host, _, port = self.data["gateways"][gateway]["listen"].rpartition(":")
        results = self.directory / "outside" / f"stream-{prefix}.jsonl"
        return Stream(self._outside(
            "stream", results.with_suffix(".err"), host, port, sender, ",".join(recipients),
            str(count), str(rate), prefix, str(timeout), str(size), results), results)


# -- the scripts run in the outside host -------------------------------------------------


def sink_main(address: str, delay: str, out: str, ready: str, *ports: str) -> None:
    """An SMTP smart host on address:PORT for each port; writes one JSON line per
    message to `out` at its final dot, answers 250 `delay` seconds later; touches `ready`."""
    with open(out, "a") as log:
        asyncio.run(serve_sink(address, float(delay), log, Path(ready), list(map(int, ports))))


async def serve_sink(address: str, delay: float, log: Any, ready: Path, ports: list[int]) -> None:
    parser = email.parser.BytesHeaderParser(policy=email.policy.default)

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer, port = writer.get_extra_info("peername")[0], writer.get_extra_info("sockname")[1]
        sender, rcpts = "", list[str]()  # from the last MAIL
        writer.write(b"220 sink ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            reply = b"250 ok\r\n"
            if verb in (b"EHLO", b"HELO"):
                reply = b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n"
            elif verb == b"MAIL":
                sender, rcpts = line[10:].decode().strip(), []
            elif verb == b"RCPT":
                rcpts.append(line[8:].decode().strip())
            elif verb == b"DATA":
                writer.write(b"354 go on\r\n")
                lines = []
                while (chunk := await reader.readline()) not in (b".\r\n", b""):
                    lines.append(chunk[1:] if chunk.startswith(b".") else chunk)
                if not chunk:
                    break  # cut before the final dot: not received
                data = b"".join(lines)
                head = parser.parsebytes(data)
                token = head.get(TOKEN) or head.get("Subject", "")
                log.write(json.dumps({
                    "port": port, "peer": peer, "from": sender, "to": rcpts, "token": str(token),
                    "message_id": str(head.get("Message-ID", "")), "size": len(data),
                    "digest": digest(data.partition(b"\r\n\r\n")[2]), "at": time.time()}) + "\n")
                log.flush()  # the host has it, whatever becomes of the reply
                await asyncio.sleep(delay)
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            writer.write(reply)
            await writer.drain()
        with suppress(OSError):
            await writer.drain()
            writer.close()

    servers = [await asyncio.start_server(session, address, port) for port in ports]
    ready.touch()
    await asyncio.gather(*(server.serve_forever() for server in servers))


def digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def stream_main(host: str, port: str, sender: str, recipients: str, count: str, rate: str,
                prefix: str, timeout: str, size: str, out: str) -> None:
    """Send COUNT messages of about SIZE bytes at RATE a second, one JSON line each to OUT:
    {"token", "rcpt", "code", "error", "digest" (of the body), "at"} (0: no reply to DATA)."""
    rcpts, client = recipients.split(","), None
    start = time.monotonic()
    with open(out, "a") as log:
        for n in range(int(count)):
            time.sleep(max(0.0, start + n / float(rate) - time.monotonic()))
            token, rcpt = f"{prefix}-{n}", rcpts[n % len(rcpts)]
            body = f"{token}\r\n".encode() + f"{n:<76}\r\n".encode() * (int(size) // 78)
            message = (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {token}\r\n{TOKEN}: {token}\r\n"
                       f"Message-ID: <{token}.{start}@outside.example>\r\n\r\n").encode() + body
            error = ""
            try:
                if client is None:
                    client = smtplib.SMTP(host, int(port), timeout=float(timeout))
                    client.ehlo("outside.example.org")
                code, reply = client.mail(sender)
                if code == 250:
                    code, reply = client.rcpt(rcpt)
                if code == 250:
                    code, reply = client.data(message)
                if code != 250:
                    error = reply.decode(errors="replace")
                    client.rset()
            except (OSError, smtplib.SMTPException) as exc:  # 250 only from DATA, never here
                code, error, client = 0, repr(exc), None
            log.write(json.dumps({"token": token, "rcpt": rcpt, "code": code,
                                  "error": error, "digest": digest(body), "at": time.time()})
                      + "\n")
            log.flush()
    if client is not None:
        with suppress(OSError, smtplib.SMTPException):
            client.quit()


if __name__ == "__main__":
    (sink_main if sys.argv[1] == "sink" else stream_main)(*sys.argv[2:])
