"""Which Python PostgreSQL driver for the store: group-commit enqueue, claim and round-trip figures.

    python bench/pg_driver.py [--seconds S] [--url URL]

Without --url it starts a throwaway PostgreSQL 15 cluster (fsync on, unix socket only); with
--url it works in a schema driver_bench of that database. Either is removed at the end.
One connection per driver; each case runs S seconds, interleaved over 3 rounds; medians are
printed as Markdown. An enqueue is one transaction of N messages with 8 KB content and 2
recipients each (1 messages, 2 jobs and 2 hops rows). A claim is SELECT ... LIMIT 64 FOR UPDATE
SKIP LOCKED, then an UPDATE that moves those jobs to the back (created = now) of the queue.
"""

import argparse
import asyncio
import base64
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import asyncpg
import psycopg
import uvloop  # as gatepost runs its loop

PGBIN = "/usr/lib/postgresql/15/bin"
BATCHES = (1, 16, 64)
ROUNDS = 3
QUEUE = "bench"
CONTENT = base64.b64encode(os.urandom(6144))  # 8 KB, like a base64 attachment
NS = "driver_bench"  # the schema that holds the tables, dropped at the end
SCHEMA = f"""
DROP SCHEMA IF EXISTS {NS} CASCADE; CREATE SCHEMA {NS}; SET search_path = {NS};
CREATE TABLE messages (id text PRIMARY KEY, sender text, size int, created float8,
  location text, origin text, received_by text, hop_count int, content_file text, content bytea);
CREATE TABLE jobs (message_id text, rcpt_id int, address text, mailbox text, location text,
  queue text, state text, created float8, updated float8, PRIMARY KEY (message_id, rcpt_id));
CREATE INDEX jobs_claim ON jobs (queue, state, created);
CREATE TABLE hops (id bigserial PRIMARY KEY, message_id text, rcpt_id int, address text,
  at float8, event text, postoffice text, detail text);
"""
OPTS = f"-c search_path={NS}"
HOP_COLS = ["message_id", "rcpt_id", "address", "at", "event", "postoffice", "detail"]
TABLES = [("messages", None), ("jobs", None), ("hops", HOP_COLS)]  # for COPY
INSERTS = ["INSERT INTO messages VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
           "INSERT INTO jobs VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
           f"INSERT INTO hops ({', '.join(HOP_COLS)}) VALUES ($1, $2, $3, $4, $5, $6, $7)"]
CLAIM = ("SELECT message_id, rcpt_id FROM jobs WHERE queue = $1 AND state = 'incoming'"
         " ORDER BY created LIMIT 64 FOR UPDATE SKIP LOCKED")
TAKE = ("UPDATE jobs SET created = $1, updated = $2 FROM unnest($3::text[], $4::int[]) AS c(m, r)"
        " WHERE message_id = c.m AND rcpt_id = c.r")
pc = partial(re.sub, r"\$\d+", "%s")  # a statement with psycopg's placeholders instead of $n


def rows(n: int) -> tuple[list[Any], list[Any], list[Any]]:
    """The messages, jobs and hops rows of `n` new messages with 2 recipients each."""
    now = time.time()
    msgs, jobs, hops = [], [], []
    for _ in range(n):
        mid = os.urandom(8).hex()
        msgs.append((mid, "s@example.org", len(CONTENT), now, "hq", "smtp", "mx", 0, None, CONTENT))
        for r in range(2):
            jobs.append((mid, r, f"u{r}@example.net", None, "hq", QUEUE, "incoming", now, now))
            hops.append((mid, r, f"u{r}@example.net", now, "received", "hq", "250 queued"))
    return msgs, jobs, hops


class PsycopgSync:
    """psycopg 3 Connection; each transaction is one call handed to one worker thread."""

    def __init__(self, name: str, pipeline: bool = False, thread: bool = True) -> None:
        self.name, self.pipeline, self.thread = name, pipeline, thread
        self.pool = ThreadPoolExecutor(1)

    async def call(self, fn: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, fn) if self.thread else fn()

    async def open(self, url: str) -> None:
        self.conn = await self.call(partial(psycopg.connect, url, autocommit=True, options=OPTS))

    async def enqueue(self, n: int) -> None:
        def run() -> None:
            pipe = self.conn.pipeline() if self.pipeline else contextlib.nullcontext()
            with pipe, self.conn.transaction(), self.conn.cursor() as cur:
                for sql, data in zip(INSERTS, rows(n), strict=True):
                    cur.executemany(pc(sql), data)
        await self.call(run)

    async def claim(self) -> None:
        def run() -> None:
            now = time.time()
            with self.conn.transaction(), self.conn.cursor() as cur:
                got = cur.execute(pc(CLAIM), (QUEUE,)).fetchall()
                cur.execute(pc(TAKE), (now, now, [m for m, _ in got], [r for _, r in got]))
        await self.call(run)

    async def ping(self) -> None:
        await self.call(lambda: self.conn.execute("SELECT 1").fetchone())


class PsycopgAsync:
    """psycopg 3 AsyncConnection; an enqueue runs inside conn.pipeline()."""

    name = "psycopg 3 AsyncConnection + conn.pipeline()"

    async def open(self, url: str) -> None:
        self.conn = await psycopg.AsyncConnection.connect(url, autocommit=True, options=OPTS)

    async def enqueue(self, n: int) -> None:
        async with self.conn.pipeline(), self.conn.transaction(), self.conn.cursor() as cur:
            for sql, data in zip(INSERTS, rows(n), strict=True):
                await cur.executemany(pc(sql), data)

    async def claim(self) -> None:
        now = time.time()
        async with self.conn.transaction(), self.conn.cursor() as cur:
            got = await (await cur.execute(pc(CLAIM), (QUEUE,))).fetchall()
            await cur.execute(pc(TAKE), (now, now, [m for m, _ in got], [r for _, r in got]))

    async def ping(self) -> None:
        await (await self.conn.execute("SELECT 1")).fetchone()


