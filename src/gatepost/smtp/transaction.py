"""One mail transaction of the client, sans I/O: which commands to send when,
and which reply decides each recipient (RFC 5321 3.3, RFC 2920 for PIPELINING).

The shell writes what `start()` and `answer()` ask for and feeds back every reply;
the transaction ends in `Finished` (one reply per recipient) or `Broken` (the
session cannot go on: a 421, a refused RSET, DATA taken without 354). A reply
decides only the recipients it answered: when the session breaks, `settled`
says which replies had decided every recipient (a failed transaction being
reset), or None when they stay undecided.
Must not know sockets, the store or retry policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from gatepost.smtp.events import ClientCommand, Data, Mail, Message, Rcpt, Reply, Rset

NO_354 = Reply.of(451, "4.5.0 the server accepted DATA without 354")


@dataclass(frozen=True, slots=True)
class Write:
    """Send these commands, then feed back the replies (none: just read on)."""

    commands: tuple[ClientCommand, ...] = ()


@dataclass(frozen=True, slots=True)
class WriteContent:
    """Send the message content now (the 354 came); its final reply follows."""


@dataclass(frozen=True, slots=True)
class Finished:
    replies: tuple[Reply, ...]  # the reply that decides each recipient, in order


@dataclass(frozen=True, slots=True)
class Broken:
    reply: Reply  # why the session cannot go on (the recipients: see `settled`)


Step = Write | WriteContent | Finished | Broken


class Phase(Enum):
    ENVELOPE = "envelope"  # MAIL, RCPT and DATA replies still coming
    CONTENT = "content"  # the content was sent; waiting for the final reply
    DISCARD = "discard"  # an empty message sent after an unwanted 354
    RESET = "reset"  # RSET sent after a failed transaction


class Transaction:
    def __init__(self, mail: Mail, recipients: list[str], pipelining: bool) -> None:
        self.mail = mail
        self.recipients = recipients
        self.pipelining = pipelining
        self.phase = Phase.ENVELOPE
        self.envelope: list[Reply] = []  # MAIL's reply, each RCPT's, then DATA's
        self.result: tuple[Reply, ...] = ()
        self._reset_after_discard = False

    @property
    def awaiting_final(self) -> bool:
        """Is the next reply the one to the final dot (RFC 5321 4.5.3.2.6: 10 minutes)?"""
        return self.phase in (Phase.CONTENT, Phase.DISCARD)

    def start(self) -> Write:
        if self.pipelining:
            return Write((self.mail, *(Rcpt(r) for r in self.recipients), Data()))
        return Write((self.mail,))

    @property
    def settled(self) -> tuple[Reply, ...] | None:
        """The reply that decides each recipient, once the replies decided them
        all (while the transaction is reset or ended empty), else None."""
        return self.result if self.phase in (Phase.RESET, Phase.DISCARD) else None

    def answer(self, reply: Reply) -> Step:
        if reply.code == 421:  # the server is closing the connection
            return Broken(reply)
        if self.phase is Phase.ENVELOPE:
            self.envelope.append(reply)
            return self._pipelined() if self.pipelining else self._stepwise()
        if self.phase is Phase.CONTENT:
            return Finished(self._decided(reply))
        if self.phase is Phase.DISCARD and self._reset_after_discard:
            return self._reset(self.result)
        if self.phase is Phase.DISCARD:
            return Finished(self.result)
        return Finished(self.result) if reply.is_positive else Broken(reply)

    def _pipelined(self) -> Step:
        if len(self.envelope) < len(self.recipients) + 2:
            return Write()
        mail, data = self.envelope[0], self.envelope[-1]
        if not mail.is_positive:
            failed = (mail,) * len(self.recipients)
            if data.code == 354:  # the server took DATA anyway: end it empty, then RSET
                self._reset_after_discard = True
                return self._discard(failed)
            return self._reset(failed)
        return self._data(data)

    def _stepwise(self) -> Step:
        count, mail = len(self.envelope), self.envelope[0]
        if not mail.is_positive:
            return self._reset((mail,) * len(self.recipients))
        if count <= len(self.recipients):
            return Write((Rcpt(self.recipients[count - 1]),))
        if count == len(self.recipients) + 1:
            if not any(r.is_positive for r in self._rcpt_replies()):
                return self._reset(self._rcpt_replies())
            return Write((Data(),))
        return self._data(self.envelope[-1])

    def _data(self, data: Reply) -> Step:
        """DATA was answered: send the content, or settle every recipient."""
        if data.code == 354:
            if any(r.is_positive for r in self._rcpt_replies()):
                self.phase = Phase.CONTENT
                return WriteContent()
            return self._discard(self._rcpt_replies())
        if data.is_positive:
            return Broken(NO_354)
        return self._reset(self._decided(data))

    def _rcpt_replies(self) -> tuple[Reply, ...]:
        return tuple(self.envelope[1 : len(self.recipients) + 1])

    def _decided(self, last: Reply) -> tuple[Reply, ...]:
        """A refused recipient keeps its RCPT reply; the others get `last`."""
        return tuple(r if not r.is_positive else last for r in self._rcpt_replies())

    def _discard(self, result: tuple[Reply, ...]) -> Write:
        self.phase, self.result = Phase.DISCARD, result
        return Write((Message(b""),))

    def _reset(self, result: tuple[Reply, ...]) -> Write:
        self.phase, self.result = Phase.RESET, result
        return Write((Rset(),))
