"""The topology: postoffices, links, gateways; loading, addresses, routes, diagrams.

Reads one TOML file (`load`, `check`) and answers questions about it with
pure functions. Knows nothing of the store, sockets or queue states.
"""

from gatepost.topology.addresses import (
    AddressError,
    Native,
    UnknownMailbox,
    lookup,
    native_str,
    outbound_sender,
    parse,
    sender_native,
    to_smtp,
)
from gatepost.topology.load import check, load
from gatepost.topology.model import (
    Capture,
    Gateway,
    HostPort,
    Postoffice,
    Problem,
    Role,
    Topology,
    TopologyError,
)
from gatepost.topology.routes import (
    NoRoute,
    describe_route,
    outbound_gateway,
    path,
    sending_gateways,
)

__all__ = [
    "AddressError",
    "Capture",
    "Gateway",
    "HostPort",
    "Native",
    "NoRoute",
    "Postoffice",
    "Problem",
    "Role",
    "Topology",
    "TopologyError",
    "UnknownMailbox",
    "check",
    "describe_route",
    "load",
    "lookup",
    "native_str",
    "outbound_gateway",
    "outbound_sender",
    "parse",
    "path",
    "sender_native",
    "sending_gateways",
    "to_smtp",
]
