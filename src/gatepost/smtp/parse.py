"""Parse the arguments of MAIL and RCPT: paths (RFC 5321 4.1.2, RFC 6531) and
ESMTP parameters (SIZE, BODY, SMTPUTF8).

Pure functions from the argument text to a Mail / Rcpt event or to the Reply that
refuses it. Must not know the session state, buffers, sockets or any policy about
which addresses are acceptable: syntax only.

Source routes (<@a,@b:user@c>) are accepted and stripped, as RFC 5321 4.1.1.3
and appendix C tell a server to do; the event holds only the mailbox.
"""

from __future__ import annotations

import ipaddress
import re

from gatepost.smtp.events import Mail, Rcpt, Reply

_R = Reply.of
SYNTAX_MAIL = _R(501, "5.5.4 Syntax: MAIL FROM:<address>")
SYNTAX_RCPT = _R(501, "5.5.4 Syntax: RCPT TO:<address>")
BAD_SENDER = _R(501, "5.1.7 Bad sender address syntax")
BAD_RECIPIENT = _R(501, "5.1.3 Bad recipient address syntax")
PATH_TOO_LONG = _R(501, "5.1.3 Error: path too long")
NEED_SMTPUTF8 = _R(553, "5.6.7 Error: SMTPUTF8 required for non-ASCII address")
BAD_PARAMETER = _R(501, "5.5.4 Error: bad parameter syntax")
TOO_BIG = _R(552, "5.3.4 Message size exceeds fixed limit")

_U8 = "\u0080-\U0010ffff"  # UTF8-non-ascii (RFC 6531); refused later without SMTPUTF8
_ATEXT = rf"[A-Za-z0-9!#$%&'*+\-/=?^_`{{|}}~{_U8}]"
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_U8}]|\\[\x20-\x7e])*"'
_LABEL = rf"[A-Za-z0-9{_U8}](?:[A-Za-z0-9\-{_U8}]*[A-Za-z0-9{_U8}])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"
_PATH = re.compile(
    rf"<(?:@{_DOMAIN}(?:,@{_DOMAIN})*:)?"
    rf"(?P<mailbox>(?:{_DOT_STRING}|{_QUOTED})@(?:{_DOMAIN}|(?P<literal>{_LITERAL})))>"
)
_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e]+")


def parse_mail(arg: str, max_path: int, max_size: int) -> Mail | Reply:
    """`arg` is what follows "MAIL ": FROM:<path> [params]."""
    rest = _after_prefix(arg, "FROM:")
    if rest is None or not rest.startswith("<"):
        return SYNTAX_MAIL
    if rest.startswith("<>"):
        sender, params = "", rest[2:]
    else:
        found = _match_path(rest, max_path, BAD_SENDER)
        if isinstance(found, Reply):
            return found
        sender, params = found
    mail = _mail_params(sender, params, max_size)
    if isinstance(mail, Mail) and not mail.smtputf8 and not sender.isascii():
        return NEED_SMTPUTF8
    return mail


def parse_rcpt(arg: str, max_path: int, smtputf8: bool) -> Rcpt | Reply:
    """`arg` is what follows "RCPT ": TO:<path>; no RCPT parameter is supported."""
    rest = _after_prefix(arg, "TO:")
    if rest is None or not rest.startswith("<"):
        return SYNTAX_RCPT
    if rest[:12].lower() == "<postmaster>":
        recipient, params = "postmaster", rest[12:]
    else:
        found = _match_path(rest, max_path, BAD_RECIPIENT)
        if isinstance(found, Reply):
            return found
        recipient, params = found
    pairs = _split_params(params)
    if isinstance(pairs, Reply):
        return pairs
    if pairs:
        return _unsupported(pairs[0][0])
    if not smtputf8 and not recipient.isascii():
        return NEED_SMTPUTF8
    return Rcpt(recipient)


def _after_prefix(arg: str, prefix: str) -> str | None:
    if arg[: len(prefix)].upper() != prefix:
        return None
    return arg[len(prefix) :].lstrip(" ")


def _match_path(text: str, max_path: int, bad: Reply) -> tuple[str, str] | Reply:
    """The mailbox of the path that opens `text`, and the text after the path."""
    close = text.find(">")
    if len((text if close < 0 else text[: close + 1]).encode()) > max_path:
        return PATH_TOO_LONG
    match = _PATH.match(text)
    if match is None:
        return bad
    if len(match[0].encode()) > max_path:
        return PATH_TOO_LONG
    literal = match["literal"]
    if literal is not None and not _valid_literal(literal[1:-1]):
        return bad
    return match["mailbox"], text[match.end() :]


def _valid_literal(inner: str) -> bool:
    try:
        if inner[:5].upper() == "IPV6:":
            ipaddress.IPv6Address(inner[5:])
        elif inner.replace(".", "").isdigit():
            ipaddress.IPv4Address(inner)
        else:
            return _GENERAL_LITERAL.fullmatch(inner) is not None
    except ValueError:
        return False
    return True


def _split_params(text: str) -> list[tuple[str, str | None]] | Reply:
    """ESMTP parameters as (upper-case keyword, value or None)."""
    if text and not text.startswith(" "):
        return BAD_PARAMETER
    pairs: list[tuple[str, str | None]] = []
    for word in text.split():
        keyword, equals, value = word.partition("=")
        if not _KEYWORD.fullmatch(keyword) or (equals and not _VALUE.fullmatch(value)):
            return BAD_PARAMETER
        pairs.append((keyword.upper(), value if equals else None))
    if len({keyword for keyword, _ in pairs}) != len(pairs):
        return _R(501, "5.5.4 Error: duplicate parameter")
    return pairs


def _mail_params(sender: str, text: str, max_size: int) -> Mail | Reply:
    pairs = _split_params(text)
    if isinstance(pairs, Reply):
        return pairs
    size: int | None = None
    body: str | None = None
    smtputf8 = False
    for keyword, value in pairs:
        if keyword == "SIZE":
            if value is None or not (value.isascii() and value.isdigit()) or len(value) > 20:
                return _R(501, "5.5.4 Error: bad SIZE parameter")
            size = int(value)
        elif keyword == "BODY":
            body = (value or "").upper()
            if body not in ("7BIT", "8BITMIME"):
                return _R(501, "5.5.4 Error: bad BODY parameter")
        elif keyword == "SMTPUTF8" and value is None:
            smtputf8 = True
        else:
            return _unsupported(keyword)
    if size is not None and size > max_size:
        return TOO_BIG
    return Mail(sender, size=size, body=body, smtputf8=smtputf8)


def _unsupported(keyword: str) -> Reply:
    return _R(555, f"5.5.4 Error: unsupported parameter {keyword}")
