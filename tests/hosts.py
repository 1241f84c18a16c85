"""Hosts for multi-host tests: Linux network namespaces on one bridge on this machine.

    with Network("gp") as net:
        a, b = net.host("a"), net.host("b")
        server = a.popen([sys.executable, "server.py", "--listen", f"{a.address}:2525"])
        b.run([...])
        net.cut(a, b)     # a real partition: packets between them vanish, both ways
        net.heal(a, b)

Each host is a network namespace with one interface, eth0, on a private /24 (chosen at
random in 10.200.0.0/16 or 10.201.0.0/16, avoiding any network already on this machine).
The bridge in the root namespace holds the /24's first address (`net.address`), and each
host's default route goes through it, so hosts reach the root namespace's addresses too.

Only the network is separate: processes in a host share the PID namespace, the hostname,
the file system and the users with everything else. IPv6 is disabled inside hosts (so that
no link-local path goes around a partition). Needs root, `ip` (iproute2) and `nft`
(nftables); `require_hosts()` skips a test without them, or fails it under CI=true.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import ipaddress
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

IP = shutil.which("ip") or "/usr/sbin/ip"
NFT = shutil.which("nft") or "/usr/sbin/nft"
POOLS = (ipaddress.IPv4Network("10.200.0.0/16"), ipaddress.IPv4Network("10.201.0.0/16"))
STATE = Path("/run/gatepost-hosts")  # one JSON file per live Network, for sweep_stale()
LOCK = Path(tempfile.gettempdir()) / "gatepost-hosts.lock"
TABLE = "gatepost_partition"
RULESET = f"""\
table inet {TABLE} {{
    set cut {{ type ipv4_addr; }}
    chain input {{
        type filter hook input priority -300; policy accept;
        ip saddr @cut drop
    }}
}}
"""
_live: set[Network] = set()


class HostsError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([IP, *args], check=False, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise HostsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def _nft(netns: str, script: str) -> None:
    done = subprocess.run([IP, "netns", "exec", netns, NFT, "-f", "-"], input=script,
                          check=False, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise HostsError(f"nft in {netns}: {done.stderr.strip() or done.returncode}\n{script}")


def netns_list() -> list[str]:
    """The names in `ip netns list`."""
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.split()]


def link_names() -> list[str]:
    """The interface names in `ip -o link` (root namespace), without any `@peer`."""
    names = []
    for line in _ip("-o", "link").stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            names.append(parts[1].strip().split("@")[0])
    return names


def netns_pids(netns: str) -> list[int]:
    done = _ip("netns", "pids", netns, check=False)
    return [int(word) for word in done.stdout.split() if word.isdigit()]


def _kill_netns_processes(netns: str, popens: Sequence[subprocess.Popen[Any]] = (),
                          timeout: float = 10.0) -> None:
    """SIGKILL every process in the namespace until none is left (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        for proc in popens:
            proc.poll()  # reap our own children, so that they do not linger as zombies
        pids = netns_pids(netns)
        if not pids or time.monotonic() > deadline:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    for proc in popens:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))


def _remove(netns: Sequence[str], links: Sequence[str],
            popens: Mapping[str, Sequence[subprocess.Popen[Any]]] | None = None) -> list[str]:
    """Kill the namespaces' processes, delete them, then the links; returns the errors."""
    errors = []
    existing = set(netns_list())
    for name in netns:
        if name not in existing:
            continue
        try:
            _kill_netns_processes(name, (popens or {}).get(name, ()))
            _ip("netns", "del", name)
        except (HostsError, OSError, subprocess.SubprocessError) as exc:
            errors.append(str(exc))
    present = set(link_names())
    for link in links:  # veth ends first (deleting a namespace usually took them), bridge last
        if link in present:
            done = _ip("link", "del", link, check=False)
            if done.returncode != 0 and link in link_names():
                errors.append(f"ip link del {link}: {done.stderr.strip()}")
    return errors


