"""`gatepost store init|migrate|check` on SQLite and PostgreSQL, and `gatepost
store copy SRC DST`: a stopped SQLite network's mail moved into PostgreSQL,
nothing lost, nothing twice; refused while the network runs or into a store
that already holds mail."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from conftest import MakeNet
from gatepost.cli import main
from gatepost.store import (
    ROUTER,
    STATES,
    Deferred,
    Delivered,
    Moved,
    NewMessage,
    NewRecipient,
    SpoolWriter,
    SqliteDb,
    Store,
    new_queue_id,
    open_store,
    postgres_db,
    schema,
    send_queue,
)
from gatepost.store.clock import Clock

LEASE = 3600.0
BIG = os.urandom(2 * 1024 * 1024 + 12345)  # three chunks on PostgreSQL
SMALL = b"Subject: hi\r\n\r\nbody\r\n"


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def topology(make_net: MakeNet, store: str | None = None) -> Path:
    """A topology file whose [network] store is `store` (default: sqlite:var/acme.db)."""
    config = make_net().config
    if store is not None:
        config.write_text(config.read_text().replace('"sqlite:var/acme.db"', f'"{store}"'))
    return config


def pg_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def pg_table_counts(url: str) -> dict[str, int] | None:
    """Rows per mail table of the database, None when it has no schema."""
    if pg_rows(url, "SELECT to_regclass('messages')") == [(None,)]:
        return None
    tables = ("messages", "chunks", "jobs", "mailbox", "hops")
    return {t: int(pg_rows(url, f"SELECT count(*) FROM {t}")[0][0]) for t in tables}


# -- init, migrate, check --------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_init_creates_the_schema_once_and_check_reads_it(
    backend: str, make_net: MakeNet, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    config = topology(make_net, url)
    version = postgres_db.VERSION if url else schema.VERSION
    shown = url or f"sqlite:{config.parent / 'var' / 'acme.db'}"

    before = cli("-c", str(config), "store", "check")
    assert before.exit_code == 1
    assert before.stderr == (f"error: network.store {shown}: no schema yet; "
                             "`gatepost store init` creates it\n")
    assert url or not (config.parent / "var" / "acme.db").exists()  # check created nothing

    first = cli("-c", str(config), "store", "init")
    assert (first.exit_code, first.stdout) == (0, f"network.store {shown}: created schema {version}\n")
    again = cli("store", "init", "-c", str(config))
    assert again.stdout == f"network.store {shown}: schema {version} already there\n"
    migrated = cli("-c", str(config), "store", "migrate")
    assert migrated.stdout == f"network.store {shown}: schema {version} already there\n"
    checked = cli("-c", str(config), "store", "check")
    assert (checked.exit_code, checked.stdout) == (0, f"network.store {shown}: schema {version}, ok\n")


def older_sqlite_store(path: Path, version: int = 5, heartbeat: float | None = None) -> None:
    """A store file at an older schema, with an old-style (wall clock) heartbeat."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for statements in schema.MIGRATIONS[:version]:
            for statement in statements:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {version}")
        if heartbeat is not None:
            conn.execute("INSERT INTO workers VALUES ('gateway:GW1', 'old@host:1', ?)", (heartbeat,))


def test_migrate_upgrades_an_older_sqlite_schema(make_net: MakeNet) -> None:
    config = topology(make_net)
    path = config.parent / "var" / "acme.db"
    older_sqlite_store(path, heartbeat=time.time() - 600)
    for command in ("init", "check"):
        refused = cli("-c", str(config), "store", command)
        assert refused.exit_code == 1
        assert refused.stderr.startswith(f"error: network.store sqlite:{path}: store schema 5 "
                                         f"is older than this gatepost's ({schema.VERSION})")
        assert "`gatepost store migrate` upgrades it" in refused.stderr
    result = cli("-c", str(config), "store", "migrate")
    assert (result.exit_code, result.stdout) == (
        0, f"network.store sqlite:{path}: schema 5 upgraded to {schema.VERSION}\n")
    assert cli("-c", str(config), "store", "check").exit_code == 0


def test_migrate_refuses_while_older_processes_heartbeat(make_net: MakeNet) -> None:
    config = topology(make_net)
    path = config.parent / "var" / "acme.db"
    older_sqlite_store(path, heartbeat=time.time() - 2)
    result = cli("-c", str(config), "store", "migrate")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: network.store sqlite:{path}: processes of an "
                                    "older gatepost still use the store")
    with closing(sqlite3.connect(path)) as conn:
        assert schema.version(conn) == 5


