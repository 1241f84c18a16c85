"""A restarted worker takes back at once what a dead process of this host held."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from gatepost.store import ROUTER, AsyncStore, NewMessage, NewRecipient, SqliteStore, leases


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_owner_names_say_role_host_and_process() -> None:
    name = leases.owner("router")
    assert name.startswith(f"router@{leases.HOST}:") and not leases.dead_here(name)
    assert leases.dead_here(f"router@{leases.HOST}:{dead_pid()}")
    assert not leases.dead_here(f"router@elsewhere.example:{dead_pid()}")  # cannot tell
    assert not leases.dead_here("router:123")  # not an owner name of ours


def test_reclaim_releases_the_dead_and_keeps_the_living(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    store = SqliteStore(path)
    mail = NewMessage("a@b.c", (NewRecipient("x@y.z", None),), b"x", "HQ", "HQ", "cli")
    store.enqueue([mail, mail], now=1.0)
    dead = f"router@{leases.HOST}:{dead_pid()}"
    store.claim(ROUTER, dead, 1, 600.0, now=2.0)
    store.claim(ROUTER, leases.owner("router"), 1, 600.0, now=2.0)
    store.close()

    async def reclaim() -> int:
        async_store = AsyncStore(lambda: SqliteStore(path))
        try:
            return await leases.reclaim(async_store, ROUTER, 3.0)
        finally:
            await async_store.aclose()

    assert asyncio.run(reclaim()) == 1
    store = SqliteStore(path)
    assert store.owners(ROUTER) == {leases.owner("router")}
    store.close()
