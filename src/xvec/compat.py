"""The torch releases xvec supports, checked before any command runs.

The range is the one ``pyproject.toml`` declares and the nox sessions ``torch_oldest`` /
``torch_newest`` test; an install outside it (e.g. torch pinned by another package) gets one
clear line instead of failures deep inside a model.
"""

from __future__ import annotations

import os
import re
from importlib.metadata import PackageNotFoundError, version

from xvec.errors import XvecError

TORCH_MIN = (2, 11)  # oldest supported release (inclusive)
TORCH_BELOW = (2, 16)  # first unsupported release
TORCH_RANGE = f">={TORCH_MIN[0]}.{TORCH_MIN[1]},<{TORCH_BELOW[0]}.{TORCH_BELOW[1]}"


def xvec_version() -> str:
    """xvec's installed version, recorded in every file it writes ("0.0.0" in a bare tree)."""
    try:
        return version("xvec")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


def installed_torch() -> str | None:
    """The installed torch distribution's version, read from its metadata (torch not imported)."""
    try:
        return version("torch")
    except PackageNotFoundError:
        return None


def check_torch_version(installed: str | None = None) -> None:
    """Raise a one-line :class:`XvecError` unless a supported torch is installed."""
    installed = installed_torch() if installed is None else installed
    hint = f"pip install 'torch{TORCH_RANGE}'"
    if installed is None:
        raise XvecError(f"torch is not installed; xvec needs torch{TORCH_RANGE}: {hint}")
    match = re.match(r"(\d+)\.(\d+)", installed)
    if match is None or not TORCH_MIN <= (int(match[1]), int(match[2])) < TORCH_BELOW:
        raise XvecError(
            f"torch {installed} is installed but xvec supports torch{TORCH_RANGE}: {hint}"
        )


def prefer_sleeping_threads() -> None:
    """Make idle OpenMP threads sleep rather than spin (``OMP_WAIT_POLICY=PASSIVE``).

    Called by ``xvec eval`` and ``xvec embed`` before torch loads: there a decoding thread
    and, on shared machines, other jobs compete with torch's threads, and spinning threads
    then wait on a descheduled peer. ``bench/thread_wait.py`` on 2 cores: one 4 s file takes
    26 ms instead of 74 ms with one busy core, 36 ms instead of 17 ms on an idle machine.
    Training keeps the default (its large batches lose ~10 % when passive). A value the user
    set wins.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
