"""Adversarial review of the PostgreSQL store and several-host operation.

Each test is one hypothesis about a failure path (a broken network, a broken
database, concurrent transactions from several hosts, a late reply). A test
marked xfail(strict=True) demonstrates a defect: it asserts the promised
behaviour and fails today. The others checked a hypothesis that held.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from gatepost.router import Router
from gatepost.store import (
    ROUTER,
    Bounced,
    Deferred,
    Delivered,
    Job,
    NewMessage,
    NewRecipient,
    Renewal,
    send_queue,
)
from gatepost.store.clock import ManualClock
from gatepost.store.leases import Attempt
from gatepost.store.memory import MemoryStore
from gatepost.store.postgres import PgStore
from gatepost.store.postgres_db import PgDb
from gatepost.topology import load
from test_fence import TOPOLOGY as FENCE_TOPOLOGY

T = TypeVar("T")
TEST_TIMEOUT = 60.0


def run(body: Callable[[], Awaitable[T]], timeout: float = TEST_TIMEOUT) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(body(), timeout)

    return asyncio.run(bounded())


def rows(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def message(*addresses: str, queue_id: str = "", received_by: str = "gateway:GW1") -> NewMessage:
    recipients = tuple(NewRecipient(a, None) for a in addresses or ("bob@ext.org",))
    return NewMessage("alice@example.com", recipients, b"Subject: hi\r\n\r\nbody\r\n",
                      "HQ", "SALES", received_by, queue_id=queue_id)


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


# -- 1. purge and an admin delete at once (READ COMMITTED) ---------------------------


def test_a_purge_racing_an_admin_delete_leaves_no_orphaned_message(
        pg_url: str, tmp_path: Path) -> None:
    first, last = "A" * 12, "Z" * 12  # set_state takes messages in sorted order
    setup = PgDb(pg_url, tmp_path / "staging")
    admin = PgDb(pg_url, tmp_path / "staging")
    purger = PgDb(pg_url, tmp_path / "staging")
    blocker = psycopg.connect(pg_url)
    try:
        now = time.time()
        setup.enqueue([message("a@ext.org", "b@ext.org", queue_id=first),
                       message("c@ext.org", queue_id=last)], now)
        jobs = {(j.message_id, j.rcpt_id): j for j in setup.claim(ROUTER, "w", 10, 60.0, now)}
        setup.complete([Delivered(jobs[first, 0], "relay", "250 ok"),
                        Deferred(jobs[first, 1], now + 3600, "451 later"),
                        Deferred(jobs[last, 0], now + 3600, "451 later")], now)
        # Another host's transaction holds the last message's job for a moment.
        blocker.execute("SELECT 1 FROM jobs WHERE message_id = %s FOR UPDATE", (last,))
        pid = admin._conn.info.backend_pid
        deleting = threading.Thread(
            target=admin.set_state, args=([first, last], "delete", now), daemon=True)
        deleting.start()  # deletes (first, 1), then waits for the lock on `last`

        def waiting() -> bool:
            found = rows(pg_url, "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                         (pid,))
            return found == [("Lock",)]

        wait_until(waiting)
        purging = threading.Thread(target=purger.purge, args=(now + 60, now), daemon=True)
        purging.start()  # the delivered (first, 0) goes; then it waits for the message's lock
        time.sleep(0.5)
        blocker.rollback()
        deleting.join(20)
        purging.join(20)
        assert not deleting.is_alive() and not purging.is_alive()
        purger.purge(now + 60, now)
        left = rows(pg_url, "SELECT id FROM messages m WHERE NOT EXISTS "
                            "(SELECT 1 FROM jobs j WHERE j.message_id = m.id) AND NOT EXISTS "
                            "(SELECT 1 FROM mailbox b WHERE b.message_id = m.id)")
        assert left == []
    finally:
        blocker.close()
        for db in (setup, admin, purger):
            db.close()


# -- 2. the fence and a renewal whose reply comes late ------------------------------

A_OWNER, B_OWNER = "send:GW_A@host-a:1", "send:GW_B@host-b:1"


async def routed_to_primary(store: MemoryStore, router: Router) -> None:
    """Both gateways running; one message from BRANCH routed to GW_A, the primary."""
    await store.heartbeat("gateway:GW_A", A_OWNER)
    await store.heartbeat("gateway:GW_B", B_OWNER)
    await store.enqueue(NewMessage(
        "ann@branch.fence.example", (NewRecipient("x@example.org", None),),
        b"Subject: s\r\n\r\nb\r\n", "BRANCH", "BRANCH", "test"))
    await router.failover()
    await router.step()


class LateReplies:
    """The store as a cut-off host sees it: each renewal reaches the database and
    is done at once, but its reply is held up in the network for `late` seconds
    (an asymmetric partition, TCP retransmissions); `meanwhile` runs once, while
    the first late reply is on its way."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.late = 0.0
        self.meanwhile: Callable[[], Awaitable[None]] | None = None

    async def renew(self, jobs: Sequence[Job], lease: float) -> Renewal:
        renewal = await self.store.renew(jobs, lease)
        if self.late:
            started = time.monotonic()
            if self.meanwhile is not None:
                hook, self.meanwhile = self.meanwhile, None
                await hook()
            await asyncio.sleep(max(0.0, self.late - (time.monotonic() - started)))
        return renewal


