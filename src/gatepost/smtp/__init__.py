"""The SMTP protocol core, sans I/O: a server and a client connection that turn
bytes into events and events into bytes. Must not know sockets, the store or the
clock; the asyncio shells in `receive` and `send` drive it."""

from gatepost.smtp.client import ClientConnection
from gatepost.smtp.events import (
    NEED_DATA,
    Command,
    ConnectionClosed,
    Content,
    Data,
    Ehlo,
    Greeting,
    LocalProtocolError,
    Mail,
    Message,
    NeedData,
    Noop,
    ProtocolError,
    Quit,
    Rcpt,
    Reply,
    Response,
    Rset,
    StartTls,
)
from gatepost.smtp.server import Limits, ServerConnection

__all__ = [
    "NEED_DATA",
    "ClientConnection",
    "Command",
    "ConnectionClosed",
    "Content",
    "Data",
    "Ehlo",
    "Greeting",
    "Limits",
    "LocalProtocolError",
    "Mail",
    "Message",
    "NeedData",
    "Noop",
    "ProtocolError",
    "Quit",
    "Rcpt",
    "Reply",
    "Response",
    "Rset",
    "ServerConnection",
    "StartTls",
]
