"""What is being compared, and how: instance factories and the set-up for the report.

`factories` builds each system in a given folder with given ports; `describe`
records versions, the machine, the exact commands and the configuration files
(with the temp folder and ports each run used shown as placeholders).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from bench.common import INBOUND_RCPT, RELAY_RCPT
from bench.gatepost_proc import GatepostInstance
from bench.loadclient import __name__ as loadclient_name
from bench.postfix import PostfixInstance
from bench.procinfo import machine, tool_version
from bench.runs import Factory, source_command
from bench.sink import Sink

PORT, SINK_PORT = 10025, 10026  # placeholders shown in the report; runs use free ports
ROOT = Path("/tmp/gatepost-bench-XXXX")


def factories(roles: list[str]) -> dict[str, Factory]:
    def gatepost(root: Path, port: int, sink_port: int) -> GatepostInstance:
        return GatepostInstance(root, port, sink_port, roles)

    return {"gatepost": gatepost, "postfix": PostfixInstance}


def describe(args: argparse.Namespace, roles: list[str]) -> dict[str, Any]:
    postfix = PostfixInstance(ROOT, PORT, SINK_PORT)
    gatepost = GatepostInstance(ROOT, PORT, SINK_PORT, roles)
    return {
        "machine": machine(),
        "versions": {"postfix": postfix.version(), "gatepost": gatepost.version(),
                     "smtp-sink/smtp-source": "from postfix " + postfix.version(),
                     "uname": tool_version(["uname", "-srvm"])},
        "commands": {
            "relay": shlex.join(source_command(PORT, args.messages, RELAY_RCPT)),
            "inbound": shlex.join(source_command(PORT, args.inbound, INBOUND_RCPT)),
            "sink": shlex.join(Sink(SINK_PORT).command),
            "gatepost": [shlex.join(c) for c in gatepost.commands()],
            "postfix": f"postfix -c {postfix.etc} start",
            "latency": f"{loadclient_name}.run_load(port, {RELAY_RCPT!r}, rate, "
                       f"{args.latency_seconds}, connections=20, size=8192)",
        },
        "postfix_main_cf": postfix.main_cf(),
        "postfix_master_cf": postfix.master_cf(),
        "gatepost_topology": gatepost.topology(),
    }
