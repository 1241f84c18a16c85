"""The delivery log: one line per recipient outcome of the send side.

Each line has the queue id, recipient, relay, delay since the message was
queued, the DSN status, the result and the remote reply; as text
(`QID: to=<r> relay=h delay=1.2 dsn=2.0.0 status=sent (250 ok)`), or as one
JSON object per line when GATEPOST_LOG_FORMAT=json. Must not know: SMTP,
the store's SQL, or what the outcome means for the queue.
"""

from __future__ import annotations

import json
import logging
import os

from gatepost import policy
from gatepost.store import Bounced, Deferred, Delivered, Outcome

log = logging.getLogger("gatepost.send")
FORMAT_VARIABLE = "GATEPOST_LOG_FORMAT"


def record(o: Outcome, now: float) -> dict[str, object] | None:
    """The fields of one delivery log line; None for outcomes it does not log."""
    status = {Delivered: "sent", Deferred: "deferred", Bounced: "bounced"}.get(type(o))
    if status is None or not isinstance(o, Delivered | Deferred | Bounced):
        return None
    job = o.job
    dsn = policy.reply_status(o.reply)
    return {
        "queue_id": job.message_id,
        "to": job.address,
        "relay": o.relay or "none",
        "delay": round(now - job.created, 2),
        "dsn": dsn,
        "status": status,
        "reply": policy.one_line(o.reply),
    }


def line(fields: dict[str, object], as_json: bool) -> str:
    if as_json:
        return json.dumps(fields, ensure_ascii=False)
    return (
        f"{fields['queue_id']}: to=<{fields['to']}> relay={fields['relay']} "
        f"delay={fields['delay']} dsn={fields['dsn']} status={fields['status']} "
        f"({fields['reply']})"
    )


def write(outcomes: list[Outcome], now: float) -> None:
    as_json = os.environ.get(FORMAT_VARIABLE, "").lower() == "json"
    for o in outcomes:
        fields = record(o, now)
        if fields is not None:
            log.info("%s", line(fields, as_json))
