"""Who holds a lease, and taking back the leases of a process that died.

A lease belongs to one attempt (its token, given by the claim); the process
that runs the attempt is its owner, "ROLE@HOST:PID". When a worker starts, the leases in its queue
held by processes of this host that no longer exist go back to the queue at
once, instead of waiting for the lease to run out (a restart after kill -9).
Knows nothing about mail.
"""

from __future__ import annotations

import os
import socket

from .base import Workers

HOST = socket.gethostname()


def owner(role: str) -> str:
    return f"{role}@{HOST}:{os.getpid()}"


def dead_here(name: str) -> bool:
    """Is `name` the owner name of a process of this host that no longer runs?"""
    role_host, _, pid = name.rpartition(":")
    if not role_host.endswith(f"@{HOST}") or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


async def reclaim(store: Workers, queue: str) -> int:
    """Give back the jobs of `queue` leased by dead processes of this host."""
    dead = [name for name in await store.owners(queue) if dead_here(name)]
    return sum([await store.release_owner(queue, name) for name in dead])
