"""Builds the delivery status notifications the router and send side enqueue.

It maps the sender to where the report must go (a local mailbox or back out
through a gateway) and asks `policy` for the report itself. No I/O.
"""

from __future__ import annotations

from gatepost import policy
from gatepost.store import Job, NewMessage, NewRecipient, new_queue_id
from gatepost.topology import Native, Topology, sender_native, to_smtp


def report(
    topo: Topology, job: Job, failures: list[policy.Failure], original: bytes, now: float
) -> NewMessage | None:
    """The DSN (bounce or delay warning) for `failures` of one message, or None
    when the sender is <> (a report about a report would loop). It goes to the
    sender's mailbox when the sender is local, else out through a gateway."""
    if not job.sender:
        return None
    where = job.location
    native = sender_native(topo, job.sender, where)
    postmaster = postmaster_address(topo, where)
    about = policy.Report(mta_name(topo, where), postmaster, job.sender, job.created, original)
    content = policy.dsn(about, failures, now)
    recipient = NewRecipient(job.sender, native.key if native else None)
    return NewMessage(
        sender="",
        recipients=(recipient,),
        content=content,
        location=where,
        origin=where,
        received_by="bounce",
        queue_id=new_queue_id(),  # its own from the start: written twice, it is still one
    )


def mta_name(topo: Topology, postoffice: str) -> str:
    domains = topo.postoffices[postoffice].domains or topo.domains
    return domains[0] if domains else f"{postoffice.lower()}.{topo.name.lower()}"


def postmaster_address(topo: Topology, postoffice: str) -> str:
    try:
        return to_smtp(topo, Native(postoffice, "postmaster"))
    except ValueError:
        return f"postmaster@{mta_name(topo, postoffice)}"
