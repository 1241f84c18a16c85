"""Opening the store a topology names, with the password from where it lives."""

from __future__ import annotations

from gatepost.send.credentials import store_password
from gatepost.store import Store, open_store
from gatepost.topology import Topology


def network_store(topo: Topology, migrate: bool = True) -> Store:
    """The topology's store (`migrate`: only `gatepost run` upgrades an older
    schema). Large content on its way into a database server waits in
    `var/staging` beside the topology file, on this host. Raises
    credentials.MissingSecret when the password's source is empty."""
    staging = topo.source.parent / "var" / "staging"
    return open_store(topo.store, migrate=migrate, password=store_password(topo), staging=staging)
