"""Named SQL statements, read from a `.sql` file of this package.

A file holds statements one after another, each under a line "-- name: NAME";
other comment lines are kept out. "{other}" in a statement is replaced by the
statement named `other` (shared column lists). Knows no tables.
"""

from __future__ import annotations

import re
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def load(file: str) -> dict[str, str]:
    """The statements of `file`, by name."""
    text = resources.files(__package__).joinpath(file).read_text(encoding="utf-8")
    pieces = _NAME.split(text)[1:]
    found = {
        name: "\n".join(line for line in body.splitlines() if not line.startswith("--")).strip()
        for name, body in zip(pieces[::2], pieces[1::2], strict=True)
    }
    return {name: sql.format_map(found) if "{" in sql else sql for name, sql in found.items()}
