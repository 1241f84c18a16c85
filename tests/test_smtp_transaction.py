"""The client's mail transaction, sans I/O: what it sends after each reply and
which reply decides each recipient, pipelined and one command at a time."""

from __future__ import annotations

import pytest

from gatepost.smtp.events import Data, Mail, Message, Rcpt, Reply, Rset
from gatepost.smtp.transaction import Broken, Finished, Step, Transaction, Write, WriteContent

OK, RCPT_OK = Reply.of(250, "2.1.0 Ok"), Reply.of(250, "2.1.5 Ok")
GO, QUEUED = Reply.of(354, "go ahead"), Reply.of(250, "2.0.0 queued")
NO_USER, BUSY = Reply.of(550, "5.1.1 no such user"), Reply.of(451, "4.3.0 try later")
REJECTED = Reply.of(553, "5.7.1 sender rejected")
NO_RCPT = Reply.of(554, "5.5.1 no valid recipients")
MAIL = Mail("a@example.org")


def run(pipelining: bool, replies: list[Reply], rcpts: int = 2) -> tuple[list[Step], Step]:
    """Feed `replies` in order; returns every step and the last one."""
    tx = Transaction(MAIL, [f"r{i}@example.net" for i in range(rcpts)], pipelining)
    steps: list[Step] = [tx.start()]
    for reply in replies:
        steps.append(tx.answer(reply))
    return steps, steps[-1]


def sent(steps: list[Step]) -> list[object]:
    return [c for s in steps if isinstance(s, Write) for c in s.commands]


def test_pipelined_sends_the_envelope_at_once_and_the_content_after_354() -> None:
    steps, last = run(True, [OK, RCPT_OK, NO_USER, GO, QUEUED])
    assert sent(steps) == [MAIL, Rcpt("r0@example.net"), Rcpt("r1@example.net"), Data()]
    assert isinstance(steps[-2], WriteContent)
    assert last == Finished((QUEUED, NO_USER))


def test_stepwise_waits_for_each_reply() -> None:
    steps, last = run(False, [OK, RCPT_OK, RCPT_OK, GO, QUEUED])
    assert [s.commands for s in steps[:4] if isinstance(s, Write)] == [
        (MAIL,), (Rcpt("r0@example.net"),), (Rcpt("r1@example.net"),), (Data(),)]
    assert last == Finished((QUEUED, QUEUED))


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_refused_sender_decides_every_recipient_and_resets(pipelining: bool) -> None:
    replies = [REJECTED, *([Reply.of(503, "5.5.1 need MAIL")] * 3 if pipelining else []), OK]
    steps, last = run(pipelining, replies)
    assert sent(steps)[-1] == Rset()
    assert last == Finished((REJECTED, REJECTED))


def test_a_refused_sender_with_a_354_anyway_ends_the_data_empty_then_resets() -> None:
    steps, last = run(True, [REJECTED, NO_USER, NO_USER, GO, QUEUED, OK])
    assert sent(steps)[-2:] == [Message(b""), Rset()]
    assert last == Finished((REJECTED, REJECTED))


@pytest.mark.parametrize("pipelining", [True, False])
def test_no_recipient_accepted_sends_no_content(pipelining: bool) -> None:
    replies = [OK, NO_USER, NO_USER, *([NO_RCPT] if pipelining else []), OK]
    steps, last = run(pipelining, replies)
    assert not any(isinstance(s, WriteContent) for s in steps)
    assert Data() not in sent(steps) or pipelining
    assert last == Finished((NO_USER, NO_USER))


def test_a_354_with_no_recipient_accepted_is_ended_empty() -> None:
    steps, last = run(True, [OK, NO_USER, NO_USER, GO, Reply.of(554, "no recipients")])
    assert sent(steps)[-1] == Message(b"") and last == Finished((NO_USER, NO_USER))


def test_a_refused_data_decides_the_accepted_recipients() -> None:
    _, last = run(True, [OK, RCPT_OK, NO_USER, BUSY, OK])
    assert last == Finished((BUSY, NO_USER))


def test_data_accepted_without_354_breaks_the_session() -> None:
    _, last = run(False, [OK, RCPT_OK, RCPT_OK, QUEUED])
    assert isinstance(last, Broken) and last.reply.code == 451


def test_a_failed_rset_breaks_the_session() -> None:
    _, last = run(False, [REJECTED, Reply.of(421, "4.3.2 closing")])
    assert last == Broken(Reply.of(421, "4.3.2 closing"))


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_refused_rset_ends_the_session_but_the_replies_before_it_decide(pipelining: bool) -> None:
    """451 to MAIL, then 554 to RSET: the session ends; its recipients keep the 451."""
    tx = Transaction(MAIL, ["r0@example.net", "r1@example.net"], pipelining)
    tx.start()
    refused = Reply.of(554, "5.5.1 RSET refused")
    for reply in [BUSY, *([NO_RCPT] * 3 if pipelining else [])]:
        tx.answer(reply)
    assert tx.settled == (BUSY, BUSY)
    assert tx.answer(refused) == Broken(refused)
    assert tx.settled == (BUSY, BUSY)


@pytest.mark.parametrize("replies", [[], [OK], [OK, RCPT_OK], [OK, RCPT_OK, NO_USER]])
def test_421_breaks_the_transaction_and_decides_no_recipient(replies: list[Reply]) -> None:
    tx = Transaction(MAIL, ["r0@example.net", "r1@example.net"], pipelining=True)
    tx.start()
    for reply in replies:
        tx.answer(reply)
    closing = Reply.of(421, "4.3.2 closing")
    assert tx.answer(closing) == Broken(closing)
    assert tx.settled is None


def test_nothing_is_settled_before_every_recipient_is_decided() -> None:
    tx = Transaction(MAIL, ["r0@example.net"], pipelining=True)
    tx.start()
    for reply in (OK, RCPT_OK, GO):
        tx.answer(reply)
        assert tx.settled is None
    assert tx.answer(QUEUED) == Finished((QUEUED,))


def test_only_the_final_reply_waits_the_long_timeout() -> None:
    tx = Transaction(MAIL, ["r@example.net"], pipelining=True)
    tx.start()
    waits = []
    for reply in (OK, RCPT_OK, GO):
        tx.answer(reply)
        waits.append(tx.awaiting_final)
    assert waits == [False, False, True]
