"""Machine facts and per-process memory for the report, read from /proc.

`peak_rss_kib` walks a process tree (the pids we started and all their
descendants) and returns each process's VmHWM, its peak resident set size.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _status(pid: int) -> dict[str, str]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split(":", 1) for line in lines if ":" in line)


def _role(pid: int, name: str) -> str:
    """`name`, plus the role when the command line has `--only ROLE`."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return name
    if b"--only" in args[:-1]:
        return f"{name} --only {args[args.index(b'--only') + 1].decode()}"
    return name


def peak_rss_kib(roots: list[int]) -> list[dict[str, object]]:
    """One entry per live process in the trees under `roots`: pid, name, VmHWM in KiB."""
    tree, todo, found = _children(), list(roots), []
    while todo:
        pid = todo.pop()
        status = _status(pid)
        if status:
            hwm = int(status.get("VmHWM", "0 kB").split()[0])
            found.append({"pid": pid, "name": _role(pid, status["Name"].strip()),
                          "vm_hwm_kib": hwm})
        todo.extend(tree.get(pid, []))
    return found


def cpu_seconds(roots: list[int]) -> float:
    """CPU seconds (user + system) used so far by the processes under `roots`:
    those alive, and the children each root has reaped (Postfix's short-lived
    ones). A process that exited unreaped below a root's child is not counted."""
    tree, todo, total = _children(), list(roots), 0.0
    tick = os.sysconf("SC_CLK_TCK")
    reaped = set(roots)
    while todo:
        pid = todo.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
        if pid in reaped:
            total += (int(fields[13]) + int(fields[14])) / tick
        todo.extend(tree.get(pid, []))
    return total


def machine() -> dict[str, object]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")))
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gib": round(mem_kib / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "loadavg": Path("/proc/loadavg").read_text().split()[:3]}


def tool_version(command: list[str]) -> str:
    out = subprocess.run(command, check=False, capture_output=True, text=True, timeout=30)
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else ""
