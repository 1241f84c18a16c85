"""The replies the SMTP server core gives on its own, in one place: what each
refusal says, with its enhanced status code. Pure data."""

from __future__ import annotations

from gatepost.smtp.events import Reply
from gatepost.smtp.parse import TOO_BIG

_R = Reply.of
OK = _R(250, "2.0.0 Ok")
BYE = _R(221, "2.0.0 Bye")
START_DATA = _R(354, "End data with <CR><LF>.<CR><LF>")
VRFY_REPLY = _R(252, "2.0.0 Cannot VRFY user, but will accept message and attempt delivery")
HELP_REPLY = _R(214, "2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY HELP QUIT")
NEED_HELO = _R(503, "5.5.1 Error: send HELO/EHLO first")
NEED_MAIL = _R(503, "5.5.1 Error: need MAIL command")
NEED_RCPT = _R(503, "5.5.1 Error: need RCPT command")
NESTED_MAIL = _R(503, "5.5.1 Error: nested MAIL command")
NO_RECIPIENTS = _R(554, "5.5.1 Error: no valid recipients")
TOO_MANY_RECIPIENTS = _R(452, "4.5.3 Error: too many recipients")
UNRECOGNIZED = _R(500, "5.5.2 Error: command not recognized")
COMMAND_TOO_LONG = _R(500, "5.5.0 Error: line too long")
BARE_LF_COMMAND = _R(500, "5.5.2 Error: bare LF in command")
BAD_CHARACTER = _R(500, "5.5.2 Error: bad character in command")
SYNTAX_EHLO = _R(501, "5.5.4 Syntax: EHLO hostname")
SYNTAX_HELO = _R(501, "5.5.4 Syntax: HELO hostname")
SYNTAX_VRFY = _R(501, "5.5.4 Syntax: VRFY address")
BARE_CR_LF_DATA = _R(550, "5.6.11 Error: bare CR or LF in message data")
NUL_DATA = _R(550, "5.6.0 Error: NUL character in message data")
DATA_LINE_TOO_LONG = _R(552, "5.3.4 Error: line too long")
MESSAGE_TOO_BIG = TOO_BIG  # "552 5.3.4 Message size exceeds fixed limit"
READY_FOR_TLS = _R(220, "2.0.0 Ready to start TLS")
NO_TLS = _R(502, "5.5.1 Error: command not implemented")
TLS_ACTIVE = _R(554, "5.5.1 Error: TLS already active")
IN_TRANSACTION = _R(503, "5.5.1 Error: MAIL transaction in progress")
OUT_OF_SYNC = _R(554, "5.5.0 Error: SMTP protocol synchronization")
TALKED_FIRST = _R(554, "5.5.1 Error: talking before the greeting")
TIMED_OUT = _R(421, "4.4.2 Error: timeout exceeded")
TOO_MANY_CONNECTIONS = _R(421, "4.7.0 Too many connections")
