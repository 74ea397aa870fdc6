"""User-facing errors: one line, naming the file (and line or field), saying what to do.

Library code raises :class:`XvecError`; the CLI prints its message on stderr and exits non-zero
without a traceback. Anything else escaping is a bug.
"""

from __future__ import annotations

import math
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


def check_at_least(option: str, value: float | None, low: float) -> None:
    """One-line error for a numeric option below ``low`` (or not finite); None passes."""
    if value is not None and not (math.isfinite(value) and value >= low):
        raise XvecError(f"{option} {value}: must be a number >= {low}")