class Asyncpg:
    """asyncpg Connection; an enqueue is executemany (or COPY) per table in a transaction."""

    def __init__(self, name: str, copy: bool = False) -> None:
        self.name, self.copy = name, copy

    async def open(self, url: str) -> None:
        self.conn = await asyncpg.connect(url, server_settings={"search_path": NS})

    async def enqueue(self, n: int) -> None:
        async with self.conn.transaction():
            for sql, (table, cols), data in zip(INSERTS, TABLES, rows(n), strict=True):
                if self.copy:
                    await self.conn.copy_records_to_table(table, records=data, columns=cols)
                else:
                    await self.conn.executemany(sql, data)

    async def claim(self) -> None:
        now = time.time()
        async with self.conn.transaction():
            got = await self.conn.fetch(CLAIM, QUEUE)
            await self.conn.execute(TAKE, now, now, [g[0] for g in got], [g[1] for g in got])

    async def ping(self) -> None:
        await self.conn.fetchval("SELECT 1")


def prepare(admin: psycopg.Connection[Any], claim: bool) -> None:
    """Empty tables and a checkpoint before each case; for a claim, 4000 queued jobs."""
    admin.execute("TRUNCATE messages, jobs, hops")
    if claim:
        admin.cursor().executemany(pc(INSERTS[1]), rows(2000)[1])
        admin.execute("ANALYZE jobs")
    admin.execute("CHECKPOINT")


async def timed(step: Callable[[], Awaitable[None]], seconds: float) -> tuple[float, float]:
    """Run `step` over and over for `seconds`: (calls per second, median call time in µs)."""
    times: list[float] = []
    end = time.perf_counter() + seconds
    while (t := time.perf_counter()) < end:
        await step()
        times.append(time.perf_counter() - t)
    return len(times) / sum(times), statistics.median(times) * 1e6


async def measure(url: str, seconds: float) -> str:
    drivers: list[Any] = [
        PsycopgSync("psycopg 3 sync, worker thread, executemany"),
        PsycopgSync("psycopg 3 sync, worker thread, executemany + conn.pipeline()", pipeline=True),
        PsycopgSync("psycopg 3 sync, no thread hop, executemany", thread=False),
        PsycopgAsync(),
        Asyncpg("asyncpg, executemany"),
        Asyncpg("asyncpg, copy_records_to_table", copy=True),
    ]
    cases: list[Any] = [*BATCHES, "claim", "ping"]
    got: dict[tuple[str, str], list[float]] = {}
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(SCHEMA)
        version = admin.execute("SHOW server_version").fetchone()
        await asyncio.gather(*(d.open(url) for d in drivers))
        for rnd in range(ROUNDS):
            for case in cases:
                for d in drivers:
                    prepare(admin, case == "claim")
                    step = {"claim": d.claim, "ping": d.ping}.get(case)
                    rate, micros = await timed(step or partial(d.enqueue, case), seconds)
                    value = micros if case == "ping" else rate if step else rate * case
                    got.setdefault((d.name, case), []).append(value)
                    print(f"round {rnd + 1} {case!s:5} {value:9.0f}  {d.name}", file=sys.stderr)
        for d in drivers:
            await (d.call(d.conn.close) if isinstance(d, PsycopgSync) else d.conn.close())
        admin.execute(f"DROP SCHEMA {NS} CASCADE")
    head = ["driver / mode", *(f"batch {n} msg/s" for n in BATCHES), "claim tx/s", "SELECT 1 µs"]
    title = (f"PostgreSQL {version[0] if version else '?'}, {os.cpu_count()} cores, load "
             f"{os.getloadavg()[0]:.2f}, {seconds:g} s a case, medians of {ROUNDS} rounds")
    lines = [title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in drivers:
        cells = [f"{statistics.median(got[d.name, c]):.0f}" for c in cases]
        lines.append(f"| {d.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@contextlib.contextmanager
def cluster() -> Iterator[str]:
    """A throwaway cluster run as the postgres user in a temporary folder: yields its URL."""
    folder = tempfile.mkdtemp(prefix="pg-driver-bench-")
    shutil.chown(folder, "postgres")
    data = os.path.join(folder, "data")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pg = partial(subprocess.run, check=True, stdout=subprocess.DEVNULL, timeout=120)
    su = ["runuser", "-u", "postgres", "--"]
    try:
        pg([*su, f"{PGBIN}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"])
        opts = f"-p {port} -k {folder} -c listen_addresses=''"
        pg([*su, f"{PGBIN}/pg_ctl", "-D", data, "-l", f"{folder}/log", "-o", opts, "-w", "start"])
        yield f"postgresql://postgres@/postgres?host={folder}&port={port}"
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            pg([*su, f"{PGBIN}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop"])
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each case")
    parser.add_argument("--url", help="an existing database to use instead of a new cluster")
    args = parser.parse_args()
    with contextlib.nullcontext(args.url) if args.url else cluster() as url:
        print(uvloop.run(measure(url, args.seconds)))


if __name__ == "__main__":
    main()
