"""The `gatepost` command line: parses arguments, calls the components, prints.

It holds no logic of its own: loading and checking are `topology`'s, queue
state is the `store`'s, message building is `submit`'s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from gatepost import submit, views
from gatepost.network import network_store
from gatepost.send.credentials import MissingSecret
from gatepost.send.deliverylog import FORMAT_VARIABLE
from gatepost.store import (
    STATES,
    QueueEntry,
    QueueKey,
    Store,
    StoreBehind,
    StoreDamaged,
)
from gatepost.topology import (
    AddressError,
    Native,
    Topology,
    TopologyError,
    check,
    describe_route,
    load,
    native_str,
    parse,
)
from gatepost.topology import diagram as drawing

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
DEFAULT_CONFIG = "gatepost.toml"


def config_option(command: F) -> F:
    """-c/--config, accepted before or after the command name."""
    return click.option(
        "-c", "--config", "config", type=click.Path(path_type=Path), default=None,
        help=f"Topology file (default: {DEFAULT_CONFIG}).",
    )(command)


@click.group()
@config_option
@click.pass_context
def main(ctx: click.Context, config: Path | None) -> None:
    """gatepost: postoffices, a router and SMTP gateways sharing one store."""
    ctx.obj = config


def config_path(config: Path | None) -> Path:
    parent = click.get_current_context().find_root().obj
    return config or parent or Path(DEFAULT_CONFIG)


def topology(config: Path | None) -> Topology:
    """Load the topology, or print every problem and exit 2."""
    try:
        return load(config_path(config))
    except TopologyError as error:
        for problem in error.problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(2)


def with_store(topo: Topology, work: Callable[[Store], Awaitable[T]]) -> T:
    """Run `work` on the store (opened for it, closed after)."""

    async def run() -> T:
        try:
            store = network_store(topo, migrate=False)  # only `gatepost run` upgrades it
        except MissingSecret as error:
            raise click.ClickException(f"network.store: {error}") from error
        try:
            return await work(store)
        finally:
            await store.aclose()

    try:
        return asyncio.run(run())
    except StoreBehind as error:
        raise click.ClickException(f"network.store {topo.store}: {error}") from error


def deferred_ids(topo: Topology) -> tuple[str, ...]:
    entries = with_store(topo, lambda store: store.queue(("deferred",), 10**9))
    return tuple(dict.fromkeys(e.message_id for e in entries))


def address(topo: Topology, text: str) -> Native | str:
    try:
        return parse(topo, text)
    except AddressError as error:
        raise click.BadParameter(str(error)) from error


@main.command("check")
@config_option
@click.option("--store", "whole_store", is_flag=True,
              help="Also read the whole store and check every page (slow on a large store).")
def check_command(config: Path | None, whole_store: bool) -> None:
    """Validate the topology file (and the store); exit 0 when valid, 2 when not."""
    path = config_path(config)
    topo, errors, warnings = check(path)
    for problem in errors:
        click.echo(f"error: {problem}", err=True)
    for problem in warnings:
        click.echo(f"warning: {problem}", err=True)
    if errors or topo is None:
        sys.exit(2)
    click.echo(
        f"{path}: ok: network {topo.name}, {len(topo.postoffices)} postoffices, "
        f"{len(topo.gateways)} gateways"
    )
    if whole_store:
        check_store(topo)


def check_store(topo: Topology) -> None:
    try:
        damage = with_store(topo, lambda store: store.check())
    except StoreDamaged as error:
        damage = str(error)
    if damage != "ok":
        click.echo(f"error: network.store {topo.store}: damaged ({damage})", err=True)
        sys.exit(2)
    click.echo(f"network.store {topo.store}: ok")


@main.command("run")
@config_option
@click.option("--only", "only", default=None, metavar="ROLE[,ROLE...]",
              help="Run only these roles: router, gateway:NAME, capture.")
@click.option("--guide", is_flag=True, help="Print where to point a client and what to try.")
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail.")
@click.option("--ready-fd", type=int, default=None, hidden=True,
              help="Announce readiness on this file descriptor (used by the supervisor).")
def run_command(config: Path | None, only: str | None, guide: bool, verbose: bool,
                ready_fd: int | None) -> None:
    """Run the topology until SIGTERM or Ctrl-C: every role in a process of its
    own, or --only the roles named, in this process."""
    from gatepost import runner  # here: the other commands start faster without it
    from gatepost.supervisor import Supervisor, ignore_stop_signals

    topo = topology(config)
    try:
        roles = runner.parse_roles(topo, only)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--only") from error
    configure_logging(verbose)
    path = config_path(config)
    announce = views.guide(topo, path) if guide else views.ready
    if only is None:
        supervisor = Supervisor(path.resolve(), runner.process_roles(topo), verbose)
        sys.exit(supervisor.run(announce))
    ignore_stop_signals()  # never fatal: serving turns them into a clean stop
    try:
        runner.run(topo, roles, views.to_fd(ready_fd) if ready_fd is not None else announce)
    except runner.StartError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)


class JsonLines(logging.Formatter):
    """GATEPOST_LOG_FORMAT=json: one JSON object per line; delivery log lines
    (already JSON objects) pass through as they are."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if message.startswith("{"):
            return message
        fields = {"time": record.created, "process": record.process,
                  "logger": record.name, "level": record.levelname, "message": message}
        return json.dumps(fields, ensure_ascii=False)


def configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get(FORMAT_VARIABLE, "").lower() == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s gatepost[%(process)d] %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


@main.command("send")
@config_option
@click.option("--from", "sender", required=True, help="A local mailbox (NET/PO/MAILBOX or SMTP).")
@click.option("--to", "recipients", required=True, multiple=True, help="Recipient; repeatable.")
@click.option("--subject", default="", help="Subject line.")
@click.option("--body", default=None, help="Message text.")
@click.option("--body-file", type=click.File("r"), default=None, help="Read the text from a file.")
def send_command(config: Path | None, sender: str, recipients: tuple[str, ...],
                 subject: str, body: str | None, body_file: Any) -> None:
    """Submit a message from a local mailbox; prints its queue id."""
    topo = topology(config)
    origin = address(topo, sender)
    if not isinstance(origin, Native):
        raise click.BadParameter(f"{sender} is not a mailbox of {topo.name}", param_hint="--from")
    targets = [address(topo, r) for r in recipients]
    text = body if body is not None else (body_file or sys.stdin).read()
    message = submit.compose(topo, origin, targets, subject, text, time.time())
    click.echo(with_store(topo, lambda store: store.enqueue(message)))


@main.command("mailbox")
@config_option
@click.argument("mailbox")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@click.option("--show", "show", type=int, default=None, metavar="ID", help="Print one raw message.")
def mailbox_command(config: Path | None, mailbox: str, as_json: bool, show: int | None) -> None:
    """List a mailbox, or print one message with --show ID."""
    topo = topology(config)
    owner = address(topo, mailbox)
    if not isinstance(owner, Native):
        raise click.BadParameter(f"{mailbox} is not a mailbox of {topo.name}")
    if show is not None:
        content = with_store(topo, lambda store: store.open_mailbox_content(owner.key, show))
        if content is None:
            raise click.ClickException(f"no message {show} in {native_str(topo, owner)}")
        with content:
            shutil.copyfileobj(content, sys.stdout.buffer, 256 * 1024)
        return
    rows = with_store(topo, lambda store: views.mailbox_rows(store, owner.key))
    click.echo(json.dumps(rows, indent=2) if as_json else views.mailbox_table(rows))


@main.command("mailq")
@config_option
@click.option("--json", "as_json", is_flag=True,
              help="JSON output: a list of rows; the next page's --after goes to stderr.")
@click.option("--state", "states", multiple=True, type=click.Choice(STATES),
              help="Only recipients in this state (repeatable; default: all not final).")
@click.option("--gateway", default=None, help="Only mail waiting for this gateway's send side.")
@click.option("--domain", default=None, help="Only recipients at this domain.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1),
              help="At most this many rows (one page).")
@click.option("--after", "after", default=None, metavar="CURSOR",
              help="Start after this place: the cursor the previous page printed.")
def mailq_command(config: Path | None, as_json: bool, states: tuple[str, ...],
                  gateway: str | None, domain: str | None, limit: int,
                  after: str | None) -> None:
    """What is queued: where it waits, its state, attempts and next attempt.
    One page, oldest first; the page says how to get the next one."""
    start = cursor_option(after)

    async def page(store: Store) -> tuple[list[QueueEntry], QueueKey | None, dict[str, int]]:
        entries, next_key = await views.queue_page(store, states, limit, start, gateway, domain)
        return entries, next_key, {} if as_json else await store.counts()

    entries, next_key, counts = with_store(topology(config), page)
    rows = views.queue_rows(entries)
    if not as_json:
        click.echo(views.queue_table(rows, counts, next_key))
        return
    click.echo(json.dumps(rows, indent=2))
    if next_key is not None:
        click.echo(f"next page: --after {views.cursor_text(next_key)}", err=True)


def cursor_option(text: str | None) -> QueueKey | None:
    if text is None:
        return None
    try:
        return views.parse_cursor(text)
    except ValueError as error:
        raise click.BadParameter(f"{text!r} is not a cursor mailq printed",
                                 param_hint="--after") from error


def admin(config: Path | None, ids: tuple[str, ...], action: str) -> None:
    """Apply a queue action to messages by id and say how many recipients changed,
    and how many change once the attempt sending them ends; exit 1 when none."""
    changes = with_store(topology(config), lambda store: store.set_state(ids, action))
    click.echo(f"{action}: {views.changes_text(changes)}")
    if not (changes.now or changes.later):
        sys.exit(1)


@main.command("flush")
@config_option
@click.argument("ids", nargs=-1)
def flush_command(config: Path | None, ids: tuple[str, ...]) -> None:
    """Retry deferred mail now (the given messages, or every deferred one)."""
    if not ids:
        ids = deferred_ids(topology(config))
        if not ids:
            click.echo("flush: nothing is deferred")
            return
    admin(config, ids, "flush")


@main.command("hold")
@config_option
@click.argument("ids", nargs=-1, required=True)
def hold_command(config: Path | None, ids: tuple[str, ...]) -> None:
    """Put messages on hold: kept, never attempted, until released."""
    admin(config, ids, "hold")


@main.command("release")
@config_option
@click.argument("ids", nargs=-1, required=True)
def release_command(config: Path | None, ids: tuple[str, ...]) -> None:
    """Release held messages: they are attempted again at once."""
    admin(config, ids, "release")


@main.command("requeue")
@config_option
@click.argument("ids", nargs=-1, required=True)
def requeue_command(config: Path | None, ids: tuple[str, ...]) -> None:
    """Route messages again from where they wait (after a topology change)."""
    admin(config, ids, "requeue")


@main.command("delete")
@config_option
@click.argument("ids", nargs=-1)
@click.option("--all-deferred", is_flag=True, help="Delete every deferred message.")
def delete_command(config: Path | None, ids: tuple[str, ...], all_deferred: bool) -> None:
    """Delete queued messages (their recipients not yet delivered)."""
    if all_deferred:
        ids += deferred_ids(topology(config))
        if not ids:
            click.echo("delete: nothing is deferred")
            return
    if not ids:
        raise click.UsageError("name queue ids, or --all-deferred")
    admin(config, ids, "delete")


@main.command("route")
@config_option
@click.argument("recipient")
@click.option("--from", "sender", default=None, help="Sender (decides the outbound gateway).")
def route_command(config: Path | None, recipient: str, sender: str | None) -> None:
    """The path a message would take, postoffice by postoffice."""
    topo = topology(config)
    target = address(topo, recipient)
    origin = address(topo, sender) if sender else None
    start = origin.postoffice if isinstance(origin, Native) else views.first_receiver_po(topo)
    for line in describe_route(topo, target, start):
        click.echo(line)


@main.command("trace")
@config_option
@click.argument("queue_id")
def trace_command(config: Path | None, queue_id: str) -> None:
    """The hops a message actually took, with times."""
    hops = with_store(topology(config), lambda store: store.hops(queue_id))
    if not hops:
        raise click.ClickException(f"no message with queue id {queue_id}")
    click.echo(views.trace_table(hops))


@main.command("diagram")
@config_option
@click.option("--format", "fmt", type=click.Choice(["text", "svg"]), default="text")
def diagram_command(config: Path | None, fmt: str) -> None:
    """Draw the topology as text (100 columns) or SVG."""
    topo = topology(config)
    click.echo(drawing.text(topo) if fmt == "text" else drawing.svg(topo), nl=False)


# -- the store: schema and copy ----------------------------------------------------


@main.group("store")
def store_group() -> None:
    """The store's schema (init, migrate, check), and copying a SQLite store into PostgreSQL."""


def store_version(topo: Topology, migrate: bool, check: bool = False) -> tuple[int, int, str]:
    """Open the topology's store (`migrate`: upgrade an older schema): the schema
    version found before (0: none), the version now, and its check ("" unless
    `check`). Any failure is printed, naming network.store, with exit 1."""
    from gatepost.send.credentials import store_password
    from gatepost.store import copy as copying

    async def opened(store: Store) -> tuple[int, str]:
        return await store.version(), await store.check() if check else ""

    async def run() -> tuple[int, str]:
        store = network_store(topo, migrate=migrate)
        try:
            return await opened(store)
        finally:
            await store.aclose()

    try:
        before = copying.stored_version(topo.store, store_password(topo))
        if check and not before:
            raise ValueError("no schema yet; `gatepost store init` creates it")
        return (before, *asyncio.run(run()))
    except StoreBehind as error:
        hint = "" if migrate else "; `gatepost store migrate` upgrades it"
        store_error(topo, f"{error}{hint}")
    except (MissingSecret, StoreDamaged, RuntimeError, ValueError, *copying.ERRORS) as error:
        store_error(topo, str(error))


def store_error(topo: Topology, text: str) -> NoReturn:
    click.echo(f"error: network.store {topo.store}: {one_line(text)}", err=True)
    sys.exit(1)


def one_line(text: str) -> str:
    return " ".join(text.split())


@store_group.command("init")
@config_option
def store_init_command(config: Path | None) -> None:
    """Create the schema of the topology's store (an empty file or database)."""
    say_schema(config, migrate=False)


@store_group.command("migrate")
@config_option
def store_migrate_command(config: Path | None) -> None:
    """Upgrade an older schema (stop the processes of an older gatepost first)."""
    say_schema(config, migrate=True)


def say_schema(config: Path | None, migrate: bool) -> None:
    """Open the store (creating, or with `migrate` upgrading, its schema); say what changed."""
    topo = topology(config)
    before, version, _ = store_version(topo, migrate=migrate)
    click.echo(f"network.store {topo.store}: {schema_change(before, version)}")


def schema_change(before: int, version: int) -> str:
    if not before:
        return f"created schema {version}"
    if before == version:
        return f"schema {version} already there"
    return f"schema {before} upgraded to {version}"


@store_group.command("check")
@config_option
def store_check_command(config: Path | None) -> None:
    """The schema version, and a check of the whole store; exit 1 when damaged."""
    topo = topology(config)
    _, version, found = store_version(topo, migrate=False, check=True)
    if found != "ok":
        store_error(topo, f"schema {version}, damaged: {found}")
    click.echo(f"network.store {topo.store}: schema {version}, ok")


@store_group.command("copy")
@click.argument("src")
@click.argument("dst")
@click.option("--password-env", metavar="VAR", default=None,
              help="Environment variable holding DST's password (else PGPASSWORD or ~/.pgpass).")
def store_copy_command(src: str, dst: str, password_env: str | None) -> None:
    """Copy a stopped network's SQLite store SRC (sqlite:/path.db) with all its mail
    into the empty PostgreSQL store DST (postgresql://user@host/dbname), in one
    transaction; refused while SRC's network runs or when DST holds mail."""
    from gatepost.store import copy as copying

    password = None if password_env is None else os.environ.get(password_env, "")
    try:
        if password == "":
            raise copying.CopyRefused(f"--password-env: {password_env} is not set")
        click.echo(copying.copy_store(src, dst, password))
    except (copying.CopyRefused, *copying.ERRORS) as error:
        click.echo(f"error: store copy: {one_line(str(error))}", err=True)
        sys.exit(1)
