"""What the CLI prints: rows and plain-text tables built from store records.

Pure formatting; the only parsing is of stored headers for mailbox listings.
"""

from __future__ import annotations

import email.parser
import email.policy
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from gatepost.store import STATES, Admin, Changes, Hop, Mailboxes, QueueEntry, QueueKey, read_head
from gatepost.topology import Topology

Row = dict[str, Any]


def stamp(when: float | None) -> str:
    return "-" if when is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    lines = [header, *rows]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines
    )


async def mailbox_rows(store: Mailboxes, mailbox: str) -> list[Row]:
    parser = email.parser.BytesHeaderParser(policy=email.policy.default)
    rows = []
    for entry in await store.mailbox(mailbox):
        content = await store.open_mailbox_content(mailbox, entry.entry_id)
        headers = parser.parsebytes(read_head(content))
        rows.append({
            "id": entry.entry_id,
            "queue_id": entry.message_id,
            "from": str(headers.get("From", entry.sender)),
            "to": str(headers.get("To", "")),
            "subject": str(headers.get("Subject", "")),
            "date": str(headers.get("Date", stamp(entry.delivered))),
            "delivered": stamp(entry.delivered),
            "size": entry.size,
        })
    return rows


def mailbox_table(rows: list[Row]) -> str:
    if not rows:
        return "(empty)"
    body = [[str(r["id"]), r["delivered"], r["from"], r["subject"], str(r["size"])] for r in rows]
    return table(body, ["ID", "DELIVERED", "FROM", "SUBJECT", "SIZE"])


SCAN_BUDGET = 10_000  # entries one filtered mailq page examines at most


async def queue_page(
    store: Admin, states: Sequence[str], limit: int, after: QueueKey | None = None,
    gateway: str | None = None, domain: str | None = None,
) -> tuple[list[QueueEntry], QueueKey | None]:
    """One mailq page: up to `limit` entries after `after` that pass the filters,
    and the key to resume from (None when nothing follows). With a filter, a page
    stops after examining SCAN_BUDGET entries and may then be short."""
    chunk = limit + 1 if not (gateway or domain) else max(limit + 1, 1000)
    shown: list[QueueEntry] = []
    cursor, examined = after, 0
    while examined < max(SCAN_BUDGET, 10 * limit):
        entries = await store.queue(states, chunk, cursor)
        for entry in entries:
            if len(shown) == limit:
                return shown, cursor  # `entry` and maybe more follow
            shown += select([entry], gateway, domain)
            cursor, examined = entry.key, examined + 1
        if len(entries) < chunk:
            return shown, None
    return shown, cursor


def changes_text(changes: Changes) -> str:
    """What an admin action did: "2 changed, 1 after its current attempt"."""
    later = f", {changes.later} after its current attempt" if changes.later else ""
    return f"{changes.now} changed{later}"


def cursor_text(key: QueueKey) -> str:
    """A page key as the user passes it to `mailq --after`: CREATED,QUEUE_ID,RCPT."""
    created, message_id, rcpt_id = key
    return f"{created!r},{message_id},{rcpt_id}"


def parse_cursor(text: str) -> QueueKey:
    """The inverse of cursor_text; ValueError when `text` is not one."""
    created, rest = text.split(",", 1)
    message_id, rcpt_id = rest.rsplit(",", 1)
    return (float(created), message_id, int(rcpt_id))


def select(entries: list[QueueEntry], gateway: str | None, domain: str | None) -> list[QueueEntry]:
    """Queue entries waiting for `gateway`'s send side and/or addressed to `domain`."""
    if gateway:
        entries = [e for e in entries if e.queue == f"send:{gateway}"]
    if domain:
        suffix = "@" + domain.lower()
        entries = [e for e in entries if e.address.lower().endswith(suffix)]
    return entries


def queue_rows(entries: list[QueueEntry]) -> list[Row]:
    return [
        {
            "id": e.message_id, "recipient": e.address, "sender": e.sender,
            "postoffice": e.location, "queue": e.queue, "state": e.state,
            "attempts": e.attempts, "next_attempt": stamp(e.next_attempt),
            "arrived": stamp(e.created), "size": e.size, "last_reply": e.last_reply,
        }
        for e in entries
    ]


def queue_table(rows: list[Row], counts: dict[str, int], next_key: QueueKey | None) -> str:
    """The page's rows, a line of counts per state over the whole store, and
    how to ask for the next page when there is one."""
    summary = "-- recipients: " + ", ".join(f"{s} {counts.get(s, 0)}" for s in STATES)
    if next_key is not None:
        summary += f"\n-- {len(rows)} shown; next page: mailq --after {cursor_text(next_key)}"
    if not rows:
        queued = any(n for s, n in counts.items() if s not in ("delivered", "bounced"))
        return ("No recipients to show" if queued else "Mail queue is empty") + f"\n{summary}"
    body = [
        [r["id"], r["state"], r["postoffice"], r["queue"], str(r["attempts"]),
         r["next_attempt"], r["recipient"], r["last_reply"][:40]]
        for r in rows
    ]
    header = ["QUEUE ID", "STATE", "WAITS IN", "QUEUE", "TRIES", "NEXT", "RECIPIENT", "LAST REPLY"]
    return f"{table(body, header)}\n{summary}"


def trace_table(hops: list[Hop]) -> str:
    body = [[stamp(h.at), h.address, h.event, h.postoffice, h.detail] for h in hops]
    return table(body, ["TIME", "RECIPIENT", "EVENT", "POSTOFFICE", "DETAIL"])


def first_receiver_po(topo: Topology) -> str:
    """Where mail from outside enters when no sender is given."""
    for gateway in topo.gateways.values():
        if gateway.receives:
            return gateway.postoffice
    return next(iter(topo.postoffices))


def ready(listening: list[str]) -> None:
    for line in listening:
        click.echo(f"gatepost: {line}", err=True)
    click.echo("gatepost: ready", err=True)


def to_fd(fd: int) -> Callable[[list[str]], None]:
    """An announce callback for a supervised process: its lines, then "ready", on `fd`."""

    def announce(listening: list[str]) -> None:
        with os.fdopen(fd, "w") as pipe:
            pipe.write("".join(f"{line}\n" for line in listening) + "ready\n")

    return announce


def guide(topo: Topology, config: Path) -> Callable[[list[str]], None]:
    """An announce callback that also tells a newcomer what to try."""

    def announce(listening: list[str]) -> None:
        ready(listening)
        receiver = next((g for g in topo.gateways.values() if g.receives and g.listen), None)
        po = next(iter(topo.postoffices.values()))
        mailbox = f"{po.mailboxes[0]}@{po.domains[0]}" if po.domains and po.mailboxes else "..."
        lines = [
            "",
            f"gatepost is running {topo.name} from {config}. Try, in another terminal:",
        ]
        if receiver and receiver.listen:
            lines.append(f"  swaks --server {receiver.listen} --to {mailbox}")
        c = f"-c {config}"
        lines += [
            f"  .venv/bin/gatepost {c} mailbox {mailbox}",
            (
                f"  .venv/bin/gatepost {c} send --from {mailbox} --to someone@example.org "
                "--subject hello --body hi"
            ),
            f"  .venv/bin/gatepost {c} mailq",
            f"  .venv/bin/gatepost {c} diagram",
            "Stop with Ctrl-C.",
        ]
        click.echo("\n".join(lines), err=True)

    return announce
