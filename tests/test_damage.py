"""A damaged message is set aside (held), never sent in part; a damaged store is
refused at start with a clear error."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatepost.store import DamagedMessage, NewMessage, NewRecipient, SqliteStore
from scripted import ALICE, Harness, ScriptedHost


def test_a_cut_spool_file_or_a_damaged_row_is_detected(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "q.db")
    [small] = store.enqueue([NewMessage("a@b.c", (NewRecipient("x@y.z", None),), b"hello",
                                        "HQ", "HQ", "cli")], 1.0)
    store._conn.execute("UPDATE messages SET size = 99 WHERE id = ?", (small,))
    with pytest.raises(DamagedMessage):
        store.content(small)
    store.close()


@pytest.fixture
def host() -> Iterator[ScriptedHost]:
    smarthost = ScriptedHost().start()
    yield smarthost
    smarthost.close()


def test_the_send_side_holds_a_damaged_message_and_sends_nothing(
    tmp_path: Path, host: ScriptedHost
) -> None:
    async def main() -> None:
        h = Harness(tmp_path, f'smarthost = "{host.address}"')
        queue_id = await h.submit(ALICE, ["r@example.org"])  # before the workers run
        sync = SqliteStore(Path(h.topo.store.removeprefix("sqlite:")))
        sync._conn.execute("UPDATE messages SET size = size + 1 WHERE id = ?", (queue_id,))
        sync.close()
        async with h:
            await h.until(lambda: held(h), "the damaged message on hold")
            fine = await h.submit(ALICE, ["s@example.org"])
            await h.settled(fine, "delivered", "s@example.org")  # the rest goes on

    asyncio.run(main())
    assert host.recipients() == ["s@example.org"]


async def held(h: Harness) -> bool:
    return bool(await h.store.queue(states=["hold"]))


def test_run_refuses_a_damaged_store(tmp_path: Path) -> None:
    from gatepost import runner
    from gatepost.topology import load

    example = Path(__file__).resolve().parent.parent / "examples" / "single-gateway.toml"
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"this is not a database" * 100)
    topo = dataclasses.replace(load(example), store=f"sqlite:{damaged}", capture=None)
    with pytest.raises(runner.StartError, match="damaged"):
        runner.run(topo, ["router"], lambda lines: None)