def test_check_finds_damaged_content_on_postgres(
    make_net: MakeNet, pg_url: str, tmp_path: Path
) -> None:
    config = topology(make_net, pg_url)
    db = postgres_db.PgDb(pg_url, tmp_path / "staging")
    try:
        [queue_id] = db.enqueue([spooled(db, BIG)], time.time())
    finally:
        db.close()
    assert cli("-c", str(config), "store", "check").exit_code == 0
    with psycopg.connect(pg_url) as conn:
        conn.execute("DELETE FROM chunks WHERE seq = 1")
    result = cli("-c", str(config), "store", "check")
    assert result.exit_code == 1
    assert result.stderr == (f"error: network.store {pg_url}: schema {postgres_db.VERSION}, "
                             f"damaged: content damaged: messages {queue_id}\n")


def test_check_finds_a_damaged_sqlite_file(make_net: MakeNet) -> None:
    config = topology(make_net)
    path = config.parent / "var" / "acme.db"
    db = SqliteDb(path)
    db.enqueue([message(("x@y.example", None), content=SMALL * 100) for _ in range(200)], 1.0)
    db.close()
    assert cli("-c", str(config), "store", "check").exit_code == 0
    with path.open("r+b") as file:
        for page in (2, 3, 4):  # their b-tree page headers
            file.seek(4096 * (page - 1))
            file.write(b"\x0d\xff\xff\xff\xff\xff\xff\xff")
    result = cli("-c", str(config), "store", "check")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: network.store sqlite:{path}: ")
    assert "ok\n" not in result.stdout


# -- a SQLite network's store with mail in every state --------------------------------


def message(*rcpts: tuple[str, str | None], content: bytes = SMALL) -> NewMessage:
    recipients = tuple(NewRecipient(a, m) for a, m in rcpts)
    return NewMessage("carol@sales.acme.example", recipients, content, "HQ", "SALES", "gateway:GW1")


def spooled(db: SqliteDb | postgres_db.PgDb, content: bytes,
            *rcpts: tuple[str, str | None]) -> NewMessage:
    queue_id = new_queue_id()
    writer = SpoolWriter(db.spool_path(queue_id))
    writer.write(content)
    recipients = tuple(NewRecipient(a, m) for a, m in rcpts) or (NewRecipient("x@y.example", None),)
    return NewMessage("carol@sales.acme.example", recipients, b"", "HQ", "SALES", "gateway:GW1",
                      queue_id=queue_id, content_file=writer.finish())


@dataclass
class Source:
    url: str
    path: Path
    ids: dict[str, str]  # what each message stands for → its queue id


def fill(db: SqliteDb) -> dict[str, str]:
    """One message in each state a stopped network leaves; returns their ids."""
    ids: dict[str, str] = {}

    def enqueue(name: str, new: NewMessage) -> list[Any]:
        [ids[name]] = db.enqueue([new], time.time())
        return [j for j in db.claim(ROUTER, "router@old:1", 10, LEASE, time.time())
                if j.message_id == ids[name]]

    for name in ("delivered", "delivered2"):
        [job] = enqueue(name, message(("alice@hq.acme.example", "HQ/alice")))
        db.complete([Delivered(job)], time.time())
    [job] = enqueue("deferred", message(("x@y.example", None)))
    db.complete([Deferred(job, time.time() + 3600, "451 later")], time.time())
    enqueue("active", message(("y@y.example", None)))  # leased: its router was stopped
    enqueue("pending", message(("z@y.example", None)))
    db.set_state([ids["pending"]], "hold", time.time())  # waits for the attempt
    [bob, out] = enqueue("large", spooled(db, BIG, ("bob@hq.acme.example", "HQ/bob"),
                                          ("w@y.example", None)))
    db.complete([Delivered(bob), Moved(out, "HQ", send_queue("GW1"))], time.time())
    [ids["held"]] = db.enqueue([message(("h@y.example", None))], time.time())
    db.set_state([ids["held"]], "hold", time.time())
    [ids["incoming"]] = db.enqueue([message(("i@y.example", None))], time.time())
    return ids


@pytest.fixture
def source(tmp_path: Path) -> Source:
    path = tmp_path / "var" / "acme.db"
    db = SqliteDb(path)
    try:
        ids = fill(db)
    finally:
        db.close()
    return Source(f"sqlite:{path}", path, ids)


