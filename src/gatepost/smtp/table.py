"""The order of SMTP commands as one table: state x verb -> the state the
session reaches when the command succeeds, or the reply refusing it. Pure data.
"""

from __future__ import annotations

from enum import Enum

from gatepost.smtp.events import Reply
from gatepost.smtp.replies import (
    IN_TRANSACTION,
    NEED_HELO,
    NEED_MAIL,
    NEED_RCPT,
    NESTED_MAIL,
    NO_RECIPIENTS,
)


class State(Enum):
    START = "start"  # greeting sent, no EHLO/HELO yet
    READY = "ready"  # after EHLO/HELO, no mail transaction
    MAIL = "mail"  # MAIL accepted, no recipient accepted yet
    RCPT = "rcpt"  # at least one recipient accepted
    DATA = "data"  # reading message content after 354
    CLOSED = "closed"  # after QUIT, 421 or EOF


class Verb(Enum):
    EHLO = "EHLO"
    HELO = "HELO"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"
    VRFY = "VRFY"
    HELP = "HELP"
    STARTTLS = "STARTTLS"


_S, _V = State, Verb


def _anytime(state: State) -> dict[Verb, State | Reply]:
    """Commands allowed in every open state, and the state they lead to."""
    after_rset = _S.START if state is _S.START else _S.READY
    same = {_V.NOOP: state, _V.VRFY: state, _V.HELP: state}
    return {_V.EHLO: _S.READY, _V.HELO: _S.READY, _V.RSET: after_rset, _V.QUIT: _S.CLOSED, **same}


TABLE: dict[State, dict[Verb, State | Reply]] = {
    _S.START: {**_anytime(_S.START), _V.MAIL: NEED_HELO, _V.RCPT: NEED_MAIL, _V.DATA: NEED_RCPT,
               _V.STARTTLS: NEED_HELO},
    _S.READY: {**_anytime(_S.READY), _V.MAIL: _S.MAIL, _V.RCPT: NEED_MAIL, _V.DATA: NEED_RCPT,
               _V.STARTTLS: _S.START},
    _S.MAIL: {**_anytime(_S.MAIL), _V.MAIL: NESTED_MAIL, _V.RCPT: _S.RCPT, _V.DATA: NO_RECIPIENTS,
              _V.STARTTLS: IN_TRANSACTION},
    _S.RCPT: {**_anytime(_S.RCPT), _V.MAIL: NESTED_MAIL, _V.RCPT: _S.RCPT, _V.DATA: _S.DATA,
              _V.STARTTLS: IN_TRANSACTION},
}
"""state x verb -> the state once the command succeeds, or the reply refusing it.
For MAIL and RCPT "succeeds" means the shell answered 2xx; a Message always
leads back to READY."""

VERBS = {verb.value: verb for verb in Verb}
MUST_END_GROUP = frozenset({_V.EHLO, _V.HELO, _V.DATA})
NO_ARGUMENT = {_V.DATA: "DATA", _V.RSET: "RSET", _V.QUIT: "QUIT", _V.STARTTLS: "STARTTLS"}