def test_a_renewal_answered_after_the_takeover_sends_no_dot(tmp_path: Path) -> None:
    config = tmp_path / "fence.toml"
    config.write_text(FENCE_TOPOLOGY)
    topo = load(config)
    manual = ManualClock()

    async def main() -> tuple[str | None, list[Job]]:
        store = MemoryStore(manual.clock(), tmp_path / "spool")
        router = Router(topo, store)
        await routed_to_primary(store, router)
        jobs = await store.claim(send_queue("GW_A"), A_OWNER, 10, 120.0)
        assert len(jobs) == 1
        net = LateReplies(store)
        fence = topo.queue.fence / 10  # 0.2 s: the test runs in real time
        taken: list[Job] = []

        async def takeover() -> None:  # GW_A is silent: GW_B takes its mail
            manual.step(lease=6.0)
            await store.heartbeat("gateway:GW_B", B_OWNER)
            await router.failover()
            await router.step()
            await router.step()
            taken.extend(await store.claim(send_queue("GW_B"), B_OWNER, 10, 120.0))

        attempt = Attempt(net, jobs, 120.0, time.monotonic(), fresh=fence)  # type: ignore[arg-type]
        # The claim's first dot always asks the store (to extend the lease past the final
        # reply's timeout). The request is done at once; then the network stalls, the
        # heartbeats stop, GW_B takes the mail over, and the reply comes 2 s (10 fences)
        # after it was asked, as a TCP retransmission after a blip of a few seconds would.
        net.late, net.meanwhile = 10 * fence, takeover
        async with attempt:
            answer = await attempt.before_dot(jobs, 600.0)
        return answer, taken

    answer, taken = run(main)
    assert [(j.message_id, j.rcpt_id) for j in taken], "GW_B holds the message now"
    assert answer == "lost"


# -- 3. a commit whose answer never comes back --------------------------------------