async def snapshot(store: Store, ids: dict[str, str]) -> dict[str, Any]:
    """What a user can read of a store: queue, counts, contents, mailboxes, trace."""
    return {
        "queue": await store.queue(STATES, 10_000),
        "counts": await store.counts(),
        "contents": {i: await store.content(i) for i in ids.values()},
        "mailboxes": {m: [(e, await store.mailbox_content(m, e.entry_id))
                          for e in await store.mailbox(m)] for m in ("HQ/alice", "HQ/bob")},
        "hops": {i: await store.hops(i) for i in ids.values()},
    }


def read(url: str, work: Callable[[Store], Any]) -> Any:
    async def run() -> Any:
        store = open_store(url, migrate=False)
        try:
            return await work(store)
        finally:
            await store.aclose()

    return asyncio.run(run())


# -- store copy ------------------------------------------------------------------------


def test_copy_moves_every_message_once(source: Source, pg_url: str) -> None:
    before = read(source.url, lambda s: snapshot(s, source.ids))
    result = cli("store", "copy", source.url, pg_url)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "copied 8 messages, 9 recipients, 3 mailbox entries, 16 trace rows\n"

    assert read(pg_url, lambda s: snapshot(s, source.ids)) == before
    assert before["contents"][source.ids["large"]] == BIG
    assert before["mailboxes"]["HQ/bob"][0][1] == BIG
    assert pg_rows(pg_url, "SELECT count(*) FROM chunks") == [(3,)]
    assert pg_rows(pg_url, "SELECT message_id, lease_until FROM jobs WHERE state = 'active'") == [
        (source.ids["active"], -1.0), (source.ids["pending"], -1.0)]
    assert read(pg_url, lambda s: s.check()) == "ok"


def test_the_copy_goes_on_where_the_network_stopped(source: Source, pg_url: str) -> None:
    assert cli("store", "copy", source.url, pg_url).exit_code == 0
    ids = source.ids

    async def work(store: Store) -> None:
        first = await store.claim(ROUTER, "router@new:1", 100, 60)
        assert sorted(j.message_id for j in first) == sorted([ids["active"], ids["incoming"]])
        assert await store.claim(ROUTER, "router@new:2", 100, 60) == []  # nothing twice
        [out] = await store.claim(send_queue("GW1"), "gw@new:1", 100, 60)
        assert (out.message_id, out.rcpt_id) == (ids["large"], 1)
        held = await store.queue(("hold",))
        assert sorted(e.message_id for e in held) == sorted([ids["held"], ids["pending"]])
        # New mail after the copy: its trace row and mailbox entry get fresh ids.
        await store.enqueue(message(("alice@hq.acme.example", "HQ/alice")))
        [job] = await store.claim(ROUTER, "router@new:1", 100, 60)
        await store.complete([Delivered(job)])
        entries = await store.mailbox("HQ/alice")
        assert len({e.entry_id for e in entries}) == 3
        assert entries[-1].message_id == job.message_id

    read(pg_url, work)


