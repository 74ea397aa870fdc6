"""User-facing errors: one line, naming the file (and line or field), saying what to do.

Library code raises :class:`XvecError`; the CLI prints its message on stderr and exits non-zero
without a traceback. Anything else escaping is a bug. The library speaks in its own words: an
option is named by its Python keyword (``length_tolerance``) and listed in ``options``, and
the CLI shows it as its flag (``--length-tolerance``, :func:`with_flags`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path


class XvecError(Exception):
    """An error caused by the user's input, with a message fit to show as it is.

    Structured fields say where and what, for programs: ``file``, ``line`` and ``field`` of
    the input at fault, ``options`` (keyword names of the options the message names), and
    ``hint`` (what to do, already part of the message).
    """

    exit_code = 1

    def __init__(
        self,
        message: str = "",
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        options: tuple[str, ...] = (),
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.file, self.line, self.field = file, line, field
        self.options, self.hint = options, hint


def with_flags(error: XvecError, flag: Callable[[str], str]) -> str:
    """The message with each of ``error.options`` written as ``flag(option)`` (a CLI flag).

    The first whole-word occurrence of each option is the one replaced: messages name an
    option before they use the same word in prose ("cohort (a cohort file)").
    """
    text = str(error)
    for option in error.options:
        replacement = flag(option).replace("\\", "\\\\")
        text = re.sub(rf"(?<![\w.-]){re.escape(option)}(?![\w-])", replacement, text, count=1)
    return text


def where(path: str | Path, line: int | None = None, field: str | None = None) -> str:
    """Format a location ``file:line`` or ``file: field`` for error messages."""
    text = str(path)
    if line is not None:
        text += f":{line}"
    if field:
        text += f": {field}"
    return text


def check_at_least(option: str, value: float | None, low: float) -> None:
    """One-line error for a numeric ``option`` (its keyword) below ``low`` or not finite; None
    passes."""
    if value is not None and not (math.isfinite(value) and value >= low):
        raise XvecError(f"{option} {value}: must be a number >= {low}", options=(option,))
