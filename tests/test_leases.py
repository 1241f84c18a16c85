"""A restarted worker takes back at once what a dead process of this host held."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from gatepost.store import ROUTER, NewMessage, NewRecipient, SqliteDb, SqliteStore, leases


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
    db = SqliteDb(path)
    mail = NewMessage("a@b.c", (NewRecipient("x@y.z", None),), b"x", "HQ", "HQ", "cli")
    db.enqueue([mail, mail], now=1.0)
    dead = f"router@{leases.HOST}:{dead_pid()}"
    db.claim(ROUTER, dead, 1, 600.0, now=2.0)
    db.claim(ROUTER, leases.owner("router"), 1, 600.0, now=2.0)
    db.close()

    async def reclaim() -> int:
        store = SqliteStore(path)
        try:
            return await leases.reclaim(store, ROUTER)
        finally:
            await store.aclose()

    assert asyncio.run(reclaim()) == 1
    db = SqliteDb(path)
    assert db.owners(ROUTER) == {leases.owner("router")}
    db.close()
