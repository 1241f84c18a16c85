"""The send side of a gateway: claims what waits in its gateway postoffice and
hands it to smart hosts or MX hosts (`side`), over the asyncio shell around the
client core (`outbound`); where to connect (`relays`, `mx`), DKIM (`signing`),
AUTH secrets (`credentials`) and the delivery log (`deliverylog`).
What a reply means for a recipient is `policy`'s decision, never this package's.
"""

from .side import SendSide

__all__ = ["SendSide"]
