"""Where the smart host's AUTH password comes from: an environment variable,
or the first line of a file (so a trailing comment or a second line never
becomes part of the password)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatepost.send.credentials import MissingSecret, login, password
from gatepost.topology.model import Gateway


def gateway(file: Path | None = None, env: str | None = None) -> Gateway:
    return Gateway("GW1", "HQ", "send", None, None, ("HQ",), (), auth_user="gw1",
                   auth_password_file=file, auth_password_env=env)


@pytest.mark.parametrize("text", ["s3cret pass\n", "s3cret pass\r\n", "s3cret pass",
                                  "s3cret pass\nsecond line\n", "s3cret pass\r\n# rotated 2024-05-01\r\n"])
def test_the_password_is_the_first_line_of_the_file(tmp_path: Path, text: str) -> None:
    secret = tmp_path / "relay.secret"
    secret.write_bytes(text.encode())
    assert login(gateway(file=secret)) is not None
    assert password(gateway(file=secret)) == "s3cret pass"


@pytest.mark.parametrize("text", ["", "\n", "\nsecret on line two\n"])
def test_an_empty_first_line_is_a_missing_secret(tmp_path: Path, text: str) -> None:
    secret = tmp_path / "relay.secret"
    secret.write_text(text)
    with pytest.raises(MissingSecret, match="empty first line") as caught:
        password(gateway(file=secret))
    assert "secret on line two" not in str(caught.value)


def test_an_unreadable_file_names_the_file_not_the_error_text(tmp_path: Path) -> None:
    with pytest.raises(MissingSecret, match="cannot read .*nowhere.secret: FileNotFoundError"):
        password(gateway(file=tmp_path / "nowhere.secret"))

