"""Fill a store with N deferred messages fast, for the large-queue benchmark.

Messages are written by the store itself (`SqliteDb.enqueue`, batches of
10,000 in one transaction each), so the rows always match the current schema;
then one UPDATE per batch turns them into what a gateway leaves behind when the
smart host keeps answering 4xx: waiting in the gateway's send queue, deferred,
next attempt far in the future. Run alone: `python -m bench.fill FILE N`.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RELAY_RCPT, SENDER
from gatepost.store import NewMessage, NewRecipient, send_queue
from gatepost.store.sqlite_db import SqliteDb

BATCH = 10_000
FUTURE = 10 * 365 * 86400.0  # next attempt ten years ahead: never due during a run
CONTENT = b"From: <" + SENDER.encode() + b">\r\nSubject: backlog\r\n\r\n" + b"x" * 200 + b"\r\n"
_DEFER = """UPDATE jobs SET queue = ?, state = 'deferred', attempts = 1, first_attempt = ?,
    next_attempt = ?, last_reply = '451 4.3.0 try again later', updated = ?
    WHERE queue = 'router' AND state = 'incoming'"""


def backlog_message(postoffice: str) -> NewMessage:
    return NewMessage(SENDER, (NewRecipient(RELAY_RCPT, None),), CONTENT, postoffice,
                      postoffice, "bench-fill")


def fill(path: Path, n: int, gateway: str = "GW1", postoffice: str = "HQ",
         now: float | None = None) -> float:
    """Add `n` deferred messages for `gateway` to the store at `path`; returns seconds taken.
    The store must hold no other incoming router mail (the UPDATE takes all of it)."""
    began = time.perf_counter()
    now = time.time() if now is None else now
    store = SqliteDb(path)  # synchronous: one connection, no event loop
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        for start in range(0, n, BATCH):
            count = min(BATCH, n - start)
            store.enqueue([backlog_message(postoffice)] * count, now)
            conn.execute(_DEFER, (send_queue(gateway), now, now + FUTURE, now))
    finally:
        conn.close()
        store.close()
    return time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("n", type=int)
    parser.add_argument("--gateway", default="GW1")
    parser.add_argument("--postoffice", default="HQ")
    args = parser.parse_args(argv)
    seconds = fill(args.path, args.n, args.gateway, args.postoffice)
    print(f"{args.n} deferred messages in {args.path} ({seconds:.1f}s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