def test_copy_into_a_store_with_mail_is_refused_and_changes_nothing(
    source: Source, pg_url: str
) -> None:
    first = subprocess.run([sys.executable, "-m", "gatepost", "store", "copy", source.url, pg_url],
                           capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    copied = pg_table_counts(pg_url)
    mailbox = pg_rows(pg_url, "SELECT * FROM mailbox ORDER BY entry_id")
    again = subprocess.run([sys.executable, "-m", "gatepost", "store", "copy", source.url, pg_url],
                           capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 1
    assert again.stderr == (f"error: store copy: DST {pg_url} already holds mail: "
                            "copy only into an empty store\n")
    assert again.stdout == ""
    assert pg_table_counts(pg_url) == copied
    assert pg_rows(pg_url, "SELECT * FROM mailbox ORDER BY entry_id") == mailbox


def test_copy_into_a_store_with_one_message_is_refused(
    source: Source, pg_url: str, tmp_path: Path
) -> None:
    db = postgres_db.PgDb(pg_url, tmp_path / "staging")
    db.enqueue([message(("x@y.example", None))], time.time())
    db.close()
    result = cli("store", "copy", source.url, pg_url)
    assert result.exit_code == 1
    assert "already holds mail" in result.stderr
    assert pg_table_counts(pg_url) == {"messages": 1, "chunks": 0, "jobs": 1, "mailbox": 0, "hops": 1}


def heartbeat(ago: float) -> Callable[[Path], None]:
    """A send side's last heartbeat, `ago` seconds of the lease clock ago."""

    def beat(path: Path) -> None:
        db = SqliteDb(path, Clock(lease=lambda: time.monotonic() - ago))
        db.heartbeat("gateway:GW1", "gw@h:1")
        db.close()

    return beat


def leader(ago: float) -> Callable[[Path], None]:
    """A router took the lead for 30 s, `ago` seconds of the lease clock ago."""

    def lead(path: Path) -> None:
        db = SqliteDb(path, Clock(lease=lambda: time.monotonic() - ago))
        assert db.lead("failover", "router@h:1", 30.0)
        db.close()

    return lead


def rebooted(path: Path) -> None:
    """A fresh heartbeat of the last boot: the host rebooted since."""
    heartbeat(0)(path)
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE boot SET boot_id = 'the-boot-before'")


RUNNING = {"heartbeat": heartbeat(0), "heartbeat-20s-ago": heartbeat(20), "leader": leader(0)}
STOPPED = {"heartbeat-40s-ago": heartbeat(40), "leader-term-over": leader(60),
           "rebooted": rebooted}


@pytest.mark.parametrize("running", list(RUNNING))
def test_copy_is_refused_while_the_network_runs(source: Source, pg_url: str, running: str) -> None:
    RUNNING[running](source.path)
    result = cli("store", "copy", source.url, pg_url)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: store copy: SRC {source.url}: the network still "
                                    "runs (fresh heartbeats: ")
    assert ("leader:failover" if running == "leader" else "gateway:GW1") in result.stderr
    assert pg_table_counts(pg_url) is None  # not even the schema


@pytest.mark.parametrize("stopped", list(STOPPED))
def test_copy_goes_ahead_once_the_heartbeats_are_stale(
    source: Source, pg_url: str, stopped: str
) -> None:
    STOPPED[stopped](source.path)
    result = cli("store", "copy", source.url, pg_url)
    assert result.exit_code == 0, result.stderr
    assert pg_table_counts(pg_url) == {"messages": 8, "chunks": 3, "jobs": 9, "mailbox": 3,
                                       "hops": 16}


def test_a_copy_that_fails_half_way_leaves_the_database_as_it_was(
    source: Source, pg_url: str
) -> None:
    spool_file = source.path.with_name("acme.db.spool") / source.ids["large"]
    spool_file.unlink()
    result = cli("store", "copy", source.url, pg_url)
    assert result.exit_code == 1
    assert result.stderr == (f"error: store copy: message {source.ids['large']}: its spool "
                             f"file is missing ({spool_file})\n")
    assert pg_table_counts(pg_url) is None


def test_a_cut_spool_file_is_refused_not_copied(source: Source, pg_url: str) -> None:
    spool_file = source.path.with_name("acme.db.spool") / source.ids["large"]
    with spool_file.open("r+b") as file:
        file.truncate(len(BIG) - 1)
    result = cli("store", "copy", source.url, pg_url)
    assert result.exit_code == 1
    assert result.stderr == (f"error: store copy: content of messages {source.ids['large']} "
                             "is not what their size says\n")
    assert pg_table_counts(pg_url) is None


def test_copy_refuses_other_directions_and_older_sources(
    source: Source, pg_url: str, tmp_path: Path
) -> None:
    for src, dst in ((pg_url, source.url), (source.url, f"sqlite:{tmp_path}/other.db")):
        result = cli("store", "copy", src, dst)
        assert result.exit_code == 1
        assert result.stderr == ("error: store copy: copies a SQLite store into PostgreSQL: "
                                 "SRC sqlite:/path/to/file.db, DST postgresql://user@host/dbname\n")
    old = tmp_path / "old.db"
    older_sqlite_store(old)
    result = cli("store", "copy", f"sqlite:{old}", pg_url)
    assert result.exit_code == 1
    assert result.stderr == (f"error: store copy: SRC sqlite:{old}: schema 5, not this "
                             f"gatepost's ({schema.VERSION}): `gatepost store migrate` it first\n")
    assert pg_table_counts(pg_url) is None


def test_copy_takes_the_password_from_the_variable_named(
    source: Source, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = os.environ["PGPASSWORD"]
    monkeypatch.delenv("PGPASSWORD")
    unset = cli("store", "copy", source.url, pg_url, "--password-env", "DST_PASSWORD")
    assert unset.stderr == "error: store copy: --password-env: DST_PASSWORD is not set\n"
    monkeypatch.setenv("DST_PASSWORD", "wrong")
    wrong = cli("store", "copy", source.url, pg_url, "--password-env", "DST_PASSWORD")
    assert wrong.exit_code == 1
    assert "password authentication failed" in wrong.stderr
    monkeypatch.setenv("DST_PASSWORD", password)
    right = cli("store", "copy", source.url, pg_url, "--password-env", "DST_PASSWORD")
    assert right.exit_code == 0, right.stderr
    assert right.stdout.startswith("copied 8 messages")
