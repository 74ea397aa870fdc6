"""User-facing errors: one line, naming the file (and line or field), saying what to do.

Library code raises :class:`XvecError`; the CLI prints its message on stderr and exits non-zero
without a traceback. Anything else escaping is a bug.
"""

from __future__ import annotations

from pathlib import Path


class XvecError(Exception):
    """An error caused by the user's input, with a message fit to show as it is."""

    exit_code = 1


def where(path: str | Path, line: int | None = None, field: str | None = None) -> str:
    """Format a location ``file:line`` or ``file: field`` for error messages."""
    text = str(path)
    if line is not None:
        text += f":{line}"
    if field:
        text += f": {field}"
    return text