class CutAfterCommit:
    """A TCP proxy in front of the database. Once `armed`, it passes the next COMMIT
    on and cuts that connection when the server answers, without passing the answer
    back: the commit happened, the client only sees a broken connection."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.armed = threading.Event()
        self.cuts = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, url: str) -> str:
        return url.replace(f":{self.upstream}/", f":{self.port}/")

    def close(self) -> None:
        self.closing = True
        self.listener.close()

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            cut = threading.Event()
            for ends in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(*ends, cut), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upward: bool,
              cut: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if cut.is_set():
                    break  # the answer to the COMMIT: lost
                if upward and b"COMMIT\x00" in data and self.armed.is_set():
                    self.armed.clear()
                    self.cuts += 1
                    cut.set()  # the server's answer, once it has committed, cuts both ends
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()


def bounce_report(about: str) -> NewMessage:
    """A report as notify.report makes one: with its queue id from the start."""
    from gatepost.store import new_queue_id

    return NewMessage("", (NewRecipient("alice@example.com", None),),
                      f"Subject: undeliverable {about}\r\n\r\nx\r\n".encode(), "HQ", "HQ", "bounce",
                      queue_id=new_queue_id())


@pytest.fixture
def cutter(pg_url: str) -> Iterator[CutAfterCommit]:
    port = int(pg_url.rsplit(":", 1)[1].split("/", 1)[0])
    proxy = CutAfterCommit(port)
    yield proxy
    proxy.close()


def test_outcomes_committed_without_an_answer_add_no_second_report(
        pg_url: str, cutter: CutAfterCommit, tmp_path: Path) -> None:
    async def body() -> int:
        store = PgStore(cutter.url(pg_url), staging=tmp_path / "staging")
        try:
            for n in range(2):
                await store.enqueue(message(f"r{n}@ext.org"))
            jobs = await store.claim(ROUTER, "w", 10, 60.0)
            assert len(jobs) == 2
            cutter.armed.set()
            await asyncio.gather(*(
                store.complete([Bounced(job, "550 no such user")], new=[bounce_report(str(n))])
                for n, job in enumerate(jobs)))
            assert cutter.cuts == 1
        finally:
            await store.aclose()
        return len(rows(pg_url, "SELECT id FROM messages WHERE received_by = 'bounce'"))

    assert run(body) == 2


def test_an_enqueue_whose_commit_answer_is_lost_is_not_answered_250_twice(
        pg_url: str, cutter: CutAfterCommit, tmp_path: Path) -> None:
    """Checked: the receive side names its messages in advance, so a batch of enqueues
    written again after a lost COMMIT answer fails (the ids are taken) instead of
    storing second copies; each caller answers 4xx and no message is stored twice
    (the client may still send it again: SMTP's own window)."""
    async def body() -> list[BaseException | str]:
        store = PgStore(cutter.url(pg_url), staging=tmp_path / "staging")
        try:
            await store.enqueue(message())  # the connection and schema are there
            cutter.armed.set()
            return await asyncio.gather(*(
                store.enqueue(message(queue_id=f"Q{n}AAAAAAAA")) for n in range(3)),
                return_exceptions=True)
        finally:
            await store.aclose()

    results = run(body)
    assert cutter.cuts == 1
    assert all(isinstance(r, Exception) for r in results), results
    assert rows(pg_url, "SELECT count(*) FROM messages WHERE id LIKE 'Q%%'") == [(3,)]


# -- 4. failover on a stale view of who runs -----------------------------------------


def test_failover_takes_nothing_a_gateway_claimed_after_its_heartbeat_came_back(
        tmp_path: Path) -> None:
    config = tmp_path / "fence.toml"
    config.write_text(FENCE_TOPOLOGY)
    topo = load(config)
    manual = ManualClock()

    async def main() -> Renewal:
        store = MemoryStore(manual.clock(), tmp_path / "spool")
        router = Router(topo, store)
        await routed_to_primary(store, router)
        manual.step(lease=6.0)  # GW_A was cut off for 6 s ...
        await store.heartbeat("gateway:GW_B", B_OWNER)
        claimed: list[Job] = []
        lead = store.lead

        async def slow_lead(duty: str, owner: str, term: float) -> bool:
            # ... and is back while the router's failover runs (its lead call slow):
            # a heartbeat, then a claim of its mail, which it starts sending.
            await store.heartbeat("gateway:GW_A", A_OWNER)
            claimed.extend(await store.claim(send_queue("GW_A"), A_OWNER, 10, 120.0))
            return await lead(duty, owner, term)

        store.lead = slow_lead  # type: ignore[method-assign]
        await router.failover()
        assert claimed and await store.alive(topo.queue.failover_after) >= {"gateway:GW_A"}
        return await store.renew(claimed, 120.0)

    renewal = run(main)
    assert renewal.held, "the running gateway's fresh claim was taken from it"


# -- 5. store copy while part of the network still runs ------------------------------


def test_copy_is_refused_while_a_receive_gateway_still_accepts_mail(
        pg_url: str, tmp_path: Path) -> None:
    """The receive-only role as `gatepost run --only gateway:RECV` runs it
    (runner.serve_roles), on a SQLite store: `store copy` must see it running."""
    from gatepost import runner
    from gatepost.store.copy import CopyRefused, copy_store
    from gatepost.topology import load
    from support import free_port

    config = tmp_path / "recv.toml"
    config.write_text(RECEIVE_ONLY.format(port=free_port()))
    topo = load(config)

    async def body() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        serving = asyncio.ensure_future(
            runner.serve_roles(topo, ["gateway:RECV"], lambda _: ready.set(), stop))
        try:
            await asyncio.wait_for(ready.wait(), 30)
            await asyncio.sleep(0.5)  # its first heartbeat
            with pytest.raises(CopyRefused):
                await asyncio.to_thread(copy_store, topo.store, pg_url)
        finally:
            stop.set()
            await serving

    run(body)


RECEIVE_ONLY = """\
[network]
name = "R"
store = "sqlite:var/r.db"

[postoffices.IN]
domains = ["in.example"]
mailboxes = ["postmaster"]

[gateways.RECV]
postoffice = "IN"
role = "receive"
listen = "127.0.0.1:{port}"

[gateways.SEND]
postoffice = "IN"
role = "send"
smarthost = "127.0.0.1:1"
serves = ["IN"]
"""


# -- 6. hypotheses that held ---------------------------------------------------------


def test_empty_lists_and_an_infinite_key_are_valid_parameters(
        pg_url: str, tmp_path: Path) -> None:
    """Checked: psycopg takes an empty dead-owner list (text[]) and the queue's start
    key (-inf as float8); requeue with no dead owners still hands back waiting mail."""
    db = PgDb(pg_url, tmp_path / "staging")
    try:
        now = time.time()
        [message_id] = db.enqueue([message()], now)
        [job] = db.claim(ROUTER, "w", 10, 60.0, now)
        db.complete([Deferred(job, now + 3600, "451 later")], now)
        assert [e.message_id for e in db.queue(after=None)] == [message_id]
        assert db.requeue(ROUTER, ["SALES"], now, dead=()) == 1
    finally:
        db.close()


def test_the_listener_hears_again_after_its_connection_is_ended(
        pg_url: str, tmp_path: Path) -> None:
    """Checked: the LISTEN connection ended by the server (pg_terminate_backend) is
    opened again by the listener thread, which then wakes its watchers again."""
    async def body() -> None:
        store = PgStore(pg_url, staging=tmp_path / "staging")
        woken = asyncio.Event()
        try:
            store.watch(ROUTER, woken)
            listening = "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN%%'"
            await asyncio.to_thread(wait_until, lambda: bool(rows(pg_url, listening)))
            [(old,)] = rows(pg_url, listening)
            rows(pg_url, "SELECT pg_terminate_backend(%s)", (old,))
            await asyncio.to_thread(
                wait_until, lambda: [p for (p,) in rows(pg_url, listening) if p != old] != [])
            await asyncio.sleep(0.5)  # it wakes everyone once as it listens again: not that
            woken.clear()
            await store.enqueue(message())
            await asyncio.wait_for(woken.wait(), 5.0)
        finally:
            await store.aclose()
        assert not (store._listener.thread and store._listener.thread.is_alive())

    run(body)
