"""The receive side of a gateway: an asyncio server around the SMTP server core
(`side`), with its deadlines and connection limits (`guard`) and large bodies
collected in spool files (`spooling`); `capture` is a local smart host for
trying gatepost, built on the same server-session driver.
"""

from .side import ReceiveSide

__all__ = ["ReceiveSide"]
