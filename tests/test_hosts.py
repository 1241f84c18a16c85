"""The multi-host harness (tests/hosts.py): hosts reach each other over TCP, a cut is a real
partition (silence, not resets: connects time out, open connections stay open and resume
after heal), and cleanup leaves no namespace, link or process behind."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

import hosts
from hosts import Host, Network, link_names, netns_list, require_hosts

PORT = 7000
TESTS = os.path.dirname(os.path.abspath(__file__))

ECHO_SERVER = textwrap.dedent("""\
    import socket, sys, threading
    server = socket.create_server((sys.argv[1], int(sys.argv[2])))
    print("ready", flush=True)
    def serve(conn):
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError as exc:
                    print("error", type(exc).__name__, exc, flush=True)
                    return
                if not data:
                    print("closed", flush=True)
                    return
                conn.sendall(data)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
""")

# One connect, then one echo: prints ok, timeout, refused or error.
PROBE = textwrap.dedent("""\
    import socket, sys
    try:
        conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    except TimeoutError:
        print("timeout")
    except ConnectionRefusedError:
        print("refused")
    except OSError as exc:
        print("error", type(exc).__name__, exc)
    else:
        conn.sendall(b"ping")
        print("ok" if conn.recv(4) == b"ping" else "bad echo")
""")

# One connection, driven line by line from stdin: "send DATA" and "recv SECONDS NBYTES".
CLIENT = textwrap.dedent("""\
    import socket, sys
    conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    print("connected", flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        try:
            if command == "send":
                conn.sendall(args[0].encode())
                print("sent", flush=True)
            elif command == "recv":
                conn.settimeout(float(args[0]))
                data = b""
                try:
                    while len(data) < int(args[1]):
                        chunk = conn.recv(int(args[1]) - len(data))
                        if not chunk:
                            print("eof", data.decode(), flush=True)
                            break
                        data += chunk
                    else:
                        print("got", data.decode(), flush=True)
                except TimeoutError:
                    print("timeout", data.decode(), flush=True)
        except OSError as exc:
            print("error", type(exc).__name__, exc, flush=True)
""")


UDP_RECEIVER = textwrap.dedent("""\
    import socket, sys
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((sys.argv[1], int(sys.argv[2])))
    print("ready", flush=True)
    while True:
        data, peer = sock.recvfrom(65536)
        print("got", data.decode(), peer[0], flush=True)
""")

# One datagram: prints sent, or the error the sender got (EPERM from an OUTPUT drop).
UDP_SENDER = textwrap.dedent("""\
    import socket, sys
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
    except OSError as exc:
        print("error", type(exc).__name__, exc)
    else:
        print("sent")
""")


class Lines:
    """The lines a process writes, read in a thread so that every wait is bounded."""

    def __init__(self, proc: subprocess.Popen[str]):
        self.proc = proc
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next(self, timeout: float = 10.0) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout} s; so far {self.seen}") from None
        if line is None:
            self.lines.put(None)
            raise AssertionError(f"the process ended (rc {self.proc.poll()}); saw {self.seen}")
        self.seen.append(line)
        return line

    def rest(self) -> list[str]:
        """Lines written so far and not yet read, without waiting."""
        found: list[str] = []
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return found
            if line is None:
                self.lines.put(None)
                return found
            found.append(line)


def spawn(host: Host, code: str, *args: str) -> tuple[subprocess.Popen[str], Lines]:
    proc = host.popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE,
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    return proc, Lines(proc)


def echo_server(host: Host) -> Lines:
    _, lines = spawn(host, ECHO_SERVER, host.address, str(PORT))
    assert lines.next() == "ready"
    return lines


def probe(src: Host, dst: str, port: int = PORT, timeout: float = 3.0) -> str:
    done = src.run([sys.executable, "-c", PROBE, dst, str(port), str(timeout)],
                   capture_output=True, text=True, timeout=timeout + 20)
    assert done.returncode == 0, done.stderr
    return str(done.stdout).strip()


def probes(*pairs: tuple[Host, Host], timeout: float = 3.0) -> list[str]:
    """probe() for each (from, to) at once, so that expected timeouts overlap."""
    procs = [src.popen([sys.executable, "-c", PROBE, dst.address, str(PORT), str(timeout)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for src, dst in pairs]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout + 20)
        assert proc.returncode == 0, err
        results.append(out.strip())
    return results


@pytest.fixture
def net() -> Iterator[Network]:
    require_hosts()
    with Network() as network:
        yield network


def ours(tag: str) -> tuple[list[str], list[str]]:
    """The namespaces and links of the network with this tag that exist now."""
    return ([name for name in netns_list() if f"-{tag}-" in name],
            [name for name in link_names() if tag in name and name.startswith("gp")])


def test_a_host_is_a_namespace_of_its_own_with_its_address(net: Network) -> None:
    a, b = net.host("a"), net.host("b")
    assert a.address != b.address and a.netns != b.netns
    assert a.netns in netns_list()
    addrs = a.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    assert f"{a.address}/24" in addrs and b.address not in addrs
    assert net.address not in addrs  # the bridge address is in the root namespace only
    env = {"PATH": os.environ["PATH"], "GATEPOST_HOSTS_PROBE": "passed through"}
    done = a.run([sys.executable, "-c", "import os; print(os.environ['GATEPOST_HOSTS_PROBE'])"],
                 env=env, capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "passed through", done.stderr


def test_two_hosts_talk_tcp_both_ways(net: Network) -> None:
    a, b = net.host("a"), net.host("b")
    echo_server(a)
    echo_server(b)
    assert probes((b, a), (a, b)) == ["ok", "ok"]
    # a port nobody listens on is refused: the baseline against which a cut is silent
    assert probe(b, a.address, PORT + 1) == "refused"


def test_hosts_reach_the_root_namespace_through_the_bridge(net: Network) -> None:
    a, b = net.host("a"), net.host("b")
    with socket.create_server((net.address, 0)) as server:
        port = server.getsockname()[1]
        server.settimeout(10)
        result: list[str] = []
        thread = threading.Thread(target=lambda: result.append(probe(a, net.address, port)))
        thread.start()
        conn, peer = server.accept()
        with conn:
            conn.settimeout(10)
            conn.sendall(conn.recv(4))
        thread.join(timeout=30)
    assert peer[0] == a.address
    assert result == ["ok"]
    net.cut(a, b)  # a cut is between hosts only
    with socket.create_server((net.address, 0)) as server:
        server.settimeout(10)
        port = server.getsockname()[1]
        thread = threading.Thread(target=lambda: result.append(probe(b, net.address, port)))
        thread.start()
        conn, _ = server.accept()
        with conn:
            conn.settimeout(10)
            conn.sendall(conn.recv(4))
        thread.join(timeout=30)
    assert result == ["ok", "ok"]


def test_cut_is_silence_and_heal_resumes_the_open_connection(net: Network) -> None:
    a, b = net.host("a"), net.host("b")
    server = echo_server(a)
    client_proc, client = spawn(b, CLIENT, a.address, str(PORT))
    assert client.next() == "connected"
    assert client_proc.stdin is not None

    def say(line: str) -> None:
        assert client_proc.stdin is not None
        client_proc.stdin.write(line + "\n")
        client_proc.stdin.flush()

    say("send hello")
    assert client.next() == "sent"
    say("recv 5 5")
    assert client.next() == "got hello"

    net.cut(a, b)
    assert a.cut_from() == [b.address] and b.cut_from() == [a.address]
    say("send during")  # the sender gets no error: the packets leave and vanish
    assert client.next() == "sent"
    started = time.monotonic()
    # new connections, both ways, time out: no RST, no ICMP, no local EPERM
    assert probes((b, a), (a, b)) == ["timeout", "timeout"]
    assert time.monotonic() - started >= 2.5
    # the port nobody listens on no longer refuses either: nothing comes back at all
    assert probe(b, a.address, PORT + 1, timeout=1.5) == "timeout"
    say("recv 1.5 6")  # the open connection: still open, nothing arrives
    assert client.next(timeout=15) == "timeout "
    assert client_proc.poll() is None
    assert server.rest() == []  # the server saw no error and no close either

    net.heal(a, b)
    assert a.cut_from() == [] and b.cut_from() == []
    say("recv 30 6")  # TCP retransmits "during"; the echo comes back
    assert client.next(timeout=40) == "got during"
    say("send after")
    assert client.next() == "sent"
    say("recv 10 5")
    assert client.next(timeout=15) == "got after"
    assert probes((b, a)) == ["ok"]
    echo_server(b)
    assert probes((a, b)) == ["ok"]
    assert all(not line.startswith("error") for line in server.rest())


def test_cut_drops_udp_without_an_error_for_the_sender(net: Network) -> None:
    a, b = net.host("a"), net.host("b")
    receivers = {}
    for host in (a, b):
        _, receivers[host.name] = spawn(host, UDP_RECEIVER, host.address, str(PORT))
        assert receivers[host.name].next() == "ready"

    def send(src: Host, dst: Host, word: str) -> str:
        done = src.run([sys.executable, "-c", UDP_SENDER, dst.address, str(PORT), word],
                       capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return str(done.stdout).strip()

    assert send(b, a, "before") == "sent"
    assert receivers["a"].next() == f"got before {b.address}"
    net.cut(a, b)
    assert send(b, a, "during") == "sent"  # no EPERM: the datagram left and vanished
    assert send(a, b, "during") == "sent"
    time.sleep(1.5)
    assert receivers["a"].rest() == [] and receivers["b"].rest() == []
    net.heal(a, b)
    assert send(a, b, "after") == "sent"
    assert receivers["b"].next() == f"got after {a.address}"  # "during" is lost for good


def test_heal_removes_exactly_that_cut(net: Network) -> None:
    a, b, c = net.host("a"), net.host("b"), net.host("c")
    for host in (a, b, c):
        echo_server(host)
    net.cut(a, b)
    net.cut(a, c)
    net.cut(a, c)  # twice is once
    assert a.cut_from() == sorted([b.address, c.address], key=lambda x: int(x.split(".")[-1]))
    net.heal(a, b)
    assert a.cut_from() == [c.address] and b.cut_from() == [] and c.cut_from() == [a.address]
    assert probes((a, b), (b, a), (b, c), (c, a), (a, c)) == ["ok", "ok", "ok", "timeout",
                                                                "timeout"]
    net.heal(a, b)  # healing what is not cut does nothing
    net.heal(a, c)
    assert [h.cut_from() for h in (a, b, c)] == [[], [], []]
    assert probes((c, a), (a, c)) == ["ok", "ok"]
    with pytest.raises(hosts.HostsError):
        net.cut(a, a)


def test_isolate_cuts_a_host_from_all_others_until_rejoin(net: Network) -> None:
    a, b, c = net.host("a"), net.host("b"), net.host("c")
    for host in (a, b, c):
        echo_server(host)
    net.isolate(a)
    d = net.host("d")  # made while a is isolated: cut from a too
    echo_server(d)
    assert sorted(a.cut_from()) == sorted([b.address, c.address, d.address])
    assert probes((b, a), (a, c), (d, a), (b, c), (c, d)) == ["timeout", "timeout", "timeout",
                                                                "ok", "ok"]
    net.isolate(b)
    net.rejoin(a)  # b stays isolated, so a and b stay cut
    assert sorted(a.cut_from()) == [b.address]
    assert probes((a, c), (d, a), (a, b)) == ["ok", "ok", "timeout"]
    net.heal_all()
    assert [h.cut_from() for h in (a, b, c, d)] == [[], [], [], []]
    assert probes((a, b), (b, c)) == ["ok", "ok"]


def test_cleanup_removes_namespaces_links_bridge_and_processes() -> None:
    require_hosts()
    netns_before, links_before = set(netns_list()), set(link_names())
    with Network("gpclean") as net:
        a, b = net.host("a"), net.host("b")
        sleeper = a.popen(["sleep", "600"])
        detached = b.run(["sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, timeout=30, check=True)
        orphan = int(detached.stdout)
        echo_server(b)
        net.cut(a, b)
        namespaces, links = ours(net.tag)
        assert sorted(namespaces) == sorted([a.netns, b.netns])
        assert sorted(links) == sorted([net.bridge, a.veth, b.veth])
        assert orphan in b.pids() and sleeper.pid in a.pids()
    assert ours(net.tag) == ([], [])
    assert [n for n in set(netns_list()) - netns_before if net.tag in n] == []
    assert [n for n in set(link_names()) - links_before if net.tag in n] == []
    assert net.bridge not in link_names()
    assert sleeper.returncode == -signal.SIGKILL
    assert dead_or_zombie(orphan)  # killed (its new parent, init, may not have reaped it yet)
    net.close()  # twice is fine


def dead_or_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in {"Z", "X"}
    except FileNotFoundError:
        return True


def test_cleanup_after_a_failure_midway() -> None:
    require_hosts()
    with pytest.raises(ZeroDivisionError), Network() as net:
        a = net.host("a")
        a.popen(["sleep", "600"])
        assert ours(net.tag) != ([], [])
        1 / 0  # noqa: B018
    assert ours(net.tag) == ([], [])


def run_owner(ending: str) -> tuple[subprocess.Popen[str], str]:
    """A Python process that makes a network with two hosts and then ends as told."""
    code = textwrap.dedent(f"""\
        import sys, time
        sys.path.insert(0, {TESTS!r})
        import hosts
        net = hosts.Network()
        net.start()
        a, b = net.host("a"), net.host("b")
        a.popen(["sleep", "600"])
        print(net.tag, flush=True)
        {ending}
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = Lines(proc)
    return proc, lines.next(timeout=30)


def test_atexit_cleans_up_a_network_never_closed() -> None:
    require_hosts()
    proc, tag = run_owner("sys.exit(0)")
    proc.wait(timeout=60)
    assert proc.returncode == 0
    assert ours(tag) == ([], [])


def test_sweep_removes_what_a_killed_owner_left() -> None:
    require_hosts()
    proc, tag = run_owner("time.sleep(600)")
    proc.kill()
    proc.wait(timeout=30)
    namespaces, links = ours(tag)
    assert len(namespaces) == 2 and len(links) == 3  # SIGKILL: atexit did not run
    hosts.sweep_stale()
    assert ours(tag) == ([], [])


def test_require_hosts_skips_or_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hosts, "available", lambda: "no namespaces here")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no namespaces here"):
        require_hosts()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="no namespaces here"):
        require_hosts()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        require_hosts()