def sweep_stale() -> None:
    """Remove what Networks of processes that died without cleaning up (SIGKILL) left."""
    if not STATE.is_dir():
        return
    for path in STATE.glob("*.json"):
        try:
            state = json.loads(path.read_text())
            pid = int(state["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        try:
            os.kill(pid, 0)
            continue  # its owner still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        if not _remove(state.get("netns", []), state.get("links", [])):
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    with open(LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    used = []
    for line in _ip("-o", "-4", "addr").stdout.splitlines():
        words = line.split()
        if "inet" in words:
            used.append(ipaddress.IPv4Interface(words[words.index("inet") + 1]).network)
    for line in _ip("-4", "route", "show", "table", "all").stdout.splitlines():
        first = line.split()[0] if line.split() else ""
        if first in {"local", "broadcast", "unicast", "blackhole", "unreachable", "prohibit"}:
            first = line.split()[1] if len(line.split()) > 1 else ""
        with contextlib.suppress(ValueError):
            if first and first != "default":
                used.append(ipaddress.IPv4Network(first, strict=False))
    return used


class Host:
    """One network namespace with one interface (eth0) on the Network's bridge."""

    def __init__(self, network: Network, name: str, netns: str, address: str, veth: str):
        self.network = network
        self.name = name
        self.netns = netns
        self.address = address
        self.veth = veth  # the root-namespace end, enslaved to the bridge
        self.popens: list[subprocess.Popen[Any]] = []

    def command(self, args: Sequence[str | os.PathLike[str]]) -> list[str]:
        if isinstance(args, (str, bytes)):
            raise TypeError("Host.run/popen take a sequence of arguments, not a string")
        return [IP, "netns", "exec", self.netns, *(os.fspath(arg) for arg in args)]

    def run(self, args: Sequence[str | os.PathLike[str]], **kw: Any
            ) -> subprocess.CompletedProcess[Any]:
        """subprocess.run(args, **kw) inside this host's namespace."""
        check = kw.pop("check", False)
        return subprocess.run(self.command(args), check=check, **kw)

    def popen(self, args: Sequence[str | os.PathLike[str]], **kw: Any) -> subprocess.Popen[Any]:
        """subprocess.Popen(args, **kw) inside this host's namespace; the process is killed
        when the Network is cleaned up (`ip netns exec` execs, so .pid is the program's)."""
        proc = subprocess.Popen(self.command(args), **kw)
        self.popens.append(proc)
        return proc

    def pids(self) -> list[int]:
        """The processes now in this host's namespace."""
        return netns_pids(self.netns)

    def cut_from(self) -> list[str]:
        """The addresses this host now drops packets from (the `cut` set of its nftables)."""
        done = subprocess.run([IP, "netns", "exec", self.netns, NFT, "-j", "list", "set", "inet",
                               TABLE, "cut"], check=False, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise HostsError(f"nft list set in {self.netns}: {done.stderr.strip()}")
        found: list[str] = []
        for item in json.loads(done.stdout).get("nftables", []):
            for element in item.get("set", {}).get("elem", []):
                found.append(str(element))
        return sorted(found, key=ipaddress.ip_address)

    def __repr__(self) -> str:
        return f"Host({self.name!r}, netns={self.netns!r}, address={self.address!r})"


class Network:
    """A bridge in the root namespace and hosts (namespaces) on it; a context manager.

    Leaving the context (or the interpreter, through atexit) kills every process left in
    the hosts and deletes the namespaces, the veth pairs and the bridge."""

    def __init__(self, prefix: str = "gp"):
        self.prefix = prefix
        self.tag = secrets.token_hex(2)
        self.bridge = f"gpbr{self.tag}"
        self.subnet: ipaddress.IPv4Network | None = None
        self.address = ""  # the bridge's address: the root namespace as the hosts see it
        self.hosts: dict[str, Host] = {}
        self._netns: list[str] = []
        self._links: list[str] = []
        self._cuts: set[frozenset[str]] = set()
        self._isolated: set[str] = set()
        self._closed = False

    # -- lifetime --------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.close()
        except HostsError:
            if kind is None:  # do not hide the exception that ended the block
                raise

    def start(self) -> None:
        sweep_stale()
        _live.add(self)
        try:
            with _locked():
                while self.bridge in link_names():
                    self.tag = secrets.token_hex(2)
                    self.bridge = f"gpbr{self.tag}"
                self.subnet = self._choose_subnet()
                self.address = str(self.subnet.network_address + 1)
                self._links.append(self.bridge)
                self._save()
                _ip("link", "add", self.bridge, "type", "bridge", "forward_delay", "0")
                _ip("addr", "add", f"{self.address}/{self.subnet.prefixlen}", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Kill what runs in the hosts; delete the namespaces, veths and bridge. Idempotent."""
        if self._closed:
            return
        popens = {host.netns: host.popens for host in self.hosts.values()}
        errors = _remove(self._netns, [*self._links[1:], *self._links[:1]], popens)
        self._closed = True
        _live.discard(self)
        if errors:
            raise HostsError("cleanup left things behind: " + "; ".join(errors))
        (STATE / f"{self.tag}.json").unlink(missing_ok=True)

    def _choose_subnet(self) -> ipaddress.IPv4Network:
        used = _networks_in_use()
        candidates = [subnet for pool in POOLS for subnet in pool.subnets(new_prefix=24)]
        random.shuffle(candidates)
        for subnet in candidates:
            if not any(subnet.overlaps(other) for other in used):
                return subnet
        raise HostsError("no free /24 left in 10.200.0.0/16 and 10.201.0.0/16")

    def _save(self) -> None:
        STATE.mkdir(parents=True, exist_ok=True)
        state = {"pid": os.getpid(), "netns": self._netns, "links": self._links}
        (STATE / f"{self.tag}.json").write_text(json.dumps(state))

    # -- hosts -----------------------------------------------------------------------------

    def host(self, name: str) -> Host:
        """A new host: namespace gp-<tag>-<name>, eth0 with the /24's next address."""
        if self._closed or self.subnet is None:
            raise HostsError("the network is not started (use it as a context manager)")
        if name in self.hosts:
            raise HostsError(f"host {name!r} already exists")
        index = len(self.hosts) + 2
        if index > 254:
            raise HostsError("a Network holds at most 253 hosts")
        netns = f"{self.prefix}-{self.tag}-{name}"
        veth = f"gpve{self.tag}{index:x}"
        address = str(self.subnet.network_address + index)
        self._netns.append(netns)
        self._links.append(veth)
        self._save()
        _ip("netns", "add", netns)
        for knob in ("all", "default"):  # no IPv6: no link-local path around a partition
            self._sysctl(netns, f"net/ipv6/conf/{knob}/disable_ipv6", "1")
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", netns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "route", "add", "default", "via", self.address)
        _nft(netns, RULESET)
        host = Host(self, name, netns, address, veth)
        self.hosts[name] = host
        for other in list(self._isolated):
            self._cut(host, self.hosts[other])
        return host

    @staticmethod
    def _sysctl(netns: str, key: str, value: str) -> None:
        # /proc/sys/net shows the namespace of the process that opens it
        script = f"echo {value} > /proc/sys/{key}"
        done = subprocess.run([IP, "netns", "exec", netns, "sh", "-c", script],
                              check=False, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise HostsError(f"sysctl {key} in {netns}: {done.stderr.strip()}")

    # -- partitions ------------------------------------------------------------------------

    def cut(self, a: Host, b: Host) -> None:
        """Partition a from b: each drops, at its INPUT hook, every packet from the other.

        Neither side gets an error: SYNs, data, ACKs, RSTs and ICMP vanish, so a connect
        times out and an open TCP connection stays open, retransmitting, until `heal`."""
        self._check(a, b)
        self._cut(a, b)

    def heal(self, a: Host, b: Host) -> None:
        """Undo cut(a, b): remove exactly those two set elements (idempotent)."""
        self._check(a, b)
        pair = frozenset((a.name, b.name))
        if pair not in self._cuts:
            return
        _nft(a.netns, f"delete element inet {TABLE} cut {{ {b.address} }}\n")
        _nft(b.netns, f"delete element inet {TABLE} cut {{ {a.address} }}\n")
        self._cuts.discard(pair)

    def isolate(self, a: Host) -> None:
        """Cut a from every other host, including hosts made later, until rejoin(a).
        (Not from the root namespace: the bridge address stays reachable.)"""
        self._check(a)
        self._isolated.add(a.name)
        for other in self.hosts.values():
            if other is not a:
                self._cut(a, other)

    def rejoin(self, a: Host) -> None:
        """Undo isolate(a): heal a with every host that is not itself isolated."""
        self._check(a)
        self._isolated.discard(a.name)
        for other in self.hosts.values():
            if other is not a and other.name not in self._isolated:
                self.heal(a, other)

    def partition(self, *groups: Sequence[Host]) -> None:
        """Cut every host of each group from every host of the other groups."""
        for i, group in enumerate(groups):
            for other_group in groups[i + 1:]:
                for a in group:
                    for b in other_group:
                        self.cut(a, b)

    def heal_all(self) -> None:
        """Heal every cut and forget every isolation."""
        self._isolated.clear()
        for pair in list(self._cuts):
            a, b = (self.hosts[name] for name in sorted(pair))
            self.heal(a, b)

    def _cut(self, a: Host, b: Host) -> None:
        pair = frozenset((a.name, b.name))
        if pair in self._cuts:
            return
        self._cuts.add(pair)
        _nft(a.netns, f"add element inet {TABLE} cut {{ {b.address} }}\n")
        _nft(b.netns, f"add element inet {TABLE} cut {{ {a.address} }}\n")

    def _check(self, *hosts: Host) -> None:
        for host in hosts:
            if self.hosts.get(host.name) is not host:
                raise HostsError(f"{host!r} is not a host of this network")
        if len(hosts) == 2 and hosts[0] is hosts[1]:
            raise HostsError("a host cannot be cut from itself")

    def __repr__(self) -> str:
        return f"Network(bridge={self.bridge!r}, subnet={str(self.subnet)!r})"


@atexit.register
def _cleanup_at_exit() -> None:
    for network in list(_live):
        with contextlib.suppress(Exception):
            network.close()


@functools.cache
def available() -> str | None:
    """None when hosts can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool, package in ((IP, "iproute2"), (NFT, "nftables")):
        if not os.access(tool, os.X_OK):
            return f"{os.path.basename(tool)} is missing (apt-get install {package})"
    netns = f"gp-probe-{secrets.token_hex(3)}"
    link = f"gppr{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", netns)
        _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("-n", netns, "link", "set", "lo", "up")
        _nft(netns, RULESET)
    except (HostsError, OSError, subprocess.SubprocessError) as exc:
        return f"cannot make a network namespace here: {exc}"
    finally:
        with contextlib.suppress(Exception):
            _remove([netns], [link])
    return None


def require_hosts() -> None:
    """Skip the calling test when hosts cannot be made here; fail it under CI=true."""
    import pytest

    reason = available()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"hosts unavailable under CI=true: {reason}")
    pytest.skip(reason)
