"""What is being compared, and how: instance factories and the set-up for the report.

`factories` builds each system in a given folder with given ports; `describe`
records versions, the machine, the exact commands and the configuration files
(with the temp folder and ports each run used shown as placeholders).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
from pathlib import Path
from typing import Any

from bench.common import INBOUND_RCPT, RELAY_RCPT
from bench.gatepost_proc import MAIN, GatepostInstance, PgServer, python
from bench.loadclient import __name__ as loadclient_name
from bench.postfix import PostfixInstance
from bench.procinfo import machine, tool_version
from bench.runs import Factory, source_command
from bench.sink import Sink

PORT, SINK_PORT = 10025, 10026  # placeholders shown in the report; runs use free ports
ROOT = Path("/tmp/gatepost-bench-XXXX")


def gatepost_name(store: str) -> str:
    return f"gatepost-{store}"


def factories(roles: list[str], stores: list[str], pg: PgServer) -> dict[str, Factory]:
    """gatepost on each store (in that order), then Postfix."""
    def gatepost(store: str) -> Factory:
        def make(root: Path, port: int, sink_port: int) -> GatepostInstance:
            return GatepostInstance(root, port, sink_port, roles, store, pg)

        return make

    found: dict[str, Factory] = {gatepost_name(store): gatepost(store) for store in stores}
    return found | {"postfix": PostfixInstance}


def chosen(systems: str, stores: list[str]) -> list[str]:
    """The systems named by --systems: "gatepost" is gatepost on every store of --stores."""
    names: list[str] = []
    for name in (n.strip() for n in systems.split(",") if n.strip()):
        names += [gatepost_name(s) for s in stores] if name == "gatepost" else [name]
    return list(dict.fromkeys(names))


def describe(args: argparse.Namespace, roles: list[str], pg: PgServer | None = None,
             stores: tuple[str, ...] = ("sqlite",)) -> dict[str, Any]:
    postfix = PostfixInstance(ROOT, PORT, SINK_PORT)
    gatepost = {store: GatepostInstance(ROOT, PORT, SINK_PORT, roles, store, pg or PgServer())
                for store in stores}
    first = next(iter(gatepost.values()))
    found: dict[str, Any] = {
        "machine": machine(),
        "versions": {"postfix": postfix.version(), "gatepost": first.version(),
                     "smtp-sink/smtp-source": "from postfix " + postfix.version(),
                     "uname": tool_version(["uname", "-srvm"]), "source": source_state()},
        "commands": {
            "relay": shlex.join(source_command(PORT, args.messages, RELAY_RCPT)),
            "inbound": shlex.join(source_command(PORT, args.inbound, INBOUND_RCPT)),
            "sink": shlex.join(Sink(SINK_PORT).command),
            "gatepost": [shlex.join(c) for c in first.commands()],
            "postfix": f"postfix -c {postfix.etc} start",
            "latency": f"{loadclient_name}.run_load(port, {RELAY_RCPT!r}, rate, "
                       f"{args.latency_seconds}, connections=20, size=8192)",
        },
        "postfix_main_cf": postfix.main_cf(),
        "postfix_master_cf": postfix.master_cf(),
        "gatepost_topology": first.topology(),
        "gatepost_topologies": {store: g.topology() for store, g in gatepost.items()},
    }
    if pg is not None and pg.cluster is not None:
        found["postgresql"] = pg.settings()
        found["versions"]["postgresql"] = found["postgresql"].get("server_version", "")
    return found


def source_state() -> str:
    """Which gatepost code ran: the folder it is imported from, its commit, and
    whether that folder's tree differs from the commit (others may be editing it)."""
    code = "import gatepost, os; print(os.path.dirname(os.path.dirname(gatepost.__file__)))"
    out = subprocess.run([python(), "-c", code],
                         capture_output=True, text=True, timeout=30, check=False, cwd=MAIN)
    folder = out.stdout.strip() or "?"
    head = tool_version(["git", "-C", folder, "rev-parse", "--short", "HEAD"])
    changed = subprocess.run(["git", "-C", folder, "status", "--porcelain", "--", "."],
                             capture_output=True, text=True, timeout=30, check=False).stdout
    edits = len(changed.splitlines())
    return f"{folder} at {head or '?'}" + (f" with {edits} changed files" if edits else "")
